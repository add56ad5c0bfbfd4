// The routes graph: tokens along x, layers along y (embeddings at the bottom). The view opens
// with every token column the routes pass through in the box: columns they do not touch collapse
// into marked gaps (click one to show its tokens). Zoom is semantic: it spaces columns and
// layers, never scales text, so labels keep their size at every zoom. Fixed bands around the
// plot: the targets above (click: whose prediction's routes), the token labels below, the layer
// axis on the left, and an overview strip of the whole prompt at the bottom (where the routes
// are, where the view is; click or drag it to move there). Edges and nodes are SVG elements while
// they are few; many (long prompts, low thresholds) are painted on a canvas under the SVG, and a
// click or hover finds the nearest one.
// Edges with an effect are coloured by its sign (supports / opposes the prediction over the
// contrast); routes kept by effect are drawn with widths by |effect|; the edges with a large
// effect that the share routes miss can be drawn dashed over them.

import { decode } from "./arrays";
import { s, visible, fmt } from "./dom";
import { Columns, HORIZONTAL_MIN, LABEL_PITCH, clip, labelRows, placeRotated, planSlots } from "./layout";
import type { MissedEdge } from "./protocol";
import { KINDS, STAGES, type Info, type Payload, type Selection, type Stage } from "./types";

const AXIS_W = 40; // the layer axis
const TARGET_H = 22; // the target row
const OVERVIEW_H = 16;
const OVERVIEW_GAP = 4;
const ROW_LEN = 44; // a row of rotated token labels: 6 characters at 10 px
const LABEL_CHARS = 6;
const CHAR_W = 6.1; // 10 px monospace
const LEVEL_MAX = 60;
const COMFORTABLE = 16; // px per column below which untouched columns collapse into gaps
const Y_PAD = 4;
const LABEL_SPACING = 13; // px between layer labels
const REACH = 3; // px around a node or an edge that a click on the background still selects it by
const DENSE = 1500; // edges and nodes near the view beyond which they are painted on a canvas, not as elements

export interface GraphCallbacks {
  select(sel: Selection): void;
  target(position: number): void;
}

interface Decoded {
  stage: Uint8Array; layer: Int16Array; token: Int32Array;
  source: Uint32Array; target: Uint32Array; kind: Uint8Array; weight: Float32Array; effect: Float32Array;
  headRow: Int32Array;
  strength: Float32Array; // what an edge's width shows, 0..1: its share, or (routes by effect) |effect| / the largest
}

/** "supports" / "opposes" for an edge's effect (positive: removing it lowers the metric). */
function sign(effect: number): string {
  return Number.isNaN(effect) ? "" : effect >= 0 ? " supports" : " opposes";
}

type Region = { x: number; y: number; w: number; h: number };

export class GraphView {
  readonly root: HTMLDivElement;
  private svg: SVGSVGElement;
  private plot: SVGSVGElement; // clips the world to the plot area
  private world: SVGGElement; // panned by one translate
  private highlight: SVGGElement;
  /** Marks that other views draw over the graph in its coordinates (js/interventions.ts); they
   * redraw them from `point` when the layout changes (`onLayout`). */
  readonly overlay: SVGGElement = s("g", { class: "overlay" });
  /** The edges with a large effect that the share routes miss, dashed (setMissed). */
  private missedLayer: SVGGElement = s("g", { class: "missed" });
  private missed: MissedEdge[] = [];
  private targetsBand: SVGSVGElement;
  private targetsLayer: SVGGElement;
  private tokensBand: SVGSVGElement;
  private tokensLayer: SVGGElement;
  private axisBand: SVGSVGElement;
  private axis: SVGGElement; // layer labels, pinned to the left edge whatever the pan
  private overview: SVGGElement;
  private cursorMark: SVGCircleElement;
  private tooltip: HTMLDivElement;
  private canvas: HTMLCanvasElement; // dense graphs' edges and nodes
  private dense = false;
  private paintPending = false;
  private info: Info | null = null;
  private data: Decoded | null = null;
  private payload: Payload | null = null;
  private byWeight: number[] = []; // edge indices, weakest first (strong edges drawn on top)
  private routeWeight = new Float32Array(0); // per token: the weight of the route edges touching it
  private columns: Columns | null = null;
  private expanded = new Set<number>(); // tokens shown from gaps the user opened
  private pinned = new Map<string, number[]>(); // tokens other views need shown (the selection, marks)
  private view = { x: 0, y: 0 };
  private lev = 20; // px per level (embed 0, mid(l) 2l+1, post(l) 2l+2)
  private levFit = 20;
  private rows = 1; // rows of rotated token labels the band has room for
  private region: Region = { x: AXIS_W, y: TARGET_H, w: 600, h: 400 };
  private showOverview = false;
  private cursor = { token: 0, level: 0 };
  private selection: Selection | null = null;
  private drag: { x: number; y: number; vx: number; vy: number; moved: boolean; overview: boolean } | null = null;
  private drawn: [number, number] = [0, -1]; // the slots drawn
  private redrawPending = false;
  private touched = false; // the user zoomed or panned: resizes keep their view
  private layoutListeners: (() => void)[] = [];
  private size: { w: number; h: number } | null = null; // the svg's, as the resize observer gave it
  private redrawFrame = 0;
  private drawnListeners: (() => void)[] = [];
  private resizeObserver = new ResizeObserver((entries) => this.resized(entries[entries.length - 1].contentRect));

  constructor(private cb: GraphCallbacks) {
    this.root = document.createElement("div");
    this.root.className = "lmtt-graph";
    this.root.tabIndex = 0;
    this.root.setAttribute("role", "application");
    this.root.setAttribute("aria-label", "Routes graph: arrow keys move, Enter selects the residual node, + and - zoom, 0 fits");
    this.svg = s("svg", { class: "lmtt-svg", width: "100%", height: "100%" });
    this.world = s("g", { class: "world" });
    this.highlight = s("g", { class: "highlight" });
    this.cursorMark = s("circle", { class: "cursor", r: 7, visibility: "hidden" });
    this.plot = s("svg", { class: "plot" });
    this.plot.append(s("rect", { class: "bg", width: "100%", height: "100%" }), this.world);
    this.targetsLayer = s("g", { class: "targets" });
    this.targetsBand = s("svg", { class: "targets-band" });
    this.targetsBand.append(this.targetsLayer);
    this.tokensLayer = s("g", { class: "tokens" });
    this.tokensBand = s("svg", { class: "tokens-band" });
    this.tokensBand.append(this.tokensLayer);
    this.axis = s("g", { class: "axis" });
    this.axisBand = s("svg", { class: "axis-band" });
    this.axisBand.append(this.axis);
    this.overview = s("g", { class: "overview" });
    this.svg.append(this.plot, this.targetsBand, this.tokensBand, this.axisBand, this.overview);
    this.tooltip = document.createElement("div");
    this.tooltip.className = "lmtt-tooltip";
    this.canvas = document.createElement("canvas");
    this.canvas.className = "edges-canvas";
    this.canvas.setAttribute("aria-hidden", "true");
    this.root.append(this.canvas, this.svg, this.tooltip);
    // for scripts that drive the page (the browser tests): where a node is on the screen
    Object.assign(this.root, {
      lmttScreenPoint: (stage: number, layer: number, token: number) => this.screenPoint(stage, layer, token),
      lmttInView: (what: string) => this.inView(what),
    });
    this.listen();
    this.resizeObserver.observe(this.svg);
  }

