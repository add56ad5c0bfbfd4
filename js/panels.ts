// The drill-down panels: residual node (logit lens + block update), attention edge (per-head
// shares and effects, pattern and importance heatmaps, every head at the target, the head's
// promoted/suppressed tokens), FFN block (top neurons, their shares and effects, and what each
// writes), neuron (its activation at every position, what it writes), and an aggregate's prompts
// behind a selection. Their data is asked of Python lazily. A component that the run shown
// ablates or patches comes with its clean values, and the panel says so.

import { decode } from "./arrays";
import { h, visible, fmt, signed } from "./dom";
import { heatmap, palette, type Palette } from "./heatmap";
import type { AttentionPanel, ExpertPanel, ExpertRow, ExpertSelection, FfnPanel, NeuronPanel, NeuronRow, NeuronSelection, PromptsPanel,
  ResidualPanel } from "./protocol";
import type { AttentionSelection, Effect, FfnSelection, Info, PanelData, ResidualSelection, Selection } from "./types";

export interface PanelCallbacks {
  select(sel: Selection): void;
  openPrompt(index: number): void;
  /** Ask for the panels' longer lists (30 lens tokens, 15 promoted and suppressed, 20 neurons), or the shorter. */
  more(on: boolean): void;
}

/** One renderer per selection kind (Python's selections.py registers the kinds). */
interface Renderer<S extends Selection, D extends PanelData> {
  /** Whether `data` has what `sel` shows (a neuron outside an FFN panel's top rows does not). */
  covers?(sel: S, data: D): boolean;
  render(info: Info, sel: S, data: D, cb: PanelCallbacks, colours: Palette): (HTMLElement | string)[];
}

type Renderers = {
  residual: Renderer<ResidualSelection, ResidualPanel>;
  attention: Renderer<AttentionSelection, AttentionPanel>;
  ffn: Renderer<FfnSelection, FfnPanel>;
  neuron: Renderer<NeuronSelection, NeuronPanel>;
  expert: Renderer<ExpertSelection, ExpertPanel>;
};

const STAGE_NAMES = { embed: "Embedding", mid: "Residual after attention", post: "Residual after the block" };

