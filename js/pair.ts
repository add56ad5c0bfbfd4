// The pair view: a second prompt of the same length in tokens (e.g. clean and corrupted IOI).
// Python compares the two graphs (the diff card and marks of interventions.ts show it, "against
// the other prompt") and patches the selected node's activation from the other prompt into the
// one shown (lmtt_widget/widget_pair.py); this view shows both prompts, offers the patch, lists
// the active patches with undo, and sends {type: "patch" | "unpatch" | "swap" | "pair"} messages.

import type { AnyModel } from "@anywidget/types";
import { h, fmt, visible } from "./dom";
import type { Invoke, PatchOffer } from "./protocol";
import type { State } from "./types";

export class PairView {
  readonly bar: HTMLDivElement;
  /** Another prompt to compare with (or instead of the other one): a control for the controls' main row. */
  readonly compare: HTMLSpanElement;
  private compareLabel = h("span", { class: "label" }, "compare with");
  private model: AnyModel<State>;
  private prompts = h("div", { class: "pair-prompts" });
  private patchRow = h("div", { class: "row patch-row" });
  private active = h("div", { class: "active-list patch-list" });
  private what = h("select", { class: "patch-what", "aria-label": "what to patch" });
  private patchButton = h("button", { class: "patch" }, "Patch from the other prompt");
  private swapButton = h("button", { class: "swap", title: "Show the other prompt's routes and compare them with this one's" }, "Show the other prompt");
  private otherInput = h("input", { type: "text", class: "other-prompt", placeholder: "another prompt of the same length in tokens", "aria-label": "other prompt" });
  private otherButton = h("button", { class: "compare-with" }, "Compare");
  private hint = h("span", { class: "hint" }, "the selection's activation, from the other prompt into this one");
  private offered: PatchOffer[] = [];
  private handlers: [string, () => void][] = [];

  constructor(model: AnyModel<State>, private invoke: Invoke, private live: boolean) {
    this.model = model;
    this.patchButton.addEventListener("click", () => {
      const choice = this.offered[Number(this.what.value)];
      if (choice && this.live) void this.invoke("patch", { node: choice.node });
    });
    this.swapButton.addEventListener("click", () => { if (this.live) void this.invoke("swap", {}); });
    const compare = async () => {
      if (!this.live || !this.otherInput.value.trim()) return;
      const outcome = await this.invoke("pair", { prompt: this.otherInput.value });
      if (outcome.ok) this.otherInput.value = ""; // the pair shows it now; a refused one stays to be fixed
    };
    this.otherButton.addEventListener("click", () => void compare());
    this.otherInput.addEventListener("keydown", (ev) => { if (ev.key === "Enter") void compare(); });
    this.compare = h("span", { class: "compare" }, this.compareLabel, this.otherInput, this.otherButton);
    this.compare.style.display = live ? "" : "none";
    this.patchRow.append(h("span", { class: "label" }, "Patch:"), this.what, this.patchButton, this.hint);
    this.bar = h("div", { class: "lmtt-pair" }, this.prompts, this.patchRow, this.active);
    let prompt = model.get("info").prompt;
    const onInfo = () => { // a new prompt analysed: what was typed to compare with belongs to the old one
      if (model.get("info").prompt !== prompt) { prompt = model.get("info").prompt; this.otherInput.value = ""; }
      this.show();
    };
    this.handlers = [
      ["change:pair", () => this.show()], ["change:patches", () => this.show()], ["change:info", onInfo],
      ["change:selection_info", () => this.showChoices()], ["change:busy", () => this.showBusy()],
    ];
    for (const [event, fn] of this.handlers) this.model.on(event, fn);
    this.show();
  }

  destroy(): void {
    for (const [event, fn] of this.handlers) this.model.off(event, fn);
  }

  private show(): void {
    const info = this.model.get("info"), pair = this.model.get("pair");
    this.bar.classList.toggle("paired", pair !== null);
    this.compareLabel.textContent = pair === null ? "compare with" : "other prompt instead";
    if (pair === null) {
      this.prompts.replaceChildren();
      this.patchRow.style.display = "none";
      this.active.replaceChildren();
      return;
    }
    const differs = (i: number) => pair.tokens[i] !== info.tokens[i];
    const tokens = (list: string[], cls: string) => h("span", { class: `pair-tokens ${cls}` },
      ...list.map((t, i) => h("span", { class: `tok${differs(i) ? " differs" : ""}`, title: `${i} ${JSON.stringify(t)}` }, visible(t))));
    const top = pair.top.slice(0, 3).map(([t, p]) => `${visible(t)} ${fmt(p)}`).join(", ");
    this.prompts.replaceChildren(
      h("div", { class: "row pair-shown" }, h("span", { class: "label" }, "This prompt:"), tokens(info.tokens, "shown")),
      h("div", { class: "row pair-other" }, h("span", { class: "label" }, "Other prompt:"), tokens(pair.tokens, "other"),
        h("span", { class: "hint" }, `predicts ${top}`), this.swapButton));
    const patches = this.model.get("patches") ?? [];
    const items = patches.map((p, i) => {
      const undo = h("button", { class: "unpatch", title: "Undo: rerun without this patch", "aria-label": `undo patch ${p.label}` }, "×");
      undo.addEventListener("click", () => { if (this.live) void this.invoke("unpatch", { index: i }); });
      return h("span", { class: "patched", "data-node": JSON.stringify(p.node) }, p.label, undo);
    });
    this.active.replaceChildren(...(items.length ? [h("span", { class: "label" }, `Patched from the other prompt (${items.length}):`), ...items,
      h("span", { class: "hint" }, "the graph and panels show the patched run")] : []));
    this.showChoices();
  }

  private showChoices(): void {
    const previous = this.what.value;
    this.offered = this.model.get("pair") === null ? [] : this.model.get("selection_info")?.patches ?? [];
    this.what.replaceChildren(...this.offered.map((c, i) => h("option", { value: i }, c.label)));
    if (previous && Number(previous) < this.offered.length) this.what.value = previous;
    // with something selected that can be patched: no empty list before it
    this.patchRow.style.display = this.model.get("pair") === null || this.offered.length === 0 ? "none" : "";
    this.showBusy();
  }

  private showBusy(): void {
    const busy = this.model.get("busy") !== "";
    this.patchButton.disabled = busy || !this.live || this.offered.length === 0;
    this.what.disabled = !this.live || this.offered.length === 0;
    for (const b of [this.swapButton, this.otherButton, ...this.active.querySelectorAll("button")]) (b as HTMLButtonElement).disabled = busy || !this.live;
  }
}