  /** Call `fn` after each change of the layout (zoom, fit, gaps opened): overlays redraw. */
  onLayout(fn: () => void): void { this.layoutListeners.push(fn); }

  /** Tokens that `owner` needs shown as columns (the selection, the marks of a difference). */
  pin(owner: string, tokens: number[]): void {
    this.pinned.set(owner, tokens);
    const c = this.columns;
    if (c && tokens.some((t) => t >= 0 && t < c.nTokens && !c.shown(t))) this.replan(true);
  }

  // -- geometry ---------------------------------------------------------------------------

  private get nTokens(): number { return this.info ? this.info.tokens.length : 0; }
  private get maxLevel(): number { return this.info ? 2 * this.info.n_layers : 0; }
  private level(stage: number, layer: number): number {
    if (stage === 0) return 0;
    if (stage === 1) return 2 * layer + 1;
    if (stage === 2) return 2 * layer + 1.5;
    return 2 * layer + 2;
  }
  private get col(): number { return this.columns ? this.columns.col : 20; }
  private x(token: number, stage = 0): number { return this.columns!.x(token) + (stage === 2 ? this.col * 0.32 : 0); }
  private y(level: number): number { return Y_PAD + (this.maxLevel - level + 0.5) * this.lev; }
  private get contentW(): number { return this.columns ? this.columns.total() : 0; }
  private get contentH(): number { return 2 * Y_PAD + (this.maxLevel + 1) * this.lev; }
  private get labelMode(): "horizontal" | "rotated" { return this.col >= HORIZONTAL_MIN ? "horizontal" : "rotated"; }

  /** Whether the columns are planned (the svg's size is known): `point` has positions to give. */
  get laidOut(): boolean { return this.columns !== null; }

  /** A node's position in graph coordinates: stage code (types.STAGES), layer, token. */
  point(stage: number, layer: number, token: number): [number, number] {
    return [this.x(token, stage), this.y(this.level(stage, layer))];
  }

  /** A node's position on the screen (client coordinates). */
  screenPoint(stage: number, layer: number, token: number): [number, number] {
    const r = this.svg.getBoundingClientRect(), [x, y] = this.point(stage, layer, token);
    return [r.left + this.region.x + this.view.x + x, r.top + this.region.y + this.view.y + y];
  }

  /** Screen points of what is in the plot: the nodes of a stage ("post", ...), or the middles of
   * attention edges between two tokens ("attention"), heaviest first. For scripts (the bench). */
  private inView(what: string): { x: number; y: number }[] {
    const d = this.data, svg = this.svg.getBoundingClientRect(), r = this.region;
    if (!d) return [];
    const screen = ([x, y]: [number, number]) => ({ x: svg.left + r.x + this.view.x + x, y: svg.top + r.y + this.view.y + y });
    const inside = (p: { x: number; y: number }) => p.x > svg.left + r.x + 4 && p.x < svg.left + r.x + r.w - 4 && p.y > svg.top + r.y + 4 && p.y < svg.top + r.y + r.h - 4;
    if (what === "attention") {
      return this.byWeight.slice().reverse().filter((i) => KINDS[d.kind[i]] === "attention" && d.token[d.source[i]] !== d.token[d.target[i]])
        .map((i) => { const e = this.edgeGeometry(i); return screen([(e.xa + e.xb) / 2, (e.ya + e.yb) / 2]); }).filter(inside);
    }
    const stage = STAGES.indexOf(what as Stage);
    const out: { x: number; y: number }[] = [];
    for (let i = 0; i < d.stage.length; i++) if (d.stage[i] === stage) out.push(screen(this.point(stage, d.layer[i], d.token[i])));
    return out.filter(inside);
  }

  // -- data ---------------------------------------------------------------------------------

  setData(info: Info, payload: Payload): void {
    const newRun = this.info !== info;
    this.info = info;
    this.payload = payload;
    const e = payload.edges, n = payload.nodes;
    const weight = decode<Float32Array>(e.weight), effect = decode<Float32Array>(e.effect);
    let strength = weight;
    if (payload.by === "effect") {
      let max = 1e-12;
      for (const v of effect) if (Math.abs(v) > max) max = Math.abs(v);
      strength = effect.map((v) => (Number.isNaN(v) ? 0.3 : Math.abs(v) / max)); // residual edges: no effect
    }
    const d: Decoded = this.data = {
      stage: decode<Uint8Array>(n.stage), layer: decode<Int16Array>(n.layer), token: decode<Int32Array>(n.token),
      source: decode<Uint32Array>(e.source), target: decode<Uint32Array>(e.target), kind: decode<Uint8Array>(e.kind),
      weight, effect, headRow: decode<Int32Array>(e.head_row), strength,
    };
    this.byWeight = Array.from(d.weight.keys()).sort((a, b) => d.strength[a] - d.strength[b]);
    const routes = new Float32Array(info.tokens.length);
    for (let i = 0; i < d.weight.length; i++) {
      routes[d.token[d.source[i]]] += d.weight[i];
      routes[d.token[d.target[i]]] += d.weight[i];
    }
    for (let i = 0; i < d.token.length; i++) routes[d.token[i]] = Math.max(routes[d.token[i]], 1e-6); // a node alone
    const sameColumns = !newRun && this.routeWeight.length === routes.length
      && routes.every((w, t) => (w > 0) === (this.routeWeight[t] > 0));
    this.routeWeight = routes;
    if (newRun) {
      this.expanded.clear();
      this.cursor = { token: info.tokens.length - 1, level: this.maxLevel };
    }
    if (!this.size) { this.columns = null; return; } // planned when the size is first known (resized)
    if (newRun || !sameColumns || !this.columns) this.replan(true);
    else this.draw();
  }

  /** The tokens shown as columns: the routes', the target, what other views pinned, gaps opened. */
  private keep(): (t: number) => boolean {
    const keep = new Uint8Array(this.nTokens);
    this.routeWeight.forEach((w, t) => { if (w > 0) keep[t] = 1; });
    if (this.payload) keep[this.payload.target] = 1;
    for (const t of this.expanded) keep[t] = 1;
    for (const tokens of this.pinned.values()) for (const t of tokens) if (t >= 0 && t < keep.length) keep[t] = 1;
    return (t) => keep[t] === 1;
  }

  /** Plan the columns again; `fit`: fit the view to them, else keep the column width. */
  private replan(fit: boolean): void {
    if (!this.info) return;
    const width = this.measure().w;
    const col = this.columns?.col;
    this.columns = new Columns(planSlots(this.nTokens, this.keep(), width, COMFORTABLE), this.nTokens);
    if (fit || col === undefined) this.fit(); else { this.columns.col = col; this.bands(); this.redraw(); }
  }

