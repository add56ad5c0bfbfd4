// The graph's legend, one line under it: what the edges' kinds, colours and thickness mean, the
// nodes, the gaps and the selection. An entry is a small SVG swatch and its words; views that draw
// more on the graph add theirs to ENTRIES. (Its own classes: the graph's are counted by tests.)
// Entries that need something drawn (the effects' colours, the missed edges) show only with it.

import { h, s } from "./dom";

interface Drawn { effects: boolean; missed: boolean }
interface Entry { swatch: () => SVGElement[]; text: string; title?: string; needs?: keyof Drawn }

const line = (cls: string, width = 2.5, dash?: string) => () =>
  [s("line", { class: cls, x1: 2, x2: 22, y1: 7, y2: 7, "stroke-width": width, "stroke-dasharray": dash })];

export const ENTRIES: Entry[] = [
  { swatch: () => [s("path", { class: "lg attention", d: "M2,12C2,7 22,7 22,2", "stroke-width": 2.5 })], text: "attention", title: "An attention edge: a token reading an earlier one (sum over heads)" },
  { swatch: line("lg residual"), text: "residual", title: "The residual stream carried up a token's column" },
  { swatch: line("lg ffn"), text: "FFN", title: "Into and out of an FFN block" },
  { swatch: () => [s("line", { class: "lg attention", x1: 2, x2: 10, y1: 7, y2: 7, "stroke-width": 1, "stroke-opacity": 0.4 }),
    s("line", { class: "lg attention", x1: 13, x2: 22, y1: 7, y2: 7, "stroke-width": 4.5 })], text: "thicker, darker: larger share (or |effect|)", title: "An edge's width and opacity grow with its importance (its share of the whole it feeds), or with |effect| when the routes are ranked by effect" },
  { swatch: () => [s("line", { class: "lg supports", x1: 2, x2: 10, y1: 7, y2: 7, "stroke-width": 2.5 }),
    s("line", { class: "lg opposes", x1: 14, x2: 22, y1: 7, y2: 7, "stroke-width": 2.5 })], text: "supports · opposes", needs: "effects",
    title: "An edge's colour where it has an effect: green supports the prediction over the contrast (removing it lowers logit(prediction) − logit(contrast)), red opposes it" },
  { swatch: line("lg missed", 2, "5 3"), text: "missed by share", needs: "missed",
    title: "Dashed: an edge with a large effect that the routes by share leave out (show missed)" },
  { swatch: () => [s("circle", { class: "lg-node post", cx: 7, cy: 7, r: 4 }), s("circle", { class: "lg-node ffn", cx: 18, cy: 7, r: 3.5 })], text: "residual · FFN node" },
  { swatch: () => [s("rect", { class: "gap-swatch", x: 6, y: 1, width: 12, height: 12 })], text: "… tokens off the routes (click to show)" },
  { swatch: () => [s("circle", { class: "lg-ring", cx: 12, cy: 7, r: 5 })], text: "selected" },
];

export function legend(): HTMLDivElement {
  return h("div", { class: "lmtt-legend", "aria-label": "legend" }, ...ENTRIES.map((e) => {
    const svg = s("svg", { class: "swatch", width: 24, height: 14, "aria-hidden": "true" });
    svg.append(...e.swatch());
    return h("span", { class: "entry", title: e.title, "data-needs": e.needs }, svg, e.text);
  }));
}

/** Show the entries of what the graph draws now. */
export function showLegend(el: HTMLElement, drawn: Drawn): void {
  for (const entry of el.querySelectorAll<HTMLElement>(".entry[data-needs]")) entry.hidden = !drawn[entry.dataset.needs as keyof Drawn];
}
