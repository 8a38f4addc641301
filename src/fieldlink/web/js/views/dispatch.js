// Dispatch (the virtual power plant, docs/vpp.md): request a dispatch, watch each running one
// (allocation per node, achieved against target, live on the dispatch channel), decide agent
// proposals (approve/reject over the socket, REST while it is down), and the dispatch log.

import {h, setText, clear, Throttled, markReady} from "../dom.js";
import * as fmt from "../format.js";
import {TimeChart, color} from "../charts.js";

export const title = () => "Dispatch";
const LOG_SHOWN = 30;

let ctx = null;
let ui = null;
let offs = [];
let redraw = null;
let ticker = 0;
let cards = new Map();   // dispatch id -> {el, chart, ...}
let mounted = {};

export function mount(el, params, context) {
  ctx = context;
  mounted = {};
  cards = new Map();
  clear(el);
  el.append(h("h1", {text: "Dispatch"}));
  const form = ctx.store.canOperate ? buildForm() : null;
  if (form) el.append(h("div.panel", {dataset: {testid: "dispatch-request"}},
    h("div.panel-head", null, h("h2", {text: "Request a dispatch"}),
      h("span.muted.small", {text: "positive kW discharges (the plant delivers), negative charges"})), form));
  const proposals = h("ul.alert-list", {dataset: {testid: "proposals"}});
  const running = h("div.cards", {dataset: {testid: "running"}});
  const log = h("tbody");
  el.append(
    h("div.panel", null, h("div.panel-head", null, h("h2", {text: "Agent proposals"}), h("span.muted.small", {text: "waiting for a decision"})), proposals),
    h("div.panel", null, h("div.panel-head", null, h("h2", {text: "Running and scheduled"})), running),
    h("div.panel", null, h("div.panel-head", null, h("h2", {text: "Dispatch log"}), h("span.muted.small", {text: `newest first, the last ${LOG_SHOWN}`})),
      h("div.scroll", null, h("table.grid", {dataset: {testid: "dispatch-log"}},
        h("thead", null, h("tr", null, ...["Requested", "By", "Target", "Duration", "State", "Achieved", "Shortfall"].map((t) => h("th", {scope: "col", text: t})))),
        log))));
  ui = {proposals, running, log, form};
  redraw = new Throttled(render, 250);
  offs = [
    ctx.store.on("dispatch", () => redraw.request()),
    ctx.store.on("proposal", () => redraw.request()),
  ];
  ticker = setInterval(() => redraw.request(), 1000);
  render();
  load();
}

export function unmount() {
  for (const off of offs) off();
  offs = [];
  clearInterval(ticker);
  redraw.cancel();
  for (const c of cards.values()) if (c.chart) c.chart.destroy();
  cards.clear();
  ctx = null;
}

export async function poll() { await load(); }

async function load() {
  try {
    const [log, pending] = await Promise.all([
      ctx.api.get(`/api/vpp/dispatches?limit=${LOG_SHOWN}`),
      ctx.api.get("/api/vpp/proposals?state=pending"),
    ]);
    if (!ctx) return;
    for (const d of log.dispatches) ctx.store.dispatch(d);
    for (const p of pending.proposals) ctx.store.proposal(p);
    mounted.loaded = true;
    redraw.request();
  } catch (e) { /* the connection state says why */ }
}

function buildForm() {
  const target = h("input", {name: "target_kw", type: "number", step: "0.1", required: true, value: "20", dataset: {testid: "dispatch-target"}});
  const minutes = h("input", {name: "minutes", type: "number", min: "0.1", step: "0.1", required: true, value: "15", dataset: {testid: "dispatch-minutes"}});
  const start = h("input", {name: "start", type: "datetime-local", dataset: {testid: "dispatch-start"}});
  const error = h("p.error.small", {role: "alert", dataset: {testid: "dispatch-error"}});
  const form = h("form.dispatch", null,
    h("label", null, "Target (kW)", target), h("label", null, "Duration (min)", minutes),
    h("label", null, "Start (optional)", start),
    h("button.primary", {type: "submit", text: "Dispatch", dataset: {testid: "dispatch-submit"}}), error);
  form.addEventListener("submit", async (e) => {
    e.preventDefault();
    setText(error, "");
    const body = {target_kw: Number(target.value), duration_s: Math.round(Number(minutes.value) * 60)};
    if (start.value) body.start = new Date(start.value).getTime();
    const button = form.querySelector("button");
    button.disabled = true;
    try {
      const d = await ctx.api.post("/api/vpp/dispatch", body);
      ctx.store.dispatch(d);
    } catch (err) {
      setText(error, err.message || "The dispatch was refused.");
    } finally {
      button.disabled = false;
    }
  });
  return form;
}

