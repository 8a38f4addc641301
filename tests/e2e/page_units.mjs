// Unit checks of the dashboard's pure modules (format.js, state.js) and of how live.js reads
// frames, in Node.js without a browser. Run by tests/e2e/test_dashboard_units.py; prints "ok".
import assert from "node:assert/strict";

const web = new URL("../../src/fieldlink/web/js/", import.meta.url);
const fmt = await import(new URL("format.js", web));
const {Store} = await import(new URL("state.js", web));
const {Live} = await import(new URL("live.js", web));

// ---- format.js ----------------------------------------------------------------------------
assert.equal(fmt.number(3.2), "3.2");
assert.equal(fmt.number(56.25), "56.25");
assert.equal(fmt.number(12), "12");
assert.equal(fmt.number(null), "–");
assert.equal(fmt.number(true), "true");
assert.equal(fmt.age(null, 1000), "never");
assert.equal(fmt.age(10_000, 10_500), "just now");
assert.equal(fmt.age(10_000, 15_000), "5 s ago");
assert.equal(fmt.age(0 + 1, 10 * 60_000), "10 min ago");
assert.equal(fmt.age(100, 100 - 5000), "just now");  // a clock ahead of ours is not "in the future"
// Stale: offline, or older than 3 intervals (at least 10 s), or 60 s when no interval is known.
assert.equal(fmt.isStale(1000, 2000, 500, "online"), false);
assert.equal(fmt.isStale(1000, 12_001, 500, "online"), true);
assert.equal(fmt.isStale(1000, 14_000, 5000, "online"), false);
assert.equal(fmt.isStale(1000, 16_001, 5000, "online"), true);
assert.equal(fmt.isStale(1000, 50_000, 0, "online"), false);
assert.equal(fmt.isStale(1000, 61_001, 0, "online"), true);
assert.equal(fmt.isStale(1000, 1000, 0, "offline"), true);
assert.equal(fmt.isStale(null, 1000, 0, "online"), true);
// A command's outcome, in the device's words where it has them.
assert.equal(fmt.commandHeadline({status: "acked"}), "Acknowledged by the device");
assert.equal(fmt.commandHeadline({status: "failed", reason: "device_error", error: "battery too hot"}), "Failed: battery too hot");
assert.equal(fmt.commandHeadline({status: "failed", reason: "offline"}), "Failed: the device is offline");
assert.equal(fmt.commandHeadline({status: "timeout", error: "Device is not responding"}), "Device is not responding");
assert.equal(fmt.commandHeadline({status: "timeout"}), "Device is not responding");
assert.equal(fmt.commandHeadline({status: "rejected", reason: "unknown_device"}), "Rejected: unknown_device");
assert.equal(fmt.reasonText("silence"), "no data within the silence timeout");
assert.equal(fmt.reasonText("clean_disconnect"), "disconnected");

// ---- state.js -----------------------------------------------------------------------------
const store = new Store();
const seen = [];
store.on("device", (d) => seen.push(d.device_id));
store.resyncDevices([{device_id: "b", status: "online", kind: "edge", latest: {ts: 1000, soc: 50, seq: 3}},
                     {device_id: "a", status: "offline", kind: "gas"}]);
assert.equal(store.synced, true);
assert.deepEqual([...store.devices.keys()].sort(), ["a", "b"]);
assert.deepEqual(store.devices.get("b").values.get("soc"), {v: 50, ts: 1000});
assert.equal(store.devices.get("b").values.has("seq"), false);
// Each value keeps its own time: a partial record does not make the others look fresh.
store.telemetry({device_id: "b", ts: 2000, power_kw: 3});
assert.deepEqual(store.devices.get("b").values.get("soc"), {v: 50, ts: 1000});
assert.deepEqual(store.devices.get("b").values.get("power_kw"), {v: 3, ts: 2000});
assert.equal(store.devices.get("b").interval_ms, 1000);
// An older record never overwrites a newer value.
store.telemetry({device_id: "b", ts: 1500, power_kw: 9});
assert.deepEqual(store.devices.get("b").values.get("power_kw"), {v: 3, ts: 2000});
// Status with its reason; a resync drops devices the snapshot no longer has.
store.status({device_id: "b", status: "offline", reason: "silence", ts: 3000});
assert.equal(store.devices.get("b").reason, "silence");
store.resyncDevices([{device_id: "b", status: "offline"}]);
assert.deepEqual([...store.devices.keys()], ["b"]);
assert.equal(store.devices.get("b").reason, "silence");  // same status: the reason still holds
store.resyncDevices([{device_id: "b", status: "online"}]);
assert.equal(store.devices.get("b").reason, null);       // changed unseen: no reason to show
// Alerts by version; commands deduplicated (one event per channel) and terminal is final.
store.alert({id: "al-1", state: "active", version: 1});
store.alert({id: "al-1", state: "acknowledged", version: 2});
store.alert({id: "al-1", state: "active", version: 1});
assert.equal(store.alerts.get("al-1").state, "acknowledged");
assert.equal(store.activeAlerts(), 0);
let commandEvents = 0;
store.on("command", () => commandEvents++);
store.command({id: "c-1", device_id: "b", status: "sent", ts: 10});
store.command({id: "c-1", device_id: "b", status: "sent", ts: 10});
store.command({id: "c-1", device_id: "b", status: "timeout", ts: 20, error: "Device is not responding"});
store.command({id: "c-1", device_id: "b", status: "acked", ts: 30});
assert.equal(commandEvents, 2);
assert.equal(store.commands.get("c-1").status, "timeout");
assert.deepEqual(store.commands.get("c-1").stages, {sent: 10, timeout: 20});

// ---- live.js: frames, batches, snapshots, replies -----------------------------------------
const live = new Live(new Store());
const states = [];
live.onState = (s) => states.push(s);
live.primary = "tenant:t1";
live.received(JSON.stringify({type: "subscribed", channel: "tenant:t1", id: "sub:tenant:t1", seq: 4,
  snapshot: {devices: [{device_id: "n1", status: "online", latest: {ts: 5, soc: 1}}]}}));
assert.deepEqual(states, ["live"]);
live.received(JSON.stringify([
  {type: "telemetry", channel: "tenant:t1", seq: 5, data: {device_id: "n1", ts: 6, soc: 2}},
  {type: "status", channel: "tenant:t1", seq: 6, data: {device_id: "n1", status: "offline", reason: "last_will", ts: 7}},
  {type: "aggregate", channel: "aggregate:t1", seq: 1, data: {tenant: "t1", total: {power_kw: 1}}},
]));
assert.equal(live.store.devices.get("n1").values.get("soc").v, 2);
assert.equal(live.store.devices.get("n1").reason, "last_will");
assert.equal(live.store.aggregate.total.power_kw, 1);
assert.deepEqual(live.store.stats, {events: 4, frames: 2, telemetry: 1});
live.received("not json");
assert.equal(live.store.stats.frames, 2);

console.log("ok");