  /** The svg's size as the resize observer last gave it (never read from the page: that forces a
   * layout, which costs much in a page with a long prompt's elements), the plot's width for it. */
  private measure(): Region {
    const { w, h } = this.size ?? { w: 900, h: 560 };
    return { x: AXIS_W, y: TARGET_H, w: Math.max(50, w - AXIS_W - 6), h };
  }

  /** The svg's new size: the first one plans and draws the graph, within the frame being painted;
   * later ones fit it again unless the user zoomed or panned. */
  private resized(rect: DOMRectReadOnly): void {
    this.size = { w: rect.width || 900, h: rect.height || 560 };
    if (!this.info || !this.data) return;
    if (!this.columns || !this.touched) this.replan(true);
    else { this.bands(); this.setView(this.view.x, this.view.y); this.redraw(); }
    this.flush();
  }

  /** Draw now what is waiting for the next frame. */
  private flush(): void {
    if (this.redrawFrame === 0) return;
    cancelAnimationFrame(this.redrawFrame);
    this.redrawFrame = 0;
    this.redrawPending = false;
    this.draw();
  }

  /** Call `fn` once, after the next drawing (for the widget's paint time). */
  afterDraw(fn: () => void): void { this.drawnListeners.push(fn); }

  /** Stop observing the svg's size. */
  destroy(): void { this.resizeObserver.disconnect(); }

  /** Size the bands for the column width shown: token label rows, the plot between. */
  private bands(): void {
    const m = this.measure();
    this.rows = labelRows(this.col);
    const tokensH = this.labelMode === "horizontal" ? 20 : this.rows * ROW_LEN + 4;
    this.showOverview = this.columns !== null && (this.columns.nGaps > 0 || this.nTokens > 40);
    const overviewH = this.showOverview ? OVERVIEW_H + OVERVIEW_GAP : 0;
    this.region = { x: AXIS_W, y: TARGET_H, w: m.w, h: Math.max(40, m.h - TARGET_H - tokensH - overviewH) };
    const r = this.region;
    const set = (el: SVGSVGElement, x: number, y: number, w: number, h: number) => {
      el.setAttribute("x", String(x)); el.setAttribute("y", String(y));
      el.setAttribute("width", String(Math.max(0, w))); el.setAttribute("height", String(Math.max(0, h)));
    };
    set(this.plot, r.x, r.y, r.w, r.h);
    set(this.targetsBand, r.x, 0, r.w, TARGET_H);
    set(this.tokensBand, r.x, r.y + r.h, r.w, tokensH);
    set(this.axisBand, 0, r.y, AXIS_W, r.h);
    const dpr = window.devicePixelRatio || 1;
    Object.assign(this.canvas.style, { left: `${r.x}px`, top: `${r.y}px`, width: `${r.w}px`, height: `${r.h}px` });
    this.canvas.width = Math.round(r.w * dpr);
    this.canvas.height = Math.round(r.h * dpr);
    this.overview.setAttribute("transform", `translate(${r.x},${m.h - OVERVIEW_H})`);
    this.levFit = (r.h - 2 * Y_PAD) / (this.maxLevel + 1);
  }

  // -- drawing ----------------------------------------------------------------------------

  /** The slots in view, widened by `margin` view widths on each side. */
  private slotsInView(margin: number): [number, number] {
    const c = this.columns!, w = this.region.w;
    return [c.slotAt(-this.view.x - margin * w), c.slotAt(-this.view.x + (1 + margin) * w)];
  }

  /** Redraw when the view leaves the slots drawn (long prompts draw only what is near the view). */
  private scheduleRedraw(): void {
    if (this.redrawPending || !this.data || !this.columns) return;
    const [a, b] = this.slotsInView(0), [c0, c1] = this.drawn;
    if (a >= c0 && b <= c1) { this.drawOverview(); return; }
    this.redraw();
  }

  private redraw(): void {
    if (this.redrawPending) return;
    this.redrawPending = true;
    this.redrawFrame = requestAnimationFrame(() => { this.redrawPending = false; this.redrawFrame = 0; this.draw(); });
  }

  private draw(): void {
    if (!this.info || !this.data || !this.columns) return;
    const d = this.data, c = this.columns;
    const [s0, s1] = this.slotsInView(1);
    this.drawn = [s0, s1];
    const x0 = c.left(s0), x1 = c.left(s1) + c.width(s1);
    const near = (t: number) => { const i = c.slotOf[t]; return i >= s0 && i <= s1; };
    const frag = document.createDocumentFragment();
    frag.append(this.drawGaps(s0, s1), this.drawGrid());
    const edgesNear = this.byWeight.filter((i) => {
      const xa = c.x(d.token[d.source[i]]), xb = c.x(d.token[d.target[i]]);
      return Math.max(xa, xb) >= x0 && Math.min(xa, xb) <= x1;
    });
    const nodesNear: number[] = [];
    for (let i = 0; i < d.stage.length; i++) if (near(d.token[i])) nodesNear.push(i);
    this.dense = edgesNear.length + nodesNear.length > DENSE;
    this.canvas.style.display = this.dense ? "block" : "none";
    const r = this.nodeRadius();
    const edges = s("g", { class: "edges" }), nodes = s("g", { class: "nodes" });
    if (!this.dense) {
      for (const i of edgesNear) edges.append(this.edgePath(i));
      for (const i of nodesNear) {
        const st = d.stage[i];
        nodes.append(s("circle", {
          class: `node ${STAGES[st]}`, cx: fmt(this.x(d.token[i], st), 1), cy: fmt(this.y(this.level(st, d.layer[i])), 1),
          r: fmt(st === 2 ? r * 0.85 : r, 1), "data-node": i,
        }));
      }
    }
    const drawnEdges = edgesNear.length;
    frag.append(edges);
    const target = this.payload!.target;
    const link = s("line", { class: "target-link", x1: this.x(target), x2: this.x(target), y1: 0, y2: this.y(this.maxLevel) - r - 2 });
    frag.append(link, nodes, this.missedLayer, this.overlay, this.highlight, this.cursorMark);
    this.world.replaceChildren(frag);
    this.drawMissed();
    this.drawTargets(s0, s1);
    this.drawTokens(s0, s1);
    this.drawAxis();
    this.drawOverview();
    this.drawHighlight();
    this.placeCursor();
    this.applyView();
    this.root.dataset.edges = String(d.weight.length);
    this.root.dataset.edgesDrawn = String(drawnEdges);
    this.root.dataset.painted = this.dense ? "canvas" : "svg";
    if (this.dense) this.paintCanvas();
    this.root.dataset.columns = String(c.nCols);
    this.root.dataset.gaps = String(c.nGaps);
    for (const fn of this.layoutListeners) fn();
    for (const fn of this.drawnListeners.splice(0)) fn();
  }

  private nodeRadius(): number {
    return Math.max(1.8, Math.min(5.5, this.lev * 0.38, this.col * 0.34));
  }