const RENDERERS: Renderers = {
  residual: {
    render(info, sel, data) {
      const lens = h("table", { class: "lens" },
        h("thead", {}, h("tr", {}, h("th", {}, "token"), h("th", {}, "probability"), h("th", { title: "rank change since the previous node on the stream" }, "rank Δ"))));
      const tbody = h("tbody");
      for (const t of data.lens) {
        const rc = t.rank_change;
        const change = rc === null ? "" : rc > 0 ? `▲${rc}` : rc < 0 ? `▼${-rc}` : "–";
        tbody.append(h("tr", {}, h("td", { class: "tok", title: JSON.stringify(t.token) }, visible(t.token)),
          h("td", {}, bar(t.probability, 1, fmt(t.probability))),
          h("td", { class: rc !== null && rc > 0 ? "up" : rc !== null && rc < 0 ? "down" : "" }, change)));
      }
      lens.append(tbody);
      const blocks = data.blocks.map((b) =>
        h("div", {}, h("h4", {}, `${b.block === "ffn" ? "FFN" : "Attention"} update of layer ${sel.layer}: direct logit effect`), effect(b)));
      return [
        h("h3", {}, `${STAGE_NAMES[sel.stage]}${sel.stage === "embed" ? "" : `, layer ${sel.layer}`}`),
        h("p", { class: "where" }, `token ${sel.token} `, tokenSpan(info.tokens[sel.token])),
        h("h4", {}, `Logit lens${data.normalized ? " (final norm applied)" : " (no final norm)"}`),
        lens, ...blocks,
      ];
    },
  },
  attention: {
    render(info, sel, data, cb, colours) {
      // effects are absent where the run has none (an aggregate, a family with post-norms)
      const shares = decode<Float32Array>(data.shares);
      const effects = data.effects === undefined ? null : decode<Float32Array>(data.effects);
      const max = Math.max(...shares, 1e-9), maxEffect = effects ? Math.max(...effects.map(Math.abs), 1e-9) : 1;
      const heads = h("div", { class: "heads", role: "listbox", "aria-label": "heads" });
      shares.forEach((v, head) => {
        const e = effects ? effects[head] : null;
        const button = h("button", {
          class: head === sel.head ? "head active" : "head",
          title: `head ${head}: share ${fmt(v)}${e === null ? "" : `, effect ${signed(e)}`}`,
          "aria-selected": head === sel.head ? "true" : "false", "data-head": head,
        }, h("span", { class: "hbars" },
          h("span", { class: "hbar", style: `height:${fmt((100 * v) / max, 1)}%` }),
          e === null ? null : h("span", { class: `ebar ${e >= 0 ? "up" : "down"}`, "data-effect": e,
            style: `height:${fmt((100 * Math.abs(e)) / maxEffect, 1)}%` })),
        h("span", { class: "hlabel" }, String(head)));
        button.addEventListener("click", () => cb.select({ ...sel, head }));
        heads.append(button);
      });
      const total = effects ? effects.reduce((a, b) => a + b, 0) : 0;
      return [
        h("h3", {}, `Attention edge, layer ${sel.layer}`),
        h("p", { class: "where" }, `from ${sel.source} `, tokenSpan(info.tokens[sel.source]), ` to ${sel.target} `, tokenSpan(info.tokens[sel.target])),
        h("h4", {}, effects ? "Each head in this edge: share (left) and effect (right; green supports, red opposes)"
          : "Each head's share of this edge"), heads,
        ...(effects ? [h("p", { class: "effect-line" }, `Removing the edge (all heads) changes ${data.metric} by about `,
          h("span", { class: `num ${total >= 0 ? "up" : "down"}` }, signed(-total)),
          ` (effect ${signed(total)}${sel.head === null ? "" : `; head ${sel.head}: ${signed(effects[sel.head])}`})`)] : []),
        h("h4", {}, `Head ${sel.head}: target × source`),
        h("div", { class: "maps" }, ...attentionMaps(info, sel, data, colours)),
        h("h4", {}, `Every head of layer ${sel.layer} at the target: attention to each source (click a head)`),
        h("div", { class: "maps" }, allHeads(info, sel, data, cb, colours)),
        h("h4", {}, `Head ${sel.head} at the target, from this source: direct logit effect`), effect(data.from_source),
        h("h4", {}, `Head ${sel.head} at the target, from all sources`), effect(data.total),
      ];
    },
  },
  ffn: {
    covers: (sel, data) => sel.neuron == null || data.neurons.some((n) => n.index === sel.neuron),
    render(info, sel, data, cb) {
      const moe = data.experts !== undefined;
      const chooseNeuron = (n: NeuronRow) => cb.select({ kind: "neuron", layer: sel.layer, token: sel.token, neuron: n.index });
      return [
        h("h3", {}, `${moe ? "Mixture of experts" : "FFN block"}, layer ${sel.layer}`),
        h("p", { class: "where" }, `token ${sel.token} `, tokenSpan(info.tokens[sel.token]), `; share of the update in the block's output: ${fmt(data.ffn_share)}`),
        ...effectLine("Effect of the update on", data.metric, data.ffn_effect),
        ...(data.experts !== undefined
          ? [h("h4", {}, "The experts writing here (routed by routing weight, the shared expert last)"), expertTable(sel, data.experts, data.metric, cb)]
          : [h("h4", {}, "Top neurons by share (their tokens scaled by the activation)"),
            neuronTable(data.neurons, data.metric, sel.neuron ?? null, chooseNeuron)]),
        h("h4", {}, "The FFN update: direct logit effect"), effect(data.block),
      ];
    },
  },
  expert: {
    render(info, sel, data, cb) {
      const back = h("button", { class: "link", title: "The mixture of experts' panel" }, `the experts of layer ${sel.layer}`);
      back.addEventListener("click", () => cb.select({ kind: "ffn", layer: sel.layer, token: sel.token, neuron: null }));
      const weight = sel.expert === null ? `gate ${fmt(data.weight, 3)}` : `routing weight ${fmt(data.weight, 3)}`;
      return [
        h("h3", {}, `${expertName(sel.expert)} of layer ${sel.layer}`),
        h("p", { class: "where" }, `token ${sel.token} `, tokenSpan(info.tokens[sel.token]),
          `: ${weight}; share of its write in the block's output ${fmt(data.share, 4)}; `, back),
        ...effectLine("Effect of its write on", data.metric, data.effect),
        h("h4", {}, "Top neurons by share (their writes: activation × routing weight × output row)"),
        neuronTable(data.neurons, data.metric, null, null),
        h("h4", {}, "Its write here: direct logit effect"), effect(data.write),
      ];
    },
  },
  neuron: {
    render(info, sel, data, cb, colours) {
      const back = h("button", { class: "link", title: "The FFN block's panel" }, `FFN block of layer ${sel.layer}`);
      back.addEventListener("click", () => cb.select({ kind: "ffn", layer: sel.layer, token: sel.token, neuron: sel.neuron }));
      const acts = decode<Float32Array>(data.activations);
      const strongest = h("ol", { class: "strongest" }, ...data.strongest.map(([position, value]) => {
        const item = h("li", { tabindex: 0, title: `select neuron ${sel.neuron} at token ${position}`, "data-position": position },
          h("span", { class: "num" }, String(position)), " ", tokenSpan(info.tokens[position]), " ",
          h("span", { class: `num ${value >= 0 ? "up" : "down"}` }, fmt(value, 3)));
        activate(item, () => cb.select({ ...sel, token: position }));
        return item;
      }));
      const flipped = data.activation < 0 ? " (negative: what its output row promotes, it suppresses here)" : "";
      return [
        h("h3", {}, `Neuron ${sel.neuron} of layer ${sel.layer}`),
        h("p", { class: "where" }, `token ${sel.token} `, tokenSpan(info.tokens[sel.token]),
          `: activation ${fmt(data.activation, 3)}${flipped}; share of its write in the block's output ${fmt(data.share, 4)}; `, back),
        ...effectLine("Effect of its write on", data.metric, data.neuron_effect),
        h("h4", {}, "Activation at every position"), activationStrip(acts, info, sel.token, colours),
        h("h4", {}, "Where it fires most"), strongest,
        h("h4", {}, "Its write here (activation × output row): direct logit effect"), effect(data.effect),
      ];
    },
  },
};

