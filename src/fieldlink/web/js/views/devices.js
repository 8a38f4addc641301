// Devices: every device with a live status badge (and why), last seen (ticking), its newest
// values; kind and status filters and a search. Built for hundreds of devices each sending
// several times a second: rows are redrawn at most 5 times a second, only rows that changed,
// and only while they are on screen.

import {h, setText, setClass, setAttr, Throttled, markReady} from "../dom.js";
import * as fmt from "../format.js";

export const title = () => "Devices";
const SHOWN_METRICS = 4;

let ctx = null;
let root = null;
let ui = null;
let rows = new Map();       // id -> row
let dirty = new Set();      // ids to redraw
let visible = new Set();    // ids whose row is on screen
let offs = [];
let observer = null;
let flusher = null;
let ticker = 0;
let filters = {q: "", kind: "", status: ""};
let kinds = new Set();
let mounted = {};

export function mount(el, params, context) {
  ctx = context;
  root = el;
  mounted = {};
  ui = {
    body: el.querySelector('[data-testid="devices"] tbody'),
    table: el.querySelector('[data-testid="devices"]'),
    summary: el.querySelector('[data-testid="summary"]'),
    empty: el.querySelector('[data-testid="empty"]'),
    search: el.querySelector('[data-testid="search"]'),
    kind: el.querySelector('[data-testid="kind-filter"]'),
    status: el.querySelector('[data-testid="status-filter"]'),
  };
  rows = new Map(); dirty = new Set(); visible = new Set(); kinds = new Set();
  ui.body.textContent = "";
  filters = {q: ui.search.value.trim().toLowerCase(), kind: ui.kind.value, status: ui.status.value};
  observer = new IntersectionObserver((entries) => {
    for (const e of entries) {
      const id = e.target.dataset.deviceId;
      if (e.isIntersecting) { visible.add(id); dirty.add(id); } else visible.delete(id);
    }
    flusher.request();
  }, {rootMargin: "200px 0px"});
  flusher = new Throttled(flush, 200);
  const store = ctx.store;
  offs = [
    store.on("device", (d) => { dirty.add(d.device_id); flusher.request(); }),
    store.on("devices", () => { sync(); }),
  ];
  ui.search.oninput = () => { filters.q = ui.search.value.trim().toLowerCase(); applyFilters(); };
  ui.kind.onchange = () => { filters.kind = ui.kind.value; applyFilters(); };
  ui.status.onchange = () => { filters.status = ui.status.value; applyFilters(); };
  sync();
  // "Last seen" and staleness move with time alone: refresh the rows on screen every second.
  ticker = setInterval(() => { for (const id of visible) dirty.add(id); flusher.request(); }, 1000);
}

export function unmount() {
  for (const off of offs) off();
  offs = [];
  clearInterval(ticker);
  flusher.cancel();
  observer.disconnect();
  rows.clear();
  ui.body.textContent = "";
  ctx = null;
}

export async function poll() { /* app.js polls /api/devices for every page */ }

function sync() {
  const store = ctx.store;
  for (const [id, row] of rows) {
    if (!store.devices.has(id)) { observer.unobserve(row.tr); row.tr.remove(); rows.delete(id); visible.delete(id); }
  }
  const ids = [...store.devices.keys()].sort();
  let next = null;
  for (let i = ids.length - 1; i >= 0; i--) {
    const id = ids[i];
    let row = rows.get(id);
    if (!row) {
      row = makeRow(id);
      rows.set(id, row);
      ui.body.insertBefore(row.tr, next);
      observer.observe(row.tr);
      dirty.add(id);
    }
    next = row.tr;
  }
  flusher.request();
}

function makeRow(id) {
  const name = h("span.name");
  const link = h("a", {href: `#/device/${encodeURIComponent(id)}`, text: id});
  const badge = h("span.badge.unknown", {dataset: {testid: "status"}, text: "unknown"});
  const reason = h("span.reason", {dataset: {testid: "reason"}});
  const seen = h("td.seen");
  const metrics = h("div.metrics", {dataset: {testid: "values"}});
  const kind = h("td.kind");
  const tr = h("tr", {dataset: {deviceId: id, testid: "device-row"}},
    h("td.id", null, link, name), kind, h("td.status", null, badge, reason), seen, h("td.values", null, metrics));
  return {tr, name, badge, reason, seen, metrics, kind, spans: new Map(), shown: true, drawn: false};
}

