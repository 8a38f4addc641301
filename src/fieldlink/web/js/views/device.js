// One device: status and why, its newest values with their age, live charts of its numeric
// metrics over the last 15 minutes (extended by every telemetry event), a history chart with
// drag-to-zoom over the bucketed REST query, a command panel that follows each command to its
// outcome, the command log and the device's alerts.

import {h, setText, setClass, setAttr, clear, Throttled, markReady} from "../dom.js";
import * as fmt from "../format.js";
import {TimeChart, Rolling, color} from "../charts.js";
import {reconcile} from "./alerts.js";

export const title = (params) => params.id;
const LIVE_WINDOW_MS = 15 * 60_000;
const MAX_CHARTS = 6;
const MAX_LOG = 25;
const RANGES = [["1 h", 3600_000], ["6 h", 6 * 3600_000], ["24 h", 86_400_000], ["7 d", 7 * 86_400_000]];
const BUCKETS = [["10s", 10_000], ["1m", 60_000], ["15m", 900_000], ["1h", 3600_000], ["1d", 86_400_000]];
const HISTORY_POINTS = 600;
const ACTIONS = ["charge", "discharge", "idle", "setpoint", "auto"];

let ctx = null;
let id = "";
let ui = null;
let offs = [];
let charts = new Map();      // metric -> {chart, rolling, box, now}
let valueCards = new Map();  // metric -> {card, v, age}
let redraw = null;
let ticker = 0;
let history = null;          // {chart, metric, range: [start, end], agg, zoomed}
let mine = new Set();        // command ids sent from this page
let watching = null;         // the command the panel follows
let commandPoll = 0;
let seeded = false;
let lastSlide = 0;
let mounted = {};

export function mount(el, params, context) {
  ctx = context;
  id = params.id;
  charts = new Map(); valueCards = new Map(); mine = new Set(); watching = null; seeded = false;
  ui_command = null;
  mounted = {};
  clear(el);
  build(el);
  const store = ctx.store;
  redraw = new Throttled(render, 200);
  offs = [
    store.on("device", (d) => { if (d.device_id === id) redraw.request(); }),
    store.on("telemetry", (d, data) => { if (d.device_id === id) livePoint(data); }),
    store.on("command", (c) => { if (c.device_id === id || mine.has(c.id)) { renderLog(); if (watching === c.id) renderLife(); } }),
    store.on("alert", (a) => { if (a.device_id === id) renderAlerts(); }),
    store.on("devices", () => redraw.request()),
  ];
  ticker = setInterval(() => redraw.request(), 1000);
  load();
}

export function unmount() {
  for (const off of offs) off();
  offs = [];
  clearInterval(ticker);
  clearInterval(commandPoll);
  redraw.cancel();
  for (const c of charts.values()) c.chart.destroy();
  charts.clear();
  if (history && history.chart) history.chart.destroy();
  history = null;
  ctx = null;
}

/** While the socket is down: the device, new points, its commands and alerts over REST. */
export async function poll() {
  const {api, store} = ctx;
  const last = lastPointMs();
  const start = last ? last + 1 : store.now() - LIVE_WINDOW_MS;
  const [device, points] = await Promise.all([
    api.get(`/api/devices/${api.enc(id)}`),
    api.get(`/api/devices/${api.enc(id)}/telemetry${api.query({start, limit: 5000})}`),
  ]);
  if (!ctx) return;
  store.upsertDevice(device);
  for (const p of points.points) livePoint(p);
  await Promise.all([loadCommands(), loadAlerts()]);
}

// ---- layout ------------------------------------------------------------------------------------

