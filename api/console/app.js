// The lunchrush operations console. Plain JavaScript, no dependency: every
// figure comes from /v1/admin/... with the admin token kept in this tab
// (sessionStorage). Data is only ever written with textContent, never as
// HTML: restaurant names, reasons and notes are other people's input.
"use strict";

const POLL_MS = 1500;
const HISTORY = 80;
const TOKEN_KEY = "lunchrush.ops.token";

let timer = null;
let history_ = { placements: [], captured: [], rejected: [], p99: [], settled: [] };

// ---- tiny DOM helpers ---------------------------------------------------

function el(tag, attrs, ...children) {
  const node = document.createElement(tag);
  for (const [key, value] of Object.entries(attrs || {})) {
    if (value === undefined || value === null || value === false) continue;
    if (key.startsWith("on")) node.addEventListener(key.slice(2), value);
    else if (key === "class") node.className = value;
    else if (key === "style") node.style.cssText = value;
    else node.setAttribute(key, value === true ? "" : String(value));
  }
  for (const child of children.flat()) {
    if (child === undefined || child === null) continue;
    node.append(child instanceof Node ? child : document.createTextNode(String(child)));
  }
  return node;
}

function svg(tag, attrs) {
  const node = document.createElementNS("http://www.w3.org/2000/svg", tag);
  for (const [key, value] of Object.entries(attrs || {})) node.setAttribute(key, String(value));
  return node;
}

