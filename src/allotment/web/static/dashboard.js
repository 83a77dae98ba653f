// Allotment's dashboard: the little script its pages use. Every table works without it; it
// shows times in the viewer's time zone and draws the plots (Chart.js, vendored beside it).
(function () {
  "use strict";
  var zone = "";
  try { zone = Intl.DateTimeFormat().resolvedOptions().timeZone || ""; } catch (e) { /* keep the site's */ }
  var format = new Intl.DateTimeFormat(undefined, {
    year: "numeric", month: "2-digit", day: "2-digit", hour: "2-digit", minute: "2-digit",
    timeZoneName: "short"
  });
  document.querySelectorAll("time[datetime]").forEach(function (el) {
    var t = new Date(el.getAttribute("datetime"));
    if (!isNaN(t)) {
      el.title = el.textContent + " (site time)";
      el.textContent = format.format(t);
      el.dataset.zone = zone;
    }
  });
  if (typeof Chart === "undefined") { return; }
  var palette = ["#2f6db5", "#e07b39", "#3a9b5c", "#c2413b", "#7b5fb5", "#8c6d3f", "#d16fb2",
                 "#6f6f6f", "#a8a838", "#2aa6b8", "#1f3f73", "#b35900", "#555555"];
  document.querySelectorAll("script[data-chart]").forEach(function (el) {
    var canvas = document.getElementById(el.dataset.chart);
    if (!canvas) { return; }
    var config = JSON.parse(el.textContent);
    config.data.datasets.forEach(function (d, i) {
      var c = palette[i % palette.length];
      d.backgroundColor = d.backgroundColor || c;
      d.borderColor = d.borderColor || c;
      d.pointRadius = d.pointRadius === undefined ? 0 : d.pointRadius;
    });
    new Chart(canvas, config);
  });
}());
