// The shoal dashboard: sign in with an API key (kept in this tab's sessionStorage), then three
// pages that read the gateway's JSON views with that key as a bearer header. All data is written
// with textContent (never as HTML), and the page loads nothing from anywhere but this gateway.

import { barChart, lineChart } from "/dashboard/chart.js";

const KEY = "shoal.key";
const $ = id => document.getElementById(id);
let me = null;
let timer = null;

// -- helpers ------------------------------------------------------------------------------------

function el(tag, attrs = {}, ...children) {
  const e = document.createElement(tag);
  for (const [k, v] of Object.entries(attrs)) {
    if (k === "on") for (const [ev, f] of Object.entries(v)) e.addEventListener(ev, f);
    else if (k === "class") e.className = v;
    else e.setAttribute(k, String(v));
  }
  for (const c of children.flat()) {
    if (c === null || c === undefined || c === false) continue;
    e.append(c instanceof Node ? c : document.createTextNode(String(c)));
  }
  return e;
}

function table(headers, rows, rowAttrs = () => ({})) {
  return el("table", {}, el("thead", {}, el("tr", {}, headers.map(h => el("th", {}, h)))),
            el("tbody", {}, rows.map((r, i) => el("tr", rowAttrs(i), r.map(c => el("td", {}, c))))));
}

const short = v => (v || "").replace("sha256:", "").slice(0, 12);
const when = t => (t ? new Date(typeof t === "number" ? t * 1000 : t).toLocaleString() : "—");
const absent = text => el("p", { class: "absent" }, text);

async function api(path, options = {}) {
  const headers = { Authorization: `Bearer ${sessionStorage.getItem(KEY) || ""}` };
  if (options.json !== undefined) headers["Content-Type"] = "application/json";
  const r = await fetch(path, { method: options.method || "GET", headers, cache: "no-store",
                                body: options.json !== undefined ? JSON.stringify(options.json) : undefined });
  const text = await r.text();
  let body = null;
  try { body = text ? JSON.parse(text) : null; } catch { body = text; }
  const error = r.ok ? null : (body && body.error && body.error.message) || `HTTP ${r.status}`;
  return { status: r.status, ok: r.ok, body, error };
}

function failure(r) {
  return el("p", { class: r.status === 403 ? "forbidden" : "error", "data-status": r.status },
            `${r.status}: ${r.error}`);
}

// -- sign-in and navigation ---------------------------------------------------------------------

async function signIn(event) {
  event.preventDefault();
  sessionStorage.setItem(KEY, $("key").value.trim());
  $("key").value = "";
  await start();
}

async function start() {
  const r = await api("/dashboard/api/me");
  if (!r.ok) {
    const had = sessionStorage.getItem(KEY);
    sessionStorage.removeItem(KEY);
    $("login").hidden = false;
    $("nav").hidden = $("logout").hidden = true;
    $("page").replaceChildren();
    $("login-error").textContent = had ? r.error : "";
    return;
  }
  me = r.body;
  $("login").hidden = true;
  $("nav").hidden = $("logout").hidden = false;
  $("who").textContent = `${me.name || me.account_id || "open gateway"} (${me.role})`;
  if (!location.hash) location.hash = me.role === "maintainer" ? "#maintainer"
    : me.role === "contributor" ? "#contributor" : "#swarm";
  show();
}

function show() {
  if (!me) return;
  const name = (location.hash || "#swarm").slice(1);
  for (const a of document.querySelectorAll("#nav a")) a.classList.toggle("active", a.dataset.page === name);
  clearInterval(timer);
  const pages = { swarm: swarmPage, contributor: contributorPage, maintainer: maintainerPage };
  const render = pages[name] || swarmPage;
  render();
  if (render === swarmPage) timer = setInterval(swarmPage, 5000);
}

// -- swarm --------------------------------------------------------------------------------------

