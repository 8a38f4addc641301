// Fleet: the aggregate of the battery nodes (power, capacity, energy, coverage), devices online
// and offline, active alerts, and the 24 h fleet power chart from /api/vpp/history whose last
// minute follows the live aggregate.

import {h, setText, setClass, clear, Throttled, markReady} from "../dom.js";
import * as fmt from "../format.js";
import {TimeChart, color} from "../charts.js";

export const title = () => "Fleet";
const DAY_MS = 86_400_000;
const MINUTE_MS = 60_000;

let ctx = null;
let ui = null;
let offs = [];
let redraw = null;
let ticker = 0;
let chart = null;
let series = null;   // {xs: [], ys: []} per minute, seconds
let minute = null;   // the live minute: {start, sum, n}
let mounted = {};

export function mount(el, params, context) {
  ctx = context;
  mounted = {};
  const tile = (name) => {
    const t = el.querySelector(`[data-tile="${name}"]`);
    return {el: t, v: t.querySelector(".v"), s: t.querySelector(".s")};
  };
  ui = {
    power: tile("power"), capacity: tile("capacity"), energy: tile("energy"),
    coverage: tile("coverage"), devices: tile("devices"), alerts: tile("alerts"),
    chartBox: el.querySelector('[data-testid="fleet-chart"]'),
    chartNote: el.querySelector('[data-testid="fleet-chart-note"]'),
    groups: el.querySelector('[data-testid="groups"] tbody'),
  };
  series = {xs: [], ys: []};
  minute = null;
  redraw = new Throttled(render, 250);
  const store = ctx.store;
  offs = [
    store.on("aggregate", (a) => { liveMinute(a); redraw.request(); }),
    store.on("device", () => redraw.request()),
    store.on("devices", () => redraw.request()),
    store.on("alert", () => redraw.request()),
    store.on("alerts", () => redraw.request()),
  ];
  ticker = setInterval(() => redraw.request(), 1000);
  render();
  loadHistory();
  // The aggregate channel's snapshot usually came with the socket; read it once otherwise.
  if (!store.aggregate) poll().catch(() => {});
}

export function unmount() {
  for (const off of offs) off();
  offs = [];
  clearInterval(ticker);
  redraw.cancel();
  if (chart) { chart.destroy(); chart = null; }
  clear(ui.chartBox);
  ctx = null;
}

export async function poll() {
  const state = await ctx.api.get("/api/vpp/state");
  if (ctx) ctx.store.setAggregate(state);
}

async function loadHistory() {
  try {
    const found = await ctx.api.get("/api/vpp/history?bucket=1m");
    if (!ctx) return;
    const xs = [], ys = [];
    for (const p of found.points) { xs.push(p.ts / 1000); ys.push(p.power_kw); }
    // Keep what the live aggregate added while this was loading.
    const liveXs = series.xs, liveYs = series.ys;
    series = {xs, ys};
    for (let i = 0; i < liveXs.length; i++) put(liveXs[i], liveYs[i]);
    setText(ui.chartNote, found.points.length ? `${found.points.length} minutes with data` : "no fleet power history yet");
  } catch (e) {
    if (ctx) setText(ui.chartNote, e.message || "history unavailable");
  }
  if (ctx) { ensureChart(); drawChart(); }
}

function put(x, y) {
  const xs = series.xs, n = xs.length;
  if (n && xs[n - 1] === x) series.ys[n - 1] = y;
  else if (!n || xs[n - 1] < x) { xs.push(x); series.ys.push(y); }
}

/** The live aggregate's power, averaged over the current minute, as the chart's last point. */
function liveMinute(a) {
  const total = a && a.total;
  if (!total || typeof total.power_kw !== "number" || !total.nodes_total) return;
  const ts = total.ts || ctx.store.now();
  const start = Math.floor(ts / MINUTE_MS) * MINUTE_MS;
  if (!minute || minute.start !== start) minute = {start, sum: 0, n: 0};
  minute.sum += total.power_kw;
  minute.n += 1;
  put(start / 1000, minute.sum / minute.n);
  chartDirty = true;
}
let chartDirty = false;

function ensureChart() {
  if (chart) return;
  chart = new TimeChart(ui.chartBox, [{label: "fleet power kW", stroke: color(1), width: 1.5}], {
    yLabel: "kW",
    range: () => { const now = ctx ? ctx.store.now() : Date.now(); return [(now - DAY_MS) / 1000, now / 1000]; },
  });
}

