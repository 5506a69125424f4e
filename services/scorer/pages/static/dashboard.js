/*
 * dashboard.js: the dashboard's charts and live updates. Everything it draws is also on the
 * page without it (tables under each chart, the server-rendered tiles and answers).
 *
 *  - .chart[data-chart="<id>"]: draws the JSON in <script type="application/json" id="<id>">
 *    with uPlot: the score, its 95% margin as a band, points on too few answers marked, and
 *    the answers per interval as bars beneath; both resize with their container.
 *  - #dash-live (JSON: url, cursor, can_read, every_ms, keep, texts): polls /dashboard/live
 *    with cxloop.poll (the live/offline indicator; it backs off and recovers by itself),
 *    prepends new answers to #latest-list, dropping repeats by event id, and asks for the
 *    tiles (tiles=1, else tiles=0) only on the poll after new answers arrived, or when they
 *    are TILES_EVERY_MS old. A refusal (4xx) stops polling, showing offline; 401, 403 or a
 *    redirect (the session ended) reloads the page, which the sign-in gate answers.
 *  - input[data-fill-timezone]: set to the viewer's time zone, so custom dates mean their days.
 *
 * Data only ever reaches the DOM through textContent and attributes: never innerHTML.
 */
(function () {
  "use strict";

  var lang = document.documentElement.lang || "en";
  // Without new answers the tiles are refreshed this often at most (each is 3 queries).
  var TILES_EVERY_MS = 30000;

  function readJson(id) {
    var node = document.getElementById(id);
    if (!node) return null;
    try {
      return JSON.parse(node.textContent);
    } catch (e) {
      return null;
    }
  }

  function css(name, fallback) {
    var value = getComputedStyle(document.documentElement).getPropertyValue(name).trim();
    return value || fallback;
  }

  // ---- Time zone for custom dates ----------------------------------------------------------

  function fillTimeZones() {
    var zone;
    try {
      zone = Intl.DateTimeFormat().resolvedOptions().timeZone;
    } catch (e) {
      return;
    }
    if (!zone) return;
    document.querySelectorAll("input[data-fill-timezone]").forEach(function (input) {
      input.value = zone;
    });
  }

  // ---- Charts ------------------------------------------------------------------------------

  function numberFormat(decimals) {
    var format = new Intl.NumberFormat(lang, {
      minimumFractionDigits: decimals,
      maximumFractionDigits: decimals,
    });
    var scale = Math.pow(10, decimals);
    // A value that rounds to zero is written 0, never -0.
    return { format: function (v) { return format.format(Math.round(v * scale) === 0 ? 0 : v); } };
  }

  function dateFormat(interval) {
    // Hours are labelled in the viewer's zone; days and weeks are UTC buckets, labelled so.
    if (interval === "hour") {
      return new Intl.DateTimeFormat(lang, { hour: "numeric", minute: "2-digit" });
    }
    return new Intl.DateTimeFormat(lang, { month: "short", day: "numeric", timeZone: "UTC" });
  }

  function drawChart(container) {
    if (typeof window.uPlot !== "function") return;
    var data = readJson(container.getAttribute("data-chart"));
    if (!data || !data.t || !data.t.length) return;
    var accent = css("--accent", "#0a58a8");
    var muted = css("--text-muted", "#535b66");
    var border = css("--border", "#d0d7de");
    var font = "12px " + getComputedStyle(document.body).fontFamily;
    var scoreFormat = numberFormat(data.decimals);
    var axisFormat = numberFormat(data.axis_decimals);
    var countFormat = numberFormat(0);
    var days = dateFormat(data.interval);
    var sync = window.uPlot.sync("dash-" + container.getAttribute("data-chart"));
    var few = data.t.map(function (_, i) { return data.few[i] ? data.score[i] : null; });
    var drawnN = data.n.map(function (n) { return n ? n : null; });
    // Half an interval of room at each end, so the first and last day are drawn whole.
    var step = data.t.length > 1 ? data.t[1] - data.t[0] : 86400;
    var xRange = [data.t[0] - step / 2, data.t[data.t.length - 1] + step / 2];
    // Without a pointer over it, the legend shows the latest interval with answers.
    var latest = data.t.length - 1;
    while (latest > 0 && data.score[latest] == null) latest--;
    function showLatest(u) {
      if (u.cursor.idx == null) u.setLegend({ idx: latest });
    }

    function show(format) {
      return function (u, value) { return value == null ? "—" : format.format(value); };
    }
    function xAxis(size) {
      return {
        stroke: muted,
        font: font,
        size: size,
        // Room for a label such as "11月11日" or "Nov 11" between ticks.
        space: 72,
        grid: { stroke: border, width: 1 },
        ticks: { stroke: border, width: 1 },
        values: function (u, splits) {
          return splits.map(function (s) { return days.format(new Date(s * 1000)); });
        },
      };
    }
    function width() {
      return Math.max(200, Math.floor(container.clientWidth));
    }

    function bandText(u, v, si, i) {
      if (i == null || data.lo[i] == null) return "—";
      return scoreFormat.format(data.lo[i]) + " – " + scoreFormat.format(data.hi[i]);
    }
    var bandStroke = "rgba(10, 88, 168, 0.35)";

    var main = new window.uPlot(
      {
        width: width(),
        height: 200,
        cursor: { sync: { key: sync.key }, points: { size: 7 } },
        hooks: { ready: [showLatest], setCursor: [showLatest] },
        scales: {
          x: { time: true, range: function () { return xRange; } },
          y: {
            range: function (u, lo, hi) {
              var pad = Math.max(1, (hi - lo) * 0.1);
              return [Math.max(data.min, lo - pad), Math.min(data.max, hi + pad)];
            },
          },
          n: { range: function (u, lo, hi) { return [0, Math.max(1, hi)]; } },
        },
        legend: { live: true },
        series: [
          { label: data.labels.x, value: function (u, v) { return v == null ? "—" : days.format(new Date(v * 1000)); } },
          {
            label: data.labels.score,
            stroke: accent,
            width: 2,
            spanGaps: false,
            points: { show: true, size: 5, fill: accent },
            value: show(scoreFormat),
          },
          // The band's edges: the legend shows both in the first (the second's row is hidden).
          { label: data.labels.band, stroke: bandStroke, width: 1, dash: [4, 4], points: { show: false }, value: bandText },
          { label: data.labels.band, stroke: bandStroke, width: 1, dash: [4, 4], points: { show: false }, value: bandText },
          {
            label: data.labels.few,
            stroke: css("--warning", "#7a4a00"),
            width: 0,
            paths: function () { return null; },
            points: { show: true, size: 8, width: 2, fill: "#ffffff" },
            value: show(scoreFormat),
          },
          // Answers per interval: drawn in the chart below, shown in this legend.
          {
            label: data.labels.n,
            scale: "n",
            stroke: muted,
            width: 0,
            paths: function () { return null; },
            points: { show: false },
            value: show(countFormat),
          },
        ],
        bands: [{ series: [3, 2], fill: "rgba(10, 88, 168, 0.14)" }],
        axes: [
          xAxis(32),
          {
            stroke: muted,
            font: font,
            size: 48,
            grid: { stroke: border, width: 1 },
            ticks: { stroke: border, width: 1 },
            values: function (u, splits) {
              return splits.map(function (v) { return axisFormat.format(v); });
            },
          },
        ],
      },
      [data.t, data.score, data.lo, data.hi, few, data.n],
      container
    );

    var volumeBox = document.createElement("div");
    volumeBox.className = "chart-volume";
    container.appendChild(volumeBox);
    var bars = window.uPlot.paths && window.uPlot.paths.bars ? window.uPlot.paths.bars({ size: [0.6, 40] }) : null;
    var volume = new window.uPlot(
      {
        width: width(),
        height: 80,
        cursor: { sync: { key: sync.key }, points: { show: false } },
        scales: {
          x: { time: true, range: function () { return xRange; } },
          y: { range: function (u, lo, hi) { return [0, Math.max(1, hi)]; } },
        },
        legend: { show: false },
        series: [
          {},
          {
            label: data.labels.n,
            stroke: muted,
            fill: "rgba(83, 91, 102, 0.35)",
            width: 1,
            paths: bars || undefined,
            points: { show: false },
          },
        ],
        axes: [
          xAxis(28),
          {
            stroke: muted,
            font: font,
            size: 48,
            ticks: { stroke: border, width: 1 },
            grid: { show: false },
            splits: function (u) { return [0, u.scales.y.max]; },
            values: function (u, splits) {
              return splits.map(function (v) { return countFormat.format(v); });
            },
          },
        ],
      },
      [data.t, drawnN],
      volumeBox
    );

    if (typeof ResizeObserver === "function") {
      var last = width();
      new ResizeObserver(function () {
        var now = width();
        if (now === last) return;
        last = now;
        main.setSize({ width: now, height: 200 });
        volume.setSize({ width: now, height: 80 });
      }).observe(container);
    }
  }

  function drawCharts() {
    document.querySelectorAll(".chart[data-chart]").forEach(function (container) {
      try {
        drawChart(container);
      } catch (e) {
        // The table under the chart still has every number.
        container.hidden = true;
      }
    });
  }

  // ---- Live updates ------------------------------------------------------------------------

  function element(tag, className, text) {
    var node = document.createElement(tag);
    if (className) node.className = className;
    if (text != null) node.textContent = text;
    return node;
  }

  function setNumber(node, value) {
    if (!node) return;
    if (value == null) {
      node.removeAttribute("value");
      node.textContent = "—";
      return;
    }
    node.setAttribute("value", String(value));
    node.textContent = String(value);
    if (window.cxloop) window.cxloop.formatNumbers(node);
  }

  function updateTile(score) {
    var tile = document.getElementById("tile-" + score.key);
    if (!tile) return;
    var field = function (name) { return tile.querySelector('[data-field="' + name + '"]'); };
    setNumber(field("score"), score.score);
    setNumber(field("margin"), score.margin);
    setNumber(field("n"), score.n);
    setNumber(field("delta"), score.delta);
    setNumber(field("previous_n"), score.previous_n);
    tile.classList.toggle("is-insufficient", !!score.insufficient);
    var insufficient = tile.querySelector('[data-flag="insufficient"]');
    if (insufficient) insufficient.hidden = !score.insufficient;
    var margin = tile.querySelector('[data-flag="margin"]');
    if (margin) margin.hidden = score.margin == null;
    var noMargin = tile.querySelector('[data-flag="no-margin"]');
    if (noMargin) noMargin.hidden = score.margin != null;
    var compared = tile.querySelector('[data-flag="compared"]');
    if (compared) compared.hidden = score.delta == null;
    var uncompared = tile.querySelector('[data-flag="uncompared"]');
    if (uncompared) uncompared.hidden = score.delta != null;
    var significant = tile.querySelector('[data-flag="significant"]');
    if (significant) significant.hidden = !score.significant;
    var change = tile.querySelector(".tile-change");
    if (change) {
      if (score.significant) change.setAttribute("data-trend", score.delta > 0 ? "up" : "down");
      else change.removeAttribute("data-trend");
    }
    var split = score.split;
    if (split) {
      var x = 0;
      ["promoters", "passives", "detractors"].forEach(function (part) {
        var share = split[part.replace(/s$/, "") + "_share"];
        var rect = tile.querySelector('rect[data-part="' + part + '"]');
        if (rect) {
          rect.setAttribute("x", String(x));
          rect.setAttribute("width", String(share));
        }
        x += share;
        setNumber(field(part + "_share"), share);
        setNumber(field(part), split[part]);
      });
    }
  }

  function card(answer, texts) {
    var item = element("li", "answer is-new");
    item.setAttribute("data-event-id", answer.event_id);
    var head = element("div", "answer-head");
    head.appendChild(element("span", "badge badge-" + answer.category, answer.score_text));
    head.appendChild(element("span", "answer-where", answer.where));
    var time = element("time", "answer-time", answer.occurred_text);
    time.setAttribute("datetime", answer.occurred_at);
    head.appendChild(time);
    item.appendChild(head);
    if (answer.comment) {
      var comment = element("p", "comment", answer.comment);
      comment.setAttribute("dir", "auto");
      if (answer.lang) comment.setAttribute("lang", answer.lang);
      item.appendChild(comment);
    } else {
      item.appendChild(element("p", "comment comment-none", texts.no_comment));
    }
    if (answer.reasons && answer.reasons.length) {
      var reasons = element("ul", "reasons");
      reasons.setAttribute("aria-label", texts.reasons);
      answer.reasons.forEach(function (reason) { reasons.appendChild(element("li", null, reason)); });
      item.appendChild(reasons);
    }
    if (answer.customer_url && answer.customer_url.indexOf("/dashboard/customers/") === 0) {
      var link = element("a", "answer-customer", answer.customer_text);
      link.setAttribute("href", answer.customer_url);
      item.appendChild(link);
    }
    return item;
  }

  function startLive() {
    var config = readJson("dash-live");
    if (!config || !window.cxloop || typeof window.cxloop.poll !== "function") return;
    var cursor = config.cursor;
    var list = document.getElementById("latest-list");
    var empty = document.getElementById("latest-empty");
    var status = document.getElementById("latest-status");
    // Every answer stored before the page was made (more than it shows): a later poll that
    // repeats one of them does not bring it back as new.
    var seen = new Set(config.seen || []);
    if (list) {
      list.querySelectorAll("li[data-event-id]").forEach(function (li) {
        seen.add(li.getAttribute("data-event-id"));
      });
    }
    // The tiles were drawn with the page; they are asked for again after new answers.
    var tilesAt = Date.now();
    var tilesDue = false;
    // cxloop.poll fetches String(source) each time: the cursor moves on with every answer.
    var source = {
      toString: function () {
        var url = new URL(config.url, window.location.href);
        if (cursor) url.searchParams.set("cursor", cursor);
        var due = tilesDue || Date.now() - tilesAt >= TILES_EVERY_MS;
        url.searchParams.set("tiles", due ? "1" : "0");
        return url.pathname + url.search;
      },
    };

    function onData(data) {
      if (data.scores) {
        data.scores.forEach(updateTile);
        tilesAt = Date.now();
        tilesDue = false;
      }
      if (data.cursor) cursor = data.cursor;
      if (!list || !data.items) return;
      var added = 0;
      for (var i = data.items.length - 1; i >= 0; i--) {
        var answer = data.items[i];
        if (seen.has(answer.event_id)) continue;
        seen.add(answer.event_id);
        var node = card(answer, config);
        list.insertBefore(node, list.firstChild);
        if (window.cxloop) window.cxloop.formatTimes(node);
        added += 1;
      }
      while (list.children.length > config.keep) list.removeChild(list.lastChild);
      if (added) {
        tilesDue = true;
        if (empty) empty.hidden = true;
        if (status) {
          status.textContent = added === 1 ? config.new_one : config.new_many.replace("{count}", String(added));
        }
      }
    }

    var polling = window.cxloop.poll(source, config.every_ms || 1000, onData, {
      onError: function (error) {
        var status = error && error.status;
        if (error && (error.redirected || status === 401 || status === 403)) {
          polling.stop();
          window.location.reload();
        } else if (status === 422) {
          // The server refuses this URL (a parameter it cannot use): asking again cannot help.
          // Any other status (429, a proxy's 404 during a deploy) is retried with backoff.
          polling.stop();
          window.cxloop.setLive("offline");
        }
      },
    });
  }

  function start() {
    fillTimeZones();
    drawCharts();
    startLive();
  }

  if (document.readyState === "loading") document.addEventListener("DOMContentLoaded", start);
  else start();
})();
