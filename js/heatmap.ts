// Heatmaps drawn as one image on a canvas (never an element per cell): labelled rows and columns,
// the value under the pointer read out, wheel to zoom and drag to pan, and a default crop to the
// tokens that matter (a button switches to every row and column). Colours follow the theme: from
// the background to the attention colour of the element the map is drawn in.

import { h, fmt } from "./dom";

export interface MapData {
  values: Float32Array; // [rows.length, cols.length], row-major
  rows: number[]; // what each row is (a position, or a head)
  cols: number[]; // the position of each column
  rowLabel(row: number): string; // short, for the axis
  colLabel(col: number): string;
  rowName(row: number): string; // in full, for the readout and the labels' titles
  colName(col: number): string;
  title: string;
  mark?: [row: number, col: number] | null; // a cell to outline (values of rows and cols)
  crop?: { rows: number[]; cols: number[] } | null; // what to show first (subsets of rows and cols)
  onRow?(row: number): void; // a click on a row (the all-heads view: choose the head)
  width?: number; // px of the canvas at most
  height?: number;
}

export type Rgb = [number, number, number];
/** The theme's colours: a map's ramp (background to attention), and for signed bars and marks. */
export interface Palette { low: Rgb; high: Rgb; up: string; down: string; fg: string; select: string }

const LABEL_GAP = 11; // px between two labels of an axis

/** The theme's colours where `el` is drawn (the widget's --bg, --attention, --up, ...). */
export function palette(el: Element): Palette {
  const style = getComputedStyle(el);
  const css = (name: string, fallback: string) => style.getPropertyValue(name).trim() || fallback;
  return {
    low: rgb(css("--bg", "#ffffff"), [255, 255, 255]), high: rgb(css("--attention", "#1f77b4"), [31, 119, 180]),
    up: css("--up", "#2e7d32"), down: css("--down", "#c62828"), fg: css("--fg-dim", "#6e7781"), select: css("--select", "#d6336c"),
  };
}

function rgb(css: string, fallback: Rgb): Rgb {
  const probe = document.createElement("canvas").getContext("2d", { willReadFrequently: true });
  if (!probe) return fallback;
  probe.fillStyle = "#000";
  probe.fillStyle = css;
  probe.fillRect(0, 0, 1, 1);
  const [r, g, b] = probe.getImageData(0, 0, 1, 1).data;
  return [r, g, b];
}

export function heatmap(data: MapData, colours: Palette): HTMLElement {
  return new Heatmap(data, colours).root;
}

class Heatmap {
  readonly root: HTMLElement;
  private canvas = h("canvas", { class: "heatmap", role: "img" });
  private rowAxis = h("div", { class: "map-rows" });
  private colAxis = h("div", { class: "map-cols" });
  private readout = h("div", { class: "map-readout", "aria-live": "polite" });
  private markEl = h("span", { class: "cell-mark" });
  private toggle = h("button", { class: "map-crop" });
  private rows: number[] = []; // indices into data.rows shown
  private cols: number[] = [];
  private image: HTMLCanvasElement | null = null; // the shown cells, one pixel each
  private cell = 1; // px per cell
  private fitCell = 1;
  private off = { r: 0, c: 0 }; // the first row and column in view (in cells, fractional)
  private cropped: boolean;
  private max = 0;
  private drag: { x: number; y: number; r: number; c: number; moved: boolean } | null = null;

  constructor(private data: MapData, private colours: Palette) {
    for (const v of data.values) if (v > this.max) this.max = v;
    const crop = data.crop;
    this.cropped = !!crop && (crop.rows.length < data.rows.length || crop.cols.length < data.cols.length);
    this.toggle.addEventListener("click", () => { this.cropped = !this.cropped; this.show(); });
    const frame = h("div", { class: "map-frame" }, this.colAxis, this.rowAxis, h("div", { class: "map-box" }, this.canvas, this.markEl));
    const tools = h("div", { class: "map-tools" }, ...(crop && this.cropped ? [this.toggle] : []),
      h("span", { class: "hint" }, "wheel: zoom, drag: pan"));
    this.root = h("figure", { class: "map" }, frame, this.readout, tools, h("figcaption", {}, `${data.title} (max ${fmt(this.max)})`));
    this.canvas.setAttribute("aria-label", `${data.title}: ${data.rows.length} × ${data.cols.length}`);
    this.listen();
    this.show();
  }