function build(el) {
  const badge = h("span.badge.unknown", {dataset: {testid: "status"}, text: "unknown"});
  const reason = h("span.reason", {dataset: {testid: "reason"}});
  const seen = h("span.muted", {dataset: {testid: "last-seen"}});
  const meta = h("p.device-meta", {dataset: {testid: "device-meta"}});
  const values = h("div.value-grid", {dataset: {testid: "values"}});
  const chartsBox = h("div.charts", {dataset: {testid: "live-charts"}});
  const missing = h("p.empty", {hidden: true, dataset: {testid: "not-found"}});
  el.append(
    h("p.small", null, h("a", {href: "#/devices", text: "← Devices"})),
    h("div.device-head", null, h("h1", {text: id}), badge, reason, seen),
    meta, missing);
  const body = h("div.stack");
  el.append(body);
  body.append(h("div.panel", null,
    h("div.panel-head", null, h("h2", {text: "Latest values"}), h("span.muted.small", {text: "each with its age; stale values are struck through"})),
    values));
  body.append(h("div.panel", null,
    h("div.panel-head", null, h("h2", {text: "Live, last 15 minutes"}), h("span.muted.small", {dataset: {testid: "live-note"}})),
    chartsBox));
  body.append(buildHistory());
  const lower = h("div.cols");
  if (ctx.store.canOperate) lower.append(buildCommandPanel());
  const alertsList = h("ul.alert-list", {dataset: {testid: "device-alerts"}});
  lower.append(h("div.panel", null, h("div.panel-head", null, h("h2", {text: "Alerts"})), alertsList));
  body.append(lower);
  const log = h("tbody");
  body.append(h("div.panel", null,
    h("div.panel-head", null, h("h2", {text: "Command log"}), h("span.muted.small", {text: `newest first, the last ${MAX_LOG}`})),
    h("div.scroll", null, h("table.grid", {dataset: {testid: "command-log"}},
      h("thead", null, h("tr", null, ...["Sent", "Action", "Status", "Outcome", "By"].map((t) => h("th", {scope: "col", text: t})))),
      log))));
  ui = {badge, reason, seen, meta, values, chartsBox, missing, body, log, alertsList,
        liveNote: chartsBox.parentElement.querySelector('[data-testid="live-note"]')};
}

// ---- data --------------------------------------------------------------------------------------

async function load() {
  const {api, store} = ctx;
  try {
    const device = await api.get(`/api/devices/${api.enc(id)}`);
    if (!ctx) return;
    store.upsertDevice(device);
  } catch (e) {
    if (!ctx) return;
    if (e.status === 404) {
      ui.missing.hidden = false;
      setText(ui.missing, `No device ${id} here (unknown, deleted, or another tenant's).`);
      ui.body.hidden = true;
      return;
    }
  }
  redraw.request();
  const now = store.now();
  try {
    // The newest 15 minutes, newest first (a fast device has more than one page of them).
    const recent = await api.get(`/api/devices/${api.enc(id)}/telemetry${api.query({start: now - LIVE_WINDOW_MS, end: now + 60_000, order: "desc", limit: 5000})}`);
    if (!ctx) return;
    seed(recent.points.reverse());
  } catch (e) { seeded = true; }
  loadCommands();
  loadAlerts();
  loadHistory();
}

async function loadCommands() {
  try {
    const found = await ctx.api.get(`/api/devices/${ctx.api.enc(id)}/commands?limit=${MAX_LOG}`);
    if (!ctx) return;
    for (const c of found.commands) ctx.store.command(c);
    renderLog();
  } catch (e) { /* shown by the connection state */ }
}

async function loadAlerts() {
  try {
    const found = await ctx.api.get(`/api/devices/${ctx.api.enc(id)}/alerts?limit=50`);
    if (!ctx) return;
    for (const a of found.alerts) ctx.store.alert(a);
    renderAlerts();
  } catch (e) { /* idem */ }
}

// ---- live charts -------------------------------------------------------------------------------

function numericMetrics(record) {
  const out = [];
  for (const key in record) {
    if (key === "ts" || key === "seq" || key === "device_id") continue;
    if (typeof record[key] === "number") out.push(key);
  }
  return out;
}

function chartFor(metric) {
  let c = charts.get(metric);
  if (c || charts.size >= MAX_CHARTS) return c;
  const current = h("span.v", {text: ""});
  const box = h("div.chart");
  const wrap = h("div.chart-box", {dataset: {testid: "live-chart", metric, points: "0"}},
    h("div.title", null, h("span", {text: metric}), current), box);
  ui.chartsBox.append(wrap);
  const rolling = new Rolling(LIVE_WINDOW_MS);
  rolling.reset([metric]);
  const chart = new TimeChart(box, [{label: metric, stroke: color(1)}], {
    range: () => { const n = ctx ? ctx.store.now() : Date.now(); return [(n - LIVE_WINDOW_MS) / 1000, n / 1000]; },
  });
  c = {chart, rolling, wrap, current, dirty: true};
  charts.set(metric, c);
  return c;
}

function seed(points) {
  for (const p of points) addPoint(p);
  seeded = true;
  if (ctx) redraw.request();
}

function addPoint(record) {
  const ts = record.ts;
  if (!ts) return;
  for (const metric of numericMetrics(record)) {
    const c = chartFor(metric);
    if (c && c.rolling.push(ts, [record[metric]])) c.dirty = true;
  }
}

function livePoint(data) {
  addPoint(data);
  redraw.request();
}

