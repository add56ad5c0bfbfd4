// The interventions view: ablate the selection (an attention edge or its head, a neuron, a block)
// in Python, the prediction before and after, the active ablations with undo, the graph's
// difference to the clean run (listed, and marked on the graph), the routes' faithfulness as a
// chart, and the nnsight code to copy. Python does the work (lmtt_widget/widget_interventions.py);
// this view reads its traits and sends {type: "ablate" | "undo" | "faithfulness"} messages.

import type { AnyModel } from "@anywidget/types";
import { h, s, visible, fmt, signed } from "./dom";
import type { GraphView } from "./graph";
import type { Comparison, EdgeChange, Faithfulness, GraphDiff, Invoke, Offer } from "./protocol";
import { STAGES, type Info, type Selection, type Stage, type State } from "./types";

type Sort = "appeared" | "vanished" | "changed";
type EdgeKind = "attention" | "residual" | "ffn";


export class InterventionsView {
  /** The ablate action, before/after and the active ablations: above the graph. */
  readonly bar: HTMLDivElement;
  /** The graph's difference, faithfulness and the code: below the graph. */
  readonly details: HTMLDivElement;
  private model: AnyModel<State>;
  private what = h("select", { class: "ablate-what", "aria-label": "what to ablate" });
  private mode = h("select", { class: "ablate-mode", "aria-label": "ablation mode" },
    h("option", { value: "zero" }, "zero"), h("option", { value: "mean" }, "mean"));
  private only = h("input", { type: "checkbox", class: "ablate-only" });
  private onlyLabel = h("label", { class: "ablate-only-label" });
  private ablateButton = h("button", { class: "ablate" }, "Ablate");
  private ablateRow: HTMLDivElement;
  private beforeAfter = h("div", { class: "before-after" });
  private active = h("div", { class: "active-list" });
  private diffCard = h("section", { class: "card diff" });
  private faithCard = h("section", { class: "card faithfulness" });
  private codeCard = h("section", { class: "card code" });
  private kInput = h("input", { type: "number", min: 1, max: 50, value: 5, class: "faith-k", "aria-label": "k edges" });
  private faithButton = h("button", { class: "faithfulness-run" }, "Measure faithfulness");
  private markDiff = h("input", { type: "checkbox", class: "mark-diff", checked: true });
  private diffKind = h("select", { class: "diff-kind", "aria-label": "edges listed" },
    h("option", { value: "attention" }, "attention edges"), h("option", { value: "residual" }, "residual edges"),
    h("option", { value: "ffn" }, "FFN edges"), h("option", { value: "all" }, "all edges"));
  private showReference = h("input", { type: "checkbox", class: "show-reference" });
  private referenceLabel = h("label", { class: "show-reference-label" });
  private against = h("select", { class: "diff-against", "aria-label": "compare the routes with" },
    h("option", { value: "other" }, "the other prompt"), h("option", { value: "clean" }, "this prompt, clean"));
  private offered: Offer[] = [];
  private handlers: [string, () => void][] = [];

  constructor(model: AnyModel<State>, private graph: GraphView, private select: (sel: Selection) => void,
    private invoke: Invoke, private live: boolean) {
    this.model = model;
    const needsKernel = live ? undefined : "Needs a live kernel";
    for (const el of [this.ablateButton, this.faithButton, this.what, this.mode, this.only, this.kInput]) {
      el.disabled = !live;
      if (needsKernel) el.title = needsKernel;
    }
    this.ablateButton.addEventListener("click", () => this.ablate());
    this.faithButton.addEventListener("click", () => {
      const k = Number(this.kInput.value);
      void this.invoke("faithfulness", { k: Number.isInteger(k) ? k : 5, mode: this.mode.value as "zero" | "mean" });
    });
    this.markDiff.addEventListener("change", () => this.drawMarks());
    this.diffKind.addEventListener("change", () => this.showDiff());
    this.showReference.addEventListener("change", () => { this.model.set("show_reference", this.showReference.checked); this.model.save_changes(); });
    this.against.addEventListener("change", () => { this.model.set("diff_against", this.against.value as "other" | "clean"); this.model.save_changes(); });
    this.what.addEventListener("change", () => this.updateOnly());
    this.ablateRow = h("div", { class: "row ablate-row" },
      h("span", { class: "label" }, "Intervene:"), this.what, h("label", {}, "mode ", this.mode), this.onlyLabel, this.ablateButton);
    this.bar = h("div", { class: "lmtt-interventions" }, this.ablateRow, this.beforeAfter, this.active, this.referenceLabel);
    this.details = h("div", { class: "lmtt-intervention-details" }, this.diffCard, this.faithCard, this.codeCard);
    this.handlers = [
      ["change:selection_info", () => this.showChoices()], ["change:info", () => { this.showChoices(); this.showState(); }],
      ["change:interventions", () => this.showState()], ["change:comparison", () => this.showState()],
      ["change:graph_diff", () => this.showState()], ["change:faithfulness", () => this.showFaithfulness()],
      ["change:intervention_code", () => this.showCode()], ["change:busy", () => this.showBusy()],
      ["change:patches", () => { this.showState(); this.showCode(); }], ["change:show_reference", () => this.showDiff()],
      ["change:payload", () => queueMicrotask(() => this.drawMarks())], // after the graph's own redraw
    ];
    for (const [event, fn] of this.handlers) this.model.on(event, fn);
    graph.onLayout(() => this.drawMarks()); // zooming moves the nodes the marks join
    this.showChoices();
    this.showState();
    this.showFaithfulness();
    this.showCode();
  }

