// The routes graph: tokens along x, layers along y (embeddings at the bottom), one target per
// token above the top layer. SVG in one transformed group, so zoom and pan are one attribute.
// Edges with an effect are coloured by its sign (supports / opposes the prediction over the
// contrast); routes kept by effect are drawn with widths by |effect|; the edges with a large
// effect that the share routes miss can be drawn dashed over them.

import { decode } from "./arrays";
import { s, visible, fmt } from "./dom";
import type { MissedEdge } from "./protocol";
import { KINDS, STAGES, type Info, type Payload, type Selection, type Stage } from "./types";

// Spacing adapts to the view: px per token column and per level (embed 0, mid(l) 2l+1,
// post(l) 2l+2), so that short prompts and deep models both open readable.
const COL_RANGE = [44, 120];
const LEVEL_RANGE = [9, 30];
const LEFT = 44;
const TOP = 64; // room for the target row
const BOTTOM = 40; // room for the token labels

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

export class GraphView {
  readonly root: HTMLDivElement;
  private svg: SVGSVGElement;
  private world: SVGGElement;
  private highlight: SVGGElement;
  /** Marks that other views draw over the graph in its coordinates (js/interventions.ts). */
  readonly overlay: SVGGElement = s("g", { class: "overlay" });
  /** The edges with a large effect that the share routes miss, dashed (setMissed). */
  private missedLayer: SVGGElement = s("g", { class: "missed" });
  private axis: SVGGElement; // layer labels, pinned to the left edge whatever the pan
  private cursorMark: SVGCircleElement;
  private tooltip: HTMLDivElement;
  private info: Info | null = null;
  private data: Decoded | null = null;
  private payload: Payload | null = null;
  private view = { k: 1, x: 0, y: 0 };
  private cursor = { token: 0, level: 0 };
  private selection: Selection | null = null;
  private col = 56;
  private lev = 26;
  private drag: { x: number; y: number; vx: number; vy: number; moved: boolean } | null = null;
  private drawn: [number, number] = [0, -1]; // the token columns drawn
  private redrawPending = false;
  private touched = false; // the user zoomed or panned: resizes keep their view

  constructor(private cb: GraphCallbacks) {
    this.root = document.createElement("div");
    this.root.className = "lmtt-graph";
    this.root.tabIndex = 0;
    this.root.setAttribute("role", "application");
    this.root.setAttribute("aria-label", "Routes graph: arrow keys move, Enter selects the residual node, + and - zoom, 0 fits");
    this.svg = s("svg", { class: "lmtt-svg", width: "100%", height: "100%" });
    this.world = s("g", { class: "world" });
    this.highlight = s("g", { class: "highlight" });
    this.cursorMark = s("circle", { class: "cursor", r: 9, visibility: "hidden" });
    this.axis = s("g", { class: "axis" });
    this.svg.append(s("rect", { class: "bg", width: "100%", height: "100%" }), this.world, this.axis);
    this.tooltip = document.createElement("div");
    this.tooltip.className = "lmtt-tooltip";
    this.root.append(this.svg, this.tooltip);
    this.listen();
  }

  // -- geometry ---------------------------------------------------------------------------

  private get nLayers(): number { return this.info ? this.info.n_layers : 0; }
  private get maxLevel(): number { return 2 * this.nLayers; }
  private level(stage: number, layer: number): number {
    if (stage === 0) return 0;
    if (stage === 1) return 2 * layer + 1;
    if (stage === 2) return 2 * layer + 1.5;
    return 2 * layer + 2;
  }
  private x(token: number, stage = 0): number { return LEFT + token * this.col + this.col / 2 + (stage === 2 ? this.col * 0.32 : 0); }
  private y(level: number): number { return TOP + (this.maxLevel - level) * this.lev; }
  private get width(): number { return LEFT + (this.info ? this.info.tokens.length : 0) * this.col + 10; }
  private get height(): number { return TOP + this.maxLevel * this.lev + BOTTOM; }