async function swarmPage() {
  const r = await api("/dashboard/api/swarm");
  if (!r.ok) return $("page").replaceChildren(failure(r));
  const s = r.body;
  const parts = [el("h2", {}, `Swarm serving ${s.model} @ ${short(s.current)}`)];
  if (!s.verification) parts.push(absent("Verification is off on this gateway: nodes are not checked, trust status is 'unchecked'."));
  if (s.discovery_error) parts.push(el("p", { class: "error" }, s.discovery_error));
  parts.push(el("p", {}, `${s.totals.requests} requests, ${s.totals.tokens} tokens, ${s.totals.traversals} traversals, ${s.totals.failovers} failovers since start`));

  const headers = ["node", "layers", "version", "trust", "sessions", "ms/layer (measured)", "ms/token/layer (claimed)", "batches"];
  if (s.full) headers.push("address", "last checks");
  parts.push(el("h2", {}, "Nodes"));
  if (!s.nodes.length) parts.push(absent("No node is announced to the tracker."));
  else parts.push(table(headers, s.nodes.map(n => {
    const cells = [n.node_id.slice(0, 16), `${n.start}–${n.end}`, n.versions.map(short).join(" "),
      el("span", { class: n.status === "evicted" ? "bad" : n.status === "trusted" ? "good" : "" },
         n.status + (n.reason ? `: ${n.reason}` : "")),
      n.sessions, n.measured_ms_per_layer == null ? "—" : n.measured_ms_per_layer.toFixed(2),
      n.ms_per_token_layer.toFixed(2), n.batches ?? "—"];
    if (s.full) cells.push(n.url, el("ul", {}, (n.last_checks || []).map(c =>
      el("li", { class: c.ok ? "good" : "bad" }, `${c.kind} ${c.ok ? "passed" : "FAILED"} ${c.check || ""} ${c.detail || ""} (${when(c.at)})`))));
    return cells;
  }), i => ({ "data-node-id": s.nodes[i].node_id, class: "node-row" })));

  parts.push(el("h2", {}, "Route map"));
  parts.push(s.route_error ? el("p", { class: "error" }, `No route: ${s.route_error}`)
    : el("p", {}, `Current route: ${s.route.map(n => n.slice(0, 8)).join(" → ")}`));
  const grid = el("div", { class: "layers" });
  grid.style.gridTemplateColumns = `repeat(${s.layers.length}, 1fr)`;  // CSSOM: allowed by the CSP
  for (const l of s.layers) {
    grid.append(el("div", { class: l.nodes.length ? "" : "gap", "data-layer": l.layer },
                   `L${l.layer}: `, l.nodes.length ? l.nodes.map(n => n.slice(0, 8)).join(", ") : "gap"));
  }
  parts.push(grid);

  parts.push(el("h2", {}, "Throughput"));
  parts.push(lineChart(s.throughput.map(p => ({ x: p.at, y: p.tokens_per_s })), { label: "tokens per second", unit: "tok/s" }));
  const recent = s.throughput.slice(-30).reduce((n, p) => n + p.requests, 0);
  parts.push(el("p", {}, `${recent} requests in the last ${Math.round(Math.min(30, s.throughput.length) * s.sample_every_s)} s (sampled every ${s.sample_every_s} s)`));

  parts.push(el("h2", {}, "Versions"));
  parts.push(table(["version", "phase", "in flight", "draft"], s.versions.loaded.map(v =>
    [short(v.version), v.phase, v.inflight, v.draft ? short(v.draft) : "—"])));
  const ch = s.versions.channel;
  parts.push(ch ? el("p", { class: ch.ok ? "" : "bad" }, `Following ${ch.channel}: #${ch.sequence ?? "?"} → ${short(ch.version)}${ch.ok ? "" : " (last read failed)"}`)
    : el("p", { class: "note" }, "This gateway follows no channel: it serves one version."));
  $("page").replaceChildren(...parts);
}

// -- contributor --------------------------------------------------------------------------------