  /** Collapsed runs of tokens: a hatched band each, labelled with its count; a click opens it. */
  private drawGaps(s0: number, s1: number): SVGGElement {
    const c = this.columns!, g = s("g", { class: "gaps" });
    for (let i = s0; i <= s1; i++) {
      const slot = c.slots[i];
      if (!slot.gap) continue;
      const n = slot.last - slot.first + 1, x = c.left(i), w = c.width(i);
      const gap = s("g", { class: "gap", "data-gap": i });
      gap.append(s("title", {}, `${n} tokens (${slot.first}–${slot.last}) that the routes do not pass through: click to show them`));
      gap.append(s("rect", { x: fmt(x + 1, 1), y: 0, width: fmt(w - 2, 1), height: fmt(this.contentH, 1) }));
      if (w >= 11) {
        const cy = Math.max(50, Math.min(this.contentH - 50, this.region.h / 2 - this.view.y)); // mid-view
        gap.append(s("text", {
          class: "gap-label", transform: `translate(${fmt(x + w / 2, 1)},${fmt(cy, 1)}) rotate(-90)`,
          "text-anchor": "middle", dy: "0.35em",
        }, `… ${n} tokens …`));
      }
      g.append(gap);
    }
    return g;
  }

  private drawGrid(): SVGGElement {
    const g = s("g", { class: "grid" });
    const x1 = fmt(this.contentW, 1);
    for (let l = 0; l < this.info!.n_layers; l++) {
      const y = fmt(this.y(2 * l + 2), 1);
      g.append(s("line", { class: "layer-line", x1: 0, x2: x1, y1: y, y2: y }));
    }
    return g;
  }

  /** The target row: one cell per column (its top prediction when there is room); a click shows
   * the routes to that prediction. */
  private drawTargets(s0: number, s1: number): void {
    const info = this.info!, c = this.columns!, target = this.payload!.target;
    const cells: SVGElement[] = [];
    const chars = Math.floor((c.col - 6) / CHAR_W);
    for (let i = s0; i <= s1; i++) {
      const slot = c.slots[i];
      if (slot.gap) continue;
      const t = slot.first;
      const cell = s("g", { class: t === target ? "target-cell active" : "target-cell", "data-target": t });
      const top = info.predictions.tokens[t];
      cell.append(s("title", {}, `Routes to the prediction after token ${t} ${JSON.stringify(info.tokens[t])}; top: ${top.map((p) => JSON.stringify(p)).join(", ")}`));
      const w = Math.max(1, c.col - 2);
      cell.append(s("rect", { x: fmt(c.left(i) + (c.col - w) / 2, 1), y: 3, width: fmt(w, 1), height: 16, rx: Math.min(4, w / 2) }));
      if (c.col >= 36 && chars >= 2) {
        cell.append(s("text", { class: "target-label", x: fmt(c.x(t), 1), y: 15, "text-anchor": "middle" }, clip(visible(top[0] ?? ""), chars)));
      }
      cells.push(cell);
    }
    this.targetsLayer.replaceChildren(...cells);
  }

  /** Token labels under their columns: horizontal when they fit, else rotated in staggered rows;
   * where even those cannot all fit, the heaviest columns' labels are kept. Full text on hover. */
  private drawTokens(s0: number, s1: number): void {
    const info = this.info!, c = this.columns!, target = this.payload!.target;
    const shown: number[] = [];
    for (let i = s0; i <= s1; i++) if (!c.slots[i].gap) shown.push(c.slots[i].first);
    const labels: SVGElement[] = [];
    const [genStart, genStop] = info.generated ?? [0, 0];
    const label = (t: number, text: SVGTextElement) => { // the full text on hover
      const generated = t >= genStart && t < genStop;
      const g = s("g", { class: generated ? "token generated" : "token", "data-token": t });
      g.append(s("title", {}, `${t}: ${JSON.stringify(info.tokens[t])}${generated ? " (generated by the model)" : ""}`), text);
      labels.push(g);
    };
    if (this.labelMode === "horizontal") {
      const chars = Math.floor((c.col - 4) / CHAR_W);
      for (const t of shown) {
        label(t, s("text", { class: "token-label", x: fmt(c.x(t), 1), y: 14, "text-anchor": "middle" }, clip(visible(info.tokens[t]), chars)));
      }
    } else {
      const rows = placeRotated(shown.map((t) => ({ x: c.x(t), priority: t === target ? Infinity : this.routeWeight[t] })), LABEL_PITCH, this.rows);
      shown.forEach((t, i) => {
        if (rows[i] < 0) return;
        label(t, s("text", {
          class: "token-label", transform: `translate(${fmt(c.x(t), 1)},${3 + rows[i] * ROW_LEN}) rotate(-90)`,
          "text-anchor": "end", dy: "0.35em",
        }, clip(visible(info.tokens[t]), LABEL_CHARS)));
      });
    }
    this.tokensLayer.replaceChildren(...labels);
  }

  /** Layer labels at the left edge of the view, at their layers' heights, at least 13 px apart
   * (counted from the top: the last layer keeps its label), and the embedding's at the bottom. */
  private drawAxis(): void {
    if (!this.info) return;
    const yEmb = this.y(0);
    const label = (y: number, text: string) =>
      s("text", { class: "layer-label", x: AXIS_W - 4, y: fmt(y, 1), dy: "0.35em", "text-anchor": "end" }, text);
    const every = Math.max(1, Math.ceil(LABEL_SPACING / (2 * this.lev)));
    const layers: SVGElement[] = [];
    for (let l = this.info.n_layers - 1; l >= 0; l -= every) {
      const y = this.y(2 * l + 2);
      if (Math.abs(y - yEmb) >= LABEL_SPACING) layers.unshift(label(y, `L${l}`));
    }
    this.axis.replaceChildren(s("rect", { class: "axis-bg", x: 0, y: -1e5, width: AXIS_W, height: 2e5 }), ...layers, label(yEmb, "emb"));
  }

  /** The whole prompt in one strip: route columns as ticks, gaps shaded, the target, the view. */
  private drawOverview(): void {
    const c = this.columns;
    if (!c || !this.showOverview || !this.info) { this.overview.replaceChildren(); return; }
    const T = this.nTokens, w = this.region.w;
    const ox = (t: number) => (t / T) * w;
    const parts: SVGElement[] = [s("rect", { class: "ov-bg", x: 0, y: 0, width: w, height: OVERVIEW_H })];
    let hidden = "";
    for (const slot of c.slots) if (slot.gap) hidden += `M${fmt(ox(slot.first), 1)},0h${fmt(Math.max(0.5, ox(slot.last + 1) - ox(slot.first)), 1)}v${OVERVIEW_H}h${fmt(-Math.max(0.5, ox(slot.last + 1) - ox(slot.first)), 1)}z`;
    parts.push(s("path", { class: "ov-gaps", d: hidden }));
    let ticks = "";
    this.routeWeight.forEach((rw, t) => { if (rw > 0) ticks += `M${fmt(ox(t + 0.5), 1)},2v${OVERVIEW_H - 4}`; });
    parts.push(s("path", { class: "ov-routes", d: ticks }));
    const target = this.payload!.target;
    parts.push(s("rect", { class: "ov-target", x: fmt(ox(target + 0.5) - 1.5, 1), y: 0, width: 3, height: OVERVIEW_H }));
    const [a, b] = this.slotsInView(0);
    const first = this.firstVisibleToken(a), last = this.lastVisibleToken(b);
    const x = ox(first), vw = Math.max(3, ox(last + 1) - x);
    parts.push(s("rect", { class: "ov-window", x: fmt(x, 1), y: 0.5, width: fmt(vw, 1), height: OVERVIEW_H - 1, "data-first": first, "data-last": last }));
    const title = s("title", {}, `The whole prompt (${T} tokens): ticks where the routes pass, shaded where tokens are collapsed; the box is the view. Click or drag to move.`);
    this.overview.replaceChildren(title, ...parts);
  }