/** "Effect of ... on <metric>: <signed value>", where the panel has effects. */
function effectLine(what: string, metric: string | undefined, value: number | undefined): HTMLElement[] {
  if (metric === undefined || value === undefined) return [];
  return [h("p", { class: "effect-line" }, `${what} ${metric}: `, h("span", { class: `num ${value >= 0 ? "up" : "down"}` }, signed(value)))];
}

/** Neurons by share, with their effects (where the panel has them), activations and tokens;
 * `choose` (absent: rows are not selectable) opens a neuron's own panel. */
function neuronTable(neurons: NeuronRow[], metric: string | undefined, active: number | null,
  choose: ((n: NeuronRow) => void) | null): HTMLElement {
  const effects = metric !== undefined;
  const table = h("table", { class: choose ? "neurons selectable" : "neurons" },
    h("colgroup", {}, ...["neuron", "share", ...(effects ? ["effect"] : []), "act", "toks", "toks"].map((c) => h("col", { class: c }))),
    h("thead", {}, h("tr", {},
      h("th", {}, "neuron"), h("th", {}, "share"),
      effects ? h("th", { title: `effect on ${metric}` }, "effect") : null,
      h("th", { title: "activation" }, "act."), h("th", {}, "promotes"), h("th", {}, "suppresses"))));
  const tbody = h("tbody");
  const maxShare = Math.max(...neurons.map((n) => n.share), 1e-9);
  for (const n of neurons) {
    const title = `neuron ${n.index}: share ${fmt(n.share, 4)}${n.effect === undefined ? "" : `, effect ${signed(n.effect)}`}, `
      + `activation ${fmt(n.activation)}${choose ? "; click: this neuron's panel" : ""}`;
    const row = h("tr", { class: n.index === active ? "active" : "", tabindex: choose ? 0 : -1, "data-neuron": n.index, title },
      h("td", {}, String(n.index)), h("td", {}, bar(n.share, maxShare, fmt(n.share, 3))),
      n.effect === undefined ? null : h("td", { class: `num effect ${n.effect >= 0 ? "up" : "down"}` }, signed(n.effect)),
      h("td", {}, fmt(n.activation, 2)), ...tokenCells(n));
    if (choose) activate(row, () => choose(n));
    tbody.append(row);
  }
  table.append(tbody);
  return table;
}