  destroy(): void {
    for (const [event, fn] of this.handlers) this.model.off(event, fn);
  }

  private get<K extends keyof State>(key: K): State[K] {
    return this.model.get(key);
  }

  // -- the ablate action --------------------------------------------------------------------

  private showChoices(): void {
    const previous = this.what.value;
    this.offered = this.model.get("selection_info")?.ablations ?? [];
    this.what.replaceChildren(...this.offered.map((c, i) => h("option", { value: i }, c.label)));
    const kept = this.offered.findIndex((c) => c.label === previous);
    if (kept > 0) this.what.value = String(kept);
    const none = this.offered.length === 0;
    this.what.disabled = none || !this.live;
    this.ablateButton.disabled = none || !this.live || this.model.get("busy") !== "";
    this.ablateRow.style.display = none ? "none" : ""; // shown with a selection that offers something: no empty list
    this.updateOnly();
    this.showBar();
  }

  private updateOnly(): void {
    const choice = this.offered[Number(this.what.value)];
    const at = choice?.at ?? null;
    this.onlyLabel.replaceChildren(this.only, at === null ? " only here" : ` only at ${at} ${visible(this.model.get("info").tokens[at] ?? "")}`);
    this.onlyLabel.style.display = at === null ? "none" : "";
  }

  private ablate(): void {
    const choice = this.offered[Number(this.what.value)];
    if (!choice || !this.live) return;
    const spec = choice.at !== null && this.only.checked ? [...choice.spec, [choice.at]] : choice.spec;
    void this.invoke("ablate", { spec, mode: this.mode.value as "zero" | "mean" });
  }

  private showBusy(): void {
    const busy = this.model.get("busy") !== "";
    this.ablateButton.disabled = busy || !this.live || this.offered.length === 0;
    this.faithButton.disabled = busy || !this.live;
    for (const b of this.active.querySelectorAll("button")) b.disabled = busy || !this.live;
  }

  // -- before / after, the active ablations, the graph's difference ---------------------------

  private showState(): void {
    const info = this.model.get("info");
    const list = this.get("interventions") ?? [];
    const cmp = this.get("comparison");
    const changed = list.length > 0 || (this.get("patches") ?? []).length > 0;
    this.beforeAfter.replaceChildren();
    this.active.replaceChildren();
    this.bar.classList.toggle("has-interventions", changed);
    if (changed && cmp) this.beforeAfter.append(...comparisonView(cmp, info));
    if (list.length > 0) {
      const items = list.map((ab, i) => {
        const undo = h("button", { class: "undo", title: "Undo: rerun without this ablation", "data-index": i, "aria-label": `undo ${ab.label}` }, "×");
        undo.disabled = !this.live;
        undo.addEventListener("click", () => void this.invoke("undo", { index: i }));
        return h("span", { class: "ablation", "data-kind": ab.kind }, ab.label, undo);
      });
      this.active.append(h("span", { class: "label" }, `Active (${list.length}):`), ...items,
        h("span", { class: "hint" }, "the graph and panels show the intervened run"));
    }
    this.showDiff();
    this.showBusy();
    this.showBar();
  }

  /** The bar only when it has something to show: no empty rows above the graph. */
  private showBar(): void {
    const shown = (el: HTMLElement) => el.style.display !== "none" && el.childNodes.length > 0;
    this.bar.style.display = [this.ablateRow, this.beforeAfter, this.active, this.referenceLabel].some(shown) ? "" : "none";
  }