  private firstVisibleToken(slot: number): number {
    const c = this.columns!;
    const s0 = c.slots[slot];
    return c.left(slot) + c.width(slot) < -this.view.x + 0.5 && slot + 1 < c.slots.length ? c.slots[slot + 1].first : s0.first;
  }

  private lastVisibleToken(slot: number): number {
    return this.columns!.slots[slot].last;
  }

  /** An edge's ends in graph coordinates, its kind, and its stroke: wider and darker with its weight. */
  private edgeGeometry(i: number) {
    const d = this.data!;
    const a = d.source[i], b = d.target[i], w = d.strength[i];
    return {
      kind: KINDS[d.kind[i]], sign: sign(d.effect[i]), xa: this.x(d.token[a], d.stage[a]), ya: this.y(this.level(d.stage[a], d.layer[a])),
      xb: this.x(d.token[b], d.stage[b]), yb: this.y(this.level(d.stage[b], d.layer[b])),
      width: Math.min(1.2 + 3.3 * w, Math.max(0.8, this.col * 0.45)), opacity: 0.3 + 0.7 * w,
    };
  }

  private edgePath(i: number): SVGPathElement {
    const e = this.edgeGeometry(i);
    return s("path", {
      class: `edge ${e.kind}${e.sign}`, d: this.curve(e.kind, e.xa, e.ya, e.xb, e.yb), "data-edge": i,
      "stroke-width": fmt(e.width, 2), "stroke-opacity": fmt(e.opacity, 2),
    });
  }

  /** An edge's path: attention between tokens as a curve, to itself as a small arc beside the
   * residual edge, residual and FFN edges straight. The same on the canvas (`trace`). */
  private curve(kind: string, xa: number, ya: number, xb: number, yb: number): string {
    const p = (v: number) => fmt(v, 1);
    const [type, ...q] = this.controls(kind, xa, ya, xb, yb);
    if (type === "C") return `M${p(xa)},${p(ya)}C${p(q[0])},${p(q[1])} ${p(q[2])},${p(q[3])} ${p(xb)},${p(yb)}`;
    if (type === "Q") return `M${p(xa)},${p(ya)}Q${p(q[0])},${p(q[1])} ${p(xb)},${p(yb)}`;
    return `M${p(xa)},${p(ya)}L${p(xb)},${p(yb)}`;
  }

  private trace(ctx: CanvasRenderingContext2D, kind: string, xa: number, ya: number, xb: number, yb: number): void {
    const [type, ...q] = this.controls(kind, xa, ya, xb, yb);
    ctx.moveTo(xa, ya);
    if (type === "C") ctx.bezierCurveTo(q[0], q[1], q[2], q[3], xb, yb);
    else if (type === "Q") ctx.quadraticCurveTo(q[0], q[1], xb, yb);
    else ctx.lineTo(xb, yb);
  }

  /** The control points of an edge's curve: C (cubic), Q (quadratic) or L (a line). */
  private controls(kind: string, xa: number, ya: number, xb: number, yb: number): ["C" | "Q" | "L", ...number[]] {
    const ym = (ya + yb) / 2;
    if (kind === "attention" && xa !== xb) return ["C", xa, ym, xb, ym];
    if (kind === "attention") return ["Q", xa - this.arc, ym];
    return ["L"];
  }

  private get arc(): number { return Math.min(14, this.col * 0.4); }

  /** Dense graphs: the edges and nodes in view painted on the canvas, edges batched by stroke. */
  private paintCanvas(): void {
    const ctx = this.canvas.getContext("2d");
    if (!ctx || !this.data || !this.columns) return;
    const d = this.data, c = this.columns, dpr = window.devicePixelRatio || 1;
    ctx.setTransform(1, 0, 0, 1, 0, 0);
    ctx.clearRect(0, 0, this.canvas.width, this.canvas.height);
    if (!this.dense) return;
    ctx.setTransform(dpr, 0, 0, dpr, dpr * this.view.x, dpr * this.view.y);
    const style = getComputedStyle(this.root);
    const colour = (name: string) => style.getPropertyValue(name).trim();
    const x0 = -this.view.x - 20, x1 = -this.view.x + this.region.w + 20;
    type Edge = ReturnType<GraphView["edgeGeometry"]>;
    const batches = new Map<string, Edge[]>(); // in order of weight: strong edges painted last
    for (const i of this.byWeight) {
      const xa = c.x(d.token[d.source[i]]), xb = c.x(d.token[d.target[i]]);
      if (Math.max(xa, xb) < x0 || Math.min(xa, xb) > x1) continue;
      const e = this.edgeGeometry(i);
      const stroke = e.sign === " supports" ? "--up" : e.sign === " opposes" ? "--down" : `--${e.kind}`; // as the CSS colours them
      const key = `${stroke}|${(Math.round(e.width * 2) / 2).toFixed(1)}|${(Math.round(e.opacity * 10) / 10).toFixed(1)}`;
      let batch = batches.get(key);
      if (!batch) batches.set(key, batch = []);
      batch.push(e);
    }
    ctx.lineCap = "round";
    for (const [key, batch] of batches) {
      const [stroke, width, opacity] = key.split("|");
      ctx.strokeStyle = colour(stroke);
      ctx.lineWidth = Number(width);
      ctx.globalAlpha = Number(opacity);
      ctx.beginPath();
      for (const e of batch) this.trace(ctx, e.kind, e.xa, e.ya, e.xb, e.yb);
      ctx.stroke();
    }
    ctx.globalAlpha = 1;
    const r = this.nodeRadius();
    for (const [stage, fill] of [[0, "--fg-dim"], [1, "--fg-dim"], [3, "--fg-dim"], [2, "--ffn"]] as [number, string][]) {
      ctx.beginPath();
      for (let i = 0; i < d.stage.length; i++) {
        if (d.stage[i] !== stage) continue;
        const [x, y] = this.point(stage, d.layer[i], d.token[i]);
        if (x < x0 || x > x1) continue;
        const radius = stage === 2 ? r * 0.85 : r;
        ctx.moveTo(x + radius, y);
        ctx.arc(x, y, radius, 0, 2 * Math.PI);
      }
      ctx.fillStyle = colour(fill);
      ctx.fill();
    }
  }

  private schedulePaint(): void {
    if (this.paintPending || !this.dense) return;
    this.paintPending = true;
    requestAnimationFrame(() => { this.paintPending = false; this.paintCanvas(); });
  }

  /** An edge's path between two nodes given by (stage code, layer, token): for overlays. */
  edgeBetween(kind: string, a: [number, number, number], b: [number, number, number]): string {
    const [xa, ya] = this.point(...a), [xb, yb] = this.point(...b);
    return this.curve(kind, xa, ya, xb, yb);
  }

