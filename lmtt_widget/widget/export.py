"""One self-contained HTML file of a widget: the bundle, the state and some panels inline.

It opens offline and makes no request (a Content-Security-Policy forbids any): the graph, the
controls that need no recomputation, and the panels saved with it work; the page says plainly
that other panels and a new prompt need a live kernel.
"""

from __future__ import annotations

import html
import json
import os
import pathlib

from ..errors import LmttError
from . import protocol as P
from .serialize import encode_text

STATIC = pathlib.Path(__file__).parent.parent / "static"  # as in widget/__init__.py (importing it: a cycle)
STANDALONE_JS = STATIC / "standalone.js"
WIDGET_CSS = STATIC / "widget.css"  # the stylesheet anywidget loads in a notebook (Widget._css)
CSP = "default-src 'none'; script-src 'unsafe-inline'; style-src 'unsafe-inline'; img-src data:"
ATTENTION_PRELOAD_MAX_TOKENS = 64  # each attention panel carries two T x T maps
ATTENTION_PRELOADS = 12


def preload_selections(view) -> list[dict]:
    """What the saved page carries: the residual stream at the target, the selection, and
    (short prompts) the strongest attention edges of the routes, each with its largest head."""
    run, target = view.run, view.target
    stages = ["post"] if run.shape.parallel else ["mid", "post"]
    sels = [{"kind": "residual", "stage": "embed", "layer": -1, "token": target}]
    sels += [{"kind": "residual", "stage": st, "layer": layer, "token": target}
             for layer in range(run.shape.n_layers) for st in stages]
    if run.n_tokens <= ATTENTION_PRELOAD_MAX_TOKENS:
        edges = [(v[1], d) for _, v, d in view.graph.edges(data=True) if d["kind"] == "attention"]
        edges.sort(key=lambda e: -e[1]["weight"])
        for layer, d in edges[:ATTENTION_PRELOADS]:
            sels.append({"kind": "attention", "layer": layer, "source": d["source"], "target": d["target"],
                         "head": None})
    if view.selection:
        sels.append(dict(view.selection))
    return sels


def preloaded_panels(view) -> dict[str, dict]:
    """{panel key: panel data} of `preload_selections`."""
    panels = {}
    for sel in preload_selections(view):
        data = view.panel(sel)
        panels[view.panel_key(data["selection"])] = data
    return panels


def standalone_html(state: dict, title: str, bridge: bool = False) -> str:
    """A page that mounts the widget with `state` (bytes become base64). With `bridge`, the
    page forwards the widget's messages to `window.lmttBridge` (the browser tests' harness)."""
    bundle = STANDALONE_JS.read_text(encoding="utf-8")
    css = WIDGET_CSS.read_text(encoding="utf-8")
    # JSON inside <script>: escape what could close the element or start markup
    data = json.dumps(encode_text(state)).replace("<", "\\u003c").replace(">", "\\u003e").replace("&", "\\u0026")
    mount = ("lmtt.mount(document.getElementById('lmtt-root'), state, "
             + ("(m) => window.lmttBridge(JSON.stringify(m)).then(JSON.parse)" if bridge else "null")
             + ").then((m) => { window.lmttModel = m; document.body.dataset.ready = '1'; });")
    csp = "" if bridge else f'<meta http-equiv="Content-Security-Policy" content="{CSP}">'
    version = f'<meta name="lmtt-protocol" content="{int(state.get("protocol", P.PROTOCOL_VERSION))}">'
    return f"""<!doctype html>
<html lang="en">
<head>
<meta charset="utf-8">
{csp}
{version}
<meta name="viewport" content="width=device-width, initial-scale=1">
<title>{html.escape(title)}</title>
<style>body {{ margin: 16px; background: #fff; }}
@media (prefers-color-scheme: dark) {{ body {{ background: #111; }} }}</style>
<style>{css}</style>
</head>
<body>
<div id="lmtt-root"></div>
<script type="application/json" id="lmtt-state">{data}</script>
<script>{bundle}</script>
<script>
const state = JSON.parse(document.getElementById('lmtt-state').textContent);
{mount}
</script>
</body>
</html>
"""


def widget_state(widget) -> dict:
    """Every trait the page reads (protocol.TRAITS), the protocol version among them."""
    return {name: getattr(widget, name) for name in P.TRAITS}


def save_html(widget, path, *, title: str | None = None) -> pathlib.Path:
    """Write `widget` as one offline HTML file with the panels of `preload_selections`. The file is
    written beside `path` and renamed over it, so a failed export never leaves a broken file."""
    state = widget_state(widget)
    state["preloaded"] = {**widget.preloaded, **preloaded_panels(widget.view)}
    state["busy"] = ""
    title = title or f"lmtt-widget: {widget.run.prompt[:60]}"
    path = pathlib.Path(path)
    try:
        page = standalone_html(state, title).encode("utf-8")
    except UnicodeEncodeError as error:
        raise LmttError(f"cannot write the page as UTF-8: {error.reason} in {error.object[error.start:error.end]!r} "
                        "(the title or the prompt); nothing was written") from None
    partial = path.with_name(f".{path.name}.partial")
    try:
        partial.write_bytes(page)
        os.replace(partial, path)
    finally:
        partial.unlink(missing_ok=True)
    return path