  private showDiff(): void {
    const diff = this.get("graph_diff");
    this.showReferenceToggle(diff);
    if (!diff) { this.diffCard.replaceChildren(); this.diffCard.style.display = "none"; this.drawMarks(); return; }
    const d = diff, info = this.model.get("info");
    this.diffCard.style.display = "";
    const kind = this.diffKind.value;
    const sections = (["vanished", "appeared", "changed"] as Sort[]).map((sort) => {
      const rows = listed(d, sort, kind).map((c) => {
        const row = h("li", { class: `change ${sort}`, title: c.kind === "attention" ? "Select this edge" : undefined },
          h("span", { class: `swatch ${sort}` }), h("span", { class: "what" }, edgeName(c, info)),
          h("span", { class: "num" }, `${c.weight_a === null ? "–" : fmt(c.weight_a)} → ${c.weight_b === null ? "–" : fmt(c.weight_b)}`));
        if (c.kind === "attention") {
          const choose = () => this.select({ kind: "attention", layer: c.target[1], source: c.source[2], target: c.target[2], head: null });
          row.classList.add("clickable");
          row.tabIndex = 0;
          row.addEventListener("click", choose);
          row.addEventListener("keydown", (ev) => { if (ev.key === "Enter") choose(); });
        }
        return row;
      });
      const counts = d.counts[sort], count = kind === "all" ? counts.attention + counts.residual + counts.ffn : counts[kind as EdgeKind];
      const more = count > rows.length ? ` (strongest ${rows.length} shown)` : "";
      return h("div", { class: "sort", "data-sort": sort }, h("h4", {}, `${count} ${sort}${more}`), h("ul", { class: `changes ${sort}` }, ...rows));
    });
    const ablated = (this.get("interventions") ?? []).length > 0, patched = (this.get("patches") ?? []).length > 0;
    const other = d.against === "other", changed = ablated || patched;
    const shown = ablated ? "intervened" : patched ? "patched" : "this prompt";
    this.against.value = other ? "other" : "clean";
    this.diffCard.replaceChildren(
      h("h3", {}, `Routes: ${shown} vs ${other ? "the other prompt" : "clean"}`),
      h("p", { class: "hint" }, `edges of the routes to token ${this.model.get("target")}; ${other ? "vanished: only the other prompt's, appeared: only this one's; " : ""}changed: weight moved by more than ${fmt(d.tolerance, 2)}; ${d.unchanged} unchanged`),
      ...(changed && "prompt" in (this.get("pair") ?? {}) ? [h("div", { class: "row" }, h("label", {}, "compare with ", this.against))] : []),
      h("div", { class: "row" }, h("label", {}, "list ", this.diffKind), h("label", {}, this.markDiff, " mark them on the graph (vanished: dashed)")),
      ...sections);
    queueMicrotask(() => this.drawMarks());
  }

  /** The switch between drawing the run shown and what it is compared with (the marks stay). */
  private showReferenceToggle(diff: GraphDiff | null): void {
    const on = this.get("show_reference") === true;
    this.showReference.checked = on;
    this.showReference.disabled = !this.live;
    if (!diff) { this.referenceLabel.style.display = "none"; this.showBar(); return; }
    const reference = diff.against === "other" ? "the other prompt's" : "the clean run's";
    this.referenceLabel.style.display = "";
    this.referenceLabel.classList.toggle("on", on);
    this.referenceLabel.replaceChildren(this.showReference, ` draw ${reference} routes instead (the difference marks stay; the panels read the run shown)`);
    this.showBar();
  }

  /** The listed changes drawn over the graph: vanished dashed, appeared and changed solid. A
   * vanished edge's nodes are not in the routes drawn, so its ends are drawn with it; the graph
   * shows the columns of every mark. */
  private drawMarks(): void {
    if (!this.graph.laidOut) return; // the graph calls again once it is (onLayout)
    const overlay = this.graph.overlay;
    const diff = this.get("graph_diff");
    if (!diff || !this.markDiff.checked) { overlay.replaceChildren(); this.graph.pin("diff", []); return; }
    const marks: SVGElement[] = [];
    const ends = new Map<string, [number, number, number]>();
    const tokens: number[] = [];
    for (const sort of ["changed", "appeared", "vanished"] as Sort[]) {
      for (const c of listed(diff, sort, this.diffKind.value)) {
        const a: [number, number, number] = [STAGES.indexOf(c.source[0] as Stage), c.source[1], c.source[2]];
        const b: [number, number, number] = [STAGES.indexOf(c.target[0] as Stage), c.target[1], c.target[2]];
        tokens.push(a[2], b[2]);
        const change = Math.abs((c.weight_b ?? 0) - (c.weight_a ?? 0));
        marks.push(s("path", { class: `diff-mark ${sort}`, d: this.graph.edgeBetween(c.kind, a, b), "stroke-width": fmt(1.5 + 3.5 * Math.min(1, change), 2) }));
        if (sort === "vanished") for (const end of [a, b]) ends.set(end.join("/"), end);
      }
    }
    this.graph.pin("diff", tokens);
    for (const end of ends.values()) {
      const [x, y] = this.graph.point(...end);
      marks.push(s("circle", { class: "diff-node vanished", cx: fmt(x, 1), cy: fmt(y, 1), r: 3.5 }));
    }
    overlay.replaceChildren(...marks);
  }