function table(headers, rows, id) {
  return el("table", { id },
    el("thead", {}, el("tr", {}, headers.map((h) => el("th", { class: /^[#0-9]|\/s|ms|count|lag|pending|age|units/i.test(h) ? "num" : "" }, h)))),
    el("tbody", {}, rows.length ? rows : [el("tr", {}, el("td", { colspan: headers.length, class: "muted" }, "none"))]));
}

function num(value, digits = 0) {
  if (value === null || value === undefined || Number.isNaN(value)) return "–";
  return Number(value).toLocaleString("en-US", { maximumFractionDigits: digits, minimumFractionDigits: digits });
}

function age(ms) {
  if (ms === null || ms === undefined) return "–";
  if (ms < 1000) return `${Math.round(ms)} ms`;
  if (ms < 120000) return `${(ms / 1000).toFixed(1)} s`;
  if (ms < 7200000) return `${Math.round(ms / 60000)} min`;
  return `${(ms / 3600000).toFixed(1)} h`;
}

function bytes(value) {
  if (value === null || value === undefined) return "–";
  const units = ["B", "KiB", "MiB", "GiB", "TiB"];
  let v = Number(value), i = 0;
  while (v >= 1024 && i < units.length - 1) { v /= 1024; i += 1; }
  return `${v.toFixed(i ? 1 : 0)} ${units[i]}`;
}

function link(path, text) {
  return el("a", { href: path, onclick: (e) => { e.preventDefault(); go(path); } }, text);
}

// ---- the token and the API ----------------------------------------------

function token() { return sessionStorage.getItem(TOKEN_KEY); }

class ApiError extends Error {
  constructor(status, problem) {
    super(problem && problem.detail ? problem.detail : `HTTP ${status}`);
    this.status = status;
    this.problem = problem || {};
  }
}

async function api(path, options = {}) {
  const headers = { Authorization: `Bearer ${token()}` };
  if (options.body !== undefined) headers["Content-Type"] = "application/json";
  const response = await fetch(path, {
    method: options.method || "GET",
    headers,
    body: options.body === undefined ? undefined : JSON.stringify(options.body),
  });
  const body = await response.json().catch(() => null);
  if (!response.ok) {
    if (response.status === 401 || response.status === 403) loggedOut(body && body.detail);
    throw new ApiError(response.status, body);
  }
  return body;
}

function loggedOut(why) {
  sessionStorage.removeItem(TOKEN_KEY);
  stop();
  document.getElementById("view").hidden = true;
  document.getElementById("nav").hidden = true;
  document.getElementById("logout").hidden = true;
  document.getElementById("login").hidden = false;
  document.getElementById("login-error").textContent = why || "";
}

async function login(candidate) {
  sessionStorage.setItem(TOKEN_KEY, candidate.trim());
  try {
    await api("/v1/admin/overview");
  } catch (error) {
    if (token() === null) return false;
    loggedOut(error.message);
    return false;
  }
  document.getElementById("login").hidden = true;
  document.getElementById("view").hidden = false;
  document.getElementById("nav").hidden = false;
  document.getElementById("logout").hidden = false;
  document.getElementById("login-error").textContent = "";
  route();
  return true;
}

// ---- routing ------------------------------------------------------------

function stop() { if (timer) { clearInterval(timer); timer = null; } }

function poll(fn) {
  stop();
  const tick = () => fn().catch((error) => status(`error: ${error.message}`, true));
  tick();
  timer = setInterval(tick, POLL_MS);
}

function status(text, bad) {
  const node = document.getElementById("status");
  node.textContent = text;
  node.className = bad ? "error" : "muted";
}

function go(path) { window.history.pushState({}, "", path); route(); }

function route() {
  if (!token()) return;
  const path = window.location.pathname.replace(/\/+$/, "");
  const view = document.getElementById("view");
  view.replaceChildren();
  let name = "overview";
  const order = path.match(/^\/ops\/orders\/([0-9a-fA-F-]{36})$/);
  if (order) { name = "orders"; orderPage(view, order[1]); }
  else if (path === "/ops/orders") { name = "orders"; ordersPage(view); }
  else if (path === "/ops/stuck") { name = "stuck"; stuckPage(view); }
  else if (path === "/ops/dead-letters") { name = "letters"; lettersPage(view); }
  else if (path === "/ops/actions") { name = "actions"; actionsPage(view); }
  else overviewPage(view);
  for (const a of document.querySelectorAll("#nav a")) a.classList.toggle("active", a.dataset.view === name);
}

// ---- overview -----------------------------------------------------------

function push(series, value) {
  series.push(value === null || value === undefined ? null : Number(value));
  while (series.length > HISTORY) series.shift();
}

function chart(title, lines, unit) {
  const width = 400, height = 140;
  const all = lines.flatMap((l) => l.values).filter((v) => v !== null);
  const top = Math.max(1, ...all) * 1.1;
  const box = svg("svg", { viewBox: `0 0 ${width} ${height}`, class: "chart", preserveAspectRatio: "none" });
  for (const line of lines) {
    // The newest point at the right edge; history grows to the left.
    const offset = HISTORY - line.values.length;
    const points = line.values.map((v, i) => v === null ? null : `${((offset + i) / (HISTORY - 1)) * width},${height - (v / top) * height}`).filter(Boolean);
    box.append(svg("polyline", { points: points.join(" "), stroke: line.color }));
  }
  const legend = el("div", { class: "legend" }, lines.map((l) =>
    el("span", {}, el("i", { style: `background:${l.color}` }), `${l.name}: ${num(l.values[l.values.length - 1], 1)} ${unit}`)));
  return el("div", { class: "card" }, el("h2", {}, title), box, legend);
}

function kpi(id, label, value) {
  return el("div", { class: "kpi" }, el("div", { class: "value", id }, value), el("div", { class: "label" }, label));
}

function overviewPage(view) {
  const body = el("div", { id: "overview" });
  view.append(el("h1", {}, "Overview"), body);
  poll(async () => {
    const o = await api("/v1/admin/overview");
    const rates = (o.archive && o.archive.events_per_s) || {};
    const settled = (o.archive && o.archive.placed_to_settled) || {};
    const engine = o.this_engine;
    push(history_.placements, engine.placements_per_s);
    push(history_.captured, rates.PaymentCaptured || 0);
    push(history_.rejected, (rates.OrderRejected || 0));
    push(history_.p99, engine.placement_p99_ms);
    push(history_.settled, settled.p99_ms);
    const funnel = o.funnel || { rows: [] };
    const letters = o.letters || {};
    const archiver = o.archiver || {};
    const memory = o.memory || {};
    const memoryState = memory.state === "accepting" ? "" : "bad";
    const toHigh = memory.to_high_water_s === null || memory.to_high_water_s === undefined
      ? "not growing" : `high-water mark in ${age(memory.to_high_water_s * 1000)}`;
    const timers = o.timers || { overdue_by_kind: {} };
    body.replaceChildren(
      el("div", { class: "kpis" },
        kpi("kpi-placements", "placements/s (this engine)", num(engine.placements_per_s, 1)),
        kpi("kpi-placements-total", "placed since start (this engine)", num(engine.placements_total)),
        kpi("kpi-placed", "orders placed/s (all engines)", num(rates.OrderPlaced || 0, 1)),
        kpi("kpi-captured", "payments captured/s", num(rates.PaymentCaptured || 0, 1)),
        kpi("kpi-placement-p99", "placement p50 / p99 ms", `${num(engine.placement_p50_ms, 1)} / ${num(engine.placement_p99_ms, 1)}`),
        kpi("kpi-settled-p99", "placed → settled p50 / p99 ms", `${num(settled.p50_ms, 0)} / ${num(settled.p99_ms, 0)}`),
        kpi("kpi-unsettled", "unsettled sagas", num(funnel.unsettled)),
        kpi("kpi-archive-lag", "events not yet archived", num((archiver.lag_entries || 0) + (archiver.pending_entries || 0))),
        kpi("kpi-letters", "dead letters / parked", `${num(letters.dead)} / ${num(letters.parked)}`),
        kpi("kpi-memory", memory.limit_bytes ? "Redis memory used / high-water mark" : "Redis memory used (no maxmemory)",
          memory.limit_bytes ? `${bytes(memory.used_bytes)} / ${bytes(memory.high_water_bytes)}` : bytes(memory.used_bytes))),
      el("div", { class: "grid" },
        chart("Placements and outcomes per second", [
          { name: "placements (this engine)", color: "#c2410c", values: history_.placements },
          { name: "captured", color: "#15803d", values: history_.captured },
          { name: "rejected", color: "#b91c1c", values: history_.rejected }], "/s"),
        chart("Latency (ms)", [
          { name: "placement p99", color: "#7c3aed", values: history_.p99 },
          { name: "placed → settled p99", color: "#0369a1", values: history_.settled }], "ms"),
        el("div", { class: "card" }, el("h2", {}, "Saga funnel (unsettled)"),
          el("p", { class: "muted" }, `${num(funnel.unsettled)} unsettled, ${num(funnel.resting)} at rest awaiting retirement; states of the ${num(funnel.sampled)} oldest`),
          table(["status", "payment", "count", "oldest age"], funnel.rows.map((r) =>
            el("tr", {}, el("td", {}, r.status), el("td", {}, r.pay), el("td", { class: "num" }, num(r.count)), el("td", { class: "num" }, age(r.oldest_age_ms)))), "funnel")),
        el("div", { class: "card" }, el("h2", {}, "Consumer groups"),
          table(["group", "topic", "lag", "pending", "oldest age"], (o.groups || []).filter((g) => g.lag || g.pending || g.group !== "operator").map((g) =>
            el("tr", {}, el("td", {}, g.group), el("td", {}, g.topic), el("td", { class: "num" }, num(g.lag)), el("td", { class: "num" }, num(g.pending)),
              el("td", { class: "num" }, g.oldest_ms ? age(Date.now() - g.oldest_ms) : "–"))), "groups")),
        el("div", { class: "card" }, el("h2", {}, "Timers"),
          el("p", {}, `${num(timers.scheduled)} scheduled, `, el("span", { class: timers.overdue ? "warn" : "" }, `${num(timers.overdue)} overdue`),
            timers.next_due_ms ? `, next in ${age(Math.max(0, timers.next_due_ms - Date.now()))}` : ""),
          table(["kind", "overdue"], Object.entries(timers.overdue_by_kind).map(([k, n]) =>
            el("tr", {}, el("td", {}, k), el("td", { class: "num" }, num(n)))), "timers"),
          el("h2", {}, "Archiver"),
          el("p", { id: "archiver-lag" }, `${num(archiver.lag_entries)} unread, ${num(archiver.pending_entries)} in flight (${bytes(archiver.bytes)} in Redis); oldest ${age(archiver.oldest_age_ms)}`),
          el("h2", {}, "Redis memory budget"),
          el("p", { id: "memory-budget" },
            el("span", { class: memoryState }, memory.state === "accepting" ? "taking new orders" : `refusing new orders (${memory.state})`),
            `: ${bytes(memory.used_bytes)} used of ${memory.limit_bytes ? bytes(memory.limit_bytes) : "no limit"}; `,
            `high-water ${bytes(memory.high_water_bytes)}, low-water ${bytes(memory.low_water_bytes)}, reserve ${bytes(memory.reserve_bytes)} for ${num(memory.orders_in_flight)} orders in flight; ${toHigh}`,
            memory.refused ? el("span", { class: "bad" }, ` (${memory.refused})`) : "")),
        el("div", { class: "card" }, el("h2", {}, "Busiest restaurants (this engine, last 1–2 min)"),
          table(["restaurant", "placements"], engine.busiest_restaurants.map((r) =>
            el("tr", {}, el("td", {}, link(`/ops/orders?restaurant=${encodeURIComponent(r.restaurant_id)}`, r.restaurant_id)), el("td", { class: "num" }, num(r.placements)))), "busiest")),
        el("div", { class: "card" }, el("h2", {}, "Last reconciliation runs"),
          table(["#", "finished", "dry run", "exit", "fixed"], ((o.archive && o.archive.reconciliation_runs) || []).map((r) =>
            el("tr", {}, el("td", { class: "num" }, r.id), el("td", {}, r.finished_at), el("td", {}, r.dry_run ? "yes" : "no"),
              el("td", { class: r.exit_status ? "bad" : "good" }, r.exit_status), el("td", { class: "mono" }, JSON.stringify(r.summary).slice(0, 120)))), "runs"))),
      (o.errors || []).length ? el("p", { class: "error" }, `Unavailable: ${o.errors.join("; ")}`) : "");
    status(`updated ${new Date().toLocaleTimeString()}`);
  });
}

// ---- orders -------------------------------------------------------------

function orderRow(o) {
  return el("tr", {}, el("td", { class: "mono" }, link(`/ops/orders/${o.order_id}`, o.order_id)), el("td", {}, o.customer), el("td", {}, o.restaurant_id),
    el("td", {}, o.status), el("td", {}, o.payment.status), el("td", { class: "num" }, num(o.total)), el("td", {}, o.created_at), el("td", {}, o.source));
}

function ordersPage(view) {
  stop();
  const params = new URLSearchParams(window.location.search);
  const field = (name, label) => el("div", {}, el("label", { for: `search-${name}` }, label), el("input", { id: `search-${name}`, name, value: params.get(name) || "" }));
  const results = el("div", { id: "search-results" });
  const run = async () => {
    const query = new URLSearchParams();
    for (const name of ["id", "customer", "restaurant", "status", "older_than"]) {
      const value = document.getElementById(`search-${name}`).value.trim();
      if (value) query.set(name, value);
    }
    window.history.replaceState({}, "", `/ops/orders?${query}`);
    try {
      const answer = await api(`/v1/admin/orders?${query}`);
      if (query.get("id") && answer.orders.length === 1) return go(`/ops/orders/${answer.orders[0].order_id}`);
      results.replaceChildren(table(["order", "customer", "restaurant", "status", "payment", "total", "placed", "where"], answer.orders.map(orderRow), "orders-table"));
    } catch (error) { results.replaceChildren(el("p", { class: "error" }, error.message)); }
  };
  const form = el("form", { class: "card", id: "search", onsubmit: (e) => { e.preventDefault(); run(); } },
    el("div", { class: "row" }, field("id", "Order id"), field("customer", "Customer"), field("restaurant", "Restaurant"), field("status", "Status"), field("older_than", "Placed before (e.g. 5m)")),
    el("button", { type: "submit", id: "search-button" }, "Search"));
  view.append(el("h1", {}, "Orders"), form, results);
  if ([...params.keys()].length) run();
}

function orderPage(view, id) {
  const body = el("div", { id: "order" });
  const reason = el("input", { id: "order-reason", placeholder: "why (recorded with the action)" });
  let seen = null;
  const act = async (action) => {
    const result = await api("/v1/admin/sagas", { method: "POST", body: { action, orders: [{ id, version: seen }], reason: reason.value } }).catch((e) => ({ error: e.message }));
    document.getElementById("order-action-result").textContent = result.error || result.results.map((r) => `${r.outcome}${r.code ? ` (${r.code})` : ""}: ${r.detail}`).join("; ");
  };
  view.append(el("h1", {}, "Order ", el("span", { class: "mono" }, id)), body,
    el("div", { class: "card" }, el("h2", {}, "Act on this order"), reason,
      el("button", { type: "button", id: "order-redrive", onclick: () => act("redrive") }, "Re-drive"), " ",
      el("button", { type: "button", class: "secondary", id: "order-compensate", onclick: () => act("compensate") }, "Compensate"),
      el("p", { id: "order-action-result", class: "muted" })));
  poll(async () => {
    let d;
    try { d = await api(`/v1/admin/orders/${id}`); } catch (error) {
      body.replaceChildren(el("p", { class: "error", id: "order-error" }, error.message)); return;
    }
    // Actions go with the version the operator first saw: if the order
    // moves meanwhile, the server refuses them (order_moved), never forces.
    if (seen === null) seen = d.order.version;
    const moved = d.order.version !== seen;
    const provider = d.payment.provider;
    body.replaceChildren(
      moved ? el("p", { class: "warn", id: "order-moved" }, `The order changed since you opened this page (version ${seen} → ${d.order.version}): actions are refused until you reload it.`) : "",
      el("div", { class: "side" },
        el("div", { class: "card" }, el("h2", {}, "State"),
          table(["", ""], [
            ["status", el("span", { id: "order-status" }, d.order.status)], ["payment", d.order.payment.status], ["version", d.order.version],
            ["customer", d.order.customer], ["restaurant", link(`/ops/orders?restaurant=${encodeURIComponent(d.order.restaurant_id)}`, d.order.restaurant_id)],
            ["total", num(d.order.total)], ["reason", d.order.reason || "–"], ["decision", d.order.decision || "–"],
            ["waiting on", d.order.waiting_on || "settled"], ["held in", d.order.source]].map(([k, v]) => el("tr", {}, el("th", {}, k), el("td", {}, v))))),
        el("div", { class: "card", id: "order-payment" }, el("h2", {}, "Payment: ours and the provider's"),
          table(["", ""], [
            ["ours", d.payment.ours], ["provider", provider.error ? `unavailable: ${provider.error}` : (provider.state || "never saw it")],
            ["provider amount", provider.amount === undefined ? "–" : num(provider.amount)], ["provider ref", provider.ref || "–"],
            ["agree", el("span", { class: `badge ${d.payment.agrees ? "good" : "bad"}`, id: "order-agrees" }, d.payment.agrees ? "yes" : "no")]]
            .map(([k, v]) => el("tr", {}, el("th", {}, k), el("td", {}, v)))))),
      el("div", { class: "card" }, el("h2", {}, "Timeline"),
        table(["#", "event", "at", "stream", "entry", "archived"], d.events.map((e) =>
          el("tr", {}, el("td", { class: "num" }, e.seq), el("td", {}, e.type), el("td", {}, e.at), el("td", { class: "mono" }, e.stream), el("td", { class: "mono" }, e.entry_id),
            el("td", {}, e.archived === null ? "?" : (e.archived ? "yes" : "not yet")))), "timeline")),
      el("div", { class: "side" },
        el("div", { class: "card" }, el("h2", {}, "Timers set"),
          table(["kind", "due"], d.timers.map((t) => el("tr", {}, el("td", {}, t.kind), el("td", {}, t.due_at))), "order-timers"),
          el("h2", {}, "Timers fired"),
          table(["kind", "due", "fired", "late"], d.timers_fired.map((t) => el("tr", {}, el("td", {}, t.kind), el("td", {}, t.due_at), el("td", {}, t.fired_at),
            el("td", { class: "num" }, age(t.late_ms)))), "order-timers-fired"),
          el("h2", {}, "Notifications sent"),
          table(["kind", "channel", "attempts", "sent"], d.notifications.map((n) => el("tr", {}, el("td", {}, n.kind), el("td", {}, n.channel || "–"),
            el("td", { class: "num" }, n.attempts === null ? "–" : n.attempts), el("td", {}, n.sent_at || "not archived yet"))), "order-notifications")),
        el("div", { class: "card" }, el("h2", {}, "Operator actions"),
          table(["at", "who", "action", "outcome", "why"], d.actions.map((a) =>
            el("tr", {}, el("td", {}, a.at), el("td", {}, a.actor), el("td", {}, a.action), el("td", {}, a.outcome), el("td", {}, a.reason))), "order-actions"))));
    status(`updated ${new Date().toLocaleTimeString()}`);
  });
}

// ---- stuck sagas --------------------------------------------------------

function stuckPage(view) {
  stop();
  const sla = el("input", { id: "stuck-sla", value: "60s" });
  const reason = el("input", { id: "stuck-reason", placeholder: "why (recorded with the action)" });
  const list = el("div", { id: "stuck-list" });
  const result = el("p", { id: "stuck-result", class: "muted" });
  let shown = [];
  const load = async () => {
    const answer = await api(`/v1/admin/stuck?older_than=${encodeURIComponent(sla.value)}`);
    shown = answer.sagas;
    list.replaceChildren(table(["", "order", "status", "payment", "waiting on", "stuck for", "restaurant"], shown.map((s) =>
      el("tr", {}, el("td", {}, el("input", { type: "checkbox", class: "pick", value: s.id, "data-version": s.version })),
        el("td", { class: "mono" }, link(`/ops/orders/${s.id}`, s.id)), el("td", {}, s.status), el("td", {}, s.pay), el("td", {}, s.waiting_on),
        el("td", { class: "num" }, age(Date.now() - s.updated_ms)), el("td", {}, s.restaurant))), "stuck-table"));
  };
  const act = async (action) => {
    const orders = [...list.querySelectorAll("input.pick:checked")].map((c) => ({ id: c.value, version: Number(c.dataset.version) }));
    if (!orders.length) { result.textContent = "select sagas first"; return; }
    try {
      const answer = await api("/v1/admin/sagas", { method: "POST", body: { action, orders, reason: reason.value } });
      const count = (o) => answer.results.filter((r) => r.outcome === o).length;
      result.textContent = `${action}: ${count("done")} done, ${count("refused")} refused (moved meanwhile), ${count("failed")} failed`;
    } catch (error) { result.textContent = error.message; }
    load();
  };
  view.append(el("h1", {}, "Stuck sagas"),
    el("div", { class: "card" }, el("div", { class: "row" }, el("div", {}, el("label", { for: "stuck-sla" }, "Unchanged for longer than"), sla),
      el("div", {}, el("label", { for: "stuck-reason" }, "Reason"), reason)),
      el("button", { type: "button", id: "stuck-load", class: "secondary", onclick: load }, "Refresh"), " ",
      el("button", { type: "button", id: "stuck-redrive", onclick: () => act("redrive") }, "Re-drive selected"), " ",
      el("button", { type: "button", id: "stuck-compensate", onclick: () => act("compensate") }, "Compensate selected"), result),
    el("div", { class: "card" }, list));
  load().catch((error) => list.replaceChildren(el("p", { class: "error" }, error.message)));
}

// ---- dead letters -------------------------------------------------------

function lettersPage(view) {
  const reason = el("input", { id: "letters-reason", placeholder: "why (required to resolve; recorded)" });
  const result = el("p", { id: "letters-result", class: "muted" });
  const list = el("div", { id: "letters-list" });
  const act = async (letter, verb) => {
    const path = `/v1/admin/dead-letters/${letter.kind}/${letter.partition}/${encodeURIComponent(letter.id)}/${verb}`;
    try {
      const answer = await api(path, { method: "POST", body: { reason: reason.value } });
      result.textContent = `${verb} ${letter.id}: ${answer.outcome}${answer.detail ? ` — ${answer.detail}` : ""}`;
    } catch (error) { result.textContent = `${verb} ${letter.id}: ${error.message}`; }
    refresh();
  };
  const refresh = async () => {
    const answer = await api("/v1/admin/dead-letters");
    list.replaceChildren(table(["kind", "entry", "event", "order", "group", "tries", "reason", ""], answer.letters.map((l) =>
      el("tr", { "data-entry": l.id },
        el("td", {}, el("span", { class: `badge ${l.kind === "dead" ? "bad" : "warn"}` }, l.kind)), el("td", { class: "mono" }, `${l.partition}/${l.id}`),
        el("td", {}, l.event || "?"), el("td", { class: "mono" }, l.order ? link(`/ops/orders/${l.order}`, l.order.slice(0, 8)) : "–"), el("td", {}, l.group),
        el("td", { class: "num" }, l.deliveries === null ? "–" : l.deliveries), el("td", { class: "reason" }, l.reason),
        el("td", {}, el("button", { type: "button", class: "retry", onclick: () => act(l, "retry") }, "Retry"), " ",
          el("button", { type: "button", class: "secondary resolve", onclick: () => act(l, "resolve") }, "Resolve")))), "letters-table"));
    status(`updated ${new Date().toLocaleTimeString()}`);
  };
  view.append(el("h1", {}, "Dead letters and parked compensations"),
    el("div", { class: "card" }, el("label", { for: "letters-reason" }, "Reason"), reason, result), el("div", { class: "card" }, list));
  poll(refresh);
}

// ---- audit --------------------------------------------------------------

function actionsPage(view) {
  const list = el("div", { id: "actions-list" });
  view.append(el("h1", {}, "Audit: every operator action"), el("div", { class: "card" }, list));
  poll(async () => {
    const answer = await api("/v1/admin/actions?limit=200");
    list.replaceChildren(table(["at", "who", "action", "subject", "outcome", "why", "detail"], answer.actions.map((a) =>
      el("tr", {}, el("td", {}, a.at), el("td", {}, a.actor), el("td", {}, a.action),
        el("td", { class: "mono" }, a.order_id ? link(`/ops/orders/${a.order_id}`, a.subject) : a.subject),
        el("td", { class: a.outcome === "done" ? "good" : "warn" }, a.outcome), el("td", {}, a.reason), el("td", {}, a.detail))), "actions-table"));
  });
}

// ---- start --------------------------------------------------------------

window.addEventListener("popstate", route);
window.addEventListener("DOMContentLoaded", () => {
  document.getElementById("login-button").addEventListener("click", () => login(document.getElementById("login-token").value));
  document.getElementById("logout").addEventListener("click", () => loggedOut("logged out"));
  const fragment = new URLSearchParams(window.location.hash.slice(1));
  if (fragment.get("token")) {
    sessionStorage.setItem(TOKEN_KEY, fragment.get("token"));
    window.history.replaceState({}, "", window.location.pathname + window.location.search);
  }
  if (token()) login(token());
});
