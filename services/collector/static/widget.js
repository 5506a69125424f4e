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
 * The widget renders into the shadow root of a <cxloop-widget> element, with its own
 * styles, so the page's CSS cannot reach its controls (only inherited properties cross a
 * shadow boundary, and the card resets them). Styles are a constructed stylesheet
 * (adoptedStyleSheets), which a page's CSP does not block; browsers without one get a
 * <style> element, which needs style-src 'unsafe-inline'. There is no inline script.
 *
 * The scale is one row of radio buttons however narrow the page (ARIA radiogroup: Tab
 * enters it, the arrow keys, Home and End move and choose, Space or Enter chooses).
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
    // "|" marks where a line may break (文節): Japanese wraps between phrases, never
    // inside one.
    ja: {
      nps: "この企業を|友人や|同僚に|薦める|可能性は|どのくらい|ありますか？",
      csat: "本日の|ご利用に|どの程度|満足されましたか？",
      ces: "目的を|達成するのは|どのくらい|簡単でしたか？",
      low: { nps: "全く|薦めない", csat: "非常に|不満", ces: "非常に|難しい" },
      high: { nps: "非常に|薦めたい", csat: "非常に|満足", ces: "非常に|簡単" },
      reasons: "評価の|理由を|選んでください",
      comment: "ご意見を|お聞かせください|（任意）",
      send: "送信",
      thanks: "ご回答|ありがとう|ございました。",
      failed: "送信できませんでした。|もう一度|お試しください。",
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

  // The card's `all: initial` cuts every property the host page lets the shadow tree
  // inherit (line-height, letter-spacing, text-transform ...); sizes are px, never rem,
  // which the page's root font size would scale.
  var CSS = [
    ":host{display:block}",
    "*,*::before,*::after{box-sizing:border-box}",
    "[hidden]{display:none!important}",
    ".cxloop-widget{all:initial;display:block;direction:ltr;max-width:560px;",
    "padding:16px clamp(10px,3%,20px);border:1px solid #c4c8cf;border-radius:12px;",
    "background:#fff;color:#1f2328;text-align:left;",
    "font:16px/1.5 system-ui,-apple-system,'Segoe UI',Roboto,'Hiragino Sans',",
    "'Noto Sans CJK JP','Noto Sans JP','Yu Gothic UI',Meiryo,sans-serif;",
    "box-sizing:border-box;overflow-wrap:anywhere;line-break:strict;",
    "-webkit-text-size-adjust:100%;text-size-adjust:100%}",
    ".cxloop-widget:lang(ja){word-break:keep-all}",
    ".cxloop-question{margin:0 0 12px;font-weight:600}",
    ".cxloop-scores{display:flex;margin:0;padding:0}",
    ".cxloop-score{flex:1 1 0;min-width:0;min-height:48px;margin:0 0 0 -1px;padding:0;",
    "position:relative;border:1px solid #80868f;border-radius:0;background:#f4f5f7;",
    "color:#1f2328;font:inherit;font-weight:600;font-variant-numeric:tabular-nums;",
    "line-height:1;cursor:pointer;touch-action:manipulation;-webkit-tap-highlight-color:transparent}",
    ".cxloop-score:first-child{margin-left:0;border-radius:8px 0 0 8px}",
    ".cxloop-score:last-child{border-radius:0 8px 8px 0}",
    ".cxloop-score:hover{background:#e3e9fb}",
    ".cxloop-score[aria-checked=true]{z-index:1;border-color:#1d4ed8;background:#1d4ed8;color:#fff}",
    ".cxloop-score:focus-visible{z-index:2;outline:3px solid #1d4ed8;outline-offset:2px}",
    ".cxloop-ends{display:flex;justify-content:space-between;gap:12px;margin:6px 0 0;",
    "font-size:13px;line-height:1.4;color:#4b5159}",
    ".cxloop-ends span{max-width:50%}",
    ".cxloop-ends span:last-child{text-align:right}",
    ".cxloop-form{margin:16px 0 0}",
    ".cxloop-reasons{min-width:0;margin:0 0 16px;padding:0;border:0}",
    ".cxloop-reasons legend,.cxloop-comment-label{display:block;margin:0 0 8px;padding:0;font-weight:600}",
    ".cxloop-reason-list{display:flex;flex-wrap:wrap;gap:8px}",
    ".cxloop-reason{display:inline-flex;align-items:center;gap:8px;min-height:44px;",
    "padding:0 14px 0 10px;border:1px solid #80868f;border-radius:22px;background:#fff;cursor:pointer}",
    ".cxloop-reason:has(input:checked){border-color:#1d4ed8;background:#e3e9fb}",
    ".cxloop-reason input{flex:none;width:20px;height:20px;margin:0;accent-color:#1d4ed8}",
    ".cxloop-comment{display:block;width:100%;min-height:96px;margin:0 0 16px;padding:10px 12px;",
    "border:1px solid #80868f;border-radius:8px;background:#fff;color:inherit;font:inherit;",
    "word-break:normal;resize:vertical}",
    ".cxloop-submit{min-width:120px;min-height:48px;margin:0;padding:0 24px;border:0;border-radius:8px;",
    "background:#1d4ed8;color:#fff;font:inherit;font-weight:600;cursor:pointer}",
    ".cxloop-submit:hover{background:#1e40af}",
    ".cxloop-submit[aria-disabled=true]{cursor:progress}",
    ".cxloop-reason input:focus-visible,.cxloop-comment:focus-visible,.cxloop-submit:focus-visible",
    "{outline:3px solid #1d4ed8;outline-offset:2px}",
    ".cxloop-status{margin:12px 0 0}",
    ".cxloop-status:empty{display:none}",
    ".cxloop-status:focus{outline:none}",
    ".cxloop-thanks{margin:0;font-weight:600}",
    ".cxloop-error{color:#b91c1c}",
    "@media (forced-colors:active){.cxloop-score[aria-checked=true]{forced-color-adjust:none;",
    "background:Highlight;color:HighlightText}}"
  ].join("");

  function adoptStyles(shadow) {
    if (shadow.adoptedStyleSheets !== undefined && window.CSSStyleSheet &&
        CSSStyleSheet.prototype.replaceSync) {
      try {
        var sheet = new CSSStyleSheet();
        sheet.replaceSync(CSS);
        shadow.adoptedStyleSheets = [sheet];
        return;
      } catch (e) { /* an older engine: fall through to a <style> element */ }
    }
    var style = el("style");
    style.textContent = CSS;
    shadow.appendChild(style);
  }

  function plain(text) { return text.replace(/\|/g, ""); }

  // Text from the catalogue, with a <wbr> where it marks a break.
  function say(node, text) {
    node.textContent = "";
    text.split("|").forEach(function (part, i) {
      if (i) { node.appendChild(document.createElement("wbr")); }
      node.appendChild(document.createTextNode(part));
    });
    return node;
  }

  function el(tag, cls, text) {
    var node = document.createElement(tag);
    if (cls) { node.className = cls; }
    return text === undefined ? node : say(node, text);
  }

  var state = { score: null, sent: false, sending: false, eventId: uuid() };

  var host = document.createElement("cxloop-widget");
  host.setAttribute("lang", lang);
  var shadow = host.attachShadow({ mode: "open" });
  adoptStyles(shadow);

  var root = el("div", "cxloop-widget");
  root.setAttribute("lang", lang);
  root.setAttribute("role", "region");
  root.setAttribute("aria-label", plain(t[metric]));
  shadow.appendChild(root);

  var question = el("p", "cxloop-question", t[metric]);
  question.id = "cxloop-question";
  root.appendChild(question);

  // One radio per score, the chosen one (else the first) in the tab order.
  var scores = el("div", "cxloop-scores");
  scores.setAttribute("role", "radiogroup");
  scores.setAttribute("aria-labelledby", "cxloop-question");
  var radios = [];
  for (var s = low; s <= scale; s++) {
    var b = el("button", "cxloop-score", String(s));
    b.type = "button";
    b.setAttribute("role", "radio");
    b.setAttribute("aria-checked", "false");
    b.setAttribute("data-score", String(s));
    b.tabIndex = s === low ? 0 : -1;
    if (s === low) { b.setAttribute("aria-describedby", "cxloop-low"); }
    if (s === scale) { b.setAttribute("aria-describedby", "cxloop-high"); }
    // A button clicks on Enter and Space too: both choose.
    b.addEventListener("click", function (event) { choose(event.currentTarget); });
    radios.push(b);
    scores.appendChild(b);
  }
  var MOVES = { ArrowRight: 1, ArrowDown: 1, ArrowLeft: -1, ArrowUp: -1 };
  scores.addEventListener("keydown", function (event) {
    var at = radios.indexOf(event.target);
    if (at < 0 || event.altKey || event.ctrlKey || event.metaKey) { return; }
    var to = event.key === "Home" ? 0 : event.key === "End" ? radios.length - 1 :
      MOVES[event.key] ? (at + MOVES[event.key] + radios.length) % radios.length : null;
    if (to === null) { return; }
    event.preventDefault();
    radios[to].focus();
    choose(radios[to]);
  });
  root.appendChild(scores);

  var ends = el("div", "cxloop-ends");
  ends.setAttribute("aria-hidden", "true");
  var lowLabel = el("span", "cxloop-low", t.low[metric]);
  lowLabel.id = "cxloop-low";
  var highLabel = el("span", "cxloop-high", t.high[metric]);
  highLabel.id = "cxloop-high";
  ends.appendChild(lowLabel);
  ends.appendChild(highLabel);
  root.appendChild(ends);

  var form = el("div", "cxloop-form");
  form.hidden = true;
  var codes = (data.reasons || "").split(",").map(function (c) { return c.trim(); })
    .filter(Boolean);
  if (codes.length) {
    var reasons = el("fieldset", "cxloop-reasons");
    reasons.appendChild(el("legend", "cxloop-reasons-title", t.reasons));
    var list = el("div", "cxloop-reason-list");
    codes.forEach(function (code) {
      var label = el("label", "cxloop-reason");
      var box = el("input"); box.type = "checkbox"; box.value = code;
      label.appendChild(box);
      label.appendChild(el("span", "", REASONS[lang][code] || code.replace(/_/g, " ")));
      list.appendChild(label);
    });
    reasons.appendChild(list);
    form.appendChild(reasons);
  }
  var commentLabel = el("label", "cxloop-comment-label", t.comment);
  commentLabel.htmlFor = "cxloop-comment";
  form.appendChild(commentLabel);
  var comment = el("textarea", "cxloop-comment");
  comment.id = "cxloop-comment";
  comment.maxLength = 2000;
  comment.rows = 3;
  form.appendChild(comment);
  var submit = el("button", "cxloop-submit", t.send);
  submit.type = "button";
  submit.addEventListener("click", send);
  form.appendChild(submit);
  root.appendChild(form);
  var status = el("p", "cxloop-status");
  status.setAttribute("role", "status");
  status.setAttribute("aria-live", "polite");
  status.tabIndex = -1;
  root.appendChild(status);

  function choose(radio) {
    if (state.sent) { return; }
    state.score = parseInt(radio.getAttribute("data-score"), 10);
    radios.forEach(function (x) {
      x.setAttribute("aria-checked", String(x === radio));
      x.tabIndex = x === radio ? 0 : -1;
    });
    form.hidden = false;
  }

  function payload() {
    var reasons = Array.prototype.map.call(
      shadow.querySelectorAll(".cxloop-reason input:checked"), function (i) { return i.value; });
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
    var text = comment.value.trim();
    if (text) { body.comment = text; }
    return JSON.stringify(body);
  }

  function beacon() {
    if (!navigator.sendBeacon) { return false; }
    return navigator.sendBeacon(endpoint, new Blob([payload()], { type: "text/plain" }));
  }

  function finish(message, ok) {
    say(status, message);
    status.className = "cxloop-status " + (ok ? "cxloop-thanks" : "cxloop-error");
    state.sending = false;
    submit.removeAttribute("aria-disabled");
    if (!ok) { return; }
    state.sent = true;
    // The card becomes the thank-you; focus that was in it stays in it.
    var focused = shadow.activeElement !== null;
    [question, scores, ends, form].forEach(function (x) { x.hidden = true; });
    if (focused) { status.focus(); }
  }

  function send() {
    if (state.score === null || state.sent || state.sending) { return; }
    state.sending = true;
    submit.setAttribute("aria-disabled", "true");
    fetch(endpoint, {
      method: "POST", body: payload(), keepalive: true, mode: "cors",
      headers: { "Content-Type": "text/plain" }
    }).then(function (response) {
      finish(response.status === 202 ? t.thanks : t.failed, response.status === 202);
    }, function () {
      // The network failed: hand the answer to the browser, which retries it for us.
      if (beacon()) { finish(t.thanks, true); } else { finish(t.failed, false); }
    });
  }

  // A score chosen but not sent still counts: the browser delivers it as the page goes away.
  window.addEventListener("pagehide", function () {
    if (state.score !== null && !state.sent && beacon()) { state.sent = true; }
  });

  function mount() {
    var target = data.target ? document.querySelector(data.target) : null;
    (target || document.body).appendChild(host);
  }
  if (document.readyState === "loading") {
    document.addEventListener("DOMContentLoaded", mount);
  } else {
    mount();
  }
  window.cxloopWidget = { element: host, send: send };
})();