function drawChart() {
  if (!chart) return;
  const min = (ctx.store.now() - DAY_MS) / 1000;
  let k = 0;
  while (k < series.xs.length && series.xs[k] < min) k++;
  if (k) { series.xs.splice(0, k); series.ys.splice(0, k); }
  chart.set([series.xs, series.ys]);
  const n = series.xs.length;
  ui.chartBox.dataset.points = String(n);
  ui.chartBox.dataset.last = n ? String(series.xs[n - 1] * 1000) : "";
  ui.chartBox.dataset.lastValue = n ? String(series.ys[n - 1]) : "";
  chartDirty = false;
}

function render() {
  if (!ctx) return;
  const store = ctx.store;
  const now = store.now();
  const a = store.aggregate;
  const t = a && a.total;
  const aggAge = t && t.ts ? fmt.age(t.ts, now) : "";
  const aggStale = !t || !t.ts || now - t.ts > 15_000;
  if (t && t.nodes_total) {
    setText(ui.power.v, fmt.kw(t.power_kw));
    setText(ui.power.s, `${t.power_kw > 0.05 ? "charging" : t.power_kw < -0.05 ? "discharging" : "idle"} · ${aggAge}`);
    setText(ui.capacity.v, fmt.kw(t.capacity_online_kw));
    setText(ui.capacity.s, `of ${fmt.kw(t.capacity_total_kw)} · ${t.nodes_online}/${t.nodes_total} nodes online`);
    setText(ui.energy.v, `${fmt.number(t.energy_kwh, 0)} kWh`);
    setText(ui.energy.s, `SoC ${t.soc === null ? "–" : fmt.number(t.soc, 1) + " %"} of ${fmt.number(t.energy_capacity_kwh, 0)} kWh`);
    setText(ui.coverage.v, fmt.percent(t.coverage));
    setText(ui.coverage.s, `of capacity reported within ${a.max_age_s || 60} s`);
    setClass(ui.coverage.el, "warn", t.coverage < 0.999 && t.coverage >= 0.8);
    setClass(ui.coverage.el, "bad", t.coverage < 0.8);
  } else {
    for (const k of ["power", "capacity", "energy", "coverage"]) setText(ui[k].v, "–");
    setText(ui.power.s, a ? "no battery nodes (devices with capacity_kw)" : "waiting for the aggregate");
    for (const k of ["capacity", "energy", "coverage"]) setText(ui[k].s, "");
  }
  for (const k of ["power", "capacity", "energy", "coverage"]) setClass(ui[k].el, "stale", !!t && t.nodes_total > 0 && aggStale);
  let online = 0, offline = 0;
  for (const d of store.devices.values()) {
    if (d.status === "online") online += 1; else if (d.status === "offline") offline += 1;
  }
  setText(ui.devices.v, store.synced ? `${online} / ${store.devices.size}` : "–");
  setText(ui.devices.s, store.synced ? `${offline} offline` : "loading…");
  setClass(ui.devices.el, "warn", offline > 0);
  const active = store.activeAlerts();
  let acknowledged = 0;
  for (const al of store.alerts.values()) if (al.state === "acknowledged") acknowledged += 1;
  setText(ui.alerts.v, String(active));
  setText(ui.alerts.s, `${acknowledged} acknowledged`);
  setClass(ui.alerts.el, "bad", active > 0);
  renderGroups(a);
  if (chartDirty) drawChart();
  if (a && store.synced) markReady("fleet", mounted);
}

function renderGroups(a) {
  const groups = (a && a.groups) || {};
  const names = Object.keys(groups).sort();
  if (ui.groups.children.length !== Math.max(1, names.length) || ui.groups.dataset.names !== names.join(",")) {
    clear(ui.groups);
    ui.groups.dataset.names = names.join(",");
    if (!names.length) {
      ui.groups.append(h("tr", null, h("td", {colSpan: 6, className: "muted", text: "No groups (nodes group by their meta attribute site)."})));
      return;
    }
    for (const name of names) {
      ui.groups.append(h("tr", {dataset: {group: name}}, h("td", {text: name}),
        ...[0, 1, 2, 3, 4].map(() => h("td.num"))));
    }
  }
  names.forEach((name, i) => {
    const g = groups[name];
    const cells = ui.groups.children[i].children;
    setText(cells[1], fmt.number(g.power_kw, 1));
    setText(cells[2], `${fmt.number(g.capacity_online_kw, 0)} / ${fmt.number(g.capacity_total_kw, 0)}`);
    setText(cells[3], g.soc === null ? "–" : `${fmt.number(g.soc, 1)} %`);
    setText(cells[4], `${g.nodes_online}/${g.nodes_total}`);
    setText(cells[5], fmt.percent(g.coverage));
  });
}