  // -- faithfulness -------------------------------------------------------------------------

  private showFaithfulness(): void {
    const f = this.get("faithfulness");
    const info = this.model.get("info");
    const head = [h("h3", {}, "Faithfulness: share and effect against the best possible"),
      h("p", { class: "hint" }, "Remove the top k attention edges into the target by share, and by effect, and compare the drop of the metric with the best k edges found (each candidate removed alone); k random edges into the same target (10 draws) as a baseline."),
      h("div", { class: "row" }, h("label", {}, "k ", this.kInput), this.faithButton)];
    if (!f) { this.faithCard.replaceChildren(...head); return; }
    this.faithCard.replaceChildren(...head, ...faithfulnessView(f, info));
  }

  // -- the code -------------------------------------------------------------------------------

  private showCode(): void {
    const code = this.get("intervention_code") ?? "";
    if (!code) { this.codeCard.replaceChildren(); this.codeCard.style.display = "none"; return; }
    this.codeCard.style.display = "";
    const text = h("textarea", { class: "code-text", readonly: true, spellcheck: "false", rows: 12, "aria-label": "nnsight code" });
    text.value = code;
    const status = h("span", { class: "hint copy-status", role: "status" });
    const copy = h("button", { class: "copy", title: "Copy the code to the clipboard" }, "Copy");
    copy.addEventListener("click", () => {
      const selectAll = (why: string) => { text.focus(); text.select(); status.textContent = why; };
      if (navigator.clipboard?.writeText) {
        navigator.clipboard.writeText(code).then(() => { status.textContent = "Copied"; },
          () => selectAll("Selected: press Ctrl+C to copy"));
      } else selectAll("Selected: press Ctrl+C to copy");
    });
    this.codeCard.replaceChildren(h("h3", {}, "nnsight code (w.code())"),
      h("div", { class: "row" }, h("span", { class: "hint" }, "reproduces the active ablations and patches; runs on its own"), copy, status), text);
  }
}

/** The listed changes of one sort, of one edge kind or all ("all"). */
function listed(d: GraphDiff, sort: Sort, kind: string): EdgeChange[] {
  const size = (c: EdgeChange) => Math.abs((c.weight_b ?? 0) - (c.weight_a ?? 0));
  return kind === "all" ? [...d[sort]].sort((a, b) => size(b) - size(a)) : d[sort].filter((c) => c.kind === kind);
}

function tokenSpan(token: string): HTMLSpanElement {
  return h("span", { class: "tok", title: JSON.stringify(token) }, visible(token));
}

function edgeName(c: EdgeChange, info: Info): string {
  const tok = (t: number) => `${t} ${visible(info.tokens[t] ?? "")}`;
  const [, layer, target] = c.target;
  if (c.kind === "attention") return `attention L${layer}: ${tok(c.source[2])} → ${tok(target)}`;
  return `${c.kind} ${c.source[0]}${c.source[0] === "embed" ? "" : ` L${c.source[1]}`} → ${c.target[0]} L${layer} at ${tok(target)}`;
}

/** The original prediction's numbers before and after, and the top tokens of each. */
function comparisonView(c: Comparison, info: Info): HTMLElement[] {
  const cell = (label: string, a: number, b: number, change: number, cls: string) =>
    h("span", { class: `metric ${cls}` }, h("span", { class: "label" }, label), ` ${fmt(a)} → ${fmt(b)} `,
      h("span", { class: `num change ${change < 0 ? "down" : "up"}` }, `(${signed(change)})`));
  const top = (title: string, items: [string, number][], cls: string) => h("div", { class: `top ${cls}` },
    h("span", { class: "label" }, title), ...items.slice(0, 5).map(([t, p]) =>
      h("span", { class: "pred" }, tokenSpan(t), ` ${fmt(p)}`)));
  return [
    h("div", { class: "row prediction-change" },
      h("span", { class: "label" }, `After token ${c.position} `), tokenSpan(info.tokens[c.position] ?? ""),
      h("span", { class: "label" }, ", the clean prediction "), tokenSpan(c.token), h("span", { class: "label" }, ":"),
      cell("p", c.before.probability, c.after.probability, c.prob_change, "prob"),
      cell("logit", c.before.logit, c.after.logit, c.logit_change, "logit"),
      cell(`logit − logit(${visible(c.against)})`, c.before.logit_diff, c.after.logit_diff, c.logit_diff_change, "logit-diff")),
    h("div", { class: "row tops" }, top("before:", c.top_before, "before"), top("after:", c.top_after, "after")),
  ];
}