/** A mixture of experts' rows: each expert writing at the token, its weight, share, effect and
 * tokens; a click opens the expert's panel (its neurons). */
function expertTable(sel: FfnSelection, experts: ExpertRow[], metric: string | undefined, cb: PanelCallbacks): HTMLElement {
  const effects = metric !== undefined;
  const table = h("table", { class: "neurons experts selectable" },
    h("colgroup", {}, ...["expert", "act", "share", ...(effects ? ["effect"] : []), "toks", "toks"].map((c) => h("col", { class: c }))),
    h("thead", {}, h("tr", {},
      h("th", {}, "expert"), h("th", { title: "routing weight (the shared expert: its gate)" }, "weight"), h("th", {}, "share"),
      effects ? h("th", { title: `effect on ${metric}` }, "effect") : null,
      h("th", {}, "promotes"), h("th", {}, "suppresses"))));
  const tbody = h("tbody");
  const maxShare = Math.max(...experts.map((e) => e.share), 1e-9);
  for (const e of experts) {
    const row = h("tr", { tabindex: 0, "data-expert": e.expert === null ? "shared" : e.expert,
      title: `${expertName(e.expert)}: weight ${fmt(e.weight, 3)}, share ${fmt(e.share, 4)}`
        + `${e.effect === undefined ? "" : `, effect ${signed(e.effect)}`}; click: its neurons` },
      h("td", {}, e.expert === null ? "shared" : String(e.expert)), h("td", {}, fmt(e.weight, 2)),
      h("td", {}, bar(e.share, maxShare, fmt(e.share, 3))),
      e.effect === undefined ? null : h("td", { class: `num effect ${e.effect >= 0 ? "up" : "down"}` }, signed(e.effect)),
      ...tokenCells(e));
    activate(row, () => cb.select({ kind: "expert", layer: sel.layer, token: sel.token, expert: e.expert }));
    tbody.append(row);
  }
  table.append(tbody);
  return table;
}

function expertName(expert: number | null): string {
  return expert === null ? "Shared expert" : `Expert ${expert}`;
}

/** The promoted and suppressed tokens of a row, each cell truncated with the whole list on hover. */
function tokenCells(row: Effect): HTMLElement[] {
  const promotes = row.promoted.map(([t]) => visible(t)).join(" · "), suppresses = row.suppressed.map(([t]) => visible(t)).join(" · ");
  return [h("td", { class: "toks up", title: promotes }, promotes || "–"), h("td", { class: "toks down", title: suppresses }, suppresses || "–")];
}

/** A row or item that a click or Enter activates. */
function activate(el: HTMLElement, action: () => void): void {
  el.addEventListener("click", action);
  el.addEventListener("keydown", (ev) => { if (ev.key === "Enter") action(); });
}