  // -- drawing ----------------------------------------------------------------------------

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
    this.data = {
      stage: decode<Uint8Array>(n.stage), layer: decode<Int16Array>(n.layer), token: decode<Int32Array>(n.token),
      source: decode<Uint32Array>(e.source), target: decode<Uint32Array>(e.target), kind: decode<Uint8Array>(e.kind),
      weight, effect, headRow: decode<Int32Array>(e.head_row), strength,
    };
    if (newRun) {
      this.layout();
      this.cursor = { token: info.tokens.length - 1, level: this.maxLevel };
      this.initialView();
    }
    this.draw();
  }

  /** Token columns in view, widened by `margin` view widths on each side. */
  private columnsInView(margin: number): [number, number] {
    const w = this.svg.clientWidth || 900, k = this.view.k;
    const x0 = (-this.view.x - margin * w) / k, x1 = (w - this.view.x + margin * w) / k;
    return [Math.floor((x0 - LEFT) / this.col) - 1, Math.ceil((x1 - LEFT) / this.col) + 1];
  }

  /** Redraw when the view leaves the columns drawn (long prompts draw only what is near the view). */
  private scheduleRedraw(): void {
    if (this.redrawPending || !this.data) return;
    const [a, b] = this.columnsInView(0), [c0, c1] = this.drawn;
    if (a >= c0 && b <= c1) return;
    this.redrawPending = true;
    requestAnimationFrame(() => { this.redrawPending = false; this.draw(); });
  }

  /** Layer labels at the left edge of the view, at their layers' heights. */
  private drawAxis(): void {
    if (!this.info) return;
    const { k, y: vy } = this.view;
    const labels: SVGElement[] = [s("rect", { class: "axis-bg", x: 0, y: 0, width: 34, height: "100%" })];
    const every = Math.max(1, Math.ceil(14 / (2 * this.lev * k))); // keep labels ~14 px apart
    for (let l = 0; l < this.info.n_layers; l += every) {
      labels.push(s("text", { class: "layer-label", x: 30, y: fmt(this.y(2 * l + 2) * k + vy + 4, 1), "text-anchor": "end" }, `L${l}`));
    }
    labels.push(s("text", { class: "layer-label", x: 30, y: fmt(this.y(0) * k + vy + 4, 1), "text-anchor": "end" }, "emb"));
    this.axis.replaceChildren(...labels);
  }

  private layout(): void {
    const w = this.svg.clientWidth || 900, hgt = this.svg.clientHeight || 560;
    const clamp = (v: number, [lo, hi]: number[]) => Math.max(lo, Math.min(hi, v));
    this.col = clamp((w - LEFT - 10) / this.info!.tokens.length, COL_RANGE);
    this.lev = clamp((hgt - TOP - BOTTOM) / Math.max(1, this.maxLevel), LEVEL_RANGE);
  }

  private draw(): void {
    const info = this.info!, d = this.data!;
    const [c0, c1] = this.columnsInView(1);
    this.drawn = [c0, c1];
    const near = (t: number) => t >= c0 && t <= c1;
    const frag = document.createDocumentFragment();
    frag.append(this.drawGrid(info, near));
    const edges = s("g", { class: "edges" });
    // lighter edges first, so that strong ones are drawn on top; only those reaching the columns drawn
    const order = Array.from(d.weight.keys()).filter((i) => {
      const ta = d.token[d.source[i]], tb = d.token[d.target[i]];
      return Math.max(ta, tb) >= c0 && Math.min(ta, tb) <= c1;
    }).sort((a, b) => d.strength[a] - d.strength[b]);
    for (const i of order) edges.append(this.edgePath(i));
    frag.append(edges);
    const nodes = s("g", { class: "nodes" });
    for (let i = 0; i < d.stage.length; i++) {
      if (!near(d.token[i])) continue;
      const st = d.stage[i];
      const c = s("circle", {
        class: `node ${STAGES[st]}`, cx: this.x(d.token[i], st), cy: this.y(this.level(st, d.layer[i])),
        r: fmt(Math.min(st === 2 ? 4.5 : 5.5, this.lev * 0.38), 1), "data-node": i,
      });
      nodes.append(c);
    }
    frag.append(nodes, this.drawTargets(info, near), this.missedLayer, this.overlay, this.highlight, this.cursorMark);
    this.drawAxis();
    this.root.dataset.edges = String(d.weight.length);
    this.root.dataset.edgesDrawn = String(order.length);
    this.world.replaceChildren(frag);
    this.drawHighlight();
  }

  private drawGrid(info: Info, near: (t: number) => boolean): SVGGElement {
    const g = s("g", { class: "grid" });
    const x0 = LEFT, x1 = this.width - 10;
    for (let l = 0; l < info.n_layers; l++) {
      const y = this.y(2 * l + 2);
      g.append(s("line", { class: "layer-line", x1: x0, x2: x1, y1: y, y2: y }));
    }
    const yb = this.y(0) + 22;
    const [genStart, genStop] = info.generated ?? [0, 0];
    info.tokens.forEach((tok, t) => {
      if (!near(t)) return;
      const generated = t >= genStart && t < genStop;
      const label = s("g", { class: generated ? "token generated" : "token" });
      label.append(s("title", {}, `${t}: ${JSON.stringify(tok)}${generated ? " (generated by the model)" : ""}`));
      label.append(s("text", { class: "token-label", x: this.x(t), y: yb, "text-anchor": "middle" }, clip(visible(tok))));
      g.append(label);
    });
    return g;
  }

  private drawTargets(info: Info, near: (t: number) => boolean): SVGGElement {
    const g = s("g", { class: "targets" });
    const y = TOP - 44;
    const target = this.payload!.target;
    info.tokens.forEach((tok, t) => {
      if (!near(t)) return;
      const cls = t === target ? "target-cell active" : "target-cell";
      const cell = s("g", { class: cls, "data-target": t });
      cell.append(s("rect", { x: this.x(t) - this.col / 2 + 3, y, width: this.col - 6, height: 22, rx: 4 }));
      cell.append(s("text", { x: this.x(t), y: y + 15, "text-anchor": "middle" }, clip(visible(info.predictions.tokens[t][0] ?? ""))));
      const title = info.predictions.tokens[t].map((p) => JSON.stringify(p)).join(", ");
      cell.append(s("title", {}, `Routes to the prediction after token ${t} ${JSON.stringify(tok)}; top: ${title}`));
      g.append(cell);
    });
    const top = this.y(this.maxLevel);
    g.append(s("line", { class: "target-link", x1: this.x(target), x2: this.x(target), y1: y + 22, y2: top - 6 }));
    return g;
  }

  private edgePath(i: number): SVGPathElement {
    const d = this.data!;
    const a = d.source[i], b = d.target[i];
    const xa = this.x(d.token[a], d.stage[a]), ya = this.y(this.level(d.stage[a], d.layer[a]));
    const xb = this.x(d.token[b], d.stage[b]), yb = this.y(this.level(d.stage[b], d.layer[b]));
    const kind = KINDS[d.kind[i]];
    const w = d.strength[i];
    return s("path", {
      class: `edge ${kind}${sign(d.effect[i])}`, d: edgeCurve(kind, xa, ya, xb, yb), "data-edge": i,
      "stroke-width": fmt(0.8 + 4 * w, 2), "stroke-opacity": fmt(0.3 + 0.7 * w, 2),
    });
  }

  /** Draw `missed` dashed over the graph (an empty list clears them). */
  setMissed(missed: MissedEdge[]): void {
    let max = 1e-12;
    for (const m of missed) max = Math.max(max, Math.abs(m.effect));
    this.missedLayer.replaceChildren(...missed.map((m) => {
      const [xa, ya] = this.point(STAGES.indexOf(m.source[0] as Stage), m.source[1], m.source[2]);
      const [xb, yb] = this.point(STAGES.indexOf(m.target[0] as Stage), m.target[1], m.target[2]);
      const path = s("path", {
        class: `missed-edge ${m.kind}${sign(m.effect)}`, d: edgeCurve(m.kind, xa, ya, xb, yb),
        "stroke-width": fmt(1.2 + 3 * Math.abs(m.effect) / max, 2),
      });
      path.append(s("title", {}, `missed by the share routes: ${m.kind} edge, layer ${m.target[1]}, effect ${fmt(m.effect, 3)}`));
      return path;
    }));
    this.root.dataset.missed = String(missed.length);
  }

  /** A node's position in graph coordinates: stage code (types.STAGES), layer, token. */
  point(stage: number, layer: number, token: number): [number, number] {
    return [this.x(token, stage), this.y(this.level(stage, layer))];
  }

  // -- selection ----------------------------------------------------------------------------

  setSelection(sel: Selection | null): void {
    this.selection = sel;
    if (this.info) this.drawHighlight();
  }

  /** Outline the selection, whether or not it is an edge or node of the routes shown. */
  private drawHighlight(): void {
    const sel = this.selection;
    const g = this.highlight;
    g.replaceChildren();
    if (sel === null || !this.info) return;
    if (sel.kind === "attention") {
      const xa = this.x(sel.source), ya = this.y(sel.layer === 0 ? 0 : 2 * sel.layer);
      const parallel = this.info.parallel;
      const xb = this.x(sel.target), yb = this.y(parallel ? 2 * sel.layer + 2 : 2 * sel.layer + 1);
      g.append(s("path", { class: "sel-edge", d: edgeCurve("attention", xa, ya, xb, yb) }));
      g.append(s("circle", { class: "sel-ring", cx: xb, cy: yb, r: 8 }));
    } else {
      const stage = sel.kind === "ffn" ? 2 : STAGES.indexOf(sel.stage);
      const layer = sel.kind === "ffn" ? sel.layer : sel.layer;
      g.append(s("circle", { class: "sel-ring", cx: this.x(sel.token, stage), cy: this.y(this.level(stage, layer)), r: 9 }));
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

  // -- interaction --------------------------------------------------------------------------

  private worldPoint(ev: MouseEvent): [number, number] {
    const r = this.svg.getBoundingClientRect();
    return [(ev.clientX - r.left - this.view.x) / this.view.k, (ev.clientY - r.top - this.view.y) / this.view.k];
  }

  private listen(): void {
    const svg = this.svg;
    svg.addEventListener("wheel", (ev) => {
      ev.preventDefault();
      const r = svg.getBoundingClientRect();
      this.zoomAt(Math.exp(-ev.deltaY * 0.0015), ev.clientX - r.left, ev.clientY - r.top);
    }, { passive: false });
    svg.addEventListener("pointerdown", (ev) => {
      this.drag = { x: ev.clientX, y: ev.clientY, vx: this.view.x, vy: this.view.y, moved: false };
    });
    svg.addEventListener("pointermove", (ev) => {
      const dr = this.drag;
      if (dr && (ev.buttons & 1)) {
        if (Math.abs(ev.clientX - dr.x) + Math.abs(ev.clientY - dr.y) > 4) {
          if (!dr.moved) svg.setPointerCapture(ev.pointerId);
          dr.moved = true;
        }
        if (dr.moved) this.touched = true;
        if (dr.moved) this.setView(this.view.k, dr.vx + ev.clientX - dr.x, dr.vy + ev.clientY - dr.y);
      } else {
        this.hover(ev);
      }
    });
    svg.addEventListener("pointerup", () => { setTimeout(() => { this.drag = null; }, 0); });
    svg.addEventListener("pointerleave", () => { this.tooltip.style.display = "none"; });
    svg.addEventListener("click", (ev) => {
      if (this.drag?.moved || !this.info) return;
      const el = ev.target as Element;
      const edge = el.getAttribute("data-edge"), node = el.getAttribute("data-node");
      const cell = el.closest("[data-target]");
      if (edge !== null) this.cb.select(this.selectionOfEdge(Number(edge)));
      else if (node !== null) this.cb.select(this.selectionOfNode(Number(node)));
      else if (cell) this.cb.target(Number(cell.getAttribute("data-target")));
      else {
        const [wx, wy] = this.worldPoint(ev);
        const token = Math.round((wx - LEFT - this.col / 2) / this.col);
        const level = Math.round(this.maxLevel - (wy - TOP) / this.lev);
        if (token >= 0 && token < this.info.tokens.length && level >= 0 && level <= this.maxLevel) {
          this.cb.select(this.selectionAtLevel(token, level));
        }
      }
    });
    this.root.addEventListener("keydown", (ev) => this.key(ev));
  }

  private key(ev: KeyboardEvent): void {
    if (!this.info) return;
    const c = this.cursor, T = this.info.tokens.length;
    const moves: Record<string, [number, number]> = {
      ArrowLeft: [-1, 0], ArrowRight: [1, 0], ArrowUp: [0, 1], ArrowDown: [0, -1],
    };
    if (ev.key in moves) {
      const [dt, dl] = moves[ev.key];
      c.token = Math.min(T - 1, Math.max(0, c.token + dt));
      const step = this.info.parallel && c.level > 0 ? 2 : 1;
      c.level = Math.min(this.maxLevel, Math.max(0, c.level + dl * (this.info.parallel && dl < 0 && c.level === 2 ? 2 : step)));
      if (this.info.parallel && c.level % 2 === 1) c.level += 1;
      this.showCursor();
    } else if (ev.key === "Enter" || ev.key === " ") {
      this.cb.select(this.selectionAtLevel(c.token, c.level));
    } else if (ev.key === "+" || ev.key === "=") {
      this.zoomAt(1.25, this.svg.clientWidth / 2, this.svg.clientHeight / 2);
    } else if (ev.key === "-") {
      this.zoomAt(0.8, this.svg.clientWidth / 2, this.svg.clientHeight / 2);
    } else if (ev.key === "0") {
      this.fit();
    } else if (ev.key === "t") {
      this.cb.target(c.token);
    } else return;
    ev.preventDefault();
  }

  private showCursor(): void {
    const cx = this.x(this.cursor.token), cy = this.y(this.cursor.level);
    this.cursorMark.setAttribute("cx", String(cx));
    this.cursorMark.setAttribute("cy", String(cy));
    this.cursorMark.setAttribute("visibility", "visible");
    // keep the cursor in view
    const px = cx * this.view.k + this.view.x, py = cy * this.view.k + this.view.y;
    const w = this.svg.clientWidth, hgt = this.svg.clientHeight;
    if (px < 20 || px > w - 20 || py < 20 || py > hgt - 20) this.setView(this.view.k, w / 2 - cx * this.view.k, hgt / 2 - cy * this.view.k);
  }

  private hover(ev: PointerEvent): void {
    const el = ev.target as Element;
    const text = this.describe(el);
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
    if (edge !== null) {
      const i = Number(edge), a = d.source[i], b = d.target[i];
      const kind = KINDS[d.kind[i]];
      const where = kind === "attention" ? `${tok(d.token[a])} → ${tok(d.token[b])}` : tok(d.token[b]);
      const effect = Number.isNaN(d.effect[i]) ? "" : `, effect ${d.effect[i] >= 0 ? "+" : "−"}${fmt(Math.abs(d.effect[i]), 3)}`;
      return `${kind} edge, layer ${d.layer[b]}: ${where}, share ${fmt(d.weight[i])}${effect}`;
    }
    const node = el.getAttribute("data-node");
    if (node !== null) {
      const i = Number(node), st = STAGES[d.stage[i]];
      const names = { embed: "embedding", mid: "residual after attention", ffn: "FFN block", post: "residual after the block" };
      return `${names[st]}${st === "embed" ? "" : `, layer ${d.layer[i]}`}, token ${tok(d.token[i])}`;
    }
    return "";
  }

  // -- zoom and pan ---------------------------------------------------------------------------

  private setView(k: number, x: number, y: number): void {
    this.view = { k, x, y };
    this.world.setAttribute("transform", `translate(${fmt(x, 1)},${fmt(y, 1)}) scale(${fmt(k, 4)})`);
    this.drawAxis();
    this.scheduleRedraw();
  }

  zoomAt(factor: number, px: number, py: number): void {
    this.touched = true;
    const k = Math.min(4, Math.max(0.02, this.view.k * factor));
    const f = k / this.view.k;
    this.setView(k, px - (px - this.view.x) * f, py - (py - this.view.y) * f);
  }

  /** The whole graph in view. */
  fit(): void {
    const w = this.svg.clientWidth || 800, hgt = this.svg.clientHeight || 560;
    const k = Math.min(w / this.width, hgt / this.height);
    this.setView(k, (w - this.width * k) / 2, (hgt - this.height * k) / 2);
  }

  refitIfUntouched(): void {
    if (this.info && !this.touched) this.initialView();
  }

  /** Short prompts fit; long ones open at readable size with the target in view. */
  private initialView(): void {
    const w = this.svg.clientWidth || 800, hgt = this.svg.clientHeight || 560;
    const fitAll = Math.min(w / this.width, hgt / this.height);
    if (this.info!.tokens.length <= 40 || fitAll > 0.3) { this.fit(); return; }
    const k = Math.max(fitAll, hgt / this.height);
    const tx = this.x(this.payload!.target);
    this.setView(k, Math.min(0, w - 40 - tx * k), (hgt - this.height * k) / 2);
  }
}

/** The path of an edge: attention between tokens a curve, to itself a small arc beside the
 * residual edge, the others straight. */
export function edgeCurve(kind: string, xa: number, ya: number, xb: number, yb: number): string {
  const ym = (ya + yb) / 2;
  if (kind === "attention" && xa !== xb) return `M${xa},${ya}C${xa},${ym} ${xb},${ym} ${xb},${yb}`;
  if (kind === "attention") return `M${xa},${ya}Q${xa - 14},${ym} ${xb},${yb}`;
  return `M${xa},${ya}L${xb},${yb}`;
}

function clip(text: string, n = 8): string {
  return text.length > n ? text.slice(0, n - 1) + "…" : text;
}