function lastPointMs() {
  let last = 0;
  for (const c of charts.values()) {
    const xs = c.rolling.xs;
    if (xs.length) last = Math.max(last, xs[xs.length - 1] * 1000);
  }
  return last;
}

// ---- history (bucketed REST, drag to zoom) -----------------------------------------------------

function buildHistory() {
  const metric = h("select", {dataset: {testid: "history-metric"}, "aria-label": "Metric"});
  const agg = h("select", {dataset: {testid: "history-agg"}, "aria-label": "Aggregate"},
    ...["avg", "min", "max", "last", "count"].map((a) => h("option", {value: a, text: a})));
  const seg = h("div.seg", {role: "group", "aria-label": "Range"});
  for (const [label, ms] of RANGES) {
    seg.append(h("button", {type: "button", text: label, dataset: {range: String(ms)}, "aria-pressed": ms === RANGES[1][1] ? "true" : "false",
      onclick: () => { for (const b of seg.children) b.setAttribute("aria-pressed", String(b.dataset.range === String(ms))); history.span = ms; history.zoom = null; loadHistory(); }}));
  }
  const reset = h("button", {type: "button", text: "Reset zoom", hidden: true, dataset: {testid: "history-reset"},
    onclick: () => { history.zoom = null; loadHistory(); }});
  const note = h("span.muted.small", {dataset: {testid: "history-note"}});
  const box = h("div.chart.hist", {dataset: {testid: "history-chart", points: "0"}});
  metric.onchange = () => loadHistory();
  agg.onchange = () => loadHistory();
  history = {metric, agg, seg, reset, note, box, chart: null, span: RANGES[1][1], zoom: null, seq: 0,
             requested: false, window: [0, 1]};
  return h("div.panel", null,
    h("div.panel-head", null, h("h2", {text: "History"}), h("span.muted.small", {text: "drag across the chart to zoom in"})),
    h("div.controls", null, h("label", null, "Metric", metric), h("label", null, "Aggregate", agg), seg, reset, note),
    box);
}

function pickBucket(spanMs) {
  if (spanMs <= 15 * 60_000) return null;  // raw points
  for (const [name, ms] of BUCKETS) if (spanMs / ms <= HISTORY_POINTS) return name;
  return "1d";
}

async function loadHistory() {
  if (!history || !ctx) return;
  const {api, store} = ctx;
  const metrics = metricNames();
  if (metrics.length && history.metric.options.length !== metrics.length) {
    const chosen = history.metric.value;
    clear(history.metric);
    for (const m of metrics) history.metric.append(h("option", {value: m, text: m}));
    if (metrics.includes(chosen)) history.metric.value = chosen;
  }
  const metric = history.metric.value;
  if (!metric) { setText(history.note, "no numeric metrics yet"); return; }
  history.requested = true;
  const now = store.now();
  const [start, end] = history.zoom || [now - history.span, now];
  history.window = [start / 1000, end / 1000];
  const bucket = pickBucket(end - start);
  const seq = ++history.seq;
  history.reset.hidden = !history.zoom;
  setText(history.note, "loading…");
  try {
    const q = {start: Math.floor(start), end: Math.ceil(end), limit: 5000};
    if (bucket) { q.bucket = bucket; q.agg = history.agg.value; }
    const found = await api.get(`/api/devices/${api.enc(id)}/telemetry${api.query(q)}`);
    if (!ctx || seq !== history.seq) return;
    const xs = [], ys = [];
    for (const p of found.points) {
      if (typeof p[metric] !== "number") continue;
      xs.push(p.ts / 1000); ys.push(p[metric]);
    }
    if (!history.chart) {
      history.chart = new TimeChart(history.box, [{label: metric, stroke: color(2)}], {
        select: (min, max) => { history.zoom = [min * 1000, max * 1000]; loadHistory(); },
        range: () => history.window,
      });
    }
    history.chart.set([xs, ys]);
    history.box.dataset.points = String(xs.length);
    setText(history.note, `${bucket ? `${history.agg.value} per ${bucket}` : "raw"} · ${xs.length} points · ${fmt.clock(start)} – ${fmt.clock(end)}`);
  } catch (e) {
    if (ctx && seq === history.seq) setText(history.note, e.code === "unavailable" ? "history is unavailable (database down)" : (e.message || "failed"));
  }
}

// ---- command panel -----------------------------------------------------------------------------

