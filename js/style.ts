// Styles, scoped under .lmtt; colours follow JupyterLab's theme (--jp-*) with fallbacks so the
// widget also reads well in Notebook 7, VS Code, marimo and the standalone HTML export.

export const CSS = `
.lmtt {
  --fg: var(--jp-ui-font-color0, #1f2328);
  --fg-dim: var(--jp-ui-font-color2, #6e7781);
  --bg: var(--jp-layout-color0, #ffffff);
  --bg-2: var(--jp-layout-color1, #f6f8fa);
  --bg-3: var(--jp-layout-color2, #eaeef2);
  --border: var(--jp-border-color1, #d0d7de);
  --accent: var(--jp-brand-color1, #1976d2);
  --attention: var(--jp-info-color1, #1f77b4);
  --residual: var(--jp-ui-font-color3, #9aa4ae);
  --ffn: var(--jp-warn-color1, #e07b00);
  --up: var(--jp-success-color1, #2e7d32);
  --down: var(--jp-error-color1, #c62828);
  --select: var(--jp-accept-color-normal, #d6336c);
  color: var(--fg); background: var(--bg);
  font-family: var(--jp-ui-font-family, system-ui, -apple-system, "Segoe UI", sans-serif);
  font-size: var(--jp-ui-font-size1, 13px);
  border: 1px solid var(--border); border-radius: 6px; padding: 8px; box-sizing: border-box;
}
/* outside Jupyter (the saved page, VS Code without --jp-* variables): follow the system's dark mode */
@media (prefers-color-scheme: dark) {
  .lmtt {
    --fg: var(--jp-ui-font-color0, #e6edf3); --fg-dim: var(--jp-ui-font-color2, #9198a1);
    --bg: var(--jp-layout-color0, #0d1117); --bg-2: var(--jp-layout-color1, #161b22);
    --bg-3: var(--jp-layout-color2, #262c36); --border: var(--jp-border-color1, #3d444d);
    --accent: var(--jp-brand-color1, #4493f8); --attention: var(--jp-info-color1, #58a6ff);
    --residual: var(--jp-ui-font-color3, #6e7681); --ffn: var(--jp-warn-color1, #f0883e);
    --up: var(--jp-success-color1, #3fb950); --down: var(--jp-error-color1, #f85149);
  }
}
.lmtt * { box-sizing: border-box; }
.lmtt .tok, .lmtt .token-label, .lmtt .target-cell text, .lmtt .num {
  font-family: var(--jp-code-font-family, ui-monospace, "DejaVu Sans Mono", monospace);
}
.lmtt .tok { background: var(--bg-3); border-radius: 3px; padding: 0 3px; white-space: pre; }
.lmtt-header { display: flex; flex-wrap: wrap; justify-content: space-between; gap: 8px; margin-bottom: 6px; }
.lmtt .facts { display: flex; flex-wrap: wrap; gap: 4px 12px; color: var(--fg-dim); }
.lmtt .facts .model { color: var(--fg); font-weight: 600; }
.lmtt .status { display: flex; align-items: center; gap: 6px; color: var(--accent); }
.lmtt .spinner { width: 12px; height: 12px; border: 2px solid var(--accent); border-right-color: transparent;
  border-radius: 50%; animation: lmtt-spin 0.8s linear infinite; }
@keyframes lmtt-spin { to { transform: rotate(360deg); } }
.lmtt-controls .row { display: flex; flex-wrap: wrap; align-items: center; gap: 6px 16px; margin: 4px 0; }
.lmtt-controls label { display: inline-flex; align-items: center; gap: 4px; }
.lmtt-controls input[type=range] { width: 140px; }
.lmtt-controls .prompt-row { align-items: stretch; }
.lmtt-controls textarea.prompt { flex: 1; min-width: 200px; font: inherit; color: var(--fg); background: var(--bg-2);
  border: 1px solid var(--border); border-radius: 4px; padding: 4px 6px; resize: vertical; }
.lmtt button, .lmtt select { font: inherit; color: var(--fg); background: var(--bg-2); border: 1px solid var(--border);
  border-radius: 4px; padding: 2px 8px; cursor: pointer; }
.lmtt button:disabled { opacity: 0.5; cursor: default; }
.lmtt button:focus-visible, .lmtt select:focus-visible, .lmtt-graph:focus-visible, .lmtt tr:focus-visible {
  outline: 2px solid var(--accent); outline-offset: 1px; }
.lmtt .target-select { max-width: 260px; }
.lmtt .predictions { display: flex; flex-wrap: wrap; gap: 4px 10px; align-items: center; }
.lmtt .predictions .label { color: var(--fg-dim); }
.lmtt .message { display: none; align-items: center; justify-content: space-between; gap: 8px; padding: 4px 8px;
  margin: 4px 0; border-radius: 4px; background: var(--bg-2); border-left: 3px solid var(--accent); }
.lmtt .message.error { border-left-color: var(--down); }
.lmtt .message .text { white-space: pre-wrap; }
.lmtt .message .dismiss { border: none; background: none; font-size: 16px; }
.lmtt-main { display: flex; flex-wrap: wrap; gap: 8px; align-items: stretch; }
.lmtt-graph { position: relative; flex: 1 1 520px; min-width: 320px; height: 560px; border: 1px solid var(--border);
  border-radius: 4px; overflow: hidden; background: var(--bg); }
.lmtt-svg { display: block; cursor: grab; user-select: none; touch-action: none; }
.lmtt-svg .bg { fill: transparent; }
.lmtt-svg .layer-line { stroke: var(--bg-3); stroke-width: 1; }
.lmtt-svg .layer-label { fill: var(--fg-dim); font-size: 11px; pointer-events: none; }
.lmtt-svg .axis-bg { fill: var(--bg); opacity: 0.85; pointer-events: none; }
.lmtt-svg .token-label { fill: var(--fg); font-size: 12px; }
.lmtt-svg .edge { fill: none; cursor: pointer; stroke-linecap: round; }
.lmtt-svg .edge.attention { stroke: var(--attention); }
.lmtt-svg .edge.residual { stroke: var(--residual); }
.lmtt-svg .edge.ffn { stroke: var(--ffn); }
.lmtt-svg .edge:hover { stroke: var(--select); stroke-opacity: 1; }
.lmtt-svg .node { cursor: pointer; stroke: var(--bg); stroke-width: 1.5; }
.lmtt-svg .node.embed, .lmtt-svg .node.mid, .lmtt-svg .node.post { fill: var(--fg-dim); }
.lmtt-svg .node.ffn { fill: var(--ffn); }
.lmtt-svg .node:hover { fill: var(--select); }
.lmtt-svg .target-cell { cursor: pointer; }
.lmtt-svg .target-cell rect { fill: var(--bg-2); stroke: var(--border); }
.lmtt-svg .target-cell text { fill: var(--fg); font-size: 11px; }
.lmtt-svg .target-cell.active rect { fill: var(--accent); stroke: var(--accent); }
.lmtt-svg .target-cell.active text { fill: var(--bg); font-weight: 600; }
.lmtt-svg .target-link { stroke: var(--accent); stroke-dasharray: 3 3; }
.lmtt-svg .sel-edge { fill: none; stroke: var(--select); stroke-width: 4; stroke-opacity: 0.85; pointer-events: none; }
.lmtt-svg .sel-ring { fill: none; stroke: var(--select); stroke-width: 3; pointer-events: none; }
.lmtt-svg .cursor { fill: none; stroke: var(--accent); stroke-width: 2; stroke-dasharray: 3 2; pointer-events: none; }
.lmtt-tooltip { position: absolute; display: none; pointer-events: none; max-width: 360px; padding: 3px 6px;
  background: var(--bg-2); color: var(--fg); border: 1px solid var(--border); border-radius: 4px; font-size: 12px;
  white-space: nowrap; z-index: 2; }
.lmtt-panel { flex: 0 1 400px; min-width: 300px; max-height: 560px; overflow: auto; border: 1px solid var(--border);
  border-radius: 4px; padding: 6px 10px; background: var(--bg); }
.lmtt-panel h3 { margin: 2px 0 4px; font-size: 14px; }
.lmtt-panel h4 { margin: 10px 0 4px; font-size: 12px; color: var(--fg-dim); font-weight: 600; }
.lmtt-panel .hint { color: var(--fg-dim); }
.lmtt-panel .unavailable { color: var(--down); }
.lmtt-panel .where { margin: 0 0 4px; }
.lmtt-panel table { border-collapse: collapse; width: 100%; }
.lmtt-panel th { text-align: left; color: var(--fg-dim); font-weight: normal; font-size: 11px; }
.lmtt-panel td { padding: 1px 4px 1px 0; vertical-align: middle; }
.lmtt-panel td.tok { background: none; }
.lmtt-panel td.up, .lmtt .col-title.up { color: var(--up); }
.lmtt-panel td.down, .lmtt .col-title.down { color: var(--down); }
.lmtt-panel td.toks { font-size: 11px; white-space: pre; max-width: 120px; overflow: hidden; text-overflow: ellipsis;
  font-family: var(--jp-code-font-family, ui-monospace, monospace); }
.lmtt-panel table.neurons tr { cursor: pointer; }
.lmtt-panel tr.active { background: var(--bg-3); }
.lmtt .bar { position: relative; display: inline-block; width: 110px; height: 14px; background: var(--bg-2); border-radius: 2px; }
.lmtt .bar .fill { position: absolute; left: 0; top: 0; bottom: 0; background: var(--attention); opacity: 0.45; border-radius: 2px; }
.lmtt .bar .num { position: relative; padding-left: 3px; font-size: 11px; }
.lmtt .heads { display: flex; gap: 3px; align-items: flex-end; height: 64px; }
.lmtt .heads .head { position: relative; width: 26px; height: 100%; padding: 0; display: flex; flex-direction: column;
  justify-content: flex-end; align-items: stretch; }
.lmtt .heads .hbar { background: var(--attention); opacity: 0.7; min-height: 1px; }
.lmtt .heads .hlabel { font-size: 10px; text-align: center; }
.lmtt .heads .head.active { border-color: var(--select); border-width: 2px; }
.lmtt .maps { display: flex; flex-wrap: wrap; gap: 10px; }
.lmtt figure.map { margin: 0; }
.lmtt .map-box { position: relative; width: 182px; height: 182px; border: 1px solid var(--border); }
.lmtt .strip-box { position: relative; width: 182px; height: 14px; margin-top: 3px; border: 1px solid var(--border); }
.lmtt canvas.row-strip { height: 12px; }
.lmtt canvas.heatmap { image-rendering: pixelated; display: block; }
.lmtt .cell-mark { position: absolute; outline: 2px solid var(--select); pointer-events: none; }
.lmtt figcaption { font-size: 11px; color: var(--fg-dim); max-width: 182px; }
.lmtt .effects { display: grid; grid-template-columns: 1fr 1fr; gap: 8px; }
.lmtt ul.effect { list-style: none; margin: 0; padding: 0; }
.lmtt ul.effect li { display: flex; justify-content: space-between; gap: 6px; font-size: 12px; }
.lmtt .export-note { color: var(--fg-dim); font-size: 12px; margin: 6px 0 0; }

/* ---- effects (issue 10): a separate block, for the move of the CSS into js/widget.css ---- */
.lmtt-svg .edge.supports { stroke: var(--up); }
.lmtt-svg .edge.opposes { stroke: var(--down); }
.lmtt-svg .missed-edge { fill: none; pointer-events: stroke; stroke-dasharray: 6 4; stroke-opacity: 0.85; stroke-linecap: round; }
.lmtt-svg .missed-edge.supports { stroke: var(--up); }
.lmtt-svg .missed-edge.opposes { stroke: var(--down); }
.lmtt-controls .effects-row .metric-line { color: var(--fg-dim); font-family: var(--jp-code-font-family, ui-monospace, monospace); font-size: 12px; }
.lmtt-controls select.contrast-select { max-width: 180px; }
.lmtt .heads .head .hbars { display: flex; align-items: flex-end; gap: 1px; height: 100%; width: 100%; justify-content: center; }
.lmtt .heads .head .hbars .hbar { position: static; width: 45%; }
.lmtt .heads .head .ebar { display: block; width: 45%; min-height: 1px; border-radius: 1px 1px 0 0; }
.lmtt .heads .head .ebar.up { background: var(--up); }
.lmtt .heads .head .ebar.down { background: var(--down); }
.lmtt .effect-line { margin: 4px 0; font-size: 12px; }
.lmtt .num.up, .lmtt td.effect.up { color: var(--up); }
.lmtt .num.down, .lmtt td.effect.down { color: var(--down); }
.lmtt-intervention-details .faith-lead { display: flex; flex-wrap: wrap; gap: 4px 18px; margin: 4px 0; }
.lmtt-intervention-details .faith-lead .big { font-size: 20px; font-weight: 600; }
.lmtt-intervention-details .reading { font-size: 12px; margin: 2px 0 6px; }
.lmtt-intervention-details .faith-note { font-size: 12px; color: var(--fg-dim); margin: 4px 0; }
.lmtt .faith-chart .fbar.rank-share { fill: var(--attention); }
.lmtt .faith-chart .fbar.rank-effect { fill: var(--up); }
.lmtt .faith-chart .fbar.best { fill: var(--fg-dim); }
`;