function render() {
  if (!ctx) return;
  const store = ctx.store;
  const now = store.now();
  const all = [...store.dispatches.values()].sort((a, b) => b.created - a.created);
  // Proposals waiting for a decision.
  const pending = [...store.proposals.values()].filter((p) => p.state === "pending").sort((a, b) => b.created - a.created);
  renderProposals(pending, now);
  // Running and scheduled dispatches, each a card with its chart.
  const open = all.filter((d) => d.state === "running" || d.state === "scheduled");
  for (const [did, card] of cards) {
    if (!open.some((d) => d.id === did)) { if (card.chart) card.chart.destroy(); card.el.remove(); cards.delete(did); }
  }
  if (!open.length && !ui.running.querySelector(".empty-row")) ui.running.append(h("p.muted.empty-row", {text: "Nothing running."}));
  if (open.length) { const e = ui.running.querySelector(".empty-row"); if (e) e.remove(); }
  for (const d of open) renderCard(d, now);
  if (mounted.loaded) markReady("dispatch", mounted);
  // The log.
  clear(ui.log);
  if (!all.length) ui.log.append(h("tr", null, h("td", {colSpan: 7, className: "muted", text: "No dispatches yet."})));
  for (const d of all.slice(0, LOG_SHOWN)) {
    ui.log.append(h("tr", {dataset: {dispatchId: d.id, testid: "dispatch-row"}},
      h("td", {title: d.id, text: `${fmt.clock(d.created)} (${fmt.age(d.created, now)})`}),
      h("td", {text: d.requested_by || d.source || ""}),
      h("td.num", {text: fmt.kw(d.target_kw)}),
      h("td.num", {text: fmt.duration(d.duration_s)}),
      h("td", null, h("span", {className: `badge ${d.state}`, text: d.state})),
      h("td.num", {text: d.achieved_kw === null || d.achieved_kw === undefined ? "–" : fmt.kw(d.achieved_kw)}),
      h("td.num", {text: d.shortfall_kw ? fmt.kw(d.shortfall_kw) : ""})));
  }
}

function renderProposals(pending, now) {
  const list = ui.proposals;
  const have = new Map([...list.children].filter((li) => li.dataset.proposalId).map((li) => [li.dataset.proposalId, li]));
  for (const li of [...list.children]) if (!li.dataset.proposalId) li.remove();
  for (const [pid, li] of have) if (!pending.some((p) => p.id === pid)) li.remove();
  if (!pending.length) { list.append(h("li.empty-row", {text: "No proposals waiting."})); return; }
  for (const p of pending) {
    let li = have.get(p.id);
    if (!li) { li = proposalItem(p); list.append(li); }
    const when = li.querySelector(".when");
    setText(when, `proposed ${fmt.age(p.created, now)} · expires ${fmt.until(p.expires, now)}`);
  }
}

function actionText(a) {
  if (!a) return "";
  if (a.type === "dispatch") return `dispatch ${fmt.kw(a.target_kw)} for ${fmt.duration(a.duration_s)}` + (a.start_ms ? ` from ${fmt.clock(a.start_ms)}` : "");
  if (a.type === "rebalance") return `re-balance dispatch ${a.dispatch_id}`;
  if (a.type === "stop") return `stop dispatch ${a.dispatch_id}`;
  return JSON.stringify(a);
}

function proposalItem(p) {
  const expected = Object.entries(p.expected || {}).map(([k, v]) => `${k.replaceAll("_", " ")} ${typeof v === "number" ? fmt.number(v) : JSON.stringify(v)}`).join(" · ");
  const acts = h("div.acts");
  const error = h("span.error.small", {role: "alert"});
  const li = h("li", {dataset: {proposalId: p.id, testid: "proposal"}},
    h("div", null, h("span.badge.pending", {text: p.agent || "agent"})),
    h("div.what", null, h("strong", {text: actionText(p.action)}), h("div", {text: p.reason || ""}),
      expected ? h("div.note", {text: `expected: ${expected}`}) : null, h("div.when")),
    acts);
  if (ctx.store.canOperate) {
    const decide = async (decision) => {
      for (const b of acts.querySelectorAll("button")) b.disabled = true;
      setText(error, "");
      try {
        let result;
        if (ctx.live.isOpen()) {
          result = (await ctx.live.request({type: "decide", proposal: p.id, decision})).proposal;
        } else {
          result = await ctx.api.post(`/api/vpp/proposals/${ctx.api.enc(p.id)}/${decision}`, {});
        }
        if (result) ctx.store.proposal(result);
      } catch (err) {
        setText(error, err.code === "proposal_decided" ? "Already decided (or expired)." : (err.message || "Failed."));
        for (const b of acts.querySelectorAll("button")) b.disabled = false;
      }
    };
    acts.append(
      h("button.primary", {type: "button", text: "Approve", dataset: {testid: "approve"}, onclick: () => decide("approve")}),
      h("button.danger", {type: "button", text: "Reject", dataset: {testid: "reject"}, onclick: () => decide("reject")}),
      error);
  }
  return li;
}