  /** Draw `missed` dashed over the graph (an empty list clears them); their tokens are shown as
   * columns, and they are drawn again with each layout. */
  setMissed(missed: MissedEdge[]): void {
    this.missed = missed;
    this.pin("missed", missed.flatMap((m) => [m.source[2], m.target[2]]));
    if (this.info && this.columns) this.drawMissed();
    this.root.dataset.missed = String(missed.length);
  }

  private drawMissed(): void {
    let max = 1e-12;
    for (const m of this.missed) max = Math.max(max, Math.abs(m.effect));
    this.missedLayer.replaceChildren(...this.missed.map((m) => {
      const a: [number, number, number] = [STAGES.indexOf(m.source[0] as Stage), m.source[1], m.source[2]];
      const b: [number, number, number] = [STAGES.indexOf(m.target[0] as Stage), m.target[1], m.target[2]];
      const path = s("path", {
        class: `missed-edge ${m.kind}${sign(m.effect)}`, d: this.edgeBetween(m.kind, a, b),
        "stroke-width": fmt(1.2 + 3 * Math.abs(m.effect) / max, 2),
      });
      path.append(s("title", {}, `missed by the share routes: ${m.kind} edge, layer ${m.target[1]}, effect ${fmt(m.effect, 3)}`));
      return path;
    }));
  }

  // -- selection ----------------------------------------------------------------------------

  setSelection(sel: Selection | null): void {
    this.selection = sel;
    const tokens = sel === null ? [] : sel.kind === "attention" ? [sel.source, sel.target] : [sel.token];
    this.pin("selection", tokens);
    if (this.info && this.columns) this.drawHighlight();
  }

  /** Outline the selection, whether or not it is an edge or node of the routes shown. */
  private drawHighlight(): void {
    const sel = this.selection;
    const g = this.highlight;
    g.replaceChildren();
    if (sel === null || !this.info || !this.columns) return;
    const ring = Math.max(5, this.nodeRadius() + 3);
    if (sel.kind === "attention") {
      const from: [number, number, number] = sel.layer === 0 ? [0, -1, sel.source] : [3, sel.layer - 1, sel.source];
      const to: [number, number, number] = [this.info.parallel ? 3 : 1, sel.layer, sel.target];
      g.append(s("path", { class: "sel-edge", d: this.edgeBetween("attention", from, to) }));
      const [xb, yb] = this.point(...to);
      g.append(s("circle", { class: "sel-ring", cx: xb, cy: yb, r: ring }));
    } else {
      const stage = sel.kind === "residual" ? STAGES.indexOf(sel.stage) : 2;
      const [cx, cy] = this.point(stage, sel.layer, sel.token);
      g.append(s("circle", { class: "sel-ring", cx, cy, r: ring }));
    }
  }

  private selectionOfEdge(i: number): Selection {
    const d = this.data!;
    const a = d.source[i], b = d.target[i];
    const kind = KINDS[d.kind[i]];
    if (kind === "attention") {
      const row = d.headRow[i];
      const H = this.info!.n_heads;
      let head = 0;
      if (row >= 0) {
        const heads = decode<Float32Array>(this.payload!.heads).subarray(row * H, row * H + H);
        for (let h = 1; h < H; h++) if (heads[h] > heads[head]) head = h;
      }
      return { kind: "attention", layer: d.layer[b], source: d.token[a], target: d.token[b], head };
    }
    // an FFN edge selects its block; a residual edge the residual node it feeds
    const node = kind === "ffn" && d.stage[a] !== 2 ? b : (kind === "ffn" ? a : b);
    return this.selectionOfNode(node);
  }

  private selectionOfNode(i: number): Selection {
    const d = this.data!;
    const st = STAGES[d.stage[i]];
    if (st === "ffn") return { kind: "ffn", layer: d.layer[i], token: d.token[i], neuron: null };
    return { kind: "residual", stage: st, layer: d.layer[i], token: d.token[i] };
  }

  private selectionAtLevel(token: number, level: number): Selection {
    if (level <= 0) return { kind: "residual", stage: "embed", layer: -1, token };
    const parallel = this.info!.parallel;
    if (level % 2 === 1 && !parallel) return { kind: "residual", stage: "mid", layer: (level - 1) / 2, token };
    return { kind: "residual", stage: "post", layer: Math.ceil(level / 2) - 1, token };
  }

  // -- hit testing --------------------------------------------------------------------------

  /** The pointer in graph coordinates, or null outside the plot. */
  private worldPoint(ev: MouseEvent): [number, number] | null {
    const r = this.svg.getBoundingClientRect(), reg = this.region;
    const px = ev.clientX - r.left - reg.x, py = ev.clientY - r.top - reg.y;
    if (px < 0 || py < 0 || px > reg.w || py > reg.h) return null;
    return [px - this.view.x, py - this.view.y];
  }

  /** What a click on the plot's background means: the node or edge whose drawn outline is nearest
   * the pointer, within REACH px (a node wins a tie: it is drawn on top), else the residual node at
   * a grid point within reach; nothing when none is close. */
  private nearest(wx: number, wy: number): Selection | null {
    const c = this.columns!;
    const [node, nodeGap] = this.nearestNode(wx, wy);
    const [edge, edgeGap] = this.nearestEdge(wx, wy);
    if (node >= 0 && nodeGap <= edgeGap) return this.selectionOfNode(node);
    if (edge >= 0) return this.selectionOfEdge(edge);
    const slot = c.slotAt(wx);
    if (c.slots[slot].gap) return null;
    const token = c.slots[slot].first;
    const level = Math.round(this.maxLevel + 0.5 - (wy - Y_PAD) / this.lev);
    if (level < 0 || level > this.maxLevel) return null;
    const [gx, gy] = [this.x(token), this.y(level)];
    const reach = Math.max(this.nodeRadius() + REACH, Math.min(this.col, this.lev) * 0.45);
    return Math.hypot(gx - wx, gy - wy) <= reach ? this.selectionAtLevel(token, level) : null;
  }

  /** The drawn node nearest a point and how far the point is outside its disc, within REACH px ([-1, ∞]: none). */
  private nearestNode(wx: number, wy: number): [number, number] {
    const d = this.data!, c = this.columns!;
    const [s0, s1] = this.drawn;
    const r = this.nodeRadius();
    let best = -1, bestGap = REACH;
    for (let i = 0; i < d.stage.length; i++) {
      const slot = c.slotOf[d.token[i]];
      if (slot < s0 || slot > s1) continue;
      const [x, y] = this.point(d.stage[i], d.layer[i], d.token[i]);
      const gap = Math.hypot(x - wx, y - wy) - (d.stage[i] === 2 ? 0.85 * r : r);
      if (gap < bestGap) { bestGap = gap; best = i; }
    }
    return best < 0 ? [-1, Infinity] : [best, bestGap];
  }