const CHART = { w: 360, pad: 26, bar: 16, labels: 110, values: 48 };

/** The faithfulness card: the fraction of the best possible first, one sentence on how to read
 * it, the drops (each ranking's top k, the best k, random edges) as bars and in a table, and what
 * needs words (negative drops). */
function faithfulnessView(f: Faithfulness, info: Info): HTMLElement[] {
  const lead = h("div", { class: "faith-lead" }, ...f.rows.map((r) =>
    h("div", { class: "fraction", "data-by": r.by, "data-k": r.k },
      h("span", { class: "big num" }, r.fraction === null ? "–" : fmt(r.fraction, 2)),
      h("span", { class: "label" }, ` of the best possible, top ${r.k} edges by ${r.by}`))));
  const reading = h("p", { class: "reading" }, f.reading);
  const rows = f.rows;
  const bars: [string, number, string][] = [...rows.map((r): [string, number, string] => [`top ${r.k} by ${r.by}`, r.drop.logit_diff, `rank ${r.by}`]),
    ...[...new Set(rows.map((r) => r.k))].map((k): [string, number, string] => [`best ${k}`, rows.find((r) => r.k === k)!.best, "best"]),
    ...rows.map((r): [string, number, string] => [`random (${r.by}, ${r.k})`, r.random_mean.logit_diff, "random"])];
  const top = Math.max(0, ...bars.map((b) => b[1])), bottom = Math.min(0, ...bars.map((b) => b[1]));
  const { w, pad, bar: bh, labels, values } = CHART;
  const height = bars.length * (bh + 4) + 8;
  const scale = (w - pad - labels - values) / Math.max(1e-9, top - bottom), zero = labels + pad - bottom * scale;
  const svg = s("svg", { class: "faith-chart", width: w, height, role: "img", "aria-label": `drop of ${f.metric}` });
  svg.append(s("line", { class: "zero", x1: zero, x2: zero, y1: 0, y2: height }));
  bars.forEach(([label, v, cls], i) => {
    const y = 4 + i * (bh + 4), x = v >= 0 ? zero : zero + v * scale;
    svg.append(s("rect", { class: `fbar ${cls.replace(" ", "-")}`, x: fmt(x, 1), y, width: fmt(Math.max(1, Math.abs(v) * scale), 1), height: bh }));
    svg.append(s("text", { class: "name", x: 2, y: y + bh - 4 }, label));
    svg.append(s("text", { class: "value", x: fmt(v >= 0 ? zero + v * scale + 3 : zero + 3, 1), y: y + bh - 4 }, fmt(v)));
  });
  const table = h("table", { class: "faith-table" },
    h("thead", {}, h("tr", {}, h("th", {}, "by"), h("th", {}, "k"), h("th", {}, "of best"), h("th", {}, "drop of the metric"),
      h("th", {}, "best k"), h("th", {}, `drop of p(${visible(f.token)})`), h("th", {}, "random drop (mean ± sd)"))),
    h("tbody", {}, ...rows.map((r) => h("tr", { "data-by": r.by, "data-k": r.k },
      h("td", {}, r.by), h("td", { class: "num" }, String(r.k)), h("td", { class: "num" }, r.fraction === null ? "–" : fmt(r.fraction, 2)),
      h("td", { class: "num" }, fmt(r.drop.logit_diff)), h("td", { class: "num" }, fmt(r.best)),
      h("td", { class: "num" }, fmt(r.drop.probability)),
      h("td", { class: "num" }, `${fmt(r.random_mean.logit_diff)} ± ${fmt(r.random_sd.logit_diff)}`)))));
  return [
    lead, reading,
    h("p", { class: "where" }, `edges into token ${f.position} `, tokenSpan(info.tokens[f.position] ?? ""), `: ${f.metric} = ${fmt(f.clean.logit_diff)}, `,
      `p(${visible(f.token)}) = ${fmt(f.clean.probability)}; ${f.mode} ablation; best of ${f.candidates} candidates removed alone`),
    h("figure", { class: "faith-figure", "data-measure": "logit_diff" }, svg, h("figcaption", {}, `drop of ${f.metric} when the edges are removed together`)),
    table,
    ...f.notes.map((note) => h("p", { class: "faith-note" }, note)),
  ];
}
