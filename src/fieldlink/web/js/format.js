// Formatting and freshness: how numbers, times, ages and reasons read on the page.
// Pure functions; "now" is always passed in (the server's clock, see state.js).

export function number(v, digits) {
  if (typeof v !== "number" || !Number.isFinite(v)) {
    if (v === null || v === undefined) return "–";
    if (typeof v === "boolean") return v ? "true" : "false";
    if (typeof v === "object") return JSON.stringify(v);
    return String(v);
  }
  if (digits !== undefined) return v.toFixed(digits);
  if (Number.isInteger(v)) return String(v);
  const a = Math.abs(v);
  const fixed = v.toFixed(a < 10 ? 3 : a < 1000 ? 2 : 1);
  return fixed.replace(/\.?0+$/, "");
}

export function kw(v) {
  return typeof v === "number" ? `${v.toFixed(Math.abs(v) < 100 ? 1 : 0)} kW` : "–";
}

export function percent(share, digits = 0) {
  return typeof share === "number" ? `${(share * 100).toFixed(digits)} %` : "–";
}

/** "4 s ago", "3 min ago", "2 h ago", "5 d ago"; "never" for no time. */
export function age(ms, now) {
  if (!ms) return "never";
  const s = Math.max(0, Math.floor((now - ms) / 1000));
  if (s < 2) return "just now";
  if (s < 90) return `${s} s ago`;
  if (s < 5400) return `${Math.round(s / 60)} min ago`;
  if (s < 172800) return `${Math.round(s / 3600)} h ago`;
  return `${Math.round(s / 86400)} d ago`;
}

/** "in 12 s", "in 4 min" (or an age when past). */
export function until(ms, now) {
  if (!ms) return "";
  const s = Math.round((ms - now) / 1000);
  if (s <= 0) return age(ms, now);
  if (s < 90) return `in ${s} s`;
  if (s < 5400) return `in ${Math.round(s / 60)} min`;
  return `in ${Math.round(s / 3600)} h`;
}

export function clock(ms) {
  if (!ms) return "–";
  const d = new Date(ms);
  const sameDay = new Date().toDateString() === d.toDateString();
  return sameDay
    ? d.toLocaleTimeString([], {hour: "2-digit", minute: "2-digit", second: "2-digit"})
    : d.toLocaleString([], {month: "short", day: "numeric", hour: "2-digit", minute: "2-digit"});
}

export function duration(s) {
  if (typeof s !== "number") return "–";
  if (s < 120) return `${Math.round(s)} s`;
  if (s < 7200) return `${Math.round(s / 60)} min`;
  return `${(s / 3600).toFixed(1)} h`;
}

// Why a device is online or offline (docs/devices.md, status and liveness).
export const REASONS = {
  silence: "no data within the silence timeout",
  last_will: "connection lost",
  clean_disconnect: "disconnected",
  status_message: "reported by the device",
  reported: "reported by the device",
  telemetry: "sending data",
};

export function reasonText(reason) {
  return reason ? (REASONS[reason] || reason) : "";
}

// Freshness. A device's values are stale when the device is offline, or when the newest is
// older than three of its usual intervals (at least 10 s); with no interval known yet, 60 s
// (the hub's default for coverage, --vpp-max-age).
export const STALE_FLOOR_MS = 10_000;
export const STALE_DEFAULT_MS = 60_000;

export function staleAfter(intervalMs) {
  return intervalMs ? Math.max(STALE_FLOOR_MS, 3 * intervalMs) : STALE_DEFAULT_MS;
}

export function isStale(ts, now, intervalMs, status) {
  if (!ts) return true;
  if (status === "offline") return true;
  return now - ts > staleAfter(intervalMs);
}

export const COMMAND_TEXT = {
  pending: "Sending…",
  sent: "Sent; waiting for the device",
  acked: "Acknowledged by the device",
  failed: "Failed",
  timeout: "Device is not responding",
  rejected: "Rejected",
  expired: "Expired before it could be sent",
};

export const TERMINAL = new Set(["acked", "failed", "timeout", "rejected", "expired"]);

/** One line on what happened to a command, in the device's words where it has them. */
export function commandHeadline(c) {
  const base = COMMAND_TEXT[c.status] || c.status;
  if (c.status === "timeout") return c.error || base;
  if (c.status === "failed") {
    if (c.reason === "offline") return "Failed: the device is offline";
    return c.error ? `Failed: ${c.error}` : base;
  }
  if (c.status === "rejected") return `Rejected: ${c.error || c.reason || "refused"}`;
  return base;
}

export function resultText(result) {
  if (result === undefined || result === null) return "";
  return typeof result === "object" ? JSON.stringify(result) : String(result);
}