async function contributorPage() {
  const mine = await api("/dashboard/api/contributor");
  if (!mine.ok) return $("page").replaceChildren(failure(mine));
  const grants = await api("/v1/grants");
  const parts = [el("h2", {}, "My grants")];
  parts.push(grants.ok ? table(["grant", "scopes", "created", "expires", "state", ""], grants.body.data.map(g => {
    const live = !g.revoked && new Date(g.expires_at) > new Date();
    return [g.grant_id, g.scopes.join(", "), when(g.created_at), when(g.expires_at),
      g.revoked ? "revoked" : live ? "active" : "expired",
      live ? el("button", { type: "button", class: "revoke", "data-grant": g.grant_id, on: { click: () => revoke(g.grant_id) } }, "Revoke") : ""];
  }), i => ({ "data-grant-id": grants.body.data[i].grant_id })) : failure(grants));
  const scopes = ["sft", "dpo", "eval", "distill", "drafting"];
  parts.push(el("form", { class: "inline", id: "new-grant", on: { submit: createGrant } },
    "New grant:", scopes.map(s => el("label", {}, el("input", { type: "checkbox", name: "scope", value: s }), s)),
    el("label", {}, "days ", el("input", { type: "number", name: "days", value: 30, min: 0.01, max: 3650, step: "any" })),
    el("button", { type: "submit" }, "Grant")));

  parts.push(el("h2", {}, "My traces"));
  parts.push(el("form", { class: "inline", id: "search", on: { submit: e => { e.preventDefault(); loadTraces(mine.body.feedback); } } },
    el("input", { name: "q", placeholder: "text in prompt or completion" }),
    el("input", { name: "model", placeholder: "model version (sha256:…)" }),
    el("label", {}, "min rating ", el("input", { type: "number", name: "min_rating", min: -1, max: 5 })),
    el("button", { type: "submit" }, "Search")));
  parts.push(el("div", { id: "traces" }));

  parts.push(el("h2", {}, "Feedback I gave"));
  const fb = mine.body.feedback;
  parts.push(fb.length ? table(["trace", "rating", "chosen / rejected / correction", "when"], fb.map(f =>
    [f.request_id, f.rating ?? "—", [f.chosen, f.rejected, f.correction].filter(Boolean).join(" / ") || "—", when(f.created_at)]))
    : el("p", { class: "note" }, "No feedback yet."));

  parts.push(el("h2", {}, "Where my traces went"));
  const lin = mine.body.lineage;
  const ds = Object.entries(lin.datasets);
  parts.push(ds.length ? table(["dataset", "my traces in it"], ds) : el("p", { class: "note" }, "No dataset has used your traces yet."));
  if (lin.registry) parts.push(absent(lin.registry));
  else if (ds.length) parts.push(lin.models.length ? table(["model version", "name", "kind", "datasets"], lin.models.map(m => [short(m.version), m.name, m.kind || "—", m.datasets.join(", ")]))
    : el("p", { class: "note" }, "No model version was trained on those datasets yet."));

  parts.push(el("h2", {}, "My data"));
  parts.push(el("p", {}, el("button", { type: "button", id: "export", on: { click: exportTraces } }, "Export (JSON lines)"), " ",
    el("button", { type: "button", id: "erase", on: { click: eraseAll } }, "Erase everything of mine")));
  parts.push(el("div", { id: "receipt" }));
  $("page").replaceChildren(...parts);
  await loadTraces(fb);
}

async function loadTraces(feedback) {
  const form = $("search");
  const params = new URLSearchParams({ limit: "200" });
  if (form.model.value.trim()) params.set("model", form.model.value.trim());
  if (form.min_rating.value !== "") params.set("min_rating", form.min_rating.value);
  const r = await api(`/v1/traces?${params}`);
  if (!r.ok) return $("traces").replaceChildren(failure(r));
  const q = form.q.value.trim().toLowerCase();
  const rows = r.body.data.filter(t => !q || (t.messages_json + t.completion).toLowerCase().includes(q));
  const rated = Object.fromEntries(feedback.map(f => [f.request_id, f.rating]));
  $("traces").replaceChildren(rows.length ? table(["trace", "when", "prompt", "completion", "model", "proof", "my rating", ""], rows.map(t => {
    let prompt = t.messages_json;
    try { prompt = JSON.parse(t.messages_json).map(m => m.content || "").join(" ⏎ "); } catch { /* shown raw */ }
    return [t.request_id, when(t.created_at), el("div", { class: "excerpt" }, prompt.slice(0, 200)),
      el("div", { class: "excerpt" }, t.completion.slice(0, 200)), short(t.model_version), t.proof_status,
      rated[t.request_id] ?? "—",
      el("button", { type: "button", on: { click: () => eraseTrace(t.request_id) } }, "Delete")];
  }), i => ({ "data-trace-id": rows[i].request_id, class: "trace-row" }))
    : el("p", { class: "note" }, "No traces match."));
}

async function createGrant(event) {
  event.preventDefault();
  const form = event.target;
  const scopes = [...form.querySelectorAll("input[name=scope]:checked")].map(i => i.value);
  const r = await api("/v1/grants", { method: "POST", json: { scopes, days: Number(form.days.value) } });
  if (!r.ok) return form.append(failure(r));
  contributorPage();
}

async function revoke(grantId) {
  const r = await api(`/v1/grants/${encodeURIComponent(grantId)}`, { method: "DELETE" });
  if (!r.ok) return $("page").prepend(failure(r));
  contributorPage();
}

function showReceipt(title, receipt) {
  $("receipt").replaceChildren(el("h2", {}, title), el("pre", { id: "receipt-body" }, JSON.stringify(receipt, null, 2)));
}

async function eraseTrace(requestId) {
  if (!confirm(`Delete trace ${requestId} for good?`)) return;
  const r = await api(`/v1/traces/${encodeURIComponent(requestId)}`, { method: "DELETE" });
  if (!r.ok) return $("receipt").replaceChildren(failure(r));
  await contributorPage();
  showReceipt("Erasure receipt", r.body);
}

async function eraseAll() {
  if (!confirm("Erase every trace, feedback and grant of yours? This cannot be undone.")) return;
  const r = await api("/v1/contributors/me", { method: "DELETE" });
  if (!r.ok) return $("receipt").replaceChildren(failure(r));
  await contributorPage();
  showReceipt("Erasure receipt", r.body);
}

