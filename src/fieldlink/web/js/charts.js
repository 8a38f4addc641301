// Time-series charts on uPlot (vendor/uPlot.iife.min.js, MIT): sized to their box, coloured
// from the page's CSS variables (so they follow light and dark), x in epoch seconds.

const uPlot = () => globalThis.uPlot;

function cssVar(name) {
  return getComputedStyle(document.documentElement).getPropertyValue(name).trim() || "#888";
}

const scheme = matchMedia("(prefers-color-scheme: dark)");
const charts = new Set();
scheme.addEventListener("change", () => { for (const c of charts) c.redraw(false, true); });

export const color = (n) => () => cssVar(`--chart-${n}`);
const axisColor = () => cssVar("--chart-axis");
const gridColor = () => cssVar("--chart-grid");

function axes(yLabel) {
  const common = {stroke: axisColor, grid: {stroke: gridColor, width: 1}, ticks: {stroke: gridColor, width: 1}};
  return [
    {...common},
    {...common, size: 56, label: yLabel || undefined, labelSize: yLabel ? 18 : 0,
     values: (u, ticks) => ticks.map((v) => (Math.abs(v) >= 1000 ? `${(v / 1000).toFixed(1)}k` : String(+v.toFixed(3))))},
  ];
}

/**
 * A chart in `box` (an element with a CSS height). `series`: [{label, stroke, width?, dash?}].
 * `options.select`: called with (minS, maxS) when the user drags a range (zoom).
 */
export class TimeChart {
  constructor(box, series, {yLabel = "", select = null, legend = false, range = null} = {}) {
    this.box = box;
    this.data = [[], ...series.map(() => [])];
    const self = this;
    const opts = {
      width: Math.max(200, box.clientWidth),
      height: Math.max(100, box.clientHeight),
      pxAlign: 0,
      legend: {show: legend},
      cursor: {drag: {x: !!select, y: false, setScale: false}},
      scales: {x: {time: true, ...(range ? {range} : {})}},
      axes: axes(yLabel),
      series: [{}, ...series.map((s) => ({
        label: s.label, stroke: s.stroke || color(1), width: s.width || 1.5,
        dash: s.dash, spanGaps: false, points: {show: false},
      }))],
      hooks: select ? {
        setSelect: [(u) => {
          if (u.select.width < 4) return;
          const min = u.posToVal(u.select.left, "x");
          const max = u.posToVal(u.select.left + u.select.width, "x");
          u.setSelect({left: 0, width: 0, top: 0, height: 0}, false);
          select(min, max);
        }],
      } : {},
    };
    this.u = new (uPlot())(opts, this.data, box);
    this.resize = new ResizeObserver(() => self.fit());
    this.resize.observe(box);
    charts.add(this);
  }

  fit() {
    const w = Math.max(200, this.box.clientWidth), h = Math.max(100, this.box.clientHeight);
    if (w !== this.u.width || h !== this.u.height) this.u.setSize({width: w, height: h});
  }

  set(data) {
    this.data = data;
    this.u.setData(data);
  }

  redraw(...args) { this.u.redraw(...args); }

  destroy() {
    charts.delete(this);
    this.resize.disconnect();
    this.u.destroy();
  }
}

/**
 * A rolling window of points for live charts: appends in time order (older points that
 * arrive late are dropped), trims what falls out of the window, and redraws at most once per
 * animation frame.
 */
export class Rolling {
  constructor(windowMs) {
    this.windowMs = windowMs;
    this.xs = [];   // seconds
    this.ys = [];   // per series arrays, parallel to xs
  }

  reset(series) { this.xs = []; this.ys = series.map(() => []); }

  push(tsMs, values) {
    const x = tsMs / 1000;
    const n = this.xs.length;
    if (n && x <= this.xs[n - 1]) return false;
    this.xs.push(x);
    for (let i = 0; i < this.ys.length; i++) this.ys[i].push(values[i] ?? null);
    return true;
  }

  trim(nowMs) {
    const min = (nowMs - this.windowMs) / 1000;
    let k = 0;
    while (k < this.xs.length && this.xs[k] < min) k++;
    if (k > 0) {
      this.xs.splice(0, k);
      for (const y of this.ys) y.splice(0, k);
    }
  }

  data() { return [this.xs, ...this.ys]; }
}
