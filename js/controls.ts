// Controls, in compact rows: the prompt box (re-analyses in Python), the target, the threshold
// (a log scale: 0.0001 to 0.5), Fit, what other views add (the other prompt of a pair) and the
// options folded; then the target's top predictions; then the effects' contrast, what the routes
// are kept by and the missed edges. Also the model facts and progress.

import { decode } from "./arrays";
import { h, visible, fmt } from "./dom";
import type { EffectsInfo } from "./protocol";
import type { Info } from "./types";

export interface ControlCallbacks {
  threshold(value: number): void;
  renormalize(value: boolean): void;
  normalizeLens(value: boolean): void;
  target(position: number): void;
  analyze(prompt: string): void;
  fit(): void;
  contrast(id: number | null): void;
  rankBy(by: "share" | "effect"): void;
  showMissed(on: boolean): void;
  withEffects(on: boolean): void;
}

export class Controls {
  readonly root: HTMLDivElement;
  readonly status: HTMLDivElement;
  readonly facts: HTMLDivElement;
  private thresholdInput: HTMLInputElement;
  private thresholdValue: HTMLOutputElement;
  private renorm: HTMLInputElement;
  private normLens: HTMLInputElement;
  private targetSelect: HTMLSelectElement; // each position and its prediction (prompts up to TARGET_LIST tokens)
  private targetNumber: HTMLInputElement; // a position (longer prompts: a list of thousands costs every layout)
  private predictions: HTMLDivElement;
  private prompt: HTMLTextAreaElement;
  private promptNote: HTMLDivElement;
  private analyzeButton: HTMLButtonElement;
  private contrastSelect: HTMLSelectElement;
  private rankBy: HTMLSelectElement;
  private missed: HTMLInputElement;
  private withEffects: HTMLInputElement;
  private metric: HTMLSpanElement;
  private mainRow: HTMLDivElement;
  private busyTimer: number | undefined;
  private info: Info | null = null;
  private analysed = ""; // the prompt of the run shown, to tell the user's edits from it

