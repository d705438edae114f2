// The playground: sliders and buttons in, numbers and charts out. Every number comes from the
// server's JSON endpoints (preftune's own loss code); this file only keeps each module's state
// (labels, policy logits, step counters), sends it with each request and draws the reply.
(function () {
  "use strict";
  const root = document.getElementById("playground");
  if (!root || !window.Plotly) return;
  const answers = JSON.parse(root.dataset.answers);
  const names = answers.map(function (a, i) { return (i + 1) + ". " + a.title; });
  const PLOT_CONFIG = { displayModeBar: false, responsive: true };
  const BETA_MIN = 0.02, BETA_MAX = 30;

  function $(id) { return document.getElementById(id); }
  function isNumber(v) { return typeof v === "number" && isFinite(v); }
  function fmt(v, digits) { return isNumber(v) ? v.toFixed(digits === undefined ? 4 : digits) : "—"; }
  // Shown rounded; the exact value the server sent stays in data-value (the tests compare it).
  function show(id, value, digits) {
    const el = $(id);
    el.textContent = fmt(value, digits);
    el.dataset.value = value === null || value === undefined ? "" : String(value);
  }
  function sleep(ms) { return new Promise(function (resolve) { setTimeout(resolve, ms); }); }
  function sum(values) { return values.reduce(function (a, b) { return a + b; }, 0); }
  function layout(extra) {
    return Object.assign({
      height: 320, margin: { l: 50, r: 10, t: 30, b: 40 },
      legend: { orientation: "h", x: 0, y: 1.02, yanchor: "bottom" },
    }, extra);
  }

  // One request at a time per module, in order. Parameters are built when the request leaves,
  // so a Step queued behind another Step carries the state the first one returned.
  function module(id, path, apply) {
    const section = $(id);
    let chain = Promise.resolve();
    let pending = 0;
    function showError(message) {
      let box = section.querySelector(".error");
      if (!box) {
        box = document.createElement("p");
        box.className = "error";
        box.setAttribute("role", "alert");
        section.insertBefore(box, section.querySelector(".pg-body"));
      }
      box.textContent = message;
      box.hidden = !message;
    }
    function request(buildParams) {
      pending += 1;
      section.dataset.busy = "1";
      chain = chain.then(function () {
        const query = new URLSearchParams(buildParams()).toString();
        return fetch("/playground/api/" + path + "?" + query, { headers: { Accept: "application/json" } })
          .then(function (response) {
            return response.json().then(function (body) {
              if (!response.ok) throw new Error(body.detail || String(response.status));
              return body;
            });
          })
          .then(function (data) {
            apply(data);
            section.dataset.request = query;
            section.dataset.updates = String(Number(section.dataset.updates) + 1);
            showError("");
          })
          .catch(function (error) { showError("Could not update: " + error.message); })
          .finally(function () {
            pending -= 1;
            if (!pending) section.dataset.busy = "0";
          });
      });
      return chain;
    }
    return { section: section, request: request };
  }

  function slider(id, label, onChange, transform) {
    const input = $(id), out = $(id + "-out");
    function value() { return transform ? transform(Number(input.value)) : Number(input.value); }
    function relabel() { out.textContent = label(value()); }
    input.addEventListener("input", relabel);
    input.addEventListener("change", function () { relabel(); onChange(); });
    relabel();
    return { value: value, set: function (raw) { input.value = String(raw); relabel(); } };
  }
  function logBeta(raw) { return Math.min(BETA_MAX, Math.max(BETA_MIN, Math.pow(10, raw))); }

  function player(buttonId, tick, done) {
    const button = $(buttonId);
    let playing = false;
    function loop() {
      if (!playing) { button.textContent = "Play"; return; }
      tick().then(function () {
        if (done()) playing = false;
        return sleep(100);
      }).then(loop);
    }
    button.addEventListener("click", function () {
      if (playing) { playing = false; return; }
      playing = true;
      button.textContent = "Pause";
      loop();
    });
    return { stop: function () { playing = false; } };
  }

  function bars(div, traces, yTitle, yRange) {
    Plotly.react(div, traces, layout({
      barmode: "group", xaxis: { automargin: true, tickangle: -30 }, yaxis: { title: { text: yTitle }, range: yRange },
    }), PLOT_CONFIG);
  }

  // ---- module 1: preferences -> Bradley–Terry rewards ----------------------------------------
  const dataset = { labels: "", simulated: 30, seed: 0 };
  const noise = slider("m1-noise", function (v) { return v.toFixed(2); }, function () { refreshDataset(); });
  const prior = slider("m1-prior", function (v) { return v.toFixed(1); }, function () { refreshDataset(); });
  const perStep1 = slider("m1-per-step", String, function () {});
  let nextPair = [0, 1];
  function datasetParams() {
    return { labels: dataset.labels, simulated: dataset.simulated, seed: dataset.seed, noise: noise.value(), prior: prior.value() };
  }
  const m1 = module("m1", "preferences", function (s) {
    dataset.simulated = s.simulated;
    s.rewards.forEach(function (r, i) {
      show("m1-reward-" + i, r);
      show("m1-won-" + i, sum(s.counts[i]), 0);
      show("m1-lost-" + i, sum(s.counts.map(function (row) { return row[i]; })), 0);
    });
    show("m1-total", s.total, 0);
    show("m1-user", s.user_count, 0);
    show("m1-loss", s.loss);
    show("m1-accuracy", s.accuracy);
    show("m1-agreement", s.labeler_agreement);
    show("m1-spread", s.spread);
    nextPair = s.next_pair;
    $("m1-left-title").textContent = answers[nextPair[0]].title;
    $("m1-left-text").textContent = answers[nextPair[0]].text;
    $("m1-right-title").textContent = answers[nextPair[1]].title;
    $("m1-right-text").textContent = answers[nextPair[1]].text;
    bars($("m1-chart"), [
      { type: "bar", x: names, y: s.rewards, name: "fitted reward" },
      { type: "bar", x: names, y: s.gold, name: "the parent's hidden taste (gold)", opacity: 0.45 },
    ], "reward", [-5, 5]);
  });
  function refreshDataset(extra) {
    const done = m1.request(function () { return Object.assign(datasetParams(), extra || {}); });
    return done.then(function () { m2go(0); m3go(0); });
  }
  function label(winner, loser) {
    dataset.labels = dataset.labels ? dataset.labels + "," + winner + ">" + loser : winner + ">" + loser;
    refreshDataset();
  }
  $("m1-left-wins").addEventListener("click", function () { label(nextPair[0], nextPair[1]); });
  $("m1-right-wins").addEventListener("click", function () { label(nextPair[1], nextPair[0]); });
  $("m1-step").addEventListener("click", function () { refreshDataset({ add_simulated: perStep1.value() }); });
  const play1 = player("m1-play", function () { return refreshDataset({ add_simulated: perStep1.value() }); },
    function () { return dataset.simulated >= 500; });
  $("m1-reset").addEventListener("click", function () {
    play1.stop();
    dataset.labels = "";
    dataset.simulated = 0;
    dataset.seed += 1;  // a fresh sequence of simulated labels and questions
    refreshDataset();
  });

  // ---- module 2: pi* and PPO towards it ------------------------------------------------------
  const policy2 = { logits: "", iteration: 0, distance: 1 };
  const beta2 = slider("m2-beta", function (v) { return v.toFixed(2); }, function () { m2go(0); }, logBeta);
  const lr2 = slider("m2-lr", function (v) { return v.toFixed(2); }, function () {});
  const m2 = module("m2", "optimum", function (s) {
    policy2.logits = s.logits.map(String).join(",");
    policy2.iteration = s.iteration;
    policy2.distance = s.distance;
    s.rewards.forEach(function (r, i) {
      show("m2-reward-" + i, r);
      show("m2-ref-" + i, s.reference[i]);
      show("m2-policy-" + i, s.policy[i]);
      show("m2-optimal-" + i, s.optimal[i]);
    });
    ["policy", "optimal"].forEach(function (which) {
      const numbers = s[which + "_numbers"];
      show("m2-" + which + "-reward", numbers.expected_reward);
      show("m2-" + which + "-kl", numbers.kl);
      show("m2-" + which + "-objective", numbers.objective);
    });
    show("m2-beta-value", s.beta);
    show("m2-iteration", s.iteration, 0);
    show("m2-distance", s.distance);
    show("m2-ppo-kl", s.ppo["objective/kl"]);
    show("m2-ppo-approxkl", s.ppo["policy/approxkl_avg"]);
    show("m2-ppo-clipfrac", s.ppo["policy/clipfrac_avg"]);
    bars($("m2-chart"), [
      { type: "bar", x: names, y: s.reference, name: "π_ref" },
      { type: "bar", x: names, y: s.policy, name: "π (PPO)" },
      { type: "bar", x: names, y: s.optimal, name: "π*" },
    ], "probability", [0, 1]);
  });
  function m2go(steps) {
    return m2.request(function () {
      return Object.assign(datasetParams(), {
        beta: beta2.value(), lr: lr2.value(), logits: policy2.logits, iteration: policy2.iteration, steps: steps,
      });
    });
  }
  $("m2-step").addEventListener("click", function () { m2go(1); });
  const play2 = player("m2-play", function () { return m2go(2); },
    function () { return policy2.distance < 1e-3 || policy2.iteration >= 3000; });
  $("m2-reset").addEventListener("click", function () {
    play2.stop();
    policy2.logits = "";
    policy2.iteration = 0;
    m2go(0);
  });

  // ---- module 3: DPO on the same pairs -------------------------------------------------------
  const policy3 = { logits: "", step: 0, converged: false, history: [] };
  const beta3 = slider("m3-beta", function (v) { return v.toFixed(2); }, function () { m3go(0); }, logBeta);
  const stepSize3 = slider("m3-step-size", function (v) { return v.toFixed(1); }, function () {});
  const perStep3 = slider("m3-per-step", String, function () {});
  const m3 = module("m3", "dpo", function (s) {
    policy3.logits = s.logits.map(String).join(",");
    policy3.converged = s.converged;
    if (s.step === 0) policy3.history = [];
    if (!policy3.history.length || policy3.history[policy3.history.length - 1].step !== s.step) {
      policy3.history.push({ step: s.step, loss: s.loss, distance: s.distance });
    }
    policy3.step = s.step;
    s.policy.forEach(function (p, i) {
      show("m3-policy-" + i, p);
      show("m3-optimal-" + i, s.optimal[i]);
      show("m3-implicit-" + i, s.implicit_rewards_centred[i]);
      show("m3-bt-" + i, s.bt_rewards[i]);
    });
    show("m3-beta-value", s.beta);
    show("m3-step-count", s.step, 0);
    show("m3-loss", s.loss);
    show("m3-margin", s.margin);
    show("m3-distance", s.distance);
    show("m3-grad", s.grad_norm, 6);
    $("m3-status").textContent = s.converged ? "converged: the gradient is zero to 9 decimals" : "training";
    const body = $("m3-pairs");
    body.replaceChildren();
    s.pairs.filter(function (p) { return p.votes - s.prior > 1e-9; })
      .sort(function (a, b) { return b.weight - a.weight; })
      .forEach(function (p) {
        const tr = document.createElement("tr");
        const name = document.createElement("td");
        name.textContent = answers[p.chosen].title + " ≻ " + answers[p.rejected].title;
        const votes = document.createElement("td");
        votes.className = "num";
        votes.textContent = String(Math.round(p.votes - s.prior));
        const weight = document.createElement("td");
        weight.className = "num";
        weight.id = "m3-weight-" + p.chosen + "-" + p.rejected;
        tr.append(name, votes, weight);
        body.appendChild(tr);
        show(weight.id, p.weight);
      });
    bars($("m3-chart"), [
      { type: "bar", x: names, y: s.reference, name: "π_ref" },
      { type: "bar", x: names, y: s.policy, name: "π (DPO)" },
      { type: "bar", x: names, y: s.optimal, name: "π* (module 2)" },
    ], "probability", [0, 1]);
    const steps = policy3.history.map(function (h) { return h.step; });
    Plotly.react($("m3-loss-chart"), [
      { x: steps, y: policy3.history.map(function (h) { return h.loss; }), name: "DPO loss", mode: "lines+markers" },
      { x: steps, y: policy3.history.map(function (h) { return h.distance; }), name: "distance from π*", mode: "lines+markers" },
    ], layout({ height: 240, xaxis: { title: { text: "DPO step" }, rangemode: "tozero" } }), PLOT_CONFIG);
  });
  function m3go(steps) {
    return m3.request(function () {
      return Object.assign(datasetParams(), {
        beta: beta3.value(), step_size: stepSize3.value(), logits: policy3.logits, step: policy3.step, steps: steps,
      });
    });
  }
  $("m3-step").addEventListener("click", function () { m3go(perStep3.value()); });
  const play3 = player("m3-play", function () { return m3go(perStep3.value()); },
    function () { return policy3.converged || policy3.step >= 20000; });
  $("m3-reset").addEventListener("click", function () {
    play3.stop();
    policy3.logits = "";
    policy3.step = 0;
    m3go(0);
  });

  // ---- module 4: reward hacking --------------------------------------------------------------
  let beta4value = BETA_MAX;
  const beta4 = slider("m4-beta", function (v) { return v.toPrecision(3); }, function () { beta4value = beta4.value(); m4go(0); }, logBeta);
  const bias4 = slider("m4-bias", function (v) { return v.toFixed(1); }, function () { m4go(0); });
  const m4 = module("m4", "hacking", function (s) {
    beta4value = s.beta;
    beta4.set(Math.log10(s.beta));
    const c = s.current;
    show("m4-beta-value", s.beta);
    show("m4-kl", c.kl);
    show("m4-sqrt-kl", c.sqrt_kl);
    show("m4-gold", c.gold);
    show("m4-proxy", c.proxy);
    show("m4-longest", c.longest_prob);
    show("m4-peak-gold", s.peak.gold);
    show("m4-peak-sqrt-kl", s.peak.sqrt_kl);
    show("m4-peak-beta", s.peak.beta);
    const x = s.curve.map(function (p) { return p.sqrt_kl; });
    Plotly.react($("m4-chart"), [
      { x: x, y: s.curve.map(function (p) { return p.proxy; }), name: "proxy reward", mode: "lines" },
      { x: x, y: s.curve.map(function (p) { return p.gold; }), name: "gold reward", mode: "lines" },
      { x: [c.sqrt_kl, c.sqrt_kl], y: [c.proxy, c.gold], name: "current β", mode: "markers", marker: { size: 11, color: "#222" } },
      { x: [s.peak.sqrt_kl], y: [s.peak.gold], name: "best gold", mode: "markers", marker: { size: 11, symbol: "star", color: "#a33b1f" } },
    ], layout({
      height: 360, xaxis: { title: { text: "√KL(π ‖ π_ref)" }, rangemode: "tozero" }, yaxis: { title: { text: "expected reward" } },
    }), PLOT_CONFIG);
    bars($("m4-policy-chart"), [
      { type: "bar", x: names, y: s.policy, name: "proxy-optimal π at this β" },
    ], "probability", [0, 1]);
  });
  function m4go(steps) {
    return m4.request(function () { return { beta: beta4value, length_bias: bias4.value(), steps: steps }; });
  }
  $("m4-step").addEventListener("click", function () { m4go(1); });
  const play4 = player("m4-play", function () { return m4go(1); }, function () { return beta4value <= BETA_MIN * 1.0001; });
  $("m4-reset").addEventListener("click", function () {
    play4.stop();
    beta4value = BETA_MAX;
    m4go(0);
  });

  // ---- module 5: baselines -------------------------------------------------------------------
  const BASELINE_NAMES = {
    none: "none (REINFORCE)", value: "critic with this error (PPO)", group_mean: "group mean (Dr. GRPO)",
    leave_one_out: "leave-one-out (RLOO)", group_mean_std: "group mean / std (GRPO)",
  };
  const group5 = slider("m5-group", String, function () { m5go(); });
  const error5 = slider("m5-error", function (v) { return v.toFixed(2); }, function () { m5go(); });
  const m5 = module("m5", "baselines", function (s) {
    show("m5-reward-std", s.reward_std);
    const body = $("m5-rows");
    body.textContent = "";
    s.rows.forEach(function (r) {
      const tr = document.createElement("tr");
      tr.id = "m5-row-" + r.baseline;
      [BASELINE_NAMES[r.baseline], fmt(r.variance), fmt(r.relative_bias, 3)].forEach(function (text, i) {
        const td = document.createElement("td");
        td.textContent = text;
        if (i === 1) { td.className = "num"; td.dataset.value = String(r.variance); }
        tr.appendChild(td);
      });
      body.appendChild(tr);
    });
    Plotly.react($("m5-chart"), [
      { x: s.group_sizes, y: s.variance_by_group_size.leave_one_out, name: "leave-one-out (RLOO)", mode: "lines+markers" },
      { x: s.group_sizes, y: s.variance_by_group_size.value, name: "critic with this error", mode: "lines+markers" },
    ], layout({
      height: 360, xaxis: { title: { text: "group size G" }, type: "log" }, yaxis: { title: { text: "variance of the gradient estimate" }, type: "log" },
    }), PLOT_CONFIG);
  });
  function m5go() {
    return m5.request(function () { return { group_size: group5.value(), value_error: error5.value() }; });
  }

  refreshDataset();
  m4go(0);
  m5go();
})();
