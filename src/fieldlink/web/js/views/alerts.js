// Alerts: active, acknowledged and (recently) cleared, live from alert events; operators and
// admins acknowledge with a note. alertItem() is shared with the device page.

import {h, setText, clear, Throttled, markReady} from "../dom.js";
import * as fmt from "../format.js";

export const title = () => "Alerts";
const CLEARED_SHOWN = 50;

let ctx = null;
let root = null;
let lists = null;
let offs = [];
let redraw = null;
let ticker = 0;
let mounted = {};

export function mount(el, params, context) {
  ctx = context;
  mounted = {};
  root = el;
  clear(el);
  const section = (key, titleText, note) => {
    const list = h("ul.alert-list", {dataset: {testid: `alerts-${key}`}});
    const count = h("span.muted", {dataset: {testid: `alerts-${key}-count`}});
    el.append(h("div.panel", null,
      h("div.panel-head", null, h("h2", {text: titleText}), count, h("span.muted.small", {text: note})), list));
    return {list, count};
  };
  el.append(h("h1", {text: "Alerts"}));
  lists = {
    active: section("active", "Active", "need an operator"),
    acknowledged: section("acknowledged", "Acknowledged", "someone is on it; a worse level makes it active again"),
    cleared: section("cleared", "Cleared", `the last ${CLEARED_SHOWN}`),
  };
  redraw = new Throttled(render, 200);
  offs = [ctx.store.on("alert", () => redraw.request()), ctx.store.on("alerts", () => redraw.request())];
  ticker = setInterval(() => redraw.request(), 5000);
  render();
  loadCleared();
}

export function unmount() {
  for (const off of offs) off();
  offs = [];
  clearInterval(ticker);
  redraw.cancel();
  ctx = null;
}

export async function poll() {
  await loadCleared();
}

async function loadCleared() {
  try {
    const found = await ctx.api.get(`/api/alerts?state=cleared&limit=${CLEARED_SHOWN}`);
    if (!ctx) return;
    for (const a of found.alerts) ctx.store.alert(a);
    redraw.request();
    mounted.loaded = true;
  } catch (e) { /* polling shows the state */ }
}

function render() {
  if (!ctx) return;
  const store = ctx.store;
  const now = store.now();
  const groups = {active: [], acknowledged: [], cleared: []};
  for (const a of store.alerts.values()) (groups[a.state] || groups.cleared).push(a);
  groups.active.sort((a, b) => (b.level_index - a.level_index) || (b.raised - a.raised));
  groups.acknowledged.sort((a, b) => b.updated - a.updated);
  groups.cleared.sort((a, b) => (b.cleared || b.updated) - (a.cleared || a.updated));
  groups.cleared = groups.cleared.slice(0, CLEARED_SHOWN);
  for (const [key, items] of Object.entries(groups)) {
    const {list, count} = lists[key];
    setText(count, `${items.length}`);
    reconcile(list, items, now, {showDevice: true, context: ctx});
    if (!items.length) list.append(h("li.empty-row", {text: key === "active" ? "No active alerts." : "None."}));
  }
  if (mounted.loaded) markReady("alerts", mounted);
}

/** Make `list` show `items` in order, reusing each alert's element (an open note form survives). */
export function reconcile(list, items, now, options) {
  const existing = new Map();
  for (const li of [...list.children]) {
    if (li.dataset.alertId) existing.set(li.dataset.alertId, li); else li.remove();
  }
  let before = list.firstChild;
  for (const a of items) {
    let li = existing.get(a.id);
    existing.delete(a.id);
    if (!li || li.dataset.version !== String(a.version)) {
      const fresh = alertItem(a, now, options);
      if (li) li.replaceWith(fresh);
      li = fresh;
    } else {
      setText(li.querySelector(".when"), whenText(a, now));
    }
    if (li !== before) list.insertBefore(li, before);
    before = li.nextSibling;
  }
  for (const li of existing.values()) li.remove();
}

function whenText(a, now) {
  if (a.state === "cleared") return `cleared ${fmt.age(a.cleared || a.updated, now)} · raised ${fmt.clock(a.raised)}`;
  if (a.state === "acknowledged") return `acknowledged ${fmt.age(a.acknowledged || a.updated, now)} by ${a.acknowledged_by || "?"}`;
  return `raised ${fmt.age(a.raised, now)}`;
}

/** One alert as a list item; `context` (store, api) decides whether it gets an Acknowledge button. */
export function alertItem(a, now, {showDevice = true, context}) {
  const level = h(`span.level.l${Math.min(3, a.level_index || 0)}`, {text: a.level});
  const what = h("div.what", null,
    showDevice ? h("a.mono", {href: `#/device/${encodeURIComponent(a.device_id)}`, text: a.device_id}) : null,
    showDevice ? " · " : null,
    h("span", {text: `${a.metric} ${fmt.number(a.value)} (threshold ${fmt.number(a.threshold)})`}),
    h("div.when", {text: whenText(a, now)}),
    a.note ? h("div.note", {text: `“${a.note}”`}) : null);
  const acts = h("div.acts");
  const li = h("li", {dataset: {alertId: a.id, version: String(a.version), state: a.state, testid: "alert"}},
    h("div", null, h("span", {className: `badge ${a.state}`, text: a.state}), " ", level), what, acts);
  if (a.state === "active" && context.store.canOperate) acts.append(ackButton(a, acts, context));
  return li;
}

function ackButton(a, acts, context) {
  return h("button", {type: "button", text: "Acknowledge", dataset: {testid: "ack"},
    onclick: () => openAck(a, acts, context)});
}

function openAck(a, acts, c) {
  const note = h("input", {type: "text", placeholder: "note (optional)", maxLength: 1000, dataset: {testid: "ack-note"}, "aria-label": "Note"});
  const error = h("span.error.small", {role: "alert"});
  const form = h("form.ack", {dataset: {testid: "ack-form"}}, note,
    h("button.primary", {type: "submit", text: "Confirm", dataset: {testid: "ack-confirm"}}),
    h("button", {type: "button", text: "Cancel", onclick: () => { clear(acts); acts.append(ackButton(a, acts, c)); }}),
    error);
  form.addEventListener("keydown", (e) => { if (e.key === "Escape") { clear(acts); acts.append(ackButton(a, acts, c)); } });
  form.addEventListener("submit", async (e) => {
    e.preventDefault();
    for (const b of form.querySelectorAll("button")) b.disabled = true;
    try {
      const body = note.value.trim() ? {note: note.value.trim()} : {};
      const updated = await c.api.post(`/api/devices/${encodeURIComponent(a.device_id)}/alerts/${encodeURIComponent(a.id)}/acknowledge`, body);
      c.store.alert(updated);
    } catch (err) {
      setText(error, err.code === "alert_cleared" ? "It cleared meanwhile." : (err.message || "Failed."));
      for (const b of form.querySelectorAll("button")) b.disabled = false;
    }
  });
  clear(acts);
  acts.append(form);
  note.focus();
}