  /** The drawn edge nearest a point (sampled along its path) and how far the point is outside its
   * stroke, within REACH px ([-1, ∞]: none). */
  private nearestEdge(wx: number, wy: number): [number, number] {
    let best = -1, bestGap = REACH;
    for (let k = this.byWeight.length - 1; k >= 0; k--) {
      const i = this.byWeight[k];
      const e = this.edgeGeometry(i);
      const pad = REACH + e.width;
      if (wx < Math.min(e.xa, e.xb) - 16 || wx > Math.max(e.xa, e.xb) + 16 || wy < Math.min(e.ya, e.yb) - pad || wy > Math.max(e.ya, e.yb) + pad) continue;
      const gap = distanceToCurve(e.kind, e.xa, e.ya, e.xb, e.yb, wx, wy, this.arc) - e.width / 2;
      if (gap < bestGap) { bestGap = gap; best = i; }
    }
    return best < 0 ? [-1, Infinity] : [best, bestGap];
  }

  // -- interaction --------------------------------------------------------------------------

  private listen(): void {
    const svg = this.svg;
    svg.addEventListener("wheel", (ev) => {
      ev.preventDefault();
      const r = svg.getBoundingClientRect();
      this.zoomAt(Math.exp(-ev.deltaY * 0.0015), ev.clientX - r.left, ev.clientY - r.top);
    }, { passive: false });
    svg.addEventListener("pointerdown", (ev) => {
      const overview = (ev.target as Element).closest(".overview") !== null;
      this.drag = { x: ev.clientX, y: ev.clientY, vx: this.view.x, vy: this.view.y, moved: false, overview };
      if (overview) { svg.setPointerCapture(ev.pointerId); this.overviewTo(ev); }
    });
    svg.addEventListener("pointermove", (ev) => {
      const dr = this.drag;
      if (dr && (ev.buttons & 1)) {
        if (dr.overview) { dr.moved = true; this.overviewTo(ev); return; }
        if (Math.abs(ev.clientX - dr.x) + Math.abs(ev.clientY - dr.y) > 4) {
          if (!dr.moved) svg.setPointerCapture(ev.pointerId);
          dr.moved = true;
        }
        if (dr.moved) {
          this.touched = true;
          this.setView(dr.vx + ev.clientX - dr.x, dr.vy + ev.clientY - dr.y);
        }
      } else {
        this.hover(ev);
      }
    });
    svg.addEventListener("pointerup", () => { setTimeout(() => { this.drag = null; }, 0); });
    svg.addEventListener("pointerleave", () => { this.tooltip.style.display = "none"; });
    svg.addEventListener("click", (ev) => this.click(ev));
    this.root.addEventListener("keydown", (ev) => this.key(ev));
  }

  private click(ev: MouseEvent): void {
    if (this.drag?.moved || this.drag?.overview || !this.info || !this.columns) return;
    const el = ev.target as Element;
    const edge = el.getAttribute("data-edge"), node = el.getAttribute("data-node");
    const cell = el.closest("[data-target]"), gap = el.closest("[data-gap]");
    if (edge !== null) this.cb.select(this.selectionOfEdge(Number(edge)));
    else if (node !== null) this.cb.select(this.selectionOfNode(Number(node)));
    else if (cell) this.cb.target(Number(cell.getAttribute("data-target")));
    else if (gap) this.expand(Number(gap.getAttribute("data-gap")));
    else {
      const p = this.worldPoint(ev);
      const sel = p && this.nearest(p[0], p[1]);
      if (sel) this.cb.select(sel);
    }
  }

  /** Show the tokens of a gap as columns, the view kept where it was. */
  private expand(slot: number): void {
    const c = this.columns!, gap = c.slots[slot];
    if (!gap || !gap.gap) return;
    const before = c.left(slot) + this.view.x;
    for (let t = gap.first; t <= gap.last; t++) this.expanded.add(t);
    this.touched = true;
    this.replan(false);
    this.setView(before - this.columns!.left(this.columns!.slotOf[gap.first]), this.view.y);
  }

  /** Centre the view on the token under the pointer in the overview (opening its gap if hidden). */
  private overviewTo(ev: MouseEvent): void {
    const r = this.svg.getBoundingClientRect();
    const T = this.nTokens;
    const t = Math.max(0, Math.min(T - 1, Math.floor(((ev.clientX - r.left - this.region.x) / this.region.w) * T)));
    let c = this.columns!;
    if (!c.shown(t)) {
      const gap = c.slots[c.slotOf[t]];
      for (let u = gap.first; u <= gap.last; u++) this.expanded.add(u);
      this.replan(false);
      c = this.columns!;
    }
    this.touched = true;
    this.setView(this.region.w / 2 - c.x(t), this.view.y);
  }

  private key(ev: KeyboardEvent): void {
    if (!this.info || !this.columns) return;
    const c = this.cursor, cols = this.columns;
    if (ev.key === "ArrowLeft" || ev.key === "ArrowRight") {
      const step = ev.key === "ArrowLeft" ? -1 : 1;
      let slot = cols.slotOf[c.token] + step;
      while (slot >= 0 && slot < cols.slots.length && cols.slots[slot].gap) slot += step; // over gaps
      if (slot >= 0 && slot < cols.slots.length) c.token = cols.slots[slot].first;
      this.showCursor();
    } else if (ev.key === "ArrowUp" || ev.key === "ArrowDown") {
      const dl = ev.key === "ArrowUp" ? 1 : -1;
      const parallel = this.info.parallel;
      const step = parallel && c.level > 0 ? 2 : 1;
      c.level = Math.min(this.maxLevel, Math.max(0, c.level + dl * (parallel && dl < 0 && c.level === 2 ? 2 : step)));
      if (parallel && c.level % 2 === 1) c.level += 1;
      this.showCursor();
    } else if (ev.key === "Enter" || ev.key === " ") {
      this.cb.select(this.selectionAtLevel(c.token, c.level));
    } else if (ev.key === "+" || ev.key === "=") {
      this.zoomAt(1.25, this.region.x + this.region.w / 2, this.region.y + this.region.h / 2);
    } else if (ev.key === "-") {
      this.zoomAt(0.8, this.region.x + this.region.w / 2, this.region.y + this.region.h / 2);
    } else if (ev.key === "0") {
      this.fit();
    } else if (ev.key === "t") {
      this.cb.target(c.token);
    } else return;
    ev.preventDefault();
  }

  private placeCursor(): void {
    if (!this.columns || this.cursorMark.getAttribute("visibility") !== "visible") return;
    this.cursorMark.setAttribute("cx", fmt(this.x(this.cursor.token), 1));
    this.cursorMark.setAttribute("cy", fmt(this.y(this.cursor.level), 1));
  }

  private showCursor(): void {
    this.cursorMark.setAttribute("visibility", "visible");
    this.placeCursor();
    const cx = this.x(this.cursor.token), cy = this.y(this.cursor.level);
    const px = cx + this.view.x, py = cy + this.view.y, w = this.region.w, hgt = this.region.h;
    if (px < 20 || px > w - 20 || py < 10 || py > hgt - 10) this.setView(w / 2 - cx, hgt / 2 - cy);
  }