  constructor(cb: ControlCallbacks, private live: boolean) {
    this.thresholdInput = h("input", { type: "range", min: THRESHOLD_LOG[0], max: THRESHOLD_LOG[1], step: 0.01, "aria-label": "threshold (log scale)" });
    this.thresholdValue = h("output", { class: "num threshold-value" });
    const chosen = () => Number(Math.pow(10, Number(this.thresholdInput.value)).toPrecision(2));
    this.thresholdInput.addEventListener("input", () => { this.thresholdValue.textContent = thresholdText(chosen()); });
    this.thresholdInput.addEventListener("change", () => cb.threshold(chosen()));
    this.renorm = h("input", { type: "checkbox" });
    this.renorm.addEventListener("change", () => cb.renormalize(this.renorm.checked));
    this.normLens = h("input", { type: "checkbox" });
    this.normLens.addEventListener("change", () => cb.normalizeLens(this.normLens.checked));
    this.targetSelect = h("select", { class: "target-select", "aria-label": "target token" });
    this.targetSelect.addEventListener("change", () => cb.target(Number(this.targetSelect.value)));
    this.targetNumber = h("input", { type: "number", class: "target-number", min: 0, step: 1, "aria-label": "target token position" });
    this.targetNumber.addEventListener("change", () => {
      const t = Math.round(Number(this.targetNumber.value));
      if (Number.isFinite(t) && this.info && t >= 0 && t < this.info.tokens.length) cb.target(t);
    });
    this.predictions = h("div", { class: "predictions" });
    this.prompt = h("textarea", { rows: 1, class: "prompt", "aria-label": "prompt", placeholder: "A prompt to analyse" });
    this.promptNote = h("div", { class: "prompt-note hint", role: "status" });
    this.prompt.addEventListener("input", () => this.showEdited());
    this.analyzeButton = h("button", { class: "analyze", title: live ? "Analyse this prompt in the kernel" : "Needs a live kernel" }, "Analyse");
    this.analyzeButton.disabled = !live;
    this.prompt.disabled = !live;
    this.analyzeButton.addEventListener("click", () => cb.analyze(this.prompt.value));
    this.prompt.addEventListener("keydown", (ev) => {
      if (ev.key === "Enter" && (ev.ctrlKey || ev.metaKey || ev.shiftKey)) { ev.preventDefault(); cb.analyze(this.prompt.value); }
    });
    if (!live) {
      // a saved page carries one graph: recomputing it needs the kernel
      for (const input of [this.thresholdInput, this.renorm, this.targetSelect, this.targetNumber]) {
        input.disabled = true;
        input.title = "Needs a live kernel";
      }
    }
    this.contrastSelect = h("select", { class: "contrast-select", "aria-label": "contrast token" });
    this.contrastSelect.addEventListener("change", () =>
      cb.contrast(this.contrastSelect.value === "" ? null : Number(this.contrastSelect.value)));
    this.rankBy = h("select", { class: "rank-by", "aria-label": "keep edges by" },
      h("option", { value: "share" }, "share"), h("option", { value: "effect" }, "effect"));
    this.rankBy.addEventListener("change", () => cb.rankBy(this.rankBy.value as "share" | "effect"));
    this.missed = h("input", { type: "checkbox", class: "show-missed" });
    this.missed.addEventListener("change", () => cb.showMissed(this.missed.checked));
    this.withEffects = h("input", { type: "checkbox", class: "with-effects" });
    this.withEffects.addEventListener("change", () => cb.withEffects(this.withEffects.checked));
    this.metric = h("span", { class: "metric-line" });
    if (!live) {
      for (const input of [this.contrastSelect, this.rankBy, this.missed, this.withEffects]) {
        input.disabled = true;
        input.title = "Needs a live kernel";
      }
    }
    const fit = h("button", { class: "fit", title: "Fit the whole graph (key 0); closes the gaps opened" }, "Fit");
    fit.addEventListener("click", () => cb.fit());

    this.facts = h("div", { class: "facts" });
    this.status = h("div", { class: "status", role: "status", "aria-live": "polite" });
    const options = h("details", { class: "options" }, h("summary", {}, "Options"),
      h("label", { title: "Within each block, renormalise the parts above the threshold to sum to 1" }, this.renorm, " renormalise"),
      h("label", { title: "Apply the final norm before the unembedding in the logit lens" }, this.normLens, " normalise before unembedding"));
    this.mainRow = h("div", { class: "row" },
      h("label", {}, "target ", this.targetSelect, this.targetNumber),
      h("label", { title: "Edges whose importance is not above the threshold are dropped (log scale)" }, "threshold ", this.thresholdInput, this.thresholdValue),
      fit, options);
    this.root = h("div", { class: "lmtt-controls" },
      h("div", { class: "row prompt-row" }, this.prompt, this.analyzeButton),
      this.promptNote,
      this.mainRow,
      h("div", { class: "row" }, this.predictions),
      h("div", { class: "row effects-row" },
        h("label", { title: "Compute effects: one forward and one backward pass for each prompt and target shown (off: routes by share only)" },
          this.withEffects, " effects"),
        h("label", { title: "Effects measure logit(prediction) − logit(contrast) at the target; the contrast defaults to the runner-up" },
          "contrast ", this.contrastSelect),
        h("label", { title: "share: edges whose proximity share is above the threshold; effect: edges whose removal moves the metric by more than threshold × |metric|, supporting or opposing" },
          "rank by ", this.rankBy),
        h("label", { title: "Draw, dashed, the edges with a large effect that the share routes leave out" }, this.missed, " show missed"),
        this.metric),
    );
  }

  /** The text in the prompt box (what Analyse and Generate take). */
  promptText(): string {
    return this.prompt.value;
  }

  /** Put another view's control in the main row, before the options (the other prompt of a pair). */
  addToMainRow(el: HTMLElement): void {
    this.mainRow.insertBefore(el, this.mainRow.lastElementChild);
  }

  /** The prompt box keeps what the user typed (also after a refused analysis) and says when that
   * is not the prompt shown, with a way back to it. */
  private showEdited(): void {
    const edited = this.prompt.value !== this.analysed;
    this.prompt.classList.toggle("edited", edited);
    if (!edited) { this.promptNote.replaceChildren(); return; }
    const restore = h("button", { class: "restore", title: "Put back the prompt shown" }, "↺ restore");
    restore.addEventListener("click", () => { this.prompt.value = this.analysed; this.showEdited(); });
    this.promptNote.replaceChildren("Not analysed yet: the graph shows the prompt analysed before. ", restore);
  }

  setInfo(info: Info): void {
    this.info = info;
    if (info.prompt !== this.analysed) { // a new prompt shown (not an intervened run of the same one)
      this.analysed = info.prompt;
      this.prompt.value = info.prompt;
    }
    this.showEdited();
    const listed = info.tokens.length <= TARGET_LIST;
    this.targetSelect.style.display = listed ? "" : "none";
    this.targetNumber.style.display = listed ? "none" : "";
    this.targetNumber.max = String(info.tokens.length - 1);
    this.targetSelect.replaceChildren(...(listed ? info.tokens.map((tok, t) => {
      const top = info.predictions.tokens[t][0] ?? "";
      return h("option", { value: t }, `${t}: ${visible(tok)} → ${visible(top)}`);
    }) : []));
    const n = info.n_params;
    const params = n >= 1e9 ? `${fmt(n / 1e9, 2)} B` : n >= 1e6 ? `${fmt(n / 1e6, 1)} M` : `${fmt(n / 1e3, 1)} K`;
    this.facts.replaceChildren(
      h("span", { class: "model", title: "model" }, info.model),
      h("span", {}, `${info.n_layers} layers`),
      h("span", {}, `${info.n_heads} heads${info.n_kv_heads !== info.n_heads ? ` (${info.n_kv_heads} KV)` : ""}`),
      h("span", {}, `d_model ${info.d_model}`),
      h("span", {}, `${params} parameters`),
      h("span", {}, `${info.parallel ? "parallel" : "sequential"} blocks`),
      h("span", {}, `${info.tokens.length} tokens`),
      h("span", { title: "distance used for proximity importances" }, `${info.distance.toUpperCase()} distance`),
    );
  }