async function exportTraces() {
  const r = await fetch("/v1/traces/export", { headers: { Authorization: `Bearer ${sessionStorage.getItem(KEY)}` }, cache: "no-store" });
  if (!r.ok) return $("receipt").replaceChildren(failure({ status: r.status, error: await r.text() }));
  const url = URL.createObjectURL(await r.blob());
  const a = el("a", { href: url, download: "shoal-traces.jsonl" }, "shoal-traces.jsonl");
  document.body.append(a);
  a.click();
  a.remove();
  setTimeout(() => URL.revokeObjectURL(url), 10000);
}

// -- maintainer ---------------------------------------------------------------------------------

async function maintainerPage() {
  const r = await api("/dashboard/api/maintainer");
  if (!r.ok) return $("page").replaceChildren(failure(r));
  const m = r.body;
  const parts = [el("h2", {}, "Channels")];
  if (m.registry) parts.push(absent(m.registry));
  for (const c of m.channels) {
    parts.push(el("h3", {}, `${c.channel}${c.role ? ` (signed by ${c.role} keys)` : ""}`));
    parts.push(c.error ? el("p", { class: "bad" }, `REFUSED: ${c.error}`)
      : table(["#", "version", "promoted", "note", "signers"], c.records.map(x =>
        [x.sequence, short(x.version), when(x.promoted_at), x.note || "—", x.signers.map(k => k.slice(0, 12)).join(", ")]),
        () => ({ class: "channel-row", "data-channel": c.channel })));
  }

  parts.push(el("h2", {}, "Candidates"));
  if (!m.registry && !m.candidates.length) parts.push(el("p", { class: "note" }, "No trained version in the registry yet."));
  for (const c of m.candidates) {
    if (c.error) { parts.push(el("p", { class: "bad" }, `${short(c.version)}: ${c.error}`)); continue; }
    const t = c.training || {};
    parts.push(el("h3", {}, `${c.name} ${short(c.version)} — ${t.kind || "?"} run ${t.run_id || "?"}: `,
      el("span", { class: c.accepted ? "good" : "bad" }, c.accepted == null ? "not evaluated" : c.accepted ? "gate passed" : "gate refused"),
      c.channels.length ? ` (on ${c.channels.join(", ")})` : ""));
    if (c.checks.length) {
      parts.push(table(["metric", "check", "production", "candidate", "delta", "passed"], c.checks.map(k =>
        [k.metric, k.kind, k.production ?? "—", k.candidate ?? "—", k.delta ?? "—", k.passed ? "yes" : "no"])));
      parts.push(barChart(c.checks.map(k => ({ label: k.metric, values: [
        { name: "production", value: k.production }, { name: "candidate", value: k.candidate }] })),
        { label: "candidate vs production" }));
    }
    if (c.reasons.length) parts.push(el("ul", {}, c.reasons.map(x => el("li", {}, x))));
  }

  parts.push(el("h2", {}, "Flow runs"));
  const f = m.flow_runs;
  if (!f.configured) parts.push(absent("No Prefect server is configured (shoal gateway --prefect-ui URL): flows ran in ephemeral mode; the candidates above name their training runs."));
  else if (f.error) parts.push(el("p", { class: "error" }, f.error));
  else parts.push(table(["flow run", "state", "started"], f.runs.map(x =>
    [el("a", { href: x.link, target: "_blank", rel: "noopener noreferrer" }, x.name), x.state, when(x.start)])));

  parts.push(el("h2", {}, "Usage"));
  const u = m.usage;
  if (!u.available) parts.push(absent("This gateway does not meter usage."));
  else if (u.error) parts.push(el("p", { class: "error" }, u.error));
  else {
    parts.push(table(["key owner", "requests", "batch lines", "prompt tokens", "completion tokens"], u.keys.map(k =>
      [k.owner, k.requests, k.batch_lines, k.prompt_tokens, k.completion_tokens])));
    parts.push(table(["node", "traversals", "positions", "checks passed", "checks failed"], u.nodes.map(n =>
      [n.node_id.slice(0, 16), n.traversals, n.positions, n.checks_passed, n.checks_failed])));
  }
  if (m.trace_ingestion) parts.push(el("p", {}, `Trace ingestion backlog: ${JSON.stringify(m.trace_ingestion)}`));
  $("page").replaceChildren(...parts);
}

// -- wiring -------------------------------------------------------------------------------------

$("login").addEventListener("submit", signIn);
$("logout").addEventListener("click", () => { sessionStorage.removeItem(KEY); me = null; clearInterval(timer); location.hash = ""; start(); });
window.addEventListener("hashchange", show);
start();
