// The graph's legend, one line under it: what the edges' kinds, colours and thickness mean, the
// nodes, the gaps and the selection. An entry is a small SVG swatch and its words; views that draw
// more on the graph add theirs to ENTRIES. (Its own classes: the graph's are counted by tests.)

import { h, s } from "./dom";

interface Entry { swatch: () => SVGElement[]; text: string; title?: string }

const line = (cls: string, width = 2.5, dash?: string) => () =>
  [s("line", { class: cls, x1: 2, x2: 22, y1: 7, y2: 7, "stroke-width": width, "stroke-dasharray": dash })];

export const ENTRIES: Entry[] = [
  { swatch: () => [s("path", { class: "lg attention", d: "M2,12C2,7 22,7 22,2", "stroke-width": 2.5 })], text: "attention", title: "An attention edge: a token reading an earlier one (sum over heads)" },
  { swatch: line("lg residual"), text: "residual", title: "The residual stream carried up a token's column" },
  { swatch: line("lg ffn"), text: "FFN", title: "Into and out of an FFN block" },
  { swatch: () => [s("line", { class: "lg attention", x1: 2, x2: 10, y1: 7, y2: 7, "stroke-width": 1, "stroke-opacity": 0.4 }),
    s("line", { class: "lg attention", x1: 13, x2: 22, y1: 7, y2: 7, "stroke-width": 4.5 })], text: "thicker, darker: larger share", title: "An edge's width and opacity grow with its importance (its share of the whole it feeds)" },
  { swatch: () => [s("circle", { class: "lg-node post", cx: 7, cy: 7, r: 4 }), s("circle", { class: "lg-node ffn", cx: 18, cy: 7, r: 3.5 })], text: "residual · FFN node" },
  { swatch: () => [s("rect", { class: "gap-swatch", x: 6, y: 1, width: 12, height: 12 })], text: "… tokens off the routes (click to show)" },
  { swatch: () => [s("circle", { class: "lg-ring", cx: 12, cy: 7, r: 5 })], text: "selected" },
];

export function legend(): HTMLDivElement {
  return h("div", { class: "lmtt-legend", "aria-label": "legend" }, ...ENTRIES.map((e) => {
    const svg = s("svg", { class: "swatch", width: 24, height: 14, "aria-hidden": "true" });
    svg.append(...e.swatch());
    return h("span", { class: "entry", title: e.title }, svg, e.text);
  }));
}