function matches(d) {
  if (filters.kind && d.kind !== filters.kind) return false;
  if (filters.status && d.status !== filters.status) return false;
  if (filters.q) {
    const name = (d.meta && typeof d.meta.name === "string") ? d.meta.name.toLowerCase() : "";
    if (!d.device_id.toLowerCase().includes(filters.q) && !name.includes(filters.q)) return false;
  }
  return true;
}

function applyFilters() {
  for (const id of rows.keys()) dirty.add(id);
  flusher.request();
}

function flush() {
  if (!ctx) return;
  const store = ctx.store;
  const now = store.now();
  for (const id of dirty) {
    const row = rows.get(id);
    const d = store.devices.get(id);
    if (!row || !d) { dirty.delete(id); continue; }
    const show = matches(d);
    if (row.shown !== show) { row.tr.hidden = !show; row.shown = show; }
    if (d.kind && !kinds.has(d.kind)) addKind(d.kind);
    // Off screen (after its first drawing): redrawn when it comes on screen.
    if (!show || (row.drawn && !visible.has(id))) continue;
    renderRow(row, d, now);
    row.drawn = true;
    dirty.delete(id);
  }
  summary();
  if (store.synced) markReady("devices", mounted);
}

function addKind(kind) {
  kinds.add(kind);
  const options = [...kinds].sort();
  const at = options.indexOf(kind);
  const option = h("option", {value: kind, text: kind});
  ui.kind.insertBefore(option, ui.kind.options[at + 1] || null);
}

function renderRow(row, d, now) {
  const status = d.status || "unknown";
  setText(row.badge, status);
  const badgeClass = "badge " + (status === "online" || status === "offline" ? status : "unknown");
  if (row.badge.className !== badgeClass) row.badge.className = badgeClass;
  setText(row.reason, d.reason ? fmt.reasonText(d.reason) : (status === "offline" && d.status_since ? `since ${fmt.clock(d.status_since)}` : ""));
  setAttr(row.reason, "data-reason", d.reason || "");
  const name = d.meta && typeof d.meta.name === "string" ? d.meta.name : "";
  setText(row.name, name);
  setText(row.kind, d.kind || "");
  setText(row.seen, fmt.age(d.last_seen, now));
  const stale = fmt.isStale(d.last_ts || d.last_seen, now, d.interval_ms, status);
  setClass(row.tr, "is-stale", stale);
  setClass(row.seen, "stale", stale && status === "online");
  let shown = 0;
  for (const [key, value] of d.values) {
    if (shown >= SHOWN_METRICS) break;
    if (typeof value.v === "object" && value.v !== null) continue;
    shown += 1;
    let span = row.spans.get(key);
    if (!span) {
      span = h("span.metric", {dataset: {metric: key}}, h("span.k", {text: key}), h("span.v"));
      row.metrics.appendChild(span);
      row.spans.set(key, span);
    }
    setText(span.lastChild, fmt.number(value.v));
  }
}

function summary() {
  const store = ctx.store;
  let online = 0, shown = 0;
  for (const d of store.devices.values()) if (d.status === "online") online += 1;
  for (const row of rows.values()) if (row.shown) shown += 1;
  const total = store.devices.size;
  const text = `${total} device${total === 1 ? "" : "s"} · ${online} online` + (shown !== total ? ` · ${shown} shown` : "");
  setText(ui.summary, text);
  const empty = !store.synced ? "Loading devices…"
    : total === 0 ? "No devices yet. Devices appear here when they first send (MQTT edge/<id>/telemetry or POST /api/telemetry)."
    : shown === 0 ? "No device matches the filters." : "";
  setText(ui.empty, empty);
  ui.empty.hidden = !empty;
}
