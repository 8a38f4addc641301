// Small DOM helpers: element building, writes that skip unchanged values (a write that
// changes nothing still costs a style pass), and a frame-aligned render scheduler.

/** h("td.id", {dataset: {x: 1}}, child, "text") */
export function h(tag, props, ...children) {
  const [name, ...classes] = tag.split(".");
  const el = document.createElement(name || "div");
  if (classes.length) el.className = classes.join(" ");
  if (props) {
    for (const [k, v] of Object.entries(props)) {
      if (v === undefined || v === null || v === false) continue;
      if (k === "dataset") Object.assign(el.dataset, v);
      else if (k === "text") el.textContent = v;
      else if (k.startsWith("on")) el.addEventListener(k.slice(2), v);
      else if (k in el && k !== "list" && k !== "form") el[k] = v;
      else el.setAttribute(k, v === true ? "" : v);
    }
  }
  for (const c of children) {
    if (c === null || c === undefined || c === false) continue;
    el.append(c instanceof Node ? c : String(c));
  }
  return el;
}

export function setText(el, text) {
  if (el.textContent !== text) el.textContent = text;
}

export function setClass(el, name, on) {
  if (el.classList.contains(name) !== on) el.classList.toggle(name, on);
}

export function setAttr(el, name, value) {
  if (el.getAttribute(name) !== value) el.setAttribute(name, value);
}

export function clear(el) {
  while (el.firstChild) el.removeChild(el.firstChild);
}

/**
 * Coalesces work into at most one run per `minIntervalMs`, aligned to an animation frame.
 * `request()` may be called any number of times between runs.
 */
export class Throttled {
  constructor(fn, minIntervalMs = 0) {
    this.fn = fn;
    this.minIntervalMs = minIntervalMs;
    this.last = 0;
    this.queued = false;
    this.timer = 0;
    this.frame = 0;
  }

  request() {
    if (this.queued) return;
    this.queued = true;
    const wait = Math.max(0, this.last + this.minIntervalMs - performance.now());
    const run = () => { this.frame = requestAnimationFrame(() => this.run()); };
    if (wait > 0) this.timer = setTimeout(run, wait); else run();
  }

  run() {
    this.queued = false;
    this.last = performance.now();
    this.fn();
  }

  cancel() {
    clearTimeout(this.timer);
    cancelAnimationFrame(this.frame);
    this.queued = false;
  }
}

/** A performance mark "ready:<view>" the first time a view shows real data after its mount
 * (read by tests/e2e/test_dashboard_perf.py next to the browser's first paint). */
export function markReady(view, mounted) {
  if (mounted.ready) return;
  mounted.ready = true;
  performance.mark(`ready:${view}`);
}
