// The page's model of the hub: devices, alerts, commands, the fleet aggregate, dispatches and
// proposals. Fed by channel snapshots and live events (live.js) or, while the socket is down,
// by REST polling (app.js). Views listen to topics and redraw what changed; nothing here
// touches the DOM.

const HIDDEN_KEYS = new Set(["device_id", "ts", "seq", "meta"]);
// Memory bounds for a tab left open all day: the oldest commands, and cleared alerts, go first.
const MAX_COMMANDS = 2000;
const MAX_ALERTS = 5000;

export class Store {
  constructor() {
    this.me = null;              // {subject, tenant, role}
    this.clockOffsetMs = 0;      // server clock - our clock, from "connected"
    this.devices = new Map();    // id -> device (see upsertDevice)
    this.alerts = new Map();     // id -> alert
    this.commands = new Map();   // id -> command (as seen)
    this.aggregate = null;
    this.dispatches = new Map(); // id -> dispatch
    this.proposals = new Map();  // id -> proposal
    this.listeners = new Map();  // topic -> Set(fn)
    this.stats = {events: 0, frames: 0, telemetry: 0};
    this.synced = false;         // a device list (snapshot or REST) has arrived
    this.batch = false;          // inside a resync: one "devices" event at its end
  }

  now() { return Date.now() + this.clockOffsetMs; }

  on(topic, fn) {
    let set = this.listeners.get(topic);
    if (!set) this.listeners.set(topic, set = new Set());
    set.add(fn);
    return () => set.delete(fn);
  }

  emit(topic, ...args) {
    const set = this.listeners.get(topic);
    if (set) for (const fn of set) fn(...args);
  }

  get canOperate() { return !!this.me && (this.me.role === "operator" || this.me.role === "admin"); }
  get isSystemAdmin() { return !!this.me && this.me.role === "admin" && this.me.tenant === "default"; }

  reset() {
    this.devices.clear(); this.alerts.clear(); this.commands.clear();
    this.dispatches.clear(); this.proposals.clear(); this.aggregate = null;
    this.synced = false;
  }

  // ---- devices ----------------------------------------------------------------------------

  device(id) {
    let d = this.devices.get(id);
    if (!d) {
      d = {device_id: id, kind: "", meta: {}, tenant: "", status: "unknown", status_since: null,
           reason: null, last_seen: null, values: new Map(), interval_ms: 0, last_ts: 0};
      this.devices.set(id, d);
      if (!this.batch) this.emit("devices");
    }
    return d;
  }

  /** A device summary from a snapshot or REST (docs/rest.md, GET /api/devices). */
  upsertDevice(s) {
    const d = this.device(s.device_id);
    if (s.kind !== undefined) d.kind = s.kind;
    if (s.meta) d.meta = s.meta;
    if (s.tenant) d.tenant = s.tenant;
    if (s.status && s.status !== d.status) {
      if (d.status !== "unknown") d.reason = null;  // changed while we were not looking
      d.status = s.status;
    }
    if (s.status_since !== undefined) d.status_since = s.status_since;
    if (s.status_reason) d.reason = s.status_reason;  // if summaries ever carry it
    if (s.last_seen && (!d.last_seen || s.last_seen > d.last_seen)) d.last_seen = s.last_seen;
    if (s.latest) this.values(d, s.latest);
    this.emit("device", d);
    return d;
  }

  /** Resync from a snapshot: what the snapshot lacks is gone. */
  resyncDevices(list) {
    const seen = new Set();
    this.batch = true;
    try {
      for (const s of list) { seen.add(s.device_id); this.upsertDevice(s); }
    } finally {
      this.batch = false;
    }
    for (const id of [...this.devices.keys()]) if (!seen.has(id)) this.devices.delete(id);
    this.synced = true;
    this.emit("devices");
  }

