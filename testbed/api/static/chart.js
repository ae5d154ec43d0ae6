"use strict";
// A small line chart drawn on a canvas: axes, nice ticks, one line per series, gaps for
// missing points. Enough for power over the day; no library and no network needed.

const PALETTE = ["#1f77b4", "#ff7f0e", "#2ca02c", "#d62728", "#9467bd", "#8c564b",
                 "#e377c2", "#7f7f7f", "#bcbd22", "#17becf", "#393b79", "#637939"];

function niceStep(span, count) {
  const raw = span / Math.max(1, count);
  const mag = Math.pow(10, Math.floor(Math.log10(raw)));
  const f = raw / mag;
  return (f < 1.5 ? 1 : f < 3 ? 2 : f < 7 ? 5 : 10) * mag;
}

function ticks(min, max, count) {
  if (!(max > min)) { max = min + 1; }
  const step = niceStep(max - min, count);
  const out = [];
  for (let v = Math.ceil(min / step) * step; v <= max + step * 1e-9; v += step) {
    out.push(Math.abs(v) < step * 1e-9 ? 0 : v);
  }
  return out;
}

function fmtTick(v) {
  const a = Math.abs(v);
  if (a >= 1000) { return (v / 1000).toFixed(a >= 10000 ? 0 : 1) + "k"; }
  return Number.isInteger(v) ? String(v) : v.toFixed(a < 1 ? 2 : 1);
}

class LineChart {
  constructor(canvas, opts) {
    this.canvas = canvas;
    this.xLabel = (opts && opts.xLabel) || "";
    this.yLabel = (opts && opts.yLabel) || "";
    this.x = [];
    this.series = [];
  }

  setData(x, series) {
    this.x = x;
    this.series = series;
    this.draw();
  }

  draw() {
    const c = this.canvas;
    const dpr = window.devicePixelRatio || 1;
    const w = c.clientWidth || c.width;
    const h = c.clientHeight || c.height;
    if (c.width !== Math.round(w * dpr) || c.height !== Math.round(h * dpr)) {
      c.width = Math.round(w * dpr);
      c.height = Math.round(h * dpr);
    }
    const g = c.getContext("2d");
    g.setTransform(dpr, 0, 0, dpr, 0, 0);
    g.clearRect(0, 0, w, h);
    const pad = { l: 56, r: 12, t: 10, b: 34 };
    const pw = w - pad.l - pad.r;
    const ph = h - pad.t - pad.b;
    g.font = "11px system-ui, sans-serif";
    g.fillStyle = "#6b7480";
    if (!this.x.length) {
      g.fillText("no readings yet", pad.l + 8, pad.t + 20);
      return;
    }
    let xmin = this.x[0];
    let xmax = this.x[this.x.length - 1];
    if (!(xmax > xmin)) { xmax = xmin + 1; }
    let ymin = Infinity;
    let ymax = -Infinity;
    for (const s of this.series) {
      for (const v of s.values) {
        if (v !== null && v !== undefined && isFinite(v)) {
          ymin = Math.min(ymin, v);
          ymax = Math.max(ymax, v);
        }
      }
    }
    if (!isFinite(ymin)) { ymin = 0; ymax = 1; }
    ymin = Math.min(ymin, 0);
    ymax = Math.max(ymax, 0);
    const span = (ymax - ymin) || 1;
    ymin -= span * 0.05;
    ymax += span * 0.05;
    const X = (v) => pad.l + ((v - xmin) / (xmax - xmin)) * pw;
    const Y = (v) => pad.t + (1 - (v - ymin) / (ymax - ymin)) * ph;

    g.strokeStyle = "#e6e9ed";
    g.lineWidth = 1;
    g.textAlign = "right";
    g.textBaseline = "middle";
    for (const v of ticks(ymin, ymax, 6)) {
      const y = Math.round(Y(v)) + 0.5;
      g.beginPath(); g.moveTo(pad.l, y); g.lineTo(pad.l + pw, y); g.stroke();
      g.fillText(fmtTick(v), pad.l - 6, y);
    }
    g.textAlign = "center";
    g.textBaseline = "top";
    for (const v of ticks(xmin, xmax, 12)) {
      const x = Math.round(X(v)) + 0.5;
      g.beginPath(); g.moveTo(x, pad.t); g.lineTo(x, pad.t + ph); g.stroke();
      g.fillText(fmtTick(v), x, pad.t + ph + 4);
    }
    g.strokeStyle = "#9aa3ad";
    g.beginPath(); g.moveTo(pad.l, Y(0)); g.lineTo(pad.l + pw, Y(0)); g.stroke();
    g.fillText(this.xLabel, pad.l + pw / 2, pad.t + ph + 18);
    g.save();
    g.translate(12, pad.t + ph / 2);
    g.rotate(-Math.PI / 2);
    g.fillText(this.yLabel, 0, -6);
    g.restore();

    for (const s of this.series) {
      g.strokeStyle = s.color;
      g.lineWidth = s.width || 1.25;
      g.beginPath();
      let pen = false;
      for (let i = 0; i < this.x.length; i++) {
        const v = s.values[i];
        if (v === null || v === undefined || !isFinite(v)) { pen = false; continue; }
        const px = X(this.x[i]);
        const py = Y(v);
        if (pen) { g.lineTo(px, py); } else { g.moveTo(px, py); pen = true; }
      }
      g.stroke();
    }
  }
}

window.LineChart = LineChart;
window.PALETTE = PALETTE;
