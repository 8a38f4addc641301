// The dashboard: sign-in, the page router (hash routes), the connection state, and REST
// polling while (and only while) the WebSocket is down. Views live in views/*.js; each has
// mount(root, params), unmount() and optionally poll() (what to read over REST meanwhile).

import * as api from "./api.js";
import {Live, THROTTLE_MS} from "./live.js";
import {Store} from "./state.js";
import {setText} from "./dom.js";
import * as fleet from "./views/fleet.js";
import * as devices from "./views/devices.js";
import * as device from "./views/device.js";
import * as alerts from "./views/alerts.js";
import * as dispatch from "./views/dispatch.js";

export const POLL_MS = 3000;
const VIEWS = {fleet, devices, device, alerts, dispatch};

const store = new Store();
const ui = {
  body: document.body,
  conn: document.querySelector('[data-testid="connection"]'),
  user: document.querySelector('[data-testid="user"]'),
  logout: document.querySelector('[data-testid="logout"]'),
  navAlerts: document.querySelector('[data-testid="nav-alerts"]'),
  nav: [...document.querySelectorAll("nav.pages a")],
  sections: Object.fromEntries([...document.querySelectorAll("main > section[data-view]")].map((s) => [s.dataset.view, s])),
  form: document.querySelector('[data-testid="signin-form"]'),
  formError: document.querySelector('[data-testid="signin-error"]'),
};

const CONN_TEXT = {
  connecting: "connecting",
  live: "live",
  reconnecting: "reconnecting",
  polling: "polling",
  "signed-out": "signed out",
};

let connState = "connecting";
function setConnection(state) {
  connState = state;
  ui.conn.dataset.state = state;
  setText(ui.conn, CONN_TEXT[state] || state);
  ui.conn.title = state === "polling"
    ? `The live connection is down; reading over REST every ${POLL_MS / 1000} s until it is back.`
    : state === "live" ? "Live over WebSocket" : "";
  if (state === "live") stopPolling();
}

let wasLive = false;
const live = new Live(store, {
  onState: (state) => {
    if (state === "live") {
      // Back after a break: the tenant channel's snapshot has no alerts, so read them once.
      if (wasLive && !store.isSystemAdmin) loadAlerts();
      wasLive = true;
      setConnection("live");
    } else if (!pollTimer) setConnection(state);
  },
  onClosed: async () => {
    // Was the socket refused because we are signed out (the browser does not say)? Ask.
    try {
      await api.get("/api/me", {quiet401: true});
      startPolling();
    } catch (e) {
      if (e.status === 401) signedOut();
      else startPolling();
    }
  },
});

// ---- REST polling while the socket is down --------------------------------------------------

let pollTimer = 0;
function startPolling() {
  if (pollTimer || store.me === null) return;
  setConnection("polling");
  poll();
  pollTimer = setInterval(poll, POLL_MS);
}

function stopPolling() {
  clearInterval(pollTimer);
  pollTimer = 0;
}

async function poll() {
  try {
    const [list, open] = await Promise.all([
      api.get("/api/devices"),
      api.get("/api/alerts?state=active,acknowledged&limit=500"),
    ]);
    store.resyncDevices(list.devices);
    store.resyncAlerts(open.alerts);
    if (current && current.view.poll) await current.view.poll();
  } catch (e) {
    if (e.status === 401) signedOut();
  }
}

// ---- sign-in and sign-out --------------------------------------------------------------------

function show(name) {
  for (const [key, section] of Object.entries(ui.sections)) section.hidden = key !== name;
}

function signedOut() {
  live.stop();
  stopPolling();
  unmountView();
  store.me = null;
  wasLive = false;
  store.reset();
  ui.body.dataset.auth = "signed-out";
  ui.body.dataset.role = "";
  setText(ui.user, "");
  ui.logout.hidden = true;
  setConnection("signed-out");
  show("signin");
  if (!performance.getEntriesByName("ready:signin").length) performance.mark("ready:signin");
  const name = ui.form.elements.username;
  if (document.activeElement === document.body || !document.activeElement) name.focus();
}

