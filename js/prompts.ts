// The prompt list and the model's own continuation: a selector over the prompts Python lists
// (prompt_list: w.prompts, an aggregate's prompts first), switching with "open_prompt" (instant
// for analysed ones, marked ✓) or "open_aggregate"; and a Generate button that continues the
// text in the prompt box with the model's own tokens ("generate"), which the graph then marks.

import type { AnyModel } from "@anywidget/types";
import { h } from "./dom";
import type { Invoke, Notice, PromptList } from "./protocol";
import type { State } from "./types";

const AGGREGATE = "aggregate";
const SHOWN_CHARS = 90;

export class PromptsView {
  readonly bar: HTMLDivElement;
  private select = h("select", { class: "prompt-select", "aria-label": "prompt list" });
  private count = h("span", { class: "hint prompt-count" });
  private listRow = h("div", { class: "row prompt-list-row" });
  private generateButton = h("button", { class: "generate", title: "Continue the prompt with the model's own tokens (greedy)" }, "Generate");
  private maxTokens = h("input", { type: "number", class: "max-new-tokens", min: 1, max: 512, value: 20, "aria-label": "new tokens" });
  private chat = h("input", { type: "checkbox", class: "chat", "aria-label": "chat template" });
  private handlers: [string, () => void][] = [];

  constructor(private model: AnyModel<State>, private invoke: Invoke, private live: boolean,
              private promptText: () => string, private say: (notice: Notice | null) => void) {
    this.select.addEventListener("change", () => void this.open(this.select.value));
    this.generateButton.addEventListener("click", () => void this.generate());
    this.listRow.append(h("span", { class: "label" }, "Prompt:"), this.select, this.count);
    const generateRow = h("div", { class: "row generate-row" }, this.generateButton,
      h("label", { title: "How many tokens the model may add" }, this.maxTokens, " new tokens"),
      h("label", { title: "Put the text into the tokenizer's chat template first (as the user's message)" }, this.chat, " chat"));
    this.bar = h("div", { class: "lmtt-prompts" }, this.listRow, ...(live ? [generateRow] : []));
    this.handlers = [["change:prompt_list", () => this.show()], ["change:busy", () => this.showBusy()]];
    for (const [event, fn] of this.handlers) this.model.on(event, fn);
    this.show();
  }

  destroy(): void {
    for (const [event, fn] of this.handlers) this.model.off(event, fn);
  }

  private show(): void {
    const list: PromptList | null = this.model.get("prompt_list");
    const many = list !== null && (list.prompts.length > 1 || list.aggregate !== null);
    this.listRow.style.display = many ? "" : "none";
    if (!list || !many) return;
    const analysed = new Set(list.analysed);
    const options: HTMLOptionElement[] = [];
    const agg = list.aggregate;
    if (agg) {
      options.push(h("option", { value: AGGREGATE }, `Aggregate of ${agg.n_prompts} prompts (${agg.positions.join(", ")})`));
    }
    list.prompts.forEach((text, i) => {
      const shown = text.length > SHOWN_CHARS ? `${text.slice(0, SHOWN_CHARS - 1)}…` : text;
      options.push(h("option", { value: String(i), title: text }, `${analysed.has(i) ? "✓" : "  "} ${i}: ${shown.replace(/\n/g, "↵")}`));
    });
    this.select.replaceChildren(...options);
    this.select.value = agg?.shown ? AGGREGATE : list.current === null ? "" : String(list.current);
    this.select.disabled = !this.live;
    this.count.textContent = `${list.prompts.length} prompts, ${list.analysed.length} analysed`;
  }

  private showBusy(): void {
    const busy = this.model.get("busy") !== "";
    this.generateButton.disabled = busy || !this.live;
    this.select.disabled = busy || !this.live;
  }

  private async open(value: string): Promise<void> {
    if (!this.live) return;
    this.say(null);
    if (value === AGGREGATE) { await this.invoke("open_aggregate", {}); return; }
    const outcome = await this.invoke("open_prompt", { index: Number(value) });
    if (!outcome.ok) this.show(); // the selector goes back to the prompt shown
  }

  private async generate(): Promise<void> {
    if (!this.live) return;
    this.say(null);
    const max = Math.max(1, Math.round(Number(this.maxTokens.value) || 20));
    const outcome = await this.invoke("generate", { prompt: this.promptText(), max_new_tokens: max, chat: this.chat.checked });
    if (outcome.ok) {
      const r = outcome.result;
      this.say({ level: "info", text: `Generated ${r.n_generated} tokens (${r.n_tokens} in all) in ${r.seconds.toFixed(1)} s` });
    }
  }
}
