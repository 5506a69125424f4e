/*
 * cxloop feedback widget. Embed:
 *
 *   <script src="https://COLLECTOR/widget.js" async
 *           data-key="cxp_…" data-metric="nps" data-touchpoint="checkout"
 *           data-customer-id="cust-42" data-locale="ja"
 *           data-reasons="price,delivery_speed,ease_of_use"></script>
 *
 * Optional: data-scale (5 or 7, required for ces), data-channel (web), data-survey-type
 * (in_the_moment), data-ticket-id, data-location, data-product, data-business-unit,
 * data-target (a CSS selector to render into; default: a card at the bottom of the page).
 *
 * Answers are sent with fetch(keepalive) as text/plain JSON, which needs no CORS
 * preflight; if the page is closed after a score is chosen, navigator.sendBeacon delivers
 * it. Every answer carries its own event_id, so a resend never counts twice.
 */
(function () {
  "use strict";

  var script = document.currentScript;
  if (!script) { return; }
  var data = script.dataset;

  var TEXT = {
    en: {
      nps: "How likely are you to recommend us to a friend or colleague?",
      csat: "How satisfied are you with your experience today?",
      ces: "How easy was it to get what you needed?",
      low: { nps: "Not at all likely", csat: "Very dissatisfied", ces: "Very difficult" },
      high: { nps: "Extremely likely", csat: "Very satisfied", ces: "Very easy" },
      reasons: "What influenced your score?",
      comment: "Tell us more (optional)",
      send: "Send",
      thanks: "Thank you for your feedback!",
      failed: "Sorry, we could not send your answer. Please try again.",
      close: "Close"
    },
    ja: {
      nps: "この企業を友人や同僚に薦める可能性はどのくらいありますか？",
      csat: "本日のご利用にどの程度満足されましたか？",
      ces: "目的を達成するのはどのくらい簡単でしたか？",
      low: { nps: "全く薦めない", csat: "非常に不満", ces: "非常に難しい" },
      high: { nps: "非常に薦めたい", csat: "非常に満足", ces: "非常に簡単" },
      reasons: "評価の理由を選んでください",
      comment: "ご意見をお聞かせください（任意）",
      send: "送信",
      thanks: "ご回答ありがとうございました。",
      failed: "送信できませんでした。もう一度お試しください。",
      close: "閉じる"
    }
  };
  var REASONS = {
    en: {
      price: "Price", product_quality: "Product quality", delivery_speed: "Delivery speed",
      wait_time: "Waiting time", agent_knowledge: "Staff knowledge", agent_attitude: "Staff attitude",
      ease_of_use: "Ease of use", website: "Website", app: "App", billing: "Billing",
      communication: "Communication", other: "Other"
    },
    ja: {
      price: "価格", product_quality: "品質", delivery_speed: "配送の速さ", wait_time: "待ち時間",
      agent_knowledge: "担当者の知識", agent_attitude: "担当者の対応", ease_of_use: "使いやすさ",
      website: "ウェブサイト", app: "アプリ", billing: "請求", communication: "連絡",
      other: "その他"
    }
  };

  var locale = data.locale || (navigator.language || "en");
  var lang = locale.toLowerCase().indexOf("ja") === 0 ? "ja" : "en";
  var t = TEXT[lang];
  var metric = data.metric || "nps";
  var scale = metric === "nps" ? 10 : metric === "csat" ? 5 : parseInt(data.scale || "0", 10);
  var low = metric === "nps" ? 0 : 1;
  var endpoint = (data.endpoint || new URL(script.src).origin + "/v1/widget/responses") +
    "?key=" + encodeURIComponent(data.key || "");

  if (!data.key || !data.touchpoint || !data.customerId || !scale) {
    console.error("cxloop widget: data-key, data-touchpoint, data-customer-id " +
      "(and data-scale for ces) are required");
    return;
  }

  function uuid() {
    if (window.crypto && crypto.randomUUID) { return crypto.randomUUID(); }
    var b = crypto.getRandomValues(new Uint8Array(16));
    b[6] = (b[6] & 15) | 64; b[8] = (b[8] & 63) | 128;
    var h = Array.prototype.map.call(b, function (x) { return (x + 256).toString(16).slice(1); });
    return h.slice(0, 4).join("") + "-" + h.slice(4, 6).join("") + "-" + h.slice(6, 8).join("") +
      "-" + h.slice(8, 10).join("") + "-" + h.slice(10).join("");
  }

  function el(tag, cls, text) {
    var node = document.createElement(tag);
    if (cls) { node.className = cls; }
    if (text !== undefined) { node.textContent = text; }
    return node;
  }

  var state = { score: null, sent: false, eventId: uuid() };

  function payload() {
    var reasons = Array.prototype.map.call(
      root.querySelectorAll(".cxloop-reason input:checked"), function (i) { return i.value; });
    var segments = {};
    if (data.location) { segments.location = data.location; }
    if (data.product) { segments.product = data.product; }
    if (data.businessUnit) { segments.business_unit = data.businessUnit; }
    var body = {
      event_id: state.eventId,
      metric: metric,
      score: state.score,
      channel: data.channel || "web",
      survey_type: data.surveyType || "in_the_moment",
      touchpoint: data.touchpoint,
      customer_id: data.customerId,
      reasons: reasons,
      segments: segments,
      locale: locale,
      occurred_at: new Date().toISOString()
    };
    if (metric === "ces") { body.scale = scale; }
    if (data.ticketId) { body.ticket_id = data.ticketId; }
    var comment = root.querySelector(".cxloop-comment").value.trim();
    if (comment) { body.comment = comment; }
    return JSON.stringify(body);
  }

  function beacon() {
    if (!navigator.sendBeacon) { return false; }
    return navigator.sendBeacon(endpoint, new Blob([payload()], { type: "text/plain" }));
  }

  function finish(message, ok) {
    var status = root.querySelector(".cxloop-status");
    status.textContent = message;
    status.className = "cxloop-status " + (ok ? "cxloop-thanks" : "cxloop-error");
    if (ok) {
      state.sent = true;
      root.querySelector(".cxloop-form").hidden = true;
    }
  }

  function send() {
    if (state.score === null || state.sent) { return; }
    var button = root.querySelector(".cxloop-submit");
    button.disabled = true;
    fetch(endpoint, {
      method: "POST", body: payload(), keepalive: true, mode: "cors",
      headers: { "Content-Type": "text/plain" }
    }).then(function (response) {
      if (response.status === 202) { finish(t.thanks, true); return; }
      button.disabled = false;
      finish(t.failed, false);
    }, function () {
      // The network failed: hand the answer to the browser, which retries it for us.
      if (beacon()) { finish(t.thanks, true); } else { button.disabled = false; finish(t.failed, false); }
    });
  }

  var root = el("div", "cxloop-widget");
  root.setAttribute("lang", lang);
  root.setAttribute("role", "region");
  root.setAttribute("aria-label", t[metric]);
  var css = ".cxloop-widget{font:14px/1.5 system-ui,sans-serif;max-width:34em;padding:1em;" +
    "border:1px solid #ccc;border-radius:8px;background:#fff;color:#222}" +
    ".cxloop-scores{display:flex;gap:4px;flex-wrap:wrap;margin:.5em 0}" +
    ".cxloop-score{min-width:2.4em;padding:.4em;border:1px solid #888;border-radius:4px;background:#f6f6f6;cursor:pointer}" +
    ".cxloop-score[aria-pressed=true]{background:#1d4ed8;color:#fff}" +
    ".cxloop-ends{display:flex;justify-content:space-between;font-size:12px;color:#555}" +
    ".cxloop-reason{display:inline-block;margin-right:1em}" +
    ".cxloop-comment{width:100%;min-height:4em;margin:.5em 0;box-sizing:border-box}" +
    ".cxloop-error{color:#b91c1c}";
  var style = el("style"); style.textContent = css; root.appendChild(style);
  root.appendChild(el("p", "cxloop-question", t[metric]));

  var scores = el("div", "cxloop-scores");
  scores.setAttribute("role", "radiogroup");
  for (var s = low; s <= scale; s++) {
    var b = el("button", "cxloop-score", String(s));
    b.type = "button";
    b.setAttribute("data-score", String(s));
    b.setAttribute("aria-pressed", "false");
    b.addEventListener("click", function (event) {
      var chosen = event.currentTarget;
      state.score = parseInt(chosen.getAttribute("data-score"), 10);
      Array.prototype.forEach.call(root.querySelectorAll(".cxloop-score"), function (x) {
        x.setAttribute("aria-pressed", String(x === chosen));
      });
      root.querySelector(".cxloop-form").hidden = false;
    });
    scores.appendChild(b);
  }
  root.appendChild(scores);
  var ends = el("div", "cxloop-ends");
  ends.appendChild(el("span", "", t.low[metric]));
  ends.appendChild(el("span", "", t.high[metric]));
  root.appendChild(ends);

  var form = el("div", "cxloop-form");
  form.hidden = true;
  var codes = (data.reasons || "").split(",").map(function (c) { return c.trim(); })
    .filter(Boolean);
  if (codes.length) {
    form.appendChild(el("p", "cxloop-reasons-title", t.reasons));
    codes.forEach(function (code) {
      var label = el("label", "cxloop-reason");
      var box = el("input"); box.type = "checkbox"; box.value = code;
      label.appendChild(box);
      label.appendChild(document.createTextNode(" " + (REASONS[lang][code] || code.replace(/_/g, " "))));
      form.appendChild(label);
    });
  }
  var comment = el("textarea", "cxloop-comment");
  comment.placeholder = t.comment;
  comment.maxLength = 2000;
  comment.setAttribute("aria-label", t.comment);
  form.appendChild(comment);
  var submit = el("button", "cxloop-submit", t.send);
  submit.type = "button";
  submit.addEventListener("click", send);
  form.appendChild(submit);
  root.appendChild(form);
  var status = el("p", "cxloop-status");
  status.setAttribute("role", "status");
  status.setAttribute("aria-live", "polite");
  root.appendChild(status);

  // A score chosen but not sent still counts: the browser delivers it as the page goes away.
  window.addEventListener("pagehide", function () {
    if (state.score !== null && !state.sent && beacon()) { state.sent = true; }
  });

  function mount() {
    var target = data.target ? document.querySelector(data.target) : null;
    (target || document.body).appendChild(root);
  }
  if (document.readyState === "loading") {
    document.addEventListener("DOMContentLoaded", mount);
  } else {
    mount();
  }
  window.cxloopWidget = { element: root, send: send };
})();