  setView(target: number, threshold: number, renormalize: boolean, normalizeLens: boolean): void {
    this.thresholdInput.value = String(Math.log10(Math.max(threshold, 1e-12)));
    this.thresholdValue.textContent = thresholdText(threshold);
    this.thresholdValue.title = String(threshold);
    this.renorm.checked = renormalize;
    this.normLens.checked = normalizeLens;
    this.targetSelect.value = String(target);
    this.targetNumber.value = String(target);
    const info = this.info;
    if (!info || !info.predictions.tokens[target]) return; // (a new run's target before its info)
    const probs = decode<Float32Array>(info.predictions.probs);
    const k = info.predictions.tokens[target].length;
    this.predictions.replaceChildren(
      h("span", { class: "label" }, `Prediction after token ${target} `),
      h("span", { class: "tok" }, visible(info.tokens[target])), h("span", { class: "label" }, ":"),
      ...info.predictions.tokens[target].map((tok, i) =>
        h("span", { class: "pred", title: JSON.stringify(tok) }, h("span", { class: "tok" }, visible(tok)), ` ${fmt(probs[target * k + i])}`)),
    );
  }

  /** The effects' metric: the contrast picker (the runner-up, or another of the top predictions at
   * the target), what the routes are kept by, and the metric's value. */
  setEffects(target: number, contrast: number | null, rankBy: "share" | "effect", showMissed: boolean,
    effects: EffectsInfo | null, withEffects: boolean): void {
    this.rankBy.value = rankBy;
    this.missed.checked = showMissed;
    this.withEffects.checked = withEffects;
    if (this.live) for (const input of [this.contrastSelect, this.rankBy, this.missed]) input.disabled = !withEffects;
    const info = this.info;
    if (!info || !info.predictions.tokens[target]) return;
    const ids = decode<Int32Array>(info.predictions.ids);
    const k = info.predictions.tokens[target].length;
    const options = [h("option", { value: "" }, `runner-up${k > 1 ? `: ${visible(info.predictions.tokens[target][1])}` : ""}`)];
    for (let i = 2; i < k; i++) options.push(h("option", { value: ids[target * k + i] }, visible(info.predictions.tokens[target][i])));
    if (contrast !== null && !options.some((o) => o.value === String(contrast))) {
      options.push(h("option", { value: contrast }, visible(effects?.contrast ?? String(contrast))));
    }
    this.contrastSelect.replaceChildren(...options);
    this.contrastSelect.value = contrast === null ? "" : String(contrast);
    this.metric.textContent = effects ? `${effects.metric} = ${fmt(effects.value, 3)}`
      : withEffects ? "" : "effects off (tick “effects” to compute them for this target)";
    this.metric.title = "what the effects measure: the change of this metric when a part is removed (positive: it supports the prediction)";
  }

  /** Progress: what is under way and for how long, instead of a frozen widget. */
  setBusy(text: string): void {
    window.clearInterval(this.busyTimer);
    const busy = text !== "";
    this.analyzeButton.disabled = busy || !this.live;
    this.root.classList.toggle("busy", busy);
    if (!busy) { this.status.replaceChildren(); return; }
    const start = performance.now();
    const label = h("span", {}, text);
    const clock = h("span", { class: "num" });
    this.status.replaceChildren(h("span", { class: "spinner", "aria-hidden": "true" }), label, " ", clock);
    const tick = () => { clock.textContent = `${((performance.now() - start) / 1000).toFixed(1)} s`; };
    tick();
    this.busyTimer = window.setInterval(tick, 100);
  }
}

/** Prompts up to this many tokens list every target in a select; longer ones take a position. */
const TARGET_LIST = 300;

/** The threshold slider's range, as log10: 0.0001 to 0.5. */
const THRESHOLD_LOG = [-4, Math.log10(0.5)];

/** A threshold as the user would write it: 0.04, 0.005, 0.0001 (three significant digits at most). */
export function thresholdText(threshold: number): string {
  return Number.isFinite(threshold) ? String(Number(threshold.toPrecision(3))) : "–";
}