function signedIn(me) {
  store.me = {subject: me.subject, tenant: me.tenant, role: me.role};
  ui.body.dataset.auth = "signed-in";
  ui.body.dataset.role = me.role;
  setText(ui.user, `${me.subject} · ${me.tenant} · ${me.role}`);
  ui.logout.hidden = false;
  // One socket per tab: every device event of what we may see (throttled per device), open
  // alerts (across tenants for the system administrator), the aggregate and dispatches.
  const fleetChannel = store.isSystemAdmin ? "all" : `tenant:${me.tenant}`;
  live.wanted.clear();
  live.subscribe(fleetChannel, THROTTLE_MS, {primary: true});
  if (store.isSystemAdmin) live.subscribe("alerts", 0);
  live.subscribe("aggregate", 0);
  live.subscribe("dispatch", 0);
  live.start();
  loadAlerts();
  route();
}

async function loadAlerts() {
  // The tenant channel's snapshot has devices only; open alerts come from REST once.
  try {
    const open = await api.get("/api/alerts?state=active,acknowledged&limit=500");
    store.resyncAlerts(open.alerts);
  } catch (e) { /* shown as polling / signed out elsewhere */ }
}

ui.form.addEventListener("submit", async (event) => {
  event.preventDefault();
  const username = ui.form.elements.username.value.trim();
  const password = ui.form.elements.password.value;
  if (!username || !password) { setText(ui.formError, "Enter your user name and password."); return; }
  const button = ui.form.querySelector("button[type=submit]");
  button.disabled = true;
  setText(ui.formError, "");
  try {
    const me = await api.post("/api/auth/login", {username, password}, {quiet401: true});
    ui.form.reset();
    signedIn(me);
  } catch (e) {
    const text = e.code === "invalid_credentials" ? "Wrong user name or password."
      : e.code === "rate_limited" ? "Too many attempts; wait a moment and try again."
      : e.message || "Sign-in failed.";
    setText(ui.formError, text);
    ui.form.elements.password.select();
  } finally {
    button.disabled = false;
  }
});

ui.logout.addEventListener("click", async () => {
  live.stop();  // the socket closes first: nothing more arrives for a signed-out page
  try { await api.post("/api/auth/logout", {}, {quiet401: true}); } catch (e) { /* cookie may be gone */ }
  signedOut();
});

api.whenSignedOut(() => { if (store.me) signedOut(); });

// ---- routes ----------------------------------------------------------------------------------

let current = null;  // {name, view, key}

function unmountView() {
  if (current) { current.view.unmount(); current = null; }
}

function parseRoute() {
  const hash = location.hash.replace(/^#\/?/, "");
  const [name, ...rest] = hash.split("/");
  if (name === "device" && rest.length) return {name: "device", params: {id: decodeURIComponent(rest.join("/"))}};
  return {name: VIEWS[name] ? name : "fleet", params: {}};
}

function route() {
  if (!store.me) return;
  const {name, params} = parseRoute();
  const key = name + JSON.stringify(params);
  if (current && current.key === key) return;
  unmountView();
  for (const a of ui.nav) {
    if (a.dataset.page === name || (name === "device" && a.dataset.page === "devices")) a.setAttribute("aria-current", "page");
    else a.removeAttribute("aria-current");
  }
  show(name);
  const view = VIEWS[name];
  const root = ui.sections[name];
  current = {name, view, key};
  view.mount(root, params, {store, live, api, pollMs: POLL_MS});
  performance.mark(`view:${name}`);
  document.title = `${view.title ? view.title(params) : name} · fieldlink`;
  if (connState === "polling" && view.poll) view.poll();
}

addEventListener("hashchange", () => {
  route();
  const main = document.getElementById("main");
  if (main && document.activeElement && document.activeElement.closest && document.activeElement.closest("nav")) main.focus({preventScroll: true});
});

// The active-alert count in the navigation.
let countQueued = false;
store.on("alert", () => {
  if (countQueued) return;
  countQueued = true;
  requestAnimationFrame(() => {
    countQueued = false;
    const n = store.activeAlerts();
    setText(ui.navAlerts, n ? String(n) : "");
  });
});
store.on("alerts", () => { const n = store.activeAlerts(); setText(ui.navAlerts, n ? String(n) : ""); });

// For measurements (tests/e2e): counters of what arrived over the socket.
globalThis.fieldlink = {store, live, stats: store.stats};

// ---- start -----------------------------------------------------------------------------------

(async function boot() {
  try {
    const me = await api.get("/api/me", {quiet401: true});
    signedIn(me);
  } catch (e) {
    if (e.status === 401) signedOut();
    else {
      setConnection("reconnecting");
      setTimeout(boot, 3000);
    }
  }
})();