  /** Show the crop or everything, fitted to the box. */
  private show(): void {
    const d = this.data, crop = this.cropped ? d.crop : null;
    const pick = (all: number[], keep: number[] | undefined) => {
      if (!keep) return all.map((_, i) => i);
      const wanted = new Set(keep);
      return all.flatMap((v, i) => (wanted.has(v) ? [i] : []));
    };
    this.rows = pick(d.rows, crop?.rows);
    this.cols = pick(d.cols, crop?.cols);
    this.toggle.textContent = this.cropped ? `all ${d.cols.length} tokens` : "tokens that matter";
    this.toggle.title = this.cropped ? "Show every row and column" : "Show only the tokens that matter (the routes', the edge's neighbourhood)";
    const W = this.data.width ?? 240, H = this.data.height ?? 240;
    this.fitCell = Math.min(W / this.cols.length, H / this.rows.length, 28);
    this.cell = this.fitCell;
    this.off = { r: 0, c: 0 };
    this.paintImage();
    this.draw();
  }

  /** One pixel per shown cell: sqrt of the value, so that small weights stay visible. */
  private paintImage(): void {
    const nr = this.rows.length, nc = this.cols.length, d = this.data;
    const img = document.createElement("canvas");
    img.width = Math.max(1, nc);
    img.height = Math.max(1, nr);
    const ctx = img.getContext("2d");
    if (ctx) {
      const pixels = ctx.createImageData(img.width, img.height);
      const { low, high } = this.colours;
      const n = d.cols.length;
      for (let i = 0; i < nr; i++) {
        for (let j = 0; j < nc; j++) {
          const v = d.values[this.rows[i] * n + this.cols[j]];
          const t = this.max > 0 ? Math.sqrt(Math.max(0, v) / this.max) : 0;
          const at = 4 * (i * nc + j);
          for (let k = 0; k < 3; k++) pixels.data[at + k] = Math.round(low[k] + (high[k] - low[k]) * t);
          pixels.data[at + 3] = 255;
        }
      }
      ctx.putImageData(pixels, 0, 0);
    }
    this.image = img;
  }

  private get viewW(): number { return Math.min(this.data.width ?? 240, this.cols.length * this.fitCell); }
  private get viewH(): number { return Math.min(this.data.height ?? 240, this.rows.length * this.fitCell); }

  private draw(): void {
    const W = this.viewW, H = this.viewH, dpr = window.devicePixelRatio || 1;
    const c = this.canvas;
    c.width = Math.round(W * dpr);
    c.height = Math.round(H * dpr);
    c.style.width = `${W}px`;
    c.style.height = `${H}px`;
    const ctx = c.getContext("2d");
    if (ctx && this.image) {
      ctx.imageSmoothingEnabled = false;
      ctx.clearRect(0, 0, c.width, c.height);
      const cell = this.cell * dpr;
      ctx.drawImage(this.image, -this.off.c * cell, -this.off.r * cell, this.cols.length * cell, this.rows.length * cell);
    }
    this.drawAxes(W, H);
    this.drawMark();
  }

  /** Labels of the rows and columns in view, thinned to keep LABEL_GAP px apart. */
  private drawAxes(W: number, H: number): void {
    const d = this.data;
    const labels = (n: number, first: number, size: number, make: (i: number, at: number) => HTMLElement) => {
      const every = Math.max(1, Math.ceil(LABEL_GAP / this.cell));
      const out: HTMLElement[] = [];
      const start = Math.max(0, Math.floor(first));
      for (let i = start - (start % every); i < n; i += every) {
        const at = (i - first + 0.5) * this.cell;
        if (at < 0 || i < start) continue;
        if (at > size) break;
        out.push(make(i, at));
      }
      return out;
    };
    this.rowAxis.style.height = `${H}px`;
    this.rowAxis.replaceChildren(...labels(this.rows.length, this.off.r, H, (i, at) => {
      const row = d.rows[this.rows[i]];
      return h("span", { class: "map-label", style: `top:${fmt(at - 6, 1)}px`, title: d.rowName(row), "data-row": row }, d.rowLabel(row));
    }));
    this.colAxis.style.width = `${W}px`;
    this.colAxis.replaceChildren(...labels(this.cols.length, this.off.c, W, (j, at) => {
      const col = d.cols[this.cols[j]];
      return h("span", { class: "map-label col", style: `left:${fmt(at - 6, 1)}px`, title: d.colName(col), "data-col": col }, d.colLabel(col));
    }));
  }