  values(d, record) {
    const ts = record.ts || this.now();
    if (d.last_ts && ts > d.last_ts) {
      const gap = ts - d.last_ts;
      d.interval_ms = d.interval_ms ? d.interval_ms * 0.7 + gap * 0.3 : gap;
    }
    if (ts >= d.last_ts) d.last_ts = ts;
    for (const key in record) {
      if (HIDDEN_KEYS.has(key)) continue;
      const old = d.values.get(key);
      if (!old || old.ts <= ts) d.values.set(key, {v: record[key], ts});
    }
  }

  telemetry(data) {
    const d = this.device(data.device_id);
    this.values(d, data);
    const seenAt = this.now();
    if (!d.last_seen || seenAt > d.last_seen) d.last_seen = seenAt;
    if (data.meta && typeof data.meta === "object") d.meta = {...d.meta, ...data.meta};
    this.stats.telemetry += 1;
    this.emit("telemetry", d, data);
    this.emit("device", d);
  }

  status(data) {
    const d = this.device(data.device_id);
    d.status = data.status;
    d.reason = data.reason || null;
    d.status_since = data.ts || this.now();
    this.emit("device", d);
  }

  deviceEvent(data) {
    if (data.action === "deleted") {
      if (this.devices.delete(data.device_id)) this.emit("devices");
      return;
    }
    const d = this.device(data.device_id);
    if (data.kind) d.kind = data.kind;
    if (data.meta) d.meta = data.meta;
    if (data.tenant) d.tenant = data.tenant;
    this.emit("device", d);
  }

  // ---- alerts -----------------------------------------------------------------------------

  alert(a) {
    const old = this.alerts.get(a.id);
    if (old && (old.version || 0) > (a.version || 0)) return;
    this.alerts.set(a.id, a);
    if (this.alerts.size > MAX_ALERTS) {
      for (const [key, old] of this.alerts) if (old.state === "cleared") { this.alerts.delete(key); break; }
    }
    this.emit("alert", a);
  }

  /** The open alerts from a snapshot or REST: alerts we think open but that are not are
   * left for a REST read to settle (they may have cleared). */
  resyncAlerts(list) {
    for (const a of list) this.alert(a);
    this.emit("alerts");
  }

  activeAlerts() {
    let n = 0;
    for (const a of this.alerts.values()) if (a.state === "active") n += 1;
    return n;
  }

  // ---- commands ---------------------------------------------------------------------------

  /** A command event (top-level fields, docs/commands.md) or a command from REST. Events come
   * once per channel the page is on; a status seen already changes nothing. */
  command(c) {
    if (!c.id) return;
    const old = this.commands.get(c.id) || {stages: {}};
    if (old.status === c.status && old.ts === c.ts && !c.stages) return;
    const merged = {...old, ...c, stages: {...(old.stages || {}), ...(c.stages || {})}};
    if (c.status && c.ts && !merged.stages[c.status]) merged.stages[c.status] = c.ts;
    // A terminal state is final (a late answer is recorded as late_ack, never overturns it).
    if (old.status && ["acked", "failed", "timeout", "rejected", "expired"].includes(old.status)
        && c.status && c.status !== old.status && !c.stages) return;
    this.commands.set(c.id, merged);
    if (this.commands.size > MAX_COMMANDS) this.commands.delete(this.commands.keys().next().value);
    this.emit("command", merged);
  }

  // ---- VPP --------------------------------------------------------------------------------

  setAggregate(a) {
    if (!a) return;
    this.aggregate = a;
    this.emit("aggregate", a);
  }

  dispatch(d) {
    const old = this.dispatches.get(d.id);
    if (old && (old.version || 0) > (d.version || 0)) return;
    this.dispatches.set(d.id, d);
    this.emit("dispatch", d);
  }

  proposal(p) {
    const old = this.proposals.get(p.id);
    if (old && (old.version || 0) > (p.version || 0)) return;
    this.proposals.set(p.id, p);
    this.emit("proposal", p);
  }
}
