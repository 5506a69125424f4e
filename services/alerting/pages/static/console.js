/*
 * The on-call console's script. The pages work without it; with it:
 *   - the queue stays live: /console/live (JSON: a signature of the rows and counts) is
 *     polled every second through cxloop.poll, which shows live/offline and recovers by
 *     itself; when the signature changes, the queue's region is fetched again as HTML the
 *     server rendered (/console/queue, same filters) and swapped in. New rows are marked
 *     and announced. Nothing is built from data with innerHTML: the server escaped the
 *     fragment, DOMParser parses it inert (no script runs), and the nodes are adopted.
 *   - ages (<time data-format="age">) read "5 minutes ago" in the page's language.
 *   - the filters fold away on a narrow screen.
 *   - a session that ended (the poll is redirected to /signin) reloads the page.
 * CSP-safe: no inline script or style, no eval.
 */
(function () {
  "use strict";

  var cx = window.cxloop;
  var lang = document.documentElement.lang || "en";
  var UNITS = [
    ["year", 365 * 86400],
    ["month", 30 * 86400],
    ["week", 7 * 86400],
    ["day", 86400],
    ["hour", 3600],
    ["minute", 60],
    ["second", 1],
  ];

  function formatAges(root) {
    if (!window.Intl || !Intl.RelativeTimeFormat) return;
    var rtf = new Intl.RelativeTimeFormat(lang, { numeric: "auto", style: "long" });
    var nodes = (root || document).querySelectorAll('time[data-format="age"][datetime]');
    var now = Date.now();
    for (var i = 0; i < nodes.length; i++) {
      var when = new Date(nodes[i].getAttribute("datetime"));
      if (isNaN(when.getTime())) continue;
      var seconds = Math.round((when.getTime() - now) / 1000);
      var unit = "second";
      var size = 1;
      for (var u = 0; u < UNITS.length; u++) {
        if (Math.abs(seconds) >= UNITS[u][1]) {
          unit = UNITS[u][0];
          size = UNITS[u][1];
          break;
        }
      }
      nodes[i].textContent = rtf.format(Math.round(seconds / size), unit);
    }
  }

  function rowIds(region) {
    var ids = {};
    var rows = region.querySelectorAll("tr[data-id]");
    for (var i = 0; i < rows.length; i++) ids[rows[i].getAttribute("data-id")] = true;
    return ids;
  }

  function announce(count) {
    var news = document.getElementById("live-news");
    if (!news || count < 1) return;
    var text = count === 1 ? news.getAttribute("data-one") : news.getAttribute("data-many");
    news.textContent = (text || "").replace("{n}", String(count));
  }

  function foldFacets(root) {
    var facets = (root || document).querySelector("details.facets");
    if (facets && window.matchMedia("(max-width: 1023px)").matches) facets.open = false;
  }

  // Put the fresh region in place of the old, keeping what the viewer was doing.
  function swap(region, fresh) {
    var before = rowIds(region);
    var oldFacets = region.querySelector("details.facets");
    var newFacets = fresh.querySelector("details.facets");
    if (oldFacets && newFacets) newFacets.open = oldFacets.open;
    var focused = document.activeElement;
    var focusHref =
      focused && region.contains(focused) && focused.getAttribute
        ? focused.getAttribute("href")
        : null;
    var scroller = region.querySelector(".table-scroll");
    var scrollLeft = scroller ? scroller.scrollLeft : 0;

    region.replaceWith(fresh);

    var arrived = 0;
    var rows = fresh.querySelectorAll("tr[data-id]");
    for (var i = 0; i < rows.length; i++) {
      if (!before[rows[i].getAttribute("data-id")]) {
        rows[i].classList.add("is-new");
        arrived += 1;
      }
    }
    var newScroller = fresh.querySelector(".table-scroll");
    if (newScroller) newScroller.scrollLeft = scrollLeft;
    if (focusHref) {
      var links = fresh.querySelectorAll("a[href]");
      for (var j = 0; j < links.length; j++) {
        if (links[j].getAttribute("href") === focusHref) {
          links[j].focus();
          break;
        }
      }
    }
    cx.enhance(fresh);
    formatAges(fresh);
    announce(arrived);
  }

  // A session that ended answers the poll with a redirect to /signin: reload, so the
  // viewer sees the sign-in page (and comes back here) rather than "offline" for ever.
  function signedOut(url) {
    fetch(url, { credentials: "same-origin", redirect: "manual", cache: "no-store" })
      .then(function (response) {
        if (response.type === "opaqueredirect") window.location.reload();
      })
      .catch(function () {
        /* really offline */
      });
  }

  function startLive(region) {
    var fetching = false;
    var offline = document.getElementById("offline-note");
    var indicators = document.querySelectorAll("[data-live]");
    for (var i = 0; i < indicators.length; i++) indicators[i].hidden = false;

    function refresh(signature) {
      var current = document.getElementById("queue-region");
      if (fetching || !current || current.getAttribute("data-signature") === signature) return;
      fetching = true;
      fetch(current.getAttribute("data-fragment-url"), {
        credentials: "same-origin",
        headers: { Accept: "text/html" },
        cache: "no-store",
      })
        .then(function (response) {
          if (!response.ok) throw new Error("HTTP " + response.status);
          return response.text();
        })
        .then(function (html) {
          var parsed = new DOMParser().parseFromString(html, "text/html");
          var fresh = parsed.getElementById("queue-region");
          var now = document.getElementById("queue-region");
          if (fresh && now) swap(now, document.adoptNode(fresh));
        })
        .catch(function () {
          /* the next poll tries again */
        })
        .finally(function () {
          fetching = false;
        });
    }

    cx.poll(
      region.getAttribute("data-live-url"),
      1000,
      function (data) {
        if (offline) offline.hidden = true;
        if (data && typeof data.signature === "string") refresh(data.signature);
      },
      {
        maxIntervalMs: 15000,
        onError: function () {
          if (offline) offline.hidden = false;
          signedOut(region.getAttribute("data-live-url"));
        },
      }
    );
  }

  function start() {
    formatAges(document);
    setInterval(function () {
      formatAges(document);
    }, 30000);
    foldFacets(document);
    var region = document.getElementById("queue-region");
    if (region && cx && cx.poll) startLive(region);
  }

  if (document.readyState === "loading") {
    document.addEventListener("DOMContentLoaded", start);
  } else {
    start();
  }
})();
