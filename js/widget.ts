// The anywidget entry point: wires the views to the model's traits and asks Python for panels.

import type { AnyModel, RenderProps } from "@anywidget/types";
import { putBuffers } from "./arrays";
import { Controls } from "./controls";
import { h } from "./dom";
import { GraphView } from "./graph";
import { InterventionsView } from "./interventions";
import { PairView } from "./pair";
import { Panels } from "./panels";
import { CSS } from "./style";
import type { Selection, State } from "./types";

const PANEL_TIMEOUT_MS = 30000;

/** The key of a panel's data: Python's export uses the same (lmtt_widget.export.panel_key). */
export function panelKey(sel: Selection, normalizeLens: boolean): string {
  if (!("kind" in sel)) return "";
  if (sel.kind === "residual") return `residual/${sel.stage}/${sel.layer}/${sel.token}/${normalizeLens ? 1 : 0}`;
  if (sel.kind === "attention") return `attention/${sel.layer}/${sel.source}/${sel.target}/${sel.head}`;
  return `ffn/${sel.layer}/${sel.token}`;
}

/** Check a selection made in the page against the prompt and model; null when it is valid. */
export function invalid(sel: Selection, state: Pick<State, "info">): string | null {
  if (!("kind" in sel)) return null;
  const T = state.info.tokens.length, L = state.info.n_layers;
  const inRange = (name: string, v: number, n: number) => (Number.isInteger(v) && v >= 0 && v < n ? null : `${name} ${v} is out of range: valid are 0..${n - 1}`);
  if (sel.kind === "residual") return sel.stage === "embed" ? inRange("token", sel.token, T) : inRange("layer", sel.layer, L) ?? inRange("token", sel.token, T);
  if (sel.kind === "attention") {
    return inRange("layer", sel.layer, L) ?? inRange("source", sel.source, T) ?? inRange("target", sel.target, T)
      ?? (sel.head === null ? null : inRange("head", sel.head, state.info.n_heads))
      ?? (sel.source > sel.target ? `source ${sel.source} comes after target ${sel.target}` : null);
  }
  return inRange("layer", sel.layer, L) ?? inRange("token", sel.token, T);
}