  private drawMark(): void {
    const mark = this.data.mark, el = this.markEl;
    el.style.display = "none";
    if (!mark) return;
    const i = this.rows.findIndex((r) => this.data.rows[r] === mark[0]), j = this.cols.findIndex((c) => this.data.cols[c] === mark[1]);
    if (i < 0 || j < 0) return;
    const x = (j - this.off.c) * this.cell, y = (i - this.off.r) * this.cell, size = Math.max(this.cell, 3);
    if (x < -size || y < -size || x > this.viewW || y > this.viewH) return;
    Object.assign(el.style, { display: "block", left: `${fmt(x, 1)}px`, top: `${fmt(y, 1)}px`, width: `${fmt(size, 1)}px`, height: `${fmt(size, 1)}px` });
  }

  /** The shown row and column under a point of the canvas. */
  private at(ev: MouseEvent): [number, number] {
    const r = this.canvas.getBoundingClientRect();
    const i = Math.floor(this.off.r + (ev.clientY - r.top) / this.cell), j = Math.floor(this.off.c + (ev.clientX - r.left) / this.cell);
    return [Math.max(0, Math.min(this.rows.length - 1, i)), Math.max(0, Math.min(this.cols.length - 1, j))];
  }

  private clampOffset(): void {
    const maxC = Math.max(0, this.cols.length - this.viewW / this.cell), maxR = Math.max(0, this.rows.length - this.viewH / this.cell);
    this.off = { r: Math.max(0, Math.min(maxR, this.off.r)), c: Math.max(0, Math.min(maxC, this.off.c)) };
  }

  private listen(): void {
    const c = this.canvas, d = this.data;
    c.addEventListener("mousemove", (ev) => {
      if (this.drag) {
        const dx = ev.clientX - this.drag.x, dy = ev.clientY - this.drag.y;
        if (Math.abs(dx) + Math.abs(dy) > 3) this.drag.moved = true;
        this.off = { r: this.drag.r - dy / this.cell, c: this.drag.c - dx / this.cell };
        this.clampOffset();
        this.draw();
        return;
      }
      const [i, j] = this.at(ev);
      const row = d.rows[this.rows[i]], col = d.cols[this.cols[j]];
      const text = `${d.rowName(row)} ← ${d.colName(col)}: ${fmt(d.values[this.rows[i] * d.cols.length + this.cols[j]], 4)}`;
      this.readout.textContent = text;
      c.title = text;
    });
    c.addEventListener("mousedown", (ev) => { this.drag = { x: ev.clientX, y: ev.clientY, r: this.off.r, c: this.off.c, moved: false }; });
    const end = () => { setTimeout(() => { this.drag = null; }, 0); };
    c.addEventListener("mouseup", end);
    c.addEventListener("mouseleave", () => { this.drag = null; });
    c.addEventListener("click", (ev) => {
      if (this.drag?.moved || !d.onRow) return;
      d.onRow(d.rows[this.rows[this.at(ev)[0]]]);
    });
    c.addEventListener("wheel", (ev) => {
      ev.preventDefault();
      const r = c.getBoundingClientRect();
      const px = ev.clientX - r.left, py = ev.clientY - r.top;
      const ci = this.off.c + px / this.cell, ri = this.off.r + py / this.cell;
      this.cell = Math.max(this.fitCell, Math.min(40, this.cell * Math.exp(-ev.deltaY * 0.002)));
      this.off = { r: ri - py / this.cell, c: ci - px / this.cell };
      this.clampOffset();
      this.draw();
    }, { passive: false });
  }
}
