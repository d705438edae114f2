// The training dashboard: draws each run's metrics with plotly and polls for new rows, so the
// charts follow a run while it trains without reloading the page. Model text is set with
// textContent only, never as HTML.
(function () {
  "use strict";
  const root = document.getElementById("dashboard");
  if (!root || !window.Plotly) return;
  const config = JSON.parse(root.dataset.config);
  const overlay = config.runs.length > 1;
  const runs = config.runs.map(function (run, index) {
    return { id: run.id, kind: run.kind, index: index, rows: [], samples: [], pickedStep: null, finished: false, warningsKey: null };
  });

  function isNumber(value) { return typeof value === "number" && isFinite(value); }

  function traces(chart) {
    const out = [];
    runs.forEach(function (run) {
      chart.lines.forEach(function (line) {
        const xName = line[0], yName = line[1], x = [], y = [];
        run.rows.forEach(function (row) {
          if (isNumber(row[xName]) && isNumber(row[yName])) {
            x.push(chart.x_sqrt ? Math.sqrt(Math.max(row[xName], 0)) : row[xName]);
            y.push(row[yName]);
          }
        });
        const label = xName === "step" ? yName : yName + " vs √" + xName;
        out.push({
          x: x, y: y, type: "scatter", mode: x.length > 30 ? "lines" : "lines+markers",
          name: overlay ? run.id + " · " + label : label, showlegend: x.length > 0,
          line: { dash: yName.indexOf("eval/") === 0 ? "dot" : "solid" },
        });
      });
    });
    return out;
  }

  function draw() {
    config.charts.forEach(function (chart) {
      const div = document.getElementById("chart-" + chart.id);
      const layout = {
        height: 280, margin: { l: 55, r: 10, t: 10, b: 45 }, showlegend: true,
        legend: { orientation: "h", y: -0.3, font: { size: 11 } },
        xaxis: { title: { text: chart.x_title }, zeroline: false }, yaxis: { zeroline: false },
        uirevision: chart.id,  // keep the user's zoom while points arrive
      };
      Plotly.react(div, traces(chart), layout, { displayModeBar: false, responsive: true });
    });
  }

  function format(value) { return isNumber(value) ? value.toFixed(3) : "—"; }

  function cell(tr, text, className) {
    const td = document.createElement("td");
    td.textContent = text;
    if (className) td.className = className;
    tr.appendChild(td);
  }

  function drawSamples(run) {
    const select = document.getElementById("samples-step-" + run.index);
    const body = document.getElementById("samples-body-" + run.index);
    const steps = Array.from(new Set(run.samples.map(function (s) { return s.step; }))).sort(function (a, b) { return a - b; });
    if (!steps.length) return;
    const step = run.pickedStep !== null && steps.indexOf(run.pickedStep) >= 0 ? run.pickedStep : steps[steps.length - 1];
    select.replaceChildren();
    steps.forEach(function (s) {
      const option = document.createElement("option");
      option.value = String(s);
      option.textContent = String(s);
      option.selected = s === step;
      select.appendChild(option);
    });
    body.replaceChildren();
    run.samples.filter(function (s) { return s.step === step; }).forEach(function (sample) {
      const tr = document.createElement("tr");
      cell(tr, String(sample.prompt), "text");
      cell(tr, String(sample.policy), "text");
      cell(tr, format(sample.policy_score), "num");
      cell(tr, String(sample.reference), "text");
      cell(tr, format(sample.reference_score), "num");
      body.appendChild(tr);
    });
  }

  function showStatus(run, data) {
    const last = run.rows.length ? run.rows[run.rows.length - 1].step : 0;
    document.getElementById("status-" + run.index).textContent =
      run.rows.length + " rows · step " + last + (data.finished ? " · finished" : " · watching for new rows");
    showWarnings(run, data.warnings || []);
  }

  // Up to k indices spread evenly over 0..n-1, first and last included (eval/hacking.py's _spread).
  function spread(n, k) {
    if (n <= k) return Array.from({ length: n }, function (_, i) { return i; });
    const picked = new Set();
    for (let i = 0; i < k; i++) picked.add(Math.round(i * (n - 1) / (k - 1)));
    return Array.from(picked).sort(function (a, b) { return a - b; });
  }

  function element(tag, text, className) {
    const node = document.createElement(tag);
    if (text !== undefined) node.textContent = text;
    if (className) node.className = className;
    return node;
  }

  // The run's reward-hacking warnings (eval/hacking.py): name and meaning, what was seen, the
  // evidence (steps and values), what to try. Redrawn only when they change.
  function showWarnings(run, warnings) {
    const box = document.getElementById("warnings-" + run.index);
    const key = JSON.stringify(warnings);
    if (key === run.warningsKey) return;
    run.warningsKey = key;
    box.replaceChildren();
    box.hidden = warnings.length === 0;
    warnings.forEach(function (warning) {
      const div = element("div", undefined, "flag run-warning");
      div.dataset.warning = warning.name;
      const title = element("p");
      title.appendChild(element("strong", "Warning: " + warning.name));
      title.appendChild(document.createTextNode(" — " + warning.explanation));
      div.appendChild(title);
      div.appendChild(element("p", warning.message, "warning-message"));
      const keep = spread(warning.steps.length, 8);
      const table = element("table", undefined, "evidence");
      const rows = [["step", warning.steps.map(String)]];
      Object.keys(warning.values).forEach(function (name) {
        rows.push([name, warning.values[name].map(function (v) { return isNumber(v) ? v.toPrecision(4) : "—"; })]);
      });
      rows.forEach(function (row) {
        const tr = element("tr");
        tr.appendChild(element("th", row[0]));
        keep.forEach(function (i) { tr.appendChild(element("td", row[1][i])); });
        table.appendChild(tr);
      });
      div.appendChild(table);
      if (warning.hint) div.appendChild(element("p", "Try: " + warning.hint, "warning-hint"));
      box.appendChild(div);
    });
  }

  function poll(run) {
    const url = "/runs/" + encodeURIComponent(run.id) + "/data?since=" + run.rows.length +
      "&samples_since=" + run.samples.length;
    return fetch(url, { headers: { Accept: "application/json" }, credentials: "same-origin" })
      .then(function (response) { if (!response.ok) throw new Error(response.status); return response.json(); })
      .then(function (data) {
        if (data.reset) { run.rows = []; run.samples = []; }
        run.rows = run.rows.concat(data.rows);
        run.samples = run.samples.concat(data.samples);
        run.finished = data.finished;
        showStatus(run, data);
        if (data.samples.length || data.reset) drawSamples(run);
        return data.rows.length > 0 || data.reset;
      });
  }

  function tick() {
    Promise.all(runs.map(function (run) { return poll(run).catch(function () { return false; }); }))
      .then(function (changed) {
        if (changed.some(Boolean)) draw();
        const allFinished = runs.every(function (run) { return run.finished; });
        setTimeout(tick, allFinished ? 5 * config.poll_ms : config.poll_ms);
      });
  }

  runs.forEach(function (run) {
    document.getElementById("samples-step-" + run.index).addEventListener("change", function (event) {
      run.pickedStep = Number(event.target.value);
      drawSamples(run);
    });
  });
  draw();
  tick();
})();
