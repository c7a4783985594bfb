"""The stylesheet and the small script inlined into the HTML report (no CDN, no network).

The chart itself is SVG written by :mod:`vramguard.reporters.html`, so it shows even with
scripts off; the script only adds a hover read-out and marks the document once the browser has
laid the chart out (``<html data-chart="drawn">``), which the headless-browser test reads.
"""

CSS = """
:root { --fg: #1d2330; --muted: #5b6475; --line: #d8dde6; --leak: #c62828; --ok: #2e7d32;
        --warn: #b26a00; --series: #1f5fbf; --trend: #c62828; }
* { box-sizing: border-box; }
body { font: 15px/1.45 system-ui, -apple-system, "Segoe UI", sans-serif; color: var(--fg);
       margin: 0 auto; max-width: 980px; padding: 24px; }
@media (max-width: 560px) { body { padding: 12px; } dl.facts { grid-template-columns: 1fr; } }
h1 { font-size: 22px; margin: 0 0 4px; }
h2 { font-size: 17px; margin: 28px 0 8px; border-bottom: 1px solid var(--line); }
.verdict { display: inline-block; padding: 2px 10px; border-radius: 4px; color: #fff;
           font-weight: 600; text-transform: uppercase; letter-spacing: .03em; }
.verdict.leak, .verdict.non_torch_growth { background: var(--leak); }
.verdict.no_leak { background: var(--ok); }
.verdict.inconclusive, .verdict.cache_growth, .verdict.fragmentation { background: var(--warn); }
.muted { color: var(--muted); }
dl.facts { display: grid; grid-template-columns: max-content minmax(0, 1fr); gap: 2px 16px;
           margin: 12px 0; }
dl.facts dt { color: var(--muted); }
/* Long paths and reference chains have no spaces to break at: let them wrap anywhere rather than
   push the card wider than a phone's screen. */
dl.facts dd { margin: 0; min-width: 0; overflow-wrap: anywhere; }
h3, .fix, .suspect p, #readout { overflow-wrap: anywhere; }
code { overflow-wrap: anywhere; background: #f1f3f6; padding: 0 3px; border-radius: 3px; }
figure { margin: 0; }
svg.chart { width: 100%; height: auto; border: 1px solid var(--line); border-radius: 4px; }
svg .axis { stroke: #8a93a3; stroke-width: 1; }
svg .grid { stroke: #eef0f4; stroke-width: 1; }
svg .tick { font-size: 11px; fill: var(--muted); }
svg .series { fill: none; stroke: var(--series); stroke-width: 3; stroke-linejoin: round; }
svg .reserved { fill: none; stroke: #8e7cc3; stroke-width: 1.2; stroke-dasharray: 2 3; }
/* Drawn after the series, thinner and dashed: where the fit coincides with the data both show
   (red dashes inside the blue line), where they part the dashes stand alone. */
svg .trend { stroke: var(--trend); stroke-width: 1.6; stroke-dasharray: 7 5; }
svg .warmup { fill: #f3e9c6; opacity: .7; }
svg .detect { stroke: var(--leak); stroke-width: 1.2; }
svg .detect-dot { fill: var(--leak); }
svg .label { font-size: 12px; fill: var(--fg); }
svg .hover { fill: var(--series); }
.legend { display: flex; gap: 18px; flex-wrap: wrap; font-size: 13px; color: var(--muted);
          margin: 6px 0 0; }
.legend span::before { content: ""; display: inline-block; width: 18px; height: 0;
                       vertical-align: middle; margin-right: 6px; border-top: 2px solid; }
.legend .l-series::before { border-color: var(--series); }
.legend .l-trend::before { border-color: var(--trend); border-top-style: dashed; }
.legend .l-warmup::before { border-top: 10px solid #f3e9c6; }
.legend .l-detect::before { border-color: var(--leak); width: 2px; height: 12px;
                            border-top: 0; border-left: 2px solid var(--leak); }
#readout { font-size: 13px; min-height: 1.4em; color: var(--muted); }
.suspect { border: 1px solid var(--line); border-radius: 6px; padding: 10px 14px; margin: 10px 0; }
.suspect h3 { font-size: 15px; margin: 0 0 6px; }
.cause { display: inline-block; font-size: 12px; padding: 1px 8px; border-radius: 10px;
         background: #fde7e7; color: var(--leak); margin-left: 6px; }
.fix { background: #eef7ee; border-left: 3px solid var(--ok); padding: 6px 10px; margin: 6px 0; }
code, pre { font: 13px/1.4 ui-monospace, SFMono-Regular, Menlo, Consolas, monospace; }
pre { background: #f6f7f9; padding: 8px; overflow-x: auto; margin: 4px 0; }
ul.warnings li { color: var(--warn); }
"""

SCRIPT = """
(function () {
  "use strict";
  var data = JSON.parse(document.getElementById("vg-data").textContent);
  var svg = document.getElementById("chart");
  var series = svg.querySelector(".series");
  var readout = document.getElementById("readout");
  var dot = svg.querySelector(".hover");
  function fmt(bytes) {
    var units = ["B", "KiB", "MiB", "GiB", "TiB"], v = Math.abs(bytes), i = 0;
    while (v >= 1024 && i < units.length - 1) { v /= 1024; i++; }
    return (bytes < 0 ? "-" : "") + (i ? v.toFixed(1) : v.toFixed(0)) + " " + units[i];
  }
  svg.addEventListener("mousemove", function (event) {
    if (!data.points.length) { return; }
    var box = svg.getBoundingClientRect();
    var x = (event.clientX - box.left) / box.width * data.view.width;
    var request = data.x0 + (x - data.view.left) / data.view.plotWidth * (data.x1 - data.x0);
    var best = data.points[0];
    for (var i = 1; i < data.points.length; i++) {
      if (Math.abs(data.points[i][0] - request) < Math.abs(best[0] - request)) { best = data.points[i]; }
    }
    dot.setAttribute("cx", best[2]);
    dot.setAttribute("cy", best[3]);
    dot.setAttribute("r", 4);
    readout.textContent = "request " + best[0] + ": " + fmt(best[1]) + " allocated";
  });
  // Mark the document once the browser has laid the chart out: a series with a real length.
  var drawn = series !== null && series.getTotalLength() > 0 && series.getBBox().width > 0;
  document.documentElement.setAttribute("data-chart", drawn ? "drawn" : "empty");
  document.documentElement.setAttribute("data-points", String(data.points.length));
})();
"""
