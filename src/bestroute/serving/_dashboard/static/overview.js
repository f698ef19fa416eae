// The overview's charts: the traffic and its cost per time bucket, drawn with uPlot from the
// series the page carries (no request of its own).
"use strict";
(function () {
  const series = JSON.parse(document.getElementById("series").textContent);
  const width = () => Math.min(1100, document.querySelector("main").clientWidth - 20);
  const chart = (id, title, lines, data, axes) => {
    const element = document.getElementById(id);
    const options = {
      title: title,
      width: width(),
      height: 240,
      series: [{}].concat(lines),
      axes: [{}, { size: 70 }].concat(axes || []),
    };
    const plot = new uPlot(options, [series.t].concat(data), element);
    window.addEventListener("resize", () => plot.setSize({ width: width(), height: 240 }));
    element.dataset.drawn = "true";
  };
  chart(
    "chart-traffic",
    "Requests per bucket",
    [
      { label: "requests", stroke: "#2a6fdb", width: 2 },
      { label: "errors", stroke: "#d43d3d", width: 2 },
      { label: "escalated", stroke: "#e69b00", width: 2 },
    ],
    [series.requests, series.errors, series.escalated]
  );
  chart(
    "chart-cost",
    "Cost ($) and mean latency (ms) per bucket",
    [
      { label: "cost ($)", stroke: "#1c8a4a", width: 2, value: (u, v) => (v == null ? "—" : "$" + v.toFixed(4)) },
      { label: "mean latency (ms)", stroke: "#7a4cc2", width: 1, scale: "ms" },
    ],
    [series.cost, series.latency],
    [{ scale: "ms", side: 1, size: 60, grid: { show: false } }]
  );
})();