function render({ model, el }: RenderProps<State>) {
  const live = !(model as any).standalone;
  const style = h("style", {}, CSS);
  const messageText = h("span", { class: "text" });
  const dismiss = h("button", { class: "dismiss", title: "Dismiss", "aria-label": "Dismiss message" }, "×");
  const messageBar = h("div", { class: "message", role: "alert" }, messageText, dismiss);
  let localMessage = "";

  const showMessage = () => {
    const text = localMessage || model.get("message");
    messageText.textContent = text;
    messageBar.style.display = text ? "flex" : "none";
    messageBar.classList.toggle("error", /refused|could not|error|invalid|out of range|needs a live kernel/i.test(text));
  };
  dismiss.addEventListener("click", () => {
    localMessage = "";
    if (model.get("message")) { model.set("message", ""); model.save_changes(); }
    showMessage();
  });

  const select = (sel: Selection) => {
    const why = invalid(sel, { info: model.get("info") });
    if (why) { localMessage = `Refused selection: ${why}`; showMessage(); return; }
    localMessage = "";
    model.set("selection", sel);
    model.save_changes();
    onSelection();
  };
  const graph = new GraphView({
    select,
    target: (t) => setTarget(t),
  });
  const panels = new Panels({ select });
  const interventions = new InterventionsView(model, graph, select, live);
  const pair = new PairView(model, live);
  const controls = new Controls({
    threshold: (v) => { model.set("threshold", v); model.save_changes(); },
    renormalize: (v) => { model.set("renormalize", v); model.save_changes(); },
    normalizeLens: (v) => { model.set("normalize_lens", v); model.save_changes(); onSelection(); },
    target: (t) => setTarget(t),
    analyze: (prompt) => {
      if (!live) return;
      localMessage = "";
      model.send({ type: "analyze", prompt });
    },
    fit: () => graph.fit(),
  }, live);
  const setTarget = (t: number) => {
    if (!live) { localMessage = "Showing the routes to another token needs a live kernel."; showMessage(); return; }
    model.set("target", t);
    model.save_changes();
  };

  const root = h("div", { class: "lmtt" }, style,
    h("div", { class: "lmtt-header" }, controls.facts, controls.status),
    controls.root, pair.bar, interventions.bar, messageBar,
    h("div", { class: "lmtt-main" }, graph.root, panels.root), interventions.details);
  if (!live) root.append(h("p", { class: "hint export-note" },
    "Saved page: the graph and the panels saved with it work here; other panels and analysing a new prompt need a live kernel."));
  el.append(root);

  // -- panels, asked of Python lazily ------------------------------------------------------
  const viewId = Math.random().toString(36).slice(2, 10);
  let nextId = 0;
  const pending = new Map<string, (reply: any) => void>();
  const cache = new Map<string, any>();
  const onCustom = (msg: any, buffers: DataView[]) => {
    if (!msg || msg.type !== "panel" || !pending.has(msg.id)) return;
    putBuffers(msg, msg.buffer_paths ?? [], buffers ?? []);
    pending.get(msg.id)?.(msg);
    pending.delete(msg.id);
  };
  model.on("msg:custom", onCustom);
  const ask = (request: Selection): Promise<any> => new Promise((resolve) => {
    const id = `${viewId}-${nextId++}`;
    const timer = setTimeout(() => { pending.delete(id); resolve({ ok: false, error: "no answer from the kernel: is it running?" }); }, PANEL_TIMEOUT_MS);
    pending.set(id, (reply) => { clearTimeout(timer); resolve(reply); });
    model.send({ type: "panel", id, request });
  });

  let shown = "";
  const onSelection = async () => {
    const sel = model.get("selection");
    graph.setSelection(sel);
    const info = model.get("info");
    if (!("kind" in sel)) { shown = ""; panels.empty(); return; }
    const key = panelKey(sel, model.get("normalize_lens"));
    if (key === shown && sel.kind !== "ffn") return; // (a neuron's row is chosen within the same data)
    shown = key;
    const title = sel.kind === "residual" ? "Residual node" : sel.kind === "attention" ? "Attention edge" : "FFN block";
    const preloaded = model.get("preloaded")?.[key];
    let data = cache.get(key) ?? preloaded;
    if (data && sel.kind === "ffn" && sel.neuron !== null && !data.neurons.some((n: any) => n.index === sel.neuron)) {
      data = undefined; // a neuron outside the top ones: Python adds its row
    }
    if (data === undefined) {
      if (!live) { panels.unavailable(title, "This panel needs a live kernel: it was not saved with this page."); return; }
      panels.loading(title);
      const t0 = performance.now();
      const reply = await ask(sel);
      root.dataset.panelMs = (performance.now() - t0).toFixed(1);
      if (shown !== key) return; // a newer selection took over
      if (!reply.ok) { panels.unavailable(title, `Could not load: ${reply.error}`); return; }
      data = reply.data;
      cache.set(key, data);
      if (cache.size > 64) cache.delete(cache.keys().next().value as string);
    }
    panels.show(info, sel, data);
    root.dataset.panel = key;
    root.dataset.panelAt = performance.now().toFixed(1); // for bench/widget.py
  };

  // -- traits -> views -----------------------------------------------------------------------
  // the controls show the target, threshold and options: after a new graph and after new info (whose
  // target list is rebuilt), whichever of the two arrives last
  const showView = () =>
    controls.setView(model.get("target"), model.get("threshold"), model.get("renormalize"), model.get("normalize_lens"));
  const drawGraph = () => {
    const t0 = performance.now();
    graph.setData(model.get("info"), model.get("payload"));
    root.dataset.renderMs = (performance.now() - t0).toFixed(1);
    // time to the first frame painted with the graph in it
    requestAnimationFrame(() => setTimeout(() => { root.dataset.paintMs = (performance.now() - t0).toFixed(1); }, 0));
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
    ["change:message", showMessage], ["change:selection", () => void onSelection()],
    ["change:normalize_lens", () => { showView(); void onSelection(); }],
  ];
  for (const [event, fn] of handlers) model.on(event, fn);
  const resize = new ResizeObserver(() => graph.refitIfUntouched());
  resize.observe(graph.root);
  return () => {
    for (const [event, fn] of handlers) model.off(event, fn);
    model.off("msg:custom", onCustom);
    resize.disconnect();
    interventions.destroy();
    pair.destroy();
  };
}

export type { AnyModel };
export default { render };