/** The renderer of `sel`'s kind, typed for it (the panel data Python sent for that kind). */
function rendererOf(sel: Selection): Renderer<Selection, PanelData> {
  return RENDERERS[sel.kind] as unknown as Renderer<Selection, PanelData>;
}

export class Panels {
  readonly root: HTMLDivElement;
  private body: HTMLDivElement;
  private moreButton = h("button", { class: "more", "aria-pressed": "false" }, "more");
  more = false;

  constructor(private cb: PanelCallbacks) {
    this.body = h("div", { class: "lmtt-panel-body" });
    this.moreButton.title = "List more: 30 lens tokens, 15 promoted and 15 suppressed, 20 neurons";
    this.moreButton.addEventListener("click", () => {
      this.more = !this.more;
      this.moreButton.setAttribute("aria-pressed", String(this.more));
      this.moreButton.textContent = this.more ? "fewer" : "more";
      this.cb.more(this.more);
    });
    this.root = h("div", { class: "lmtt-panel", "aria-live": "polite" }, this.moreButton, this.body);
    this.empty();
  }

  empty(): void {
    this.body.replaceChildren(
      h("h3", {}, "Nothing selected"),
      h("p", { class: "hint" }, "Click a node (residual stream or FFN block) or an attention edge in the graph: its panel "
        + "shows here, and the controls to ablate it (or patch it from another prompt) above the graph. "
        + "Click a cell above the top layer to choose whose prediction's routes are shown."),
    );
  }

  loading(title: string): void {
    this.body.replaceChildren(h("h3", {}, title), h("p", { class: "hint loading" }, "Loading…"));
  }

  unavailable(title: string, why: string): void {
    this.body.replaceChildren(h("h3", {}, title), h("p", { class: "hint unavailable" }, why));
  }

  covers(sel: Selection, data: PanelData): boolean {
    return "rows" in data || (rendererOf(sel).covers?.(sel, data) ?? true);
  }

  show(info: Info, sel: Selection, data: PanelData): void {
    if ("rows" in data) { this.body.replaceChildren(...promptsPanel(info, sel, data, this.cb)); return; }
    const [title, ...rest] = rendererOf(sel).render(info, sel, data, this.cb, palette(this.root));
    const note = data.intervened ? [h("p", { class: "intervened", role: "note" },
      `${data.intervened.how === "ablated" ? "Ablated" : "Patched from the other prompt"} in the run shown (${data.intervened.label}): `
      + `these are its values in the clean run.`)] : [];
    this.body.replaceChildren(title, ...note, ...rest);
  }
}

const WHAT = { residual: "Residual node", attention: "Attention edge", ffn: "FFN block", neuron: "FFN neuron", expert: "FFN expert" };

/** An aggregate's panel: the prompts behind the selection, each with its own share, those whose
 * own routes hold it first; each opens on its own (its full panels there). */
function promptsPanel(info: Info, sel: Selection, data: PromptsPanel, cb: PanelCallbacks): (HTMLElement | string)[] {
  const where = sel.kind === "attention"
    ? `layer ${sel.layer}: ${info.tokens[sel.source]} → ${info.tokens[sel.target]}`
    : `layer ${sel.layer}, ${info.tokens[sel.token]}`;
  const maxShare = Math.max(...data.rows.map((r) => r.share ?? 0), 1e-9);
  const tbody = h("tbody");
  for (const row of data.rows) {
    const open = h("button", { class: "open-prompt", "data-index": row.index, title: `Show prompt ${row.index} on its own` }, "Open");
    open.addEventListener("click", () => cb.openPrompt(row.index));
    tbody.append(h("tr", { class: row.in_routes ? "in-routes" : "", "data-index": row.index },
      h("td", {}, String(row.index)), h("td", {}, open),
      h("td", { title: "whether this prompt's own routes hold it" }, row.in_routes ? "✓" : ""),
      h("td", {}, row.share === null ? "–" : bar(row.share, maxShare, fmt(row.share, 3))),
      h("td", { class: "tok" }, visible(row.token)),
      h("td", { class: "prompt-text", title: row.prompt }, row.prompt)));
  }
  const table = h("table", { class: "prompt-rows" }, h("thead", {}, h("tr", {},
    h("th", {}, "#"), h("th", {}, ""), h("th", {}, "in routes"), h("th", {}, "share"), h("th", {}, "token"), h("th", {}, "prompt"))), tbody);
  const summary = data.mean === null ? "" : `mean share ${fmt(data.mean, 3)} ± ${fmt(data.std ?? 0, 3)}; `;
  return [
    h("h3", {}, `${WHAT[sel.kind]} over ${data.rows.length} prompts`),
    h("p", { class: "where" }, where),
    h("p", { class: "hint" }, `${summary}in the own routes of ${fmt(100 * data.support, 0)}% of the prompts`),
    table,
  ];
}

