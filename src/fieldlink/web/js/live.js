// The page's one WebSocket (native protocol, docs/protocol.md), authenticated by the session
// cookie. It keeps a set of wanted channels, subscribes to all of them (with the display
// throttle) after every (re)connect and hands each snapshot and event to the store. It
// reconnects with backoff and jitter; what a close means (signed out, retry) is app.js's call.

export const THROTTLE_MS = 200;  // per-device display throttle: at most 5 updates a second

// docs/protocol.md, close codes: these mean "do not reconnect" (fix the client, or access
// was revoked); everything else is retried with backoff.
const TERMINAL = (code) => code === 1002 || code === 1009 || (code >= 4500 && code <= 4999);

export class Live {
  constructor(store, {onState = () => {}, onClosed = () => {}} = {}) {
    this.store = store;
    this.onState = onState;      // (state) "connecting" | "live" | "reconnecting"
    this.onClosed = onClosed;    // ({code, reason, terminal, wasLive})
    this.wanted = new Map();     // channel -> throttle_ms
    this.joined = new Set();     // channels answered with "subscribed" on this socket
    this.primary = null;         // the channel whose snapshot makes the page "live"
    this.ws = null;
    this.attempt = 0;
    this.timer = 0;
    this.stopped = true;
    this.live = false;
    this.nextId = 1;
    this.pending = new Map();    // request id -> {resolve, reject, timer}
  }

  start() {
    this.stopped = false;
    this.connect();
  }

  /** Close for good (sign-out): no reconnect. */
  stop() {
    this.stopped = true;
    clearTimeout(this.timer);
    this.live = false;
    if (this.ws) {
      const ws = this.ws;
      this.ws = null;
      ws.onclose = null; ws.onmessage = null; ws.onerror = null;
      if (ws.readyState <= 1) ws.close(1000, "signed out");
    }
    for (const p of this.pending.values()) { clearTimeout(p.timer); p.reject(new Error("closed")); }
    this.pending.clear();
  }

  subscribe(channel, throttleMs = THROTTLE_MS, {primary = false} = {}) {
    this.wanted.set(channel, throttleMs);
    if (primary) this.primary = channel;
    if (this.isOpen()) this.sendSubscribe(channel);
  }

  unsubscribe(channel) {
    this.wanted.delete(channel);
    if (this.isOpen() && this.joined.has(channel)) this.send({type: "unsubscribe", channel});
    this.joined.delete(channel);
  }

  isOpen() { return !!this.ws && this.ws.readyState === 1; }

  send(message) {
    if (!this.isOpen()) return false;
    this.ws.send(JSON.stringify(message));
    return true;
  }

  /** Send a message with an id and wait for the reply that echoes it. */
  request(message, timeoutMs = 10_000) {
    const id = this.nextId++;
    return new Promise((resolve, reject) => {
      if (!this.send({...message, id})) { reject(new Error("not connected")); return; }
      const timer = setTimeout(() => { this.pending.delete(id); reject(new Error("no answer")); }, timeoutMs);
      this.pending.set(id, {resolve, reject, timer});
    });
  }

  // ---- the socket ---------------------------------------------------------------------

  connect() {
    if (this.stopped) return;
    this.onState(this.attempt === 0 ? "connecting" : "reconnecting");
    const url = (location.protocol === "https:" ? "wss://" : "ws://") + location.host + "/ws";
    let ws;
    try { ws = new WebSocket(url); } catch (e) { this.closed(1006, "", false); return; }
    this.ws = ws;
    this.joined = new Set();
    ws.onmessage = (m) => this.received(m.data);
    ws.onerror = () => {};  // a close event follows
    ws.onclose = (e) => { if (this.ws === ws) this.closed(e.code, e.reason, this.live); };
  }

  closed(code, reason, wasLive) {
    this.ws = null;
    this.live = false;
    for (const p of this.pending.values()) { clearTimeout(p.timer); p.reject(new Error("closed")); }
    this.pending.clear();
    if (this.stopped) return;
    const terminal = TERMINAL(code);
    this.attempt += 1;
    this.onState("reconnecting");
    this.onClosed({code, reason, terminal, wasLive});
    if (this.stopped) return;
    // Backoff with jitter; a terminal close is retried rarely (only a new session helps).
    const base = terminal ? 30_000 : Math.min(15_000, 500 * 2 ** Math.min(this.attempt, 5));
    this.timer = setTimeout(() => this.connect(), base * (0.5 + Math.random() / 2));
  }

  sendSubscribe(channel) {
    this.send({type: "subscribe", channel, throttle_ms: this.wanted.get(channel) || 0, id: `sub:${channel}`});
  }

  received(text) {
    let parsed;
    try { parsed = JSON.parse(text); } catch (e) { return; }
    const store = this.store;
    store.stats.frames += 1;
    if (Array.isArray(parsed)) {  // a batch (docs/protocol.md, batching)
      for (let i = 0; i < parsed.length; i++) this.handle(parsed[i]);
    } else {
      this.handle(parsed);
    }
  }

  handle(m) {
    const store = this.store;
    store.stats.events += 1;
    switch (m.type) {
      case "telemetry": store.telemetry(m.data); return;
      case "status": store.status(m.data); return;
      case "device": store.deviceEvent(m.data); return;
      case "alert": store.alert(m.data); return;
      case "command": store.command(m); return;
      case "aggregate": store.setAggregate(m.data); return;
      case "dispatch": if (m.data && m.data.dispatch) store.dispatch(m.data.dispatch); return;
      case "proposal": store.proposal(m.data); return;
      case "connected":
        store.clockOffsetMs = (m.server_time || Date.now()) - Date.now();
        for (const channel of this.wanted.keys()) this.sendSubscribe(channel);
        return;
      case "subscribed": this.subscribed(m); return;
      case "decided": this.answer(m.id, m); return;
      case "error":
        if (typeof m.id === "string" && m.id.startsWith("sub:")) {
          console.warn("fieldlink: cannot subscribe to", m.id.slice(4), m.code);
          this.wanted.delete(m.id.slice(4));
          return;
        }
        if (!this.answer(m.id, m, true)) console.warn("fieldlink:", m.code, m.message);
        return;
      default:
        return;
    }
  }

  answer(id, message, failed = false) {
    const p = this.pending.get(id);
    if (!p) return false;
    this.pending.delete(id);
    clearTimeout(p.timer);
    if (failed) p.reject(Object.assign(new Error(message.message || message.code), {code: message.code}));
    else p.resolve(message);
    return true;
  }

  subscribed(m) {
    const channel = m.channel;
    this.joined.add(channel);
    const snapshot = m.snapshot || {};
    const store = this.store;
    if (channel === "all" || channel.startsWith("tenant:")) {
      store.resyncDevices(snapshot.devices || []);
    } else if (channel === "alerts") {
      store.resyncAlerts(snapshot.alerts || []);
    } else if (channel.startsWith("aggregate")) {
      store.setAggregate(snapshot);
    } else if (channel.startsWith("dispatch")) {
      for (const d of snapshot.dispatches || []) store.dispatch(d);
      for (const p of snapshot.proposals || []) store.proposal(p);
    } else if (channel.startsWith("device:")) {
      if (snapshot.status !== "unknown") store.upsertDevice(snapshot);
    }
    const resolved = m.id && typeof m.id === "string" ? m.id.slice(4) : channel;
    if (!this.live && (resolved === this.primary || channel === this.primary)) {
      this.live = true;
      this.attempt = 0;
      this.onState("live");
    }
  }
}
