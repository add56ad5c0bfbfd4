// The drill-down panels: residual node (logit lens + block update), attention edge (per-head
// shares and effects, pattern and importance heatmaps, the head's promoted/suppressed tokens),
// FFN block (top neurons, their shares and effects, and what each writes). Their data is asked
// of Python lazily.

import { decode } from "./arrays";
import { h, visible, fmt, signed } from "./dom";
import type { AttentionPanel, FfnPanel, PromptsPanel, ResidualPanel } from "./protocol";
import type { AttentionSelection, Effect, FfnSelection, Info, PanelData, ResidualSelection, Selection } from "./types";

export interface PanelCallbacks {
  select(sel: Selection): void;
  openPrompt(index: number): void;
}

/** One renderer per selection kind (Python's selections.py registers the kinds). */
interface Renderer<S extends Selection, D extends PanelData> {
  /** Whether `data` has what `sel` shows (a neuron outside an FFN panel's top rows does not). */
  covers?(sel: S, data: D): boolean;
  render(info: Info, sel: S, data: D, cb: PanelCallbacks): (HTMLElement | string)[];
}

type Renderers = {
  residual: Renderer<ResidualSelection, ResidualPanel>;
  attention: Renderer<AttentionSelection, AttentionPanel>;
  ffn: Renderer<FfnSelection, FfnPanel>;
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
        tbody.append(h("tr", {}, h("td", { class: "tok" }, visible(t.token)),
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
    render(info, sel, data, cb) {
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
      const pattern = heatmap(decode<Float32Array>(data.pattern), info, sel, "attention pattern");
      const importance = heatmap(decode<Float32Array>(data.importance), info, sel, "importance (share)");
      return [
        h("h3", {}, `Attention edge, layer ${sel.layer}`),
        h("p", { class: "where" }, `from ${sel.source} `, tokenSpan(info.tokens[sel.source]), ` to ${sel.target} `, tokenSpan(info.tokens[sel.target])),
        h("h4", {}, effects ? "Each head in this edge: share (left) and effect (right; green supports, red opposes)"
          : "Each head's share of this edge"), heads,
        ...(effects ? [h("p", { class: "effect-line" }, `Removing the edge (all heads) changes ${data.metric} by about `,
          h("span", { class: `num ${total >= 0 ? "up" : "down"}` }, signed(-total)),
          ` (effect ${signed(total)}${sel.head === null ? "" : `; head ${sel.head}: ${signed(effects[sel.head])}`})`)] : []),
        h("h4", {}, `Head ${sel.head}: target × source`),
        h("div", { class: "maps" }, pattern, importance),
        h("h4", {}, `Head ${sel.head} at the target, from this source: direct logit effect`), effect(data.from_source),
        h("h4", {}, `Head ${sel.head} at the target, from all sources`), effect(data.total),
      ];
    },
  },
  ffn: {
    covers: (sel, data) => sel.neuron == null || data.neurons.some((n) => n.index === sel.neuron),
    render(info, sel, data, cb) {
      const table = h("table", { class: "neurons" }, h("thead", {}, h("tr", {},
        h("th", {}, "neuron"), h("th", {}, "share"),
        data.metric === undefined ? null : h("th", { title: `effect on ${data.metric}` }, "effect"), h("th", {}, "activation"),
        h("th", {}, "promotes"), h("th", {}, "suppresses"))));
      const tbody = h("tbody");
      const maxShare = Math.max(...data.neurons.map((n) => n.share), 1e-9);
      for (const n of data.neurons) {
        const row = h("tr", { class: n.index === sel.neuron ? "active" : "", tabindex: 0, "data-neuron": n.index,
          title: `neuron ${n.index}: share ${fmt(n.share, 4)}${n.effect === undefined ? "" : `, effect ${signed(n.effect)}`}, `
            + `activation ${fmt(n.activation)}` },
          h("td", {}, String(n.index)), h("td", {}, bar(n.share, maxShare, fmt(n.share, 3))),
          n.effect === undefined ? null : h("td", { class: `num effect ${n.effect >= 0 ? "up" : "down"}` }, signed(n.effect)),
          h("td", {}, fmt(n.activation, 2)),
          h("td", { class: "toks up" }, n.promoted.map(([t]) => visible(t)).join(" · ")),
          h("td", { class: "toks down" }, n.suppressed.map(([t]) => visible(t)).join(" · ")));
        const choose = () => cb.select({ ...sel, neuron: n.index });
        row.addEventListener("click", choose);
        row.addEventListener("keydown", (ev) => { if (ev.key === "Enter") choose(); });
        tbody.append(row);
      }
      table.append(tbody);
      return [
        h("h3", {}, `FFN block, layer ${sel.layer}`),
        h("p", { class: "where" }, `token ${sel.token} `, tokenSpan(info.tokens[sel.token]), `; share of the update in the block's output: ${fmt(data.ffn_share)}`),
        ...(data.ffn_effect === undefined ? [] : [h("p", { class: "effect-line" }, `Effect of the update on ${data.metric}: `,
          h("span", { class: `num ${data.ffn_effect >= 0 ? "up" : "down"}` }, signed(data.ffn_effect)))]),
        h("h4", {}, "Top neurons by share (their tokens scaled by the activation)"), table,
        h("h4", {}, "The FFN update: direct logit effect"), effect(data.block),
      ];
    },
  },
};

/** The renderer of `sel`'s kind, typed for it (the panel data Python sent for that kind). */
function rendererOf(sel: Selection): Renderer<Selection, PanelData> {
  return RENDERERS[sel.kind] as unknown as Renderer<Selection, PanelData>;
}

export class Panels {
  readonly root: HTMLDivElement;
  private body: HTMLDivElement;

  constructor(private cb: PanelCallbacks) {
    this.body = h("div", { class: "lmtt-panel-body" });
    this.root = h("div", { class: "lmtt-panel", "aria-live": "polite" }, this.body);
    this.empty();
  }

  empty(): void {
    this.body.replaceChildren(
      h("h3", {}, "Nothing selected"),
      h("p", { class: "hint" }, "Click a node (residual stream or FFN block) or an attention edge in the graph. "
        + "Click above the top layer to choose whose prediction's routes are shown."),
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
    const parts = "rows" in data ? promptsPanel(info, sel, data, this.cb) : rendererOf(sel).render(info, sel, data, this.cb);
    this.body.replaceChildren(...parts);
  }
}

const WHAT = { residual: "Residual node", attention: "Attention edge", ffn: "FFN block" };

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

function effect(e: Effect): HTMLDivElement {
  const list = (items: [string, number][], cls: string) => {
    const ul = h("ul", { class: `effect ${cls}` });
    for (const [t, v] of items) ul.append(h("li", {}, h("span", { class: "tok" }, visible(t)), h("span", { class: "num" }, fmt(v, 2))));
    return ul;
  };
  return h("div", { class: "effects" },
    h("div", {}, h("div", { class: "col-title up" }, "promoted"), list(e.promoted, "up")),
    h("div", {}, h("div", { class: "col-title down" }, "suppressed"), list(e.suppressed, "down")));
}

const MAP_PX = 180;

/** A T×T map (rows: target, columns: source) on a canvas, the selected cell marked, and the
 * target's row below it as a strip; hovering names the cell. */
function heatmap(values: Float32Array, info: Info, sel: Extract<Selection, { kind: "attention" }>, title: string): HTMLElement {
  const T = info.tokens.length;
  let max = 0;
  for (const v of values) if (v > max) max = v;
  const canvas = paint(values, T, T, max);
  canvas.setAttribute("aria-label", `${title}: ${T} targets × ${T} sources`);
  canvas.style.width = canvas.style.height = `${MAP_PX}px`;
  const cell = MAP_PX / T;
  const markSize = fmt(Math.max(cell, 3), 1);
  const mark = h("span", { class: "cell-mark", style: `left:${fmt(sel.source * cell, 1)}px;top:${fmt(sel.target * cell, 1)}px;width:${markSize}px;height:${markSize}px` });
  const row = paint(values.subarray(sel.target * T, sel.target * T + T), T, 1, max);
  row.classList.add("row-strip");
  row.style.width = `${MAP_PX}px`;
  const rowMark = h("span", { class: "cell-mark", style: `left:${fmt(sel.source * cell, 1)}px;top:0;width:${markSize}px;height:12px` });
  const name = (t: number) => `${t} ${JSON.stringify(info.tokens[t])}`;
  const hover = (ev: MouseEvent, el: HTMLCanvasElement, target: number | null) => {
    const r = el.getBoundingClientRect();
    const j = Math.min(T - 1, Math.floor(((ev.clientX - r.left) / r.width) * T));
    const i = target ?? Math.min(T - 1, Math.floor(((ev.clientY - r.top) / r.height) * T));
    el.title = `target ${name(i)} ← source ${name(j)}: ${fmt(values[i * T + j])}`;
  };
  canvas.addEventListener("mousemove", (ev) => hover(ev, canvas, null));
  row.addEventListener("mousemove", (ev) => hover(ev, row, sel.target));
  const value = values[sel.target * T + sel.source];
  return h("figure", { class: "map" },
    h("div", { class: "map-box" }, canvas, mark),
    h("div", { class: "strip-box" }, row, rowMark),
    h("figcaption", {}, `${title} (max ${fmt(max)}); this edge ${fmt(value)}; below: the target's row`));
}

function paint(values: Float32Array, width: number, height: number, max: number): HTMLCanvasElement {
  const canvas = h("canvas", { class: "heatmap", width, height, role: "img" });
  const ctx = canvas.getContext("2d");
  if (ctx) {
    const img = ctx.createImageData(width, height);
    for (let i = 0; i < width * height; i++) {
      const v = max > 0 ? Math.sqrt(Math.max(0, values[i]) / max) : 0; // sqrt: small weights stay visible
      img.data[4 * i] = Math.round(255 - 230 * v);
      img.data[4 * i + 1] = Math.round(255 - 170 * v);
      img.data[4 * i + 2] = Math.round(255 - 50 * v);
      img.data[4 * i + 3] = 255;
    }
    ctx.putImageData(img, 0, 0);
  }
  return canvas;
}