function tokenSpan(token: string): HTMLSpanElement {
  return h("span", { class: "tok", title: JSON.stringify(token) }, visible(token));
}

function bar(value: number, max: number, label: string): HTMLSpanElement {
  const pct = Math.max(0, Math.min(100, (100 * value) / max));
  return h("span", { class: "bar" }, h("span", { class: "fill", style: `width:${fmt(pct, 1)}%` }), h("span", { class: "num" }, label));
}

/** A direct logit effect: two decimals, or two significant digits when smaller (never "0.00" for a nonzero one). */
function logit(v: number): string {
  return Math.abs(v) >= 0.01 ? fmt(v, 2) : v.toPrecision(2);
}

function effect(e: Effect): HTMLDivElement {
  const list = (items: [string, number][], cls: string) => {
    const ul = h("ul", { class: `effect ${cls}` });
    for (const [t, v] of items) ul.append(h("li", {}, h("span", { class: "tok", title: JSON.stringify(t) }, visible(t)), h("span", { class: "num" }, logit(v))));
    if (items.length === 0) ul.append(h("li", { class: "none" }, "none (all zero)"));
    return ul;
  };
  return h("div", { class: "effects" },
    h("div", {}, h("div", { class: "col-title up" }, "promoted"), list(e.promoted, "up")),
    h("div", {}, h("div", { class: "col-title down" }, "suppressed"), list(e.suppressed, "down")));
}

/** The head's pattern and importance over the maps' positions (cropped at first to the tokens that
 * matter), each with the target's whole row below it. */
function attentionMaps(info: Info, sel: AttentionSelection, data: AttentionPanel, colours: Palette): HTMLElement[] {
  const positions = Array.from(decode<Int32Array>(data.positions));
  const all = info.tokens.map((_, t) => t);
  const name = (t: number) => `${t} ${JSON.stringify(info.tokens[t])}`;
  const short = (t: number) => `${t} ${visible(info.tokens[t])}`.slice(0, 9);
  const focus = { rows: data.focus, cols: data.focus };
  const square = (values: Float32Array, title: string) => heatmap({
    values, rows: positions, cols: positions, title, mark: [sel.target, sel.source], crop: focus,
    rowLabel: short, colLabel: short, rowName: (t) => `target ${name(t)}`, colName: (t) => `source ${name(t)}`,
  }, colours);
  const row = (values: Float32Array, title: string) => heatmap({
    values, rows: [sel.target], cols: all, title, mark: [sel.target, sel.source], crop: { rows: [sel.target], cols: data.focus },
    rowLabel: short, colLabel: short, rowName: (t) => `target ${name(t)}`, colName: (t) => `source ${name(t)}`, height: 14,
  }, colours);
  return [
    square(decode<Float32Array>(data.pattern), "attention pattern"),
    square(decode<Float32Array>(data.importance), "importance (share)"),
    row(decode<Float32Array>(data.row_pattern), `the target's row of the pattern, all ${all.length} sources`),
    row(decode<Float32Array>(data.row_importance), "the target's row of the importance"),
  ];
}

