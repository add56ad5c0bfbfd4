// The anywidget entry point: wires the views to the model's traits and asks Python for panels.

import type { AnyModel, RenderProps } from "@anywidget/types";
import { Controls } from "./controls";
import { h } from "./dom";
import { GraphView } from "./graph";
import { InterventionsView } from "./interventions";
import { legend, showLegend } from "./legend";
import { PairView } from "./pair";
import { Panels } from "./panels";
import { PromptsView } from "./prompts";
import { Client, PROTOCOL_VERSION, type CommandName, type Failure, type Notice, type Outcome } from "./protocol";
import type { PanelData, Selection, State } from "./types";

/** What the message bar says when a command fails: refused (Python declined it) or failed. */
const FAILURE_TEXT: Record<CommandName, [refused: string, failed: string]> = {
  panel: ["Refused panel", "Could not load the panel"],
  analyze: ["Could not analyse the prompt", "Could not analyse the prompt"],
  ablate: ["Refused ablation", "Could not ablate"],
  undo: ["Refused undo", "Could not undo"],
  patch: ["Refused patch", "Could not patch"],
  unpatch: ["Refused undo of the patch", "Could not undo the patch"],
  swap: ["Refused swap", "Could not swap the prompts"],
  pair: ["Refused the other prompt", "Could not compare with the other prompt"],
  faithfulness: ["Refused faithfulness", "Could not measure faithfulness"],
  open_prompt: ["Could not open the prompt", "Could not open the prompt"],
  open_aggregate: ["Could not show the aggregate", "Could not show the aggregate"],
  generate: ["Refused generation", "Could not generate"],
};

export function failureText(name: CommandName, error: Failure): string {
  const [refused, failed] = FAILURE_TEXT[name];
  return `${error.kind === "refused" ? refused : failed}: ${error.message}`;
}

/** The key of a selection's panel, built from the fields Python names for its kind (info.selection_kinds). */
export function panelKey(sel: Selection, state: Pick<State, "info" | "normalize_lens" | "target" | "contrast" | "with_effects">): string {
  const fields = state.info.selection_kinds[sel.kind]?.key ?? [];
  // the view options a panel may depend on, as Python names them (View.options)
  const options: Record<string, unknown> = { normalize_lens: state.normalize_lens, metric_at: state.target, contrast: state.contrast,
    with_effects: state.with_effects };
  const values = sel as unknown as Record<string, unknown>;
  return [sel.kind, ...fields.map((f) => keyPart(f in values ? values[f] : options[f]))].join("/");
}

/** A key field as text, as Python writes it (selections._key_part): booleans as 1 and 0. */
function keyPart(value: unknown): string {
  return typeof value === "boolean" ? (value ? "1" : "0") : String(value ?? null);
}

/** What the panels' "more" asks for: LM-TT's amounts. */
const MORE = { tokens: 30, logits: 15, neurons: 20 };

