/*
 * cxloop.js: the few helpers every page uses. Load it with <script src=".../cxloop.js" defer>.
 * CSP-safe: no eval, no inline handlers, no style attributes (widths go through CSSOM).
 * Every page works without it; it only makes pages nicer.
 *
 * On load (and again through cxloop.enhance(root) after inserting HTML):
 *   <time datetime="2024-05-01T09:30:00Z">            viewer's locale and time zone
 *        data-format="datetime" (default) | "date" | "time"
 *   <data class="num" value="1234.5">                 Intl.NumberFormat in the page's language
 *        data-decimals="1"  data-style="percent" (value is a fraction)  data-signed
 *   <span data-share="42.5">                          flex-basis 42.5% (NPS split bars)
 *   <form data-confirm="Really?"> / <button data-confirm="…">   asks before submitting
 *
 * cxloop.poll(url, intervalMs, onData, options?) fetches JSON every intervalMs, drives every
 * [data-live] indicator (data-state live|connecting|offline; text from data-label-<state>),
 * backs off while the server is unreachable (doubling up to options.maxIntervalMs, 60 s by
 * default) and recovers by itself. options.onError(error, failures) sees each failure; an
 * HTTP refusal carries error.status and error.redirected. Returns {stop(), now()}.
 *
 * The language is <html lang>.
 */
(function () {
  "use strict";

  var lang = document.documentElement.lang || "en";

  function each(root, selector, fn) {
    var scope = root || document;
    var nodes = scope.querySelectorAll(selector);
    for (var i = 0; i < nodes.length; i++) fn(nodes[i]);
    if (scope !== document && scope.matches && scope.matches(selector)) fn(scope);
  }

  var DATE_ONLY = /^\d{4}-\d{2}-\d{2}$/;
  var dateFormats = {
    datetime: { dateStyle: "medium", timeStyle: "short" },
    date: { dateStyle: "medium" },
    time: { timeStyle: "short" },
  };
  var full = { dateStyle: "full", timeStyle: "long" };

  function formatTimes(root) {
    each(root, "time[datetime]", function (el) {
      var value = el.getAttribute("datetime");
      var dateOnly = DATE_ONLY.test(value);
      var when = new Date(dateOnly ? value + "T00:00:00Z" : value);
      if (isNaN(when.getTime())) return;
      var kind = dateOnly ? "date" : el.dataset.format || "datetime";
      var options = Object.assign({}, dateFormats[kind] || dateFormats.datetime);
      // A calendar day is the same day everywhere: do not shift it into the viewer's zone.
      if (dateOnly) options.timeZone = "UTC";
      try {
        el.textContent = new Intl.DateTimeFormat(lang, options).format(when);
        if (!dateOnly && !el.title) el.title = new Intl.DateTimeFormat(lang, full).format(when);
      } catch (e) {
        /* keep the server's text */
      }
    });
  }

  function formatNumbers(root) {
    each(root, "data.num[value]", function (el) {
      var value = Number(el.getAttribute("value"));
      if (!isFinite(value)) return;
      var options = {};
      var decimals = el.dataset.decimals;
      if (decimals !== undefined) {
        options.minimumFractionDigits = Number(decimals);
        options.maximumFractionDigits = Number(decimals);
      }
      if (el.dataset.style === "percent") options.style = "percent";
      if (el.hasAttribute("data-signed")) options.signDisplay = "exceptZero";
      try {
        el.textContent = new Intl.NumberFormat(lang, options).format(value);
      } catch (e) {
        /* keep the server's text */
      }
    });
  }

  function applyShares(root) {
    each(root, "[data-share]", function (el) {
      var share = Number(el.dataset.share);
      if (isFinite(share)) el.style.flexBasis = Math.max(0, Math.min(100, share)) + "%";
    });
  }

  function setLive(state) {
    each(document, "[data-live]", function (el) {
      el.dataset.state = state;
      var label = el.getAttribute("data-label-" + state);
      if (label) el.textContent = label;
    });
  }

  function poll(url, intervalMs, onData, options) {
    options = options || {};
    var maxInterval = options.maxIntervalMs || 60000;
    var timeoutMs = options.timeoutMs || Math.max(5000, Math.min(intervalMs, 30000));
    var failures = 0;
    var timer = null;
    var inFlight = false;
    var stopped = false;

    function schedule(delay) {
      clearTimeout(timer);
      if (!stopped) timer = setTimeout(tick, delay);
    }

    function backoff() {
      var delay = Math.min(maxInterval, intervalMs * Math.pow(2, failures));
      return Math.round(delay * (0.8 + Math.random() * 0.4));
    }

    function tick() {
      if (stopped || inFlight) return;
      if (document.hidden) return; // resumed by visibilitychange
      inFlight = true;
      var controller = new AbortController();
      var abort = setTimeout(function () { controller.abort(); }, timeoutMs);
      fetch(url, {
        credentials: "same-origin",
        headers: { Accept: "application/json" },
        cache: "no-store",
        signal: controller.signal,
      })
        .then(function (response) {
          if (!response.ok || response.redirected) {
            // A redirect is the sign-in page answering for an ended session.
            var refused = new Error("HTTP " + response.status);
            refused.status = response.status;
            refused.redirected = response.redirected;
            throw refused;
          }
          return response.json();
        })
        .then(function (data) {
          failures = 0;
          setLive("live");
          onData(data);
          schedule(intervalMs);
        })
        .catch(function (error) {
          failures += 1;
          setLive("offline");
          if (options.onError) options.onError(error, failures);
          schedule(backoff());
        })
        .finally(function () {
          clearTimeout(abort);
          inFlight = false;
        });
    }

    function now() {
      if (!stopped) { clearTimeout(timer); tick(); }
    }
    function onVisible() { if (!document.hidden) now(); }
    function onOnline() { setLive("connecting"); now(); }
    function onOffline() { setLive("offline"); }

    document.addEventListener("visibilitychange", onVisible);
    window.addEventListener("online", onOnline);
    window.addEventListener("offline", onOffline);
    setLive("connecting");
    tick();
    return {
      now: now,
      stop: function () {
        stopped = true;
        clearTimeout(timer);
        document.removeEventListener("visibilitychange", onVisible);
        window.removeEventListener("online", onOnline);
        window.removeEventListener("offline", onOffline);
      },
    };
  }

  // Asks before a destructive submit. Without JavaScript the form simply submits.
  document.addEventListener("submit", function (event) {
    var form = event.target;
    var submitter = event.submitter;
    var question =
      (submitter && submitter.getAttribute("data-confirm")) || form.getAttribute("data-confirm");
    if (question && !window.confirm(question)) event.preventDefault();
  });

  function enhance(root) {
    formatTimes(root);
    formatNumbers(root);
    applyShares(root);
  }

  window.cxloop = {
    lang: lang,
    enhance: enhance,
    formatTimes: formatTimes,
    formatNumbers: formatNumbers,
    setLive: setLive,
    poll: poll,
  };

  if (document.readyState === "loading") {
    document.addEventListener("DOMContentLoaded", function () { enhance(document); });
  } else {
    enhance(document);
  }
})();