function buildCommandPanel() {
  const action = h("input", {name: "action", required: true, autocomplete: "off", list: "fl-actions", value: "charge", dataset: {testid: "command-action"}});
  const list = h("datalist", {id: "fl-actions"}, ...ACTIONS.map((a) => h("option", {value: a})));
  const params = h("textarea", {name: "params", rows: 1, spellcheck: false, value: '{"setpoint_kw": 5}', dataset: {testid: "command-params"}});
  const timeout = h("input", {name: "timeout", type: "number", min: "0.1", max: "300", step: "0.1", placeholder: "default", dataset: {testid: "command-timeout"}});
  const send = h("button.primary", {type: "submit", text: "Send", dataset: {testid: "command-send"}});
  const error = h("p.error.small", {role: "alert", dataset: {testid: "command-error"}});
  const form = h("form.command", {dataset: {testid: "command-form"}},
    h("label", null, "Action", action), h("label", null, "Parameters (JSON)", params), h("label", null, "Timeout (s)", timeout), send);
  const headline = h("div.headline", {text: "No command sent from this page yet."});
  const stages = h("ol");
  const life = h("div.life", {dataset: {testid: "command-life", status: ""}, "aria-live": "polite"}, headline, stages);
  form.addEventListener("submit", (e) => { e.preventDefault(); sendCommand(); });
  ui_command = {form, action, params, timeout, send, error, life, headline, stages};
  return h("div.panel", {dataset: {testid: "command-panel"}},
    h("div.panel-head", null, h("h2", {text: "Send a command"})), form, list, error, life);
}
let ui_command = null;

async function sendCommand() {
  const {action, params, timeout, error} = ui_command;
  setText(error, "");
  let parsed = {};
  const text = params.value.trim();
  if (text) {
    try { parsed = JSON.parse(text); } catch (e) { setText(error, "Parameters must be JSON, like {\"setpoint_kw\": 5}."); return; }
    if (typeof parsed !== "object" || parsed === null || Array.isArray(parsed)) { setText(error, "Parameters must be a JSON object."); return; }
  }
  const commandId = "c-" + Array.from(crypto.getRandomValues(new Uint8Array(8)), (b) => b.toString(16).padStart(2, "0")).join("");
  const message = {id: commandId, action: action.value.trim(), params: parsed};
  // Empty: the hub's default answer deadline (--command-timeout).
  if (timeout.value.trim()) message.timeout_ms = Math.round(Number(timeout.value) * 1000);
  mine.add(commandId);
  watching = commandId;
  const store = ctx.store;
  store.command({id: commandId, device_id: id, action: message.action, params: parsed, status: "pending", ts: store.now(), by: "you"});
  renderLife();
  if (ctx.live.send({type: "command", device: id, ...message})) return;
  // No socket: REST, then follow the command by reading it until it ends.
  try {
    const c = await ctx.api.post(`/api/devices/${ctx.api.enc(id)}/commands`, message);
    store.command({...c, ts: c.stages && c.stages[c.status]});
    followOverRest(commandId);
  } catch (e) {
    store.command({id: commandId, device_id: id, status: "rejected", reason: e.code, error: e.message, ts: store.now()});
  }
}

function followOverRest(commandId) {
  clearInterval(commandPoll);
  commandPoll = setInterval(async () => {
    if (!ctx || ctx.live.live) { clearInterval(commandPoll); return; }
    try {
      const c = await ctx.api.get(`/api/commands/${ctx.api.enc(commandId)}`);
      ctx.store.command({...c, ts: c.stages && c.stages[c.status]});
      if (fmt.TERMINAL.has(c.status)) clearInterval(commandPoll);
    } catch (e) { /* keep trying while down */ }
  }, 1000);
}

function renderLife() {
  if (!ui_command || !watching) return;
  const c = ctx.store.commands.get(watching);
  if (!c) return;
  const {life, headline, stages} = ui_command;
  life.dataset.status = c.status;
  life.dataset.commandId = c.id;
  const terminal = fmt.TERMINAL.has(c.status);
  setText(headline, `${c.action || ""}: ${fmt.commandHeadline(c)}` + (c.status === "acked" && c.result ? ` · ${fmt.resultText(c.result)}` : ""));
  headline.className = "headline " + (c.status === "acked" ? "ok" : terminal ? "bad" : "wait");
  clear(stages);
  const start = (c.stages && c.stages.pending) || c.created;
  const names = terminal ? ["pending", "sent", c.status] : ["pending", "sent"];
  for (const name of names) {
    const at = c.stages && c.stages[name];
    const offset = at && start && name !== "pending" ? ` +${Math.max(0, at - start)} ms` : "";
    stages.append(h("li", {className: at ? "done" : "", text: name + offset}));
  }
}

