// The dashboard: reads /dashboard/data with the token kept in this tab's sessionStorage and draws it
// with uPlot (vendored under /dashboard/static/vendor/uplot). Refreshes every REFRESH_MS.
// window.dashboard exposes the last data and the chart objects (the browser test reads them).
"use strict";

(function () {
  const REFRESH_MS = 5000;
  const TOKEN_KEY = "dqfd-dashboard-token";
  const COLORS = ["#1e88e5", "#e53935", "#43a047", "#8e24aa", "#fb8c00", "#00897b", "#6d4c41", "#3949ab",
    "#c0ca33", "#d81b60"];
  const params = new URLSearchParams(window.location.search);
  const state = { data: null, charts: {}, renderedAt: null, error: null, refreshes: 0 };
  window.dashboard = state;

  const $ = (id) => document.getElementById(id);
  const fmt = (v, digits = 3) => (v === null || v === undefined ? "–" : Number(v).toFixed(digits));
  const color = (i) => COLORS[i % COLORS.length];

  if (params.get("minutes")) {
    const select = $("minutes");
    const option = document.createElement("option");
    option.value = params.get("minutes");
    option.textContent = params.get("minutes") + " min";
    select.appendChild(option);
    select.value = option.value;
  }

  function token() { return window.sessionStorage.getItem(TOKEN_KEY); }

  function showLogin(message) {
    $("login").hidden = false;
    $("main").hidden = true;
    $("forget").hidden = true;
    $("login-error").textContent = message || "";
  }

  async function load() {
    const t = token();
    if (!t) { showLogin(""); return; }
    const query = new URLSearchParams({ minutes: $("minutes").value, buckets: params.get("buckets") || "30" });
    let response;
    try {
      response = await fetch("/dashboard/data?" + query, { headers: { Authorization: "Bearer " + t } });
    } catch (err) {
      $("status").textContent = "service unreachable: " + err;
      return;
    }
    if (response.status === 401 || response.status === 403) {
      window.sessionStorage.removeItem(TOKEN_KEY);
      const body = await response.json().catch(() => ({}));
      showLogin((body.detail || body.error || body.message || "refused") + " (HTTP " + response.status + ")");
      return;
    }
    if (!response.ok) { $("status").textContent = "HTTP " + response.status; return; }
    const data = await response.json();
    state.data = data;
    $("login").hidden = true;
    $("main").hidden = false;
    $("forget").hidden = false;
    render(data);
    state.refreshes += 1;
    state.renderedAt = new Date().toISOString();
    $("status").textContent = "updated " + new Date().toLocaleTimeString() + " · every " + REFRESH_MS / 1000 + " s";
  }

  function bucketMids(data) {
    const half = data.window.bucket_s / 2;
    return data.window.bucket_starts.map((s) => s + half);
  }

  // Every chart spans the whole window (the trainer's too), with UTC times on the axis like the tables.
  const utc = (u, values) => values.map((v) => new Date(v * 1000).toISOString().slice(11, 19));

  function draw(name, element, series, xs, columns) {
    const old = state.charts[name];
    if (old) old.destroy();
    const width = Math.max(300, element.parentElement.clientWidth - 12);
    const w = state.data.window;
    const range = [Date.parse(w.since) / 1000, Date.parse(w.until) / 1000];
    const opts = {
      width, height: 210, scales: { x: { time: true, range: () => range } },
      axes: [{ values: utc, space: 70 }, {}],
      series: [{ label: "time (UTC)", value: (u, v) => (v === null ? "–" : utc(u, [v])[0]) }].concat(series),
      legend: { live: false },
    };
    state.charts[name] = new uPlot(opts, [xs].concat(columns), element);
  }

  function perVersionChart(name, elementId, byVersion, baseline, baselineLabel, xs) {
    const versions = Object.keys(byVersion).sort((a, b) => Number(a) - Number(b));
    const series = versions.map((v, i) => ({ label: "v" + v, stroke: color(i), width: 2, points: { show: true, size: 5 } }));
    const columns = versions.map((v) => byVersion[v]);
    if (baseline !== null && baseline !== undefined) {
      series.push({ label: baselineLabel, stroke: "#555", dash: [6, 4], width: 1.5, points: { show: false } });
      columns.push(xs.map(() => baseline));
    }
    draw(name, $(elementId), series, xs, columns);
  }

  function render(data) {
    const xs = bucketMids(data);
    perVersionChart("session", "chart-session", data.return_per_session, data.baseline.return_per_session, "logs (per session)", xs);
    perVersionChart("reward", "chart-reward", data.reward_per_decision, data.baseline.reward_per_step, "logs (per step)", xs);
    draw("rate", $("chart-rate"), [{ label: "decisions/s", stroke: color(0), width: 2, fill: "rgba(30,136,229,0.1)" }], xs, [data.decisions_per_s]);
    draw("explore", $("chart-explore"), [{ label: "explored share", stroke: color(4), width: 2 }], xs, [data.exploration_share]);
    const tr = data.trainer;
    if (tr) {
      $("trainer-note").textContent = tr.time.length ? "" : "no trainer iterations in this window yet";
      draw("updates", $("chart-updates"), [{ label: "updates/s", stroke: color(2), width: 2 }], tr.time, [tr.updates_per_s]);
      const names = Object.keys(tr.losses).sort();
      draw("losses", $("chart-losses"), names.map((n, i) => ({ label: n, stroke: color(i + 3), width: 1.5 })), tr.time, names.map((n) => tr.losses[n]));
    } else {
      $("trainer-note").textContent = "the trainer runs in another process (a worker; DQFD_ROLE=api here): its history is not visible from this replica";
    }
    renderCards(data);
    renderTables(data);
  }

  function renderCards(data) {
    $("card-version").textContent = data.serving && data.serving.model_version !== null
      ? "v" + data.serving.model_version + " (rev " + data.serving.policy_revision + ")" : "–";
    const rates = data.decisions_per_s;
    $("card-rate").textContent = fmt(rates.length ? rates[rates.length - 1] : null, 1);
    const total = data.decisions.reduce((a, b) => a + b, 0);
    const explored = Object.values(data.per_version).reduce((a, v) => a + v.explored, 0);
    $("card-explore").textContent = total ? fmt(explored / total, 3) : "–";
    $("card-coverage").textContent = data.coverage.distinct_items_last_hour + " / " + data.coverage.active_items + " items";
    $("card-baseline").textContent = fmt(data.baseline.reward_per_step) + " · " + fmt(data.baseline.return_per_session, 2);
  }

  function fillTable(id, rows) {
    const body = $(id).querySelector("tbody");
    body.replaceChildren();
    for (const cells of rows) {
      const tr = document.createElement("tr");
      for (const cell of cells) {
        const td = document.createElement("td");
        td.textContent = cell === null || cell === undefined ? "–" : String(cell);
        if (cell === null || cell === undefined) td.className = "empty";
        tr.appendChild(td);
      }
      body.appendChild(tr);
    }
  }

  function renderTables(data) {
    fillTable("per-version", Object.entries(data.per_version).map(([v, t]) => [
      v, t.decisions, t.explored, t.reward_per_decision === null ? null : fmt(t.reward_per_decision),
      t.sessions, t.return_per_session === null ? null : fmt(t.return_per_session, 2)]));
    fillTable("models", data.models.map((m) => [
      m.version, m.source, m.created_at.slice(5, 19).replace("T", " "), m.n_updates, m.is_active ? "yes" : "",
      m.activations, m.off_policy_estimate]));
    fillTable("activations", data.activations.map((a) => [
      a.activated_at.slice(0, 19).replace("T", " "), a.version, a.reason]));
  }

  $("login").addEventListener("submit", (event) => {
    event.preventDefault();
    const value = $("token").value.trim();
    if (!value) return;
    window.sessionStorage.setItem(TOKEN_KEY, value);
    $("token").value = "";
    load();
  });
  $("forget").addEventListener("click", () => { window.sessionStorage.removeItem(TOKEN_KEY); showLogin(""); });
  $("minutes").addEventListener("change", load);
  load();
  window.setInterval(load, REFRESH_MS);
})();