function renderCard(d, now) {
  let card = cards.get(d.id);
  if (!card) {
    const head = h("div.row");
    const bar = h("div.bar", null, h("span"));
    const kv = h("dl.kv");
    const alloc = h("tbody");
    const box = h("div.chart");
    const notes = h("ul.small.muted");
    const cancel = ctx.store.canOperate
      ? h("button.danger", {type: "button", text: "Cancel", dataset: {testid: "dispatch-cancel"}, onclick: async () => {
          cancel.disabled = true;
          try { ctx.store.dispatch(await ctx.api.post(`/api/vpp/dispatches/${ctx.api.enc(d.id)}/cancel`, {reason: "cancelled from the dashboard"})); }
          catch (e) { cancel.disabled = false; }
        }})
      : null;
    const el = h("div.card", {dataset: {dispatchId: d.id, testid: "dispatch-card"}}, head, bar, kv, box,
      h("table.grid.small", {dataset: {testid: "allocation"}},
        h("thead", null, h("tr", null, h("th", {text: "Node"}), h("th.num", {text: "Share kW"}), h("th", {text: "Command"}))), alloc),
      notes, cancel);
    ui.running.prepend(el);
    card = {el, head, bar, kv, alloc, box, notes, chart: null};
    cards.set(d.id, card);
  }
  clear(card.head);
  card.head.append(h("span", {className: `badge ${d.state}`, text: d.state}),
    h("span.big", {dataset: {testid: "achieved"}, text: d.achieved_kw === null || d.achieved_kw === undefined ? "–" : fmt.kw(d.achieved_kw)}),
    h("span.muted", {text: `of ${fmt.kw(d.target_kw)} ${d.direction}`}));
  const span = Math.max(1, d.end - d.start);
  card.bar.firstChild.style.width = `${Math.max(0, Math.min(100, ((now - d.start) / span) * 100))}%`;
  clear(card.kv);
  for (const [k, v] of [["from", fmt.clock(d.start)], ["until", `${fmt.clock(d.end)} (${fmt.until(d.end, now)})`],
    ["by", d.requested_by || d.source], ["shortfall", d.shortfall_kw ? fmt.kw(d.shortfall_kw) : "none"]]) {
    card.kv.append(h("dt", {text: k}), h("dd", {text: v || ""}));
  }
  // Allocation: the latest share per node, with its command's outcome.
  const latest = new Map();
  for (const s of d.shares || []) latest.set(s.device_id, s);
  clear(card.alloc);
  for (const [node, s] of [...latest].sort()) {
    const kw = (d.allocation || {})[node];
    card.alloc.append(h("tr", {dataset: {node}},
      h("td", null, h("a.mono", {href: `#/device/${encodeURIComponent(node)}`, text: node})),
      h("td.num", {text: fmt.number(kw === undefined ? s.kw : kw, 2)}),
      h("td", null, h("span", {className: `badge ${s.status}`, text: s.status}), s.error ? ` ${s.error}` : "")));
  }
  clear(card.notes);
  for (const n of (d.notes || []).slice(-4)) card.notes.append(h("li", {text: typeof n === "string" ? n : JSON.stringify(n)}));
  // Achieved against target.
  const xs = [], achieved = [], target = [];
  for (const [ts, kw] of d.achieved || []) { xs.push(ts / 1000); achieved.push(kw); target.push(d.target_kw); }
  if (!card.chart) {
    card.chart = new TimeChart(card.box, [
      {label: "achieved kW", stroke: color(2)},
      {label: "target kW", stroke: color(3), dash: [4, 4], width: 1},
    ], {range: () => [d.start / 1000, d.end / 1000]});
  }
  if (card.samples !== xs.length) { card.chart.set([xs, achieved, target]); card.samples = xs.length; }
  card.box.dataset.points = String(xs.length);
}
