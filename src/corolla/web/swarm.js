// corolla swarm page: polls /api/swarm every 2 s ({"models": [state, ...]}) and draws, for each model
// of the swarm, its block coverage strip and its server table.
"use strict";

const REFRESH_MS = 2000;
const COLUMNS = ["Server", "Blocks", "State", "Forward tok/s", "Inference steps/s", "Sessions / queued",
  "Cache tokens left", "Weights MiB", "Precision", "Version"];
const NUMERIC = new Set(["Forward tok/s", "Inference steps/s", "Sessions / queued", "Cache tokens left", "Weights MiB"]);
const $ = (id) => document.getElementById(id);

function el(tag, props = {}, ...children) {
  const e = document.createElement(tag);
  for (const [k, v] of Object.entries(props)) {
    if (k === "dataset") Object.assign(e.dataset, v);
    else if (k === "style") e.style.cssText = v;
    else e[k] = v;
  }
  for (const c of children) e.append(c instanceof Node ? c : String(c));
  return e;
}

const fmt = (x, digits = 1) => (typeof x === "number" && Number.isFinite(x) ? x.toLocaleString(undefined, { maximumFractionDigits: digits }) : "—");
const shortId = (id) => (id && id.length > 14 ? id.slice(0, 6) + "…" + id.slice(-6) : id || "?");
const missingOf = (data) => (data.coverage || []).filter((c) => !Number(c)).length;

function renderBlocks(data) {
  const n = data.num_blocks || (data.coverage || []).length;
  const strip = el("div", { className: "blocks", dataset: { testid: "blocks" } });
  strip.setAttribute("aria-label", `blocks of ${data.model_id || "?"} coloured by the number of servers holding them`);
  for (let i = 0; i < n; i++) {
    const c = Number(data.coverage?.[i] ?? 0);
    strip.append(el("div", {
      className: `block cov-${Math.min(c, 3)}`, title: `block ${i}: ${c} server${c === 1 ? "" : "s"}`,
      dataset: { testid: "block", index: i, coverage: c },
    }, n <= 64 ? String(i) : ""));
  }
  return strip;
}

function renderServers(data) {
  const n = data.num_blocks || 1;
  const servers = [...(data.servers || [])].sort((a, b) => a.start_block - b.start_block || a.end_block - b.end_block);
  const rows = servers.map((s) => {
    const span = el("div", { className: "spanbar" },
      el("i", { style: `left:${(100 * s.start_block) / n}%;width:${(100 * (s.end_block - s.start_block)) / n}%` }));
    const name = el("td", { title: s.peer_id || "" },
      el("div", {}, s.public_name || shortId(s.peer_id)),
      s.public_name ? el("div", { className: "mono summary" }, shortId(s.peer_id)) : "");
    const state = String(s.state || "unknown").toLowerCase();
    return el("tr", { dataset: { testid: "server-row", peerId: s.peer_id || "", state } },
      name,
      el("td", { dataset: { testid: "span" } }, `${s.start_block}–${s.end_block - 1}`, el("span", { className: "summary" }, ` (${s.end_block - s.start_block})`), span),
      el("td", {}, el("span", { className: `state ${state}`, dataset: { testid: "state" } }, state)),
      el("td", { className: "num" }, fmt(s.forward_tps, 0)),
      el("td", { className: "num" }, fmt(s.inference_rps, 1)),
      el("td", { className: "num", dataset: { testid: "load" } }, `${fmt(s.active_sessions, 0)} / ${fmt(s.queued_requests, 0)}`),
      el("td", { className: "num" }, fmt(s.cache_tokens_left, 0)),
      el("td", { className: "num", dataset: { testid: "weights" } }, s.weight_bytes ? fmt(s.weight_bytes / 1048576, 1) : "—"),
      el("td", {}, [s.dtype, s.quant && s.quant !== "none" ? s.quant : null].filter(Boolean).join(" · ") || "—"),
      el("td", {}, s.version || "—"));
  });
  if (rows.length === 0) rows.push(el("tr", {}, el("td", { colSpan: COLUMNS.length, className: "summary" }, "no servers announce this model")));
  const head = el("tr", {}, ...COLUMNS.map((c) => el("th", { className: NUMERIC.has(c) ? "num" : "" }, c)));
  return el("table", { className: "servers", dataset: { testid: "servers" } }, el("thead", {}, head), el("tbody", {}, ...rows));
}

function renderSummary(data) {
  const cov = data.coverage || [];
  const missing = missingOf(data);
  const online = (data.servers || []).filter((s) => String(s.state).toLowerCase() === "online").length;
  return el("div", { className: "summary", dataset: { testid: "summary", uncovered: missing } },
    el("b", {}, String(data.num_blocks ?? cov.length)), " blocks · ",
    el("b", {}, String((data.servers || []).length)), ` servers (${online} online) · `,
    missing ? el("b", { style: "color:var(--danger)" }, `${missing} blocks uncovered`) : "every block covered");
}

function renderModel(data) {
  return el("section", { className: "model", dataset: { testid: "model", modelId: data.model_id || "" } },
    el("h2", {}, el("span", { dataset: { testid: "model-id" } }, data.model_id || "?"),
      data.digest ? el("small", { className: "muted", title: "digest of the model's weights (its manifest)",
                                  dataset: { testid: "model-digest" } }, ` @${data.digest}`) : ""),
    renderSummary(data), renderBlocks(data), renderServers(data));
}

function render(models) {
  const covered = models.filter((m) => missingOf(m) === 0 && (m.num_blocks || 0) > 0).length;
  $("overview").replaceChildren(
    el("b", {}, String(models.length)), ` model${models.length === 1 ? "" : "s"} · `,
    el("b", {}, String(covered)), " fully covered");
  document.title = `corolla — swarm — ${models.map((m) => m.model_id).join(", ")}`;
  const sections = models.map(renderModel);
  if (sections.length === 0) sections.push(el("p", { className: "summary" }, "no model is announced in this swarm yet"));
  $("models").replaceChildren(...sections);
}

async function refresh() {
  const status = $("swarm-status");
  try {
    const r = await fetch("api/swarm", { cache: "no-store" });
    if (!r.ok) throw new Error(`HTTP ${r.status}`);
    const data = await r.json();
    render(Array.isArray(data.models) ? data.models : []);
    status.textContent = "updated " + new Date().toLocaleTimeString();
    status.classList.remove("error");
    document.body.dataset.loaded = "true";
  } catch (e) {
    status.textContent = "update failed: " + e.message + " (retrying)";
    status.classList.add("error");
  } finally {
    setTimeout(refresh, REFRESH_MS);
  }
}
refresh();