function render({ model, el }: RenderProps<State>) {
  const live = !(model as AnyModel<State> & { standalone?: boolean }).standalone;
  const client = new Client(model, live);
  const messageText = h("span", { class: "text" });
  const dismiss = h("button", { class: "dismiss", title: "Dismiss", "aria-label": "Dismiss message" }, "×");
  const messageBar = h("div", { class: "message", role: "alert" }, messageText, dismiss);
  let local: Notice | null = null; // what the page itself reports (a command's outcome); Python's notice otherwise

  const showMessage = () => {
    const notice = local ?? model.get("notice");
    messageText.textContent = notice?.text ?? "";
    messageBar.style.display = notice ? "flex" : "none";
    messageBar.classList.toggle("error", notice?.level === "error");
  };
  const say = (notice: Notice | null) => { local = notice; showMessage(); };
  dismiss.addEventListener("click", () => {
    local = null;
    if (model.get("notice")) { model.set("notice", null); model.save_changes(); }
    showMessage();
  });
  /** Send a command; a failure is shown as an error. */
  const invoke = async <N extends CommandName>(name: N, request: Parameters<typeof client.invoke<N>>[1]): Promise<Outcome<N>> => {
    const outcome = await client.invoke(name, request);
    if (!outcome.ok) say({ level: "error", text: failureText(name, outcome.error) });
    else if (local?.level === "error") say(null);
    return outcome;
  };

  const select = (sel: Selection) => {
    say(null);
    model.set("selection", sel);
    model.save_changes();
    onSelection();
  };
  const graph = new GraphView({
    select,
    target: (t) => setTarget(t),
  });
  const panels = new Panels({
    select,
    openPrompt: (index) => { if (live) void invoke("open_prompt", { index }); },
    more: () => { shown = ""; void onSelection(); },
  });
  const interventions = new InterventionsView(model, graph, select, invoke, live);
  const pair = new PairView(model, invoke, live);
  const controls = new Controls({
    threshold: (v) => { model.set("threshold", v); model.save_changes(); },
    renormalize: (v) => { model.set("renormalize", v); model.save_changes(); },
    normalizeLens: (v) => { model.set("normalize_lens", v); model.save_changes(); onSelection(); },
    target: (t) => setTarget(t),
    analyze: async (prompt) => {
      if (!live) return;
      say(null);
      const outcome = await invoke("analyze", { prompt });
      if (outcome.ok) say({ level: "info", text: `Analysed ${outcome.result.n_tokens} tokens in ${outcome.result.seconds.toFixed(1)} s` });
    },
    fit: () => graph.fit(),
    contrast: (id) => { model.set("contrast", id); model.save_changes(); },
    rankBy: (by) => { model.set("rank_by", by); model.save_changes(); },
    showMissed: (on) => { model.set("show_missed", on); model.save_changes(); },
    withEffects: (on) => { model.set("with_effects", on); model.save_changes(); },
  }, live);
  const prompts = new PromptsView(model, invoke, live, () => controls.promptText(), say);
  const setTarget = (t: number) => {
    if (!live) { say({ level: "error", text: "Showing the routes to another token needs a live kernel." }); return; }
    model.set("target", t);
    model.save_changes();
  };

  const legendBox = legend();
  const root = h("div", { class: "lmtt" },
    h("div", { class: "lmtt-header" }, controls.facts, controls.status),
    controls.root, prompts.bar, pair.bar, interventions.bar, messageBar,
    h("div", { class: "lmtt-main" }, h("div", { class: "lmtt-graph-box" }, graph.root, legendBox), panels.root), interventions.details);
  controls.addToMainRow(pair.compare);
  if (!live) root.append(h("p", { class: "hint export-note" },
    "Saved page: the graph and the panels saved with it work here; other panels and analysing a new prompt need a live kernel."));
  el.append(root);
  // the page's commands, for scripts that drive it (the browser tests): el.lmttInvoke("ablate", {...})
  (el as HTMLElement & { lmttInvoke?: typeof invoke }).lmttInvoke = invoke;
  if (model.get("protocol") !== PROTOCOL_VERSION) {
    say({ level: "error", text: `This widget was saved with protocol ${model.get("protocol")}; this page reads protocol ${PROTOCOL_VERSION}: run the cell again.` });
  }

  // -- panels, asked of Python lazily ------------------------------------------------------
  const cache = new Map<string, PanelData>();

  let shown = "";
  const onSelection = async () => {
    const sel = model.get("selection");
    graph.setSelection(sel);
    const info = model.get("info");
    if (sel === null) { shown = ""; panels.empty(); return; }
    const options = panels.more ? MORE : undefined;
    const key = panelKey(sel, { info, normalize_lens: model.get("normalize_lens"), target: model.get("target"), contrast: model.get("contrast"),
      with_effects: model.get("with_effects") })
      + (options ? "+more" : "");
    if (key === shown && !cache.has(key)) return; // its panel is on its way (or has failed: select again)
    shown = key;
    const title = info.selection_kinds[sel.kind]?.title ?? sel.kind;
    let data: PanelData | undefined = cache.get(key) ?? model.get("preloaded")?.[key];
    if (data && !panels.covers(sel, data)) data = undefined; // e.g. a neuron outside the top ones: Python adds its row
    if (data === undefined) {
      if (!live) { panels.unavailable(title, "This panel needs a live kernel: it was not saved with this page."); return; }
      panels.loading(title);
      const t0 = performance.now();
      const outcome = await client.invoke("panel", options ? { selection: sel, options } : { selection: sel });
      root.dataset.panelMs = (performance.now() - t0).toFixed(1);
      if (shown !== key) return; // a newer selection took over
      if (!outcome.ok) { panels.unavailable(title, `Could not load: ${outcome.error.message}`); return; }
      data = outcome.result;
      if (!("rows" in data)) cache.set(key, data); // an aggregate's list depends on the target shown: asked again
      if (cache.size > 64) cache.delete(cache.keys().next().value as string);
    }
    panels.show(info, sel, data);
    root.dataset.panel = key;
    root.dataset.panelAt = performance.now().toFixed(1); // for bench/widget.py
  };

  // -- traits -> views -----------------------------------------------------------------------
  // the controls show the target, threshold and options: after a new graph and after new info (whose
  // target list is rebuilt), whichever of the two arrives last
  const showView = () => {
    controls.setView(model.get("target"), model.get("threshold"), model.get("renormalize"), model.get("normalize_lens"));
    controls.setEffects(model.get("target"), model.get("contrast"), model.get("rank_by"), model.get("show_missed"), model.get("effects"),
      model.get("with_effects"));
  };
  const showMissed = () => {
    const effects = model.get("effects"), missed = effects?.missed ?? [];
    graph.setMissed(missed);
    showLegend(legendBox, { effects: effects !== null, missed: missed.length > 0 });
  };
  const showEffects = () => { showView(); showMissed(); };
  const drawGraph = () => {
    const t0 = performance.now();
    // time to the first frame painted with the graph in it (drawn now, or in a frame to come)
    graph.afterDraw(() => setTimeout(() => { root.dataset.paintMs = (performance.now() - t0).toFixed(1); }, 0));
    graph.setData(model.get("info"), model.get("payload"));
    showMissed();
    root.dataset.renderMs = (performance.now() - t0).toFixed(1);
    showView();
  };
  const onInfo = () => { controls.setInfo(model.get("info")); showView(); cache.clear(); shown = ""; };
  const onBusy = () => controls.setBusy(model.get("busy"));
  onInfo();
  drawGraph();
  onBusy();
  showMessage();
  void onSelection();

  const handlers: [string, () => void][] = [
    ["change:info", () => { onInfo(); void onSelection(); }], // an intervened run keeps the selection: reload its panel
    ["change:payload", drawGraph], ["change:busy", onBusy],
    ["change:notice", () => { local = null; showMessage(); }], ["change:selection", () => void onSelection()],
    ["change:normalize_lens", () => { showView(); void onSelection(); }],
    ["change:effects", () => { showEffects(); void onSelection(); }], // another metric: the panels' effects change
    ["change:rank_by", showView], ["change:show_missed", showView], ["change:contrast", showView],
    ["change:with_effects", showView],
  ];
  for (const [event, fn] of handlers) model.on(event, fn);
  return () => {
    for (const [event, fn] of handlers) model.off(event, fn);
    client.destroy();
    graph.destroy();
    interventions.destroy();
    pair.destroy();
    prompts.destroy();
  };
}

export type { AnyModel };
export default { render };