  private hover(ev: PointerEvent): void {
    const el = ev.target as Element;
    let text = this.describe(el);
    if (!text && this.dense) { // painted on the canvas: what is nearest the pointer
      const p = this.worldPoint(ev);
      const [node, nodeGap] = p ? this.nearestNode(p[0], p[1]) : [-1, Infinity];
      const [edge, edgeGap] = p ? this.nearestEdge(p[0], p[1]) : [-1, Infinity];
      text = node >= 0 && nodeGap <= edgeGap ? this.describeNode(node) : edge >= 0 ? this.describeEdge(edge) : "";
    }
    const tip = this.tooltip;
    if (!text) { tip.style.display = "none"; return; }
    tip.textContent = text;
    tip.style.display = "block";
    // beside the pointer, flipped to stay inside the graph
    const r = this.root.getBoundingClientRect();
    const x = ev.clientX - r.left, y = ev.clientY - r.top;
    tip.style.left = `${x + 12 + tip.offsetWidth > r.width ? Math.max(0, x - 12 - tip.offsetWidth) : x + 12}px`;
    tip.style.top = `${y + 12 + tip.offsetHeight > r.height ? Math.max(0, y - 12 - tip.offsetHeight) : y + 12}px`;
  }

  private describe(el: Element): string {
    const d = this.data, info = this.info;
    if (!d || !info) return "";
    const tok = (t: number) => `${t} ${JSON.stringify(info.tokens[t])}`;
    const edge = el.getAttribute("data-edge");
    if (edge !== null) return this.describeEdge(Number(edge));
    const node = el.getAttribute("data-node");
    if (node !== null) return this.describeNode(Number(node));
    const token = el.closest("[data-token]")?.getAttribute("data-token");
    if (token != null) return `token ${tok(Number(token))}`;
    const target = el.closest("[data-target]")?.getAttribute("data-target");
    if (target != null) {
      const t = Number(target);
      return `after ${tok(t)}: ${info.predictions.tokens[t].map((p) => JSON.stringify(p)).join(", ")} (click: routes to it)`;
    }
    const gap = el.closest("[data-gap]")?.getAttribute("data-gap");
    if (gap != null && this.columns) {
      const slot = this.columns.slots[Number(gap)];
      return `${slot.last - slot.first + 1} tokens (${slot.first}–${slot.last}) off the routes: click to show them`;
    }
    return "";
  }

  private describeEdge(i: number): string {
    const d = this.data!, info = this.info!, a = d.source[i], b = d.target[i];
    const tok = (t: number) => `${t} ${JSON.stringify(info.tokens[t])}`;
    const kind = KINDS[d.kind[i]];
    const where = kind === "attention" ? `${tok(d.token[a])} → ${tok(d.token[b])}` : tok(d.token[b]);
    const effect = Number.isNaN(d.effect[i]) ? "" : `, effect ${d.effect[i] >= 0 ? "+" : "−"}${fmt(Math.abs(d.effect[i]), 3)}`;
    return `${kind} edge, layer ${d.layer[b]}: ${where}, share ${fmt(d.weight[i])}${effect}`;
  }

  private describeNode(i: number): string {
    const d = this.data!, st = STAGES[d.stage[i]];
    const names = { embed: "embedding", mid: "residual after attention", ffn: "FFN block", post: "residual after the block" };
    return `${names[st]}${st === "embed" ? "" : `, layer ${d.layer[i]}`}, token ${d.token[i]} ${JSON.stringify(this.info!.tokens[d.token[i]])}`;
  }

  // -- zoom and pan ---------------------------------------------------------------------------

  /** Pan: one translate per layer, nothing rebuilt unless the view leaves what is drawn. */
  private setView(x: number, y: number): void {
    const r = this.region, w = this.contentW, hgt = this.contentH;
    const clampAxis = (v: number, content: number, size: number) =>
      content <= size ? (size - content) / 2 : Math.max(size - content - 20, Math.min(20, v));
    this.view = { x: clampAxis(x, w, r.w), y: clampAxis(y, hgt, r.h) };
    this.applyView();
    this.scheduleRedraw();
    if (!this.redrawPending) this.schedulePaint(); // the canvas does not move with the SVG's translate
  }

  private applyView(): void {
    const { x, y } = this.view;
    this.world.setAttribute("transform", `translate(${fmt(x, 1)},${fmt(y, 1)})`);
    this.targetsLayer.setAttribute("transform", `translate(${fmt(x, 1)},0)`);
    this.tokensLayer.setAttribute("transform", `translate(${fmt(x, 1)},0)`);
    this.axis.setAttribute("transform", `translate(0,${fmt(y, 1)})`);
  }

  /** Zoom by `factor` about (px, py) in the svg: columns and layers spread, text keeps its size. */
  zoomAt(factor: number, px: number, py: number): void {
    if (!this.columns) return;
    this.touched = true;
    const c = this.columns, r = this.region;
    const ax = px - r.x - this.view.x, ay = py - r.y - this.view.y;
    const slotCoord = c.toSlotCoord(ax), level = (ay - Y_PAD) / this.lev;
    c.col = c.clampCol(c.col * factor);
    this.bands(); // the label rows follow the column width
    this.lev = Math.max(this.levFit, Math.min(Math.max(LEVEL_MAX, this.levFit), this.lev * factor));
    this.view = { x: px - r.x - c.fromSlotCoord(slotCoord), y: py - r.y - (Y_PAD + level * this.lev) };
    this.setView(this.view.x, this.view.y);
    this.redraw();
  }

  /** Every column planned in view, the layers filling the height; gaps opened are closed again. */
  fit(): void {
    if (!this.info) return;
    if (this.expanded.size > 0) {
      this.expanded.clear();
      this.columns = new Columns(planSlots(this.nTokens, this.keep(), this.measure().w, COMFORTABLE), this.nTokens);
    }
    const c = this.columns!;
    c.col = c.fitWidth(this.measure().w);
    this.touched = false; // resizes fit again
    this.bands();
    this.lev = this.levFit;
    this.view = { x: 0, y: 0 };
    this.setView(0, 0);
    this.redraw();
  }

}

/** Distance from (x, y) to an edge's path (as `curve` draws it), sampled at 24 points. */
function distanceToCurve(kind: string, xa: number, ya: number, xb: number, yb: number, x: number, y: number, arc: number): number {
  let best = Infinity;
  for (let k = 0; k <= 24; k++) {
    const t = k / 24, u = 1 - t;
    let px: number, py: number;
    if (kind === "attention" && xa !== xb) { // cubic: (xa,ya) (xa,ym) (xb,ym) (xb,yb)
      const ym = (ya + yb) / 2;
      px = u * u * u * xa + 3 * u * u * t * xa + 3 * u * t * t * xb + t * t * t * xb;
      py = u * u * u * ya + 3 * u * u * t * ym + 3 * u * t * t * ym + t * t * t * yb;
    } else if (kind === "attention") { // quadratic arc
      px = u * u * xa + 2 * u * t * (xa - arc) + t * t * xb;
      py = u * u * ya + 2 * u * t * ((ya + yb) / 2) + t * t * yb;
    } else {
      px = xa + t * (xb - xa);
      py = ya + t * (yb - ya);
    }
    best = Math.min(best, Math.hypot(px - x, py - y));
  }
  return best;
}
