// modelyard's status page: polls /ui/state every 2 s and draws it. Plain JS, no dependencies, nothing loaded from
// anywhere but the gateway. Text from the server is only ever set as textContent (never parsed as HTML).
"use strict";

(() => {
  const POLL_MS = 2000;
  const SVG = "http://www.w3.org/2000/svg";

  function el(tag, attrs, ...children) {
    const node = document.createElement(tag);
    for (const [name, value] of Object.entries(attrs || {})) {
      if (value === null || value === undefined || value === false) continue;
      if (name === "class") node.className = value;
      else if (name === "text") node.textContent = String(value);
      else node.setAttribute(name, String(value));
    }
    for (const child of children) {
      if (child === null || child === undefined) continue;
      node.append(child instanceof Node ? child : document.createTextNode(String(child)));
    }
    return node;
  }

  function seconds(value) {
    if (value === null || value === undefined) return "–";
    if (value < 1) return `${Math.round(value * 1000)} ms`;
    return `${value.toFixed(value < 10 ? 2 : 1)} s`;
  }

  function rate(value) {
    if (!value) return "0";
    return value < 10 ? value.toFixed(2) : value.toFixed(0);
  }

  function percent(value) {
    return value === null || value === undefined ? "–" : `${Math.round(value * 100)}%`;
  }

  // a small line chart of `values` (oldest first); null leaves a gap
  function sparkline(values, label, format) {
    const width = 120, height = 28, pad = 2;
    const known = values.filter((v) => v !== null && v !== undefined);
    const max = Math.max(...known, 0);
    const svg = document.createElementNS(SVG, "svg");
    svg.setAttribute("viewBox", `0 0 ${width} ${height}`);
    svg.setAttribute("class", "spark");
    svg.setAttribute("role", "img");
    svg.setAttribute("aria-label", `${label}, last ${values.length} points, max ${format(max)}`);
    const base = document.createElementNS(SVG, "line");
    for (const [k, v] of [["x1", 0], ["y1", height - pad], ["x2", width], ["y2", height - pad]]) base.setAttribute(k, v);
    base.setAttribute("class", "spark-base");
    svg.append(base);
    let d = "", pen = false, last = null;
    const step = values.length > 1 ? (width - 2 * pad) / (values.length - 1) : 0;
    values.forEach((v, i) => {
      if (v === null || v === undefined) { pen = false; return; }
      const x = (pad + i * step).toFixed(1);
      const y = (height - pad - (max > 0 ? (v / max) * (height - 2 * pad) : 0)).toFixed(1);
      d += `${pen ? "L" : "M"}${x} ${y} `;
      pen = true;
      last = [x, y];
    });
    if (d) {
      const path = document.createElementNS(SVG, "path");
      path.setAttribute("d", d.trim());
      path.setAttribute("class", "spark-line");
      svg.append(path);
    }
    if (last) {  // the latest point, visible even when it stands alone
      const dot = document.createElementNS(SVG, "circle");
      for (const [k, v] of [["cx", last[0]], ["cy", last[1]], ["r", 2]]) dot.setAttribute(k, v);
      dot.setAttribute("class", "spark-dot");
      svg.append(dot);
    }
    return el("figure", { class: "chart" }, svg, el("figcaption", { text: `${label} (max ${format(max)})` }));
  }

  function stat(label, value, name) {
    return el("div", { class: "stat", "data-stat": name }, el("span", { class: "label", text: label }),
      el("span", { class: "value", text: value }));
  }

  // a replica's row, and under it (the full width) its last error, if any
  function replicaRows(r) {
    const load = r.scraped ? `${r.running} / ${r.waiting}` : "–";
    const state = r.ejected ? `${r.state} (ejected)` : r.state;
    const row = el("tr", { "data-replica": r.id, "data-state": r.state },
      el("td", { text: `#${r.replica}` }),
      el("td", {}, el("span", { class: `chip state-${r.state}`, text: state })),
      el("td", { class: "num", text: r.in_flight }),
      el("td", { class: "num", text: load }),
      el("td", { class: "num", text: r.scraped ? percent(r.kv_usage) : "–" }),
      el("td", { class: "num", text: r.restarts }));
    if (!r.detail) return [row];
    return [row, el("tr", { class: "detail-row", "data-detail": r.id },
      el("td", { colspan: 6, class: "detail", text: `last error: ${r.detail}` }))];
  }

  function replicaTable(replicas) {
    const head = el("tr", {}, ...["replica", "state", "in flight", "run / wait", "KV", "restarts"]
      .map((h) => el("th", { scope: "col", text: h })));
    const rows = replicas.length ? replicas.flatMap(replicaRows)
      : [el("tr", {}, el("td", { colspan: 6, class: "muted", text: "no replica running" }))];
    return el("div", { class: "scroll" }, el("table", { class: "replicas" }, el("thead", {}, head),
      el("tbody", {}, ...rows)));
  }

  function errorList(errors) {
    const kinds = Object.entries(errors || {}).sort((a, b) => b[1] - a[1]);
    if (!kinds.length) return el("p", { class: "muted errors", "data-errors": 0, text: "no errors in the window" });
    const total = kinds.reduce((sum, [, n]) => sum + n, 0);
    return el("p", { class: "errors bad", "data-errors": total },
      kinds.map(([kind, n]) => `${kind} ${n}`).join(" · "));
  }

  function modelCard(m, windowMin) {
    const recent = m.recent;
    const states = Object.entries(m.states).filter(([s]) => s !== "ready")
      .map(([s, n]) => el("span", { class: `chip state-${s}`, text: `${s} ${n}` }));
    const healthy = m.ready > 0 || m.desired === 0;
    return el("article", { class: `card ${healthy ? "" : "degraded"}`, "data-model": m.name, "data-ready": m.ready,
      "data-desired": m.desired },
      el("header", {}, el("h2", { text: m.name }),
        el("span", { class: "chip", text: m.strategy }), el("span", { class: "chip muted", text: m.engine }),
        m.pool ? el("span", { class: "chip", text: `pool ${m.pool}` }) : null),
      el("p", { class: "replica-count" },
        el("strong", { text: `${m.ready} ready` }), ` of ${m.desired} desired`,
        m.min !== m.max ? ` (min ${m.min}, max ${m.max})` : "", m.queued ? ` · ${m.queued} queued` : "",
        ...states),
      el("div", { class: "stats" },
        stat("req/s", rate(recent.requests_per_s), "rps"),
        stat("TTFT p50", seconds(recent.ttft_p50_s), "ttft_p50"),
        stat("TTFT p90", seconds(recent.ttft_p90_s), "ttft_p90"),
        stat("E2E p90", seconds(recent.e2e_p90_s), "e2e_p90"),
        stat("tokens/s", rate(recent.tokens_per_s), "tps")),
      el("div", { class: "charts" },
        sparkline(recent.series.requests_per_s, `req/s, ${windowMin} min`, rate),
        sparkline(recent.series.ttft_p90_s, `TTFT p90, ${windowMin} min`, seconds),
        sparkline(recent.series.errors, `errors, ${windowMin} min`, (v) => String(v))),
      errorList(recent.errors),
      replicaTable(m.replicas));
  }

  function poolCard(p) {
    const capacity = p.slots !== null ? `${p.awake} of ${p.slots} slots awake` : `${p.awake} awake (${p.memory_gib} GiB)`;
    return el("article", { class: "card", "data-pool": p.name },
      el("header", {}, el("h2", { text: `pool ${p.name}` })),
      el("p", { text: capacity }),
      el("ul", { class: "members" }, ...p.members.map((member) =>
        el("li", { "data-member": member.name, "data-residency": member.residency },
          el("span", { class: `chip residency-${member.residency}`, text: member.residency }),
          ` ${member.name}`, member.pinned ? " (pinned)" : ""))));
  }

  function keyRows(keys) {
    const head = el("tr", {}, ...["key", "rpm", "tpm", "budget", "expires"].map((h) => el("th", { scope: "col", text: h })));
    const cell = (fraction, used, limit) => el("td", { class: `num ${fraction !== null && fraction >= 0.8 ? "bad" : ""}`,
      text: limit ? `${used} / ${limit} (${percent(fraction)})` : "–" });
    const rows = keys.map((k) => k.error ? el("tr", {}, el("td", { colspan: 5, class: "bad", text: k.error }))
      : el("tr", { "data-key": k.name, class: k.near ? "near" : "" },
        el("td", { text: k.name }),
        cell(k.fractions.rpm, k.requests_last_min, k.rpm),
        cell(k.fractions.tpm, k.tokens_last_min, k.tpm),
        cell(k.fractions.budget, k.used_tokens, k.budget_tokens),
        el("td", { class: "num", text: k.expires_in_s === null ? "–" : seconds(Math.max(0, k.expires_in_s)) })));
    return [el("thead", {}, head), el("tbody", {}, ...rows)];
  }

  function render(state) {
    const status = document.getElementById("status");
    status.textContent = state.status;
    status.dataset.status = state.status;
    document.getElementById("updated").textContent =
      `updated ${new Date(state.time * 1000).toLocaleTimeString()} · ${state.workers} worker(s) · v${state.version}`;
    const windowMin = Math.round((state.bucket_s * state.buckets) / 60);
    document.getElementById("models").replaceChildren(...state.models.map((m) => modelCard(m, windowMin)));
    document.getElementById("pools-section").hidden = !state.pools.length;
    document.getElementById("pools").replaceChildren(...state.pools.map(poolCard));
    document.getElementById("keys-section").hidden = !state.keys.length;
    document.getElementById("keys").replaceChildren(...keyRows(state.keys));
    document.body.dataset.polls = String(Number(document.body.dataset.polls || 0) + 1);
  }

  function showError(message) {
    const error = document.getElementById("error");
    error.hidden = !message;
    error.textContent = message || "";
    if (message) {
      const status = document.getElementById("status");
      status.textContent = "unreachable";
      status.dataset.status = "unreachable";
    }
  }

  async function poll() {
    try {
      const reply = await fetch("/ui/state", { credentials: "same-origin", cache: "no-store" });
      if (reply.status === 401) {
        window.location.assign("/ui/login");
        return;
      }
      if (!reply.ok) throw new Error(`/ui/state answered ${reply.status}`);
      render(await reply.json());
      showError("");
    } catch (err) {
      showError(`cannot reach the gateway: ${err.message}`);
    }
    window.setTimeout(poll, POLL_MS);
  }

  document.addEventListener("DOMContentLoaded", poll);
})();
