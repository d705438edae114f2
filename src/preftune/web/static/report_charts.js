// Draws the charts of a self-contained run report from the JSON inlined in the page.
(function () {
  "use strict";
  const data = JSON.parse(document.getElementById("report-data").textContent);
  data.forEach(function (chart) {
    const traces = chart.series.map(function (s) {
      return {
        x: s.x, y: s.y, name: s.name, type: "scatter", mode: s.x.length > 30 ? "lines" : "lines+markers",
        line: { dash: s.name.indexOf("eval/") === 0 ? "dot" : "solid" },
      };
    });
    Plotly.newPlot(document.getElementById("chart-" + chart.id), traces, {
      height: 280, margin: { l: 55, r: 10, t: 10, b: 45 }, showlegend: true,
      legend: { orientation: "h", y: -0.3, font: { size: 11 } },
      xaxis: { title: { text: chart.x_title } },
    }, { displayModeBar: false, responsive: true });
  });
})();