/** Every head of the layer at the target (rows: heads, columns: sources); a click chooses the head. */
function allHeads(info: Info, sel: AttentionSelection, data: AttentionPanel, cb: PanelCallbacks, colours: Palette): HTMLElement {
  const heads = Array.from({ length: data.heads_row.shape[0] }, (_, i) => i);
  const all = info.tokens.map((_, t) => t);
  const name = (t: number) => `${t} ${JSON.stringify(info.tokens[t])}`;
  const figure = heatmap({
    values: decode<Float32Array>(data.heads_row), rows: heads, cols: all, title: `attention at target ${sel.target}, head × source`,
    mark: [sel.head ?? 0, sel.source], crop: { rows: heads, cols: data.focus },
    rowLabel: (hd) => `h${hd}`, colLabel: (t) => `${t} ${visible(info.tokens[t])}`.slice(0, 9),
    rowName: (hd) => `head ${hd}`, colName: (t) => `source ${name(t)}`, onRow: (head) => cb.select({ ...sel, head }),
    height: Math.min(240, 16 * heads.length),
  }, colours);
  figure.classList.add("all-heads");
  return figure;
}

const STRIP = { w: 340, h: 44 };

/** A neuron's activation at every position as bars (up: positive, down: negative), the token
 * selected marked; each pixel column shows its tokens' largest activation; hovering reads it out. */
function activationStrip(acts: Float32Array, info: Info, selected: number, colours: Palette): HTMLElement {
  const T = acts.length, dpr = window.devicePixelRatio || 1;
  const canvas = h("canvas", { class: "activation-strip", width: Math.round(STRIP.w * dpr), height: Math.round(STRIP.h * dpr), role: "img",
    "aria-label": `activation at each of ${T} positions` });
  canvas.style.width = `${STRIP.w}px`;
  canvas.style.height = `${STRIP.h}px`;
  const readout = h("div", { class: "map-readout" });
  let max = 1e-9;
  for (const v of acts) max = Math.max(max, Math.abs(v));
  const columns = Math.min(T, STRIP.w), per = T / columns, mid = STRIP.h / 2;
  const ctx = canvas.getContext("2d");
  if (ctx) {
    ctx.scale(dpr, dpr);
    ctx.fillStyle = colours.fg;
    ctx.fillRect(0, mid, STRIP.w, 0.5);
    for (let c = 0; c < columns; c++) {
      let v = 0;
      for (let t = Math.floor(c * per); t < Math.floor((c + 1) * per) || t === Math.floor(c * per); t++) if (Math.abs(acts[t]) > Math.abs(v)) v = acts[t];
      ctx.fillStyle = v >= 0 ? colours.up : colours.down;
      const hgt = (Math.abs(v) / max) * (mid - 2);
      ctx.fillRect((c * STRIP.w) / columns, v >= 0 ? mid - hgt : mid, Math.max(1, STRIP.w / columns - (columns < 80 ? 1 : 0)), Math.max(0.5, hgt));
    }
    ctx.strokeStyle = colours.select;
    ctx.lineWidth = 1.5;
    const x = ((selected + 0.5) / T) * STRIP.w;
    ctx.strokeRect(x - Math.max(2, STRIP.w / columns / 2), 0.75, Math.max(4, STRIP.w / columns), STRIP.h - 1.5);
  }
  canvas.addEventListener("mousemove", (ev) => {
    const r = canvas.getBoundingClientRect();
    const t = Math.max(0, Math.min(T - 1, Math.floor(((ev.clientX - r.left) / r.width) * T)));
    readout.textContent = `token ${t} ${JSON.stringify(info.tokens[t])}: activation ${fmt(acts[t], 4)}`;
  });
  return h("figure", { class: "strip" }, canvas, readout);
}