function renderLog() {
  if (!ctx) return;
  const now = ctx.store.now();
  const list = [...ctx.store.commands.values()].filter((c) => c.device_id === id)
    .sort((a, b) => (b.created || (b.stages && b.stages.pending) || 0) - (a.created || (a.stages && a.stages.pending) || 0)).slice(0, MAX_LOG);
  clear(ui.log);
  if (!list.length) { ui.log.append(h("tr", null, h("td", {colSpan: 5, className: "muted", text: "No commands yet."}))); return; }
  for (const c of list) {
    const created = c.created || (c.stages && c.stages.pending);
    const outcome = c.status === "acked" ? fmt.resultText(c.result) : fmt.TERMINAL.has(c.status) ? fmt.commandHeadline(c) : "";
    ui.log.append(h("tr", {dataset: {commandId: c.id, testid: "command-row"}},
      h("td", {title: c.id, text: created ? `${fmt.clock(created)} (${fmt.age(created, now)})` : ""}),
      h("td.mono", {text: `${c.action || ""} ${c.params && Object.keys(c.params).length ? JSON.stringify(c.params) : ""}`}),
      h("td", null, h("span", {className: `badge ${c.status}`, text: c.status})),
      h("td", {text: outcome}),
      h("td.muted", {text: c.origin || c.by || ""})));
  }
}

function renderAlerts() {
  if (!ctx) return;
  const now = ctx.store.now();
  const list = [...ctx.store.alerts.values()].filter((a) => a.device_id === id)
    .sort((a, b) => (a.state === "cleared") - (b.state === "cleared") || b.raised - a.raised).slice(0, 20);
  reconcile(ui.alertsList, list, now, {showDevice: false, context: ctx});
  if (!list.length) ui.alertsList.append(h("li.empty-row", {text: "No alerts for this device."}));
}

// ---- render ------------------------------------------------------------------------------------

function render() {
  if (!ctx) return;
  const store = ctx.store;
  const d = store.devices.get(id);
  const now = store.now();
  if (d) {
    const status = d.status || "unknown";
    setText(ui.badge, status);
    ui.badge.className = "badge " + (status === "online" || status === "offline" ? status : "unknown");
    setText(ui.reason, d.reason ? fmt.reasonText(d.reason) : "");
    setAttr(ui.reason, "data-reason", d.reason || "");
    setText(ui.seen, `last seen ${fmt.age(d.last_seen, now)}` + (d.status_since ? ` · ${status} since ${fmt.clock(d.status_since)}` : ""));
    const meta = Object.entries(d.meta || {}).map(([k, v]) => `${k} ${typeof v === "object" ? JSON.stringify(v) : v}`);
    setText(ui.meta, [d.kind && `kind ${d.kind}`, d.tenant && `tenant ${d.tenant}`, ...meta].filter(Boolean).join(" · "));
    renderValues(d, now);
  }
  let points = 0;
  const slide = performance.now() - lastSlide >= 1000;  // the window moves with time alone
  if (slide) lastSlide = performance.now();
  for (const [metric, c] of charts) {
    c.rolling.trim(now);
    if (c.dirty || slide) { c.chart.set(c.rolling.data()); c.dirty = false; }
    const xs = c.rolling.xs;
    points += xs.length;
    c.wrap.dataset.points = String(xs.length);
    const last = c.rolling.ys[0][xs.length - 1];
    setText(c.current, last === undefined ? "" : fmt.number(last));
  }
  setText(ui.liveNote, seeded ? (charts.size ? `${points} points; new ones arrive over the live connection` : "no numeric values in the last 15 minutes") : "loading…");
  if (history && !history.requested && metricNames().length) loadHistory();
  if (seeded && d) markReady("device", mounted);
}

function metricNames() {
  const names = new Set(charts.keys());
  const d = ctx.store.devices.get(id);
  if (d) for (const [k, v] of d.values) if (typeof v.v === "number") names.add(k);
  return [...names];
}

function renderValues(d, now) {
  for (const [key, value] of d.values) {
    let card = valueCards.get(key);
    if (!card) {
      const v = h("span.v"), age = h("span.age");
      const el = h("div.value", {dataset: {metric: key, testid: "value"}}, h("span.k", {text: key}), v, age);
      ui.values.append(el);
      card = {el, v, age};
      valueCards.set(key, card);
    }
    setText(card.v, fmt.number(value.v));
    setText(card.age, fmt.age(value.ts, now));
    const stale = fmt.isStale(value.ts, now, d.interval_ms, d.status);
    setClass(card.el, "stale", stale);
    card.el.title = stale ? "stale: no newer value" : `updated ${fmt.clock(value.ts)}`;
  }
}
