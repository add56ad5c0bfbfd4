"""Widget benchmark (not a test): the demo model's routes for a 256-token prompt, shown in a real
JupyterLab in headless chromium.

    .venv/bin/python bench/widget.py [--tokens 256] [--clicks 5]

Measures the payload (the state the kernel sends: JSON + binary buffers), the first render of
the graph in the page (building the SVG, and until the first frame is painted), and
click-to-panel latency for each kind of panel, including the kernel round trip (the click, the
request over the kernel's websocket, Python computing the panel, the reply, the panel drawn).
Goals: render < 150 ms, panel < 100 ms, payload < 2 MB. Screenshots go to test-artifacts/.
"""

from __future__ import annotations

import argparse
import json
import os
import secrets
import shutil
import socket
import statistics
import subprocess
import sys
import tempfile
import time
import urllib.request
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
ARTIFACTS = ROOT / "test-artifacts"
CHROMIUM_ARGS = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-background-networking"]
TEXT = ("When Mary and John went to the store, John gave a drink to Mary. The capital of France is Paris, "
        "and the capital of Italy is Rome. Tokens, spaces and newlines all count.\n")

NOTEBOOK_CELLS = [
    "import json, time, torch\nimport lmtt_widget as lw\nfrom lmtt_widget.widget import serialize\n"
    "from lmtt_widget.run import analyze_ids\nmodel = lw.load_model()",
    "ids = model.tokenizer({text!r} * 40)['input_ids'][:{tokens}]\n"
    "run = analyze_ids(model, torch.tensor(ids))\nrun.n_tokens",
    "w = lw.Widget(run)\nw",
    "from ipywidgets.widgets.widget import _remove_buffers\n"
    "state, _, buffers = _remove_buffers({{k: getattr(w, k) for k in ('info', 'payload')}})\n"
    "print(json.dumps({{'json': len(json.dumps(state)), 'buffers': sum(len(bytes(b)) for b in buffers), "
    "'edges': w.graph.number_of_edges(), 'nodes': w.graph.number_of_nodes(), 'tokens': run.n_tokens}}))",
]

# the heaviest edge of a kind (attention: between two tokens) or a node of a stage, its midpoint
FIND = """([what, i]) => {
  const sel = what === 'attention' ? '.lmtt path.edge.attention' : `.lmtt circle.node.${what}`;
  const box = document.querySelector('.lmtt-graph').getBoundingClientRect();
  const screen = (el) => {
    const pt = what === 'attention' ? el.getPointAtLength(el.getTotalLength() / 2)
      : {x: el.cx.baseVal.value, y: el.cy.baseVal.value};
    const m = el.getScreenCTM();
    return {x: pt.x * m.a + pt.y * m.c + m.e, y: pt.x * m.b + pt.y * m.d + m.f};
  };
  const inView = (p) => p.x > box.left + 30 && p.x < box.right - 30 && p.y > box.top + 60 && p.y < box.bottom - 30;
  let els = [...document.querySelectorAll(sel)].filter((el) => inView(screen(el)));
  if (what === 'attention') {
    els = els.filter((p) => p.getAttribute('d').includes('C'));
    els.sort((a, b) => parseFloat(b.getAttribute('stroke-width')) - parseFloat(a.getAttribute('stroke-width')));
  }
  return screen(els[i % els.length]);
}"""


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def start_lab(root: Path, home: Path):
    port, token = free_port(), secrets.token_hex(16)
    env = {**os.environ, "JUPYTER_CONFIG_DIR": str(home / "config"), "JUPYTER_RUNTIME_DIR": str(home / "runtime"),
           "JUPYTERLAB_SETTINGS_DIR": str(home / "settings"), "JUPYTERLAB_WORKSPACES_DIR": str(home / "ws")}
    server = subprocess.Popen(
        [sys.executable, "-m", "jupyter", "lab", "--no-browser", "--ip=127.0.0.1", f"--port={port}", "--allow-root",
         f"--IdentityProvider.token={token}", f"--ServerApp.root_dir={root}", "--LabApp.news_url=",
         "--LabApp.extension_manager=readonly"],
        cwd=root, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    url = f"http://127.0.0.1:{port}"
    deadline = time.monotonic() + 90
    while True:
        try:
            urllib.request.urlopen(f"{url}/api/status?token={token}", timeout=2)
            return server, url, token
        except OSError as err:
            if server.poll() is not None or time.monotonic() > deadline:
                server.kill()
                raise RuntimeError("JupyterLab did not start") from err
            time.sleep(0.5)


def write_notebook(path: Path, tokens: int) -> None:
    import nbformat

    nb = nbformat.v4.new_notebook()
    nb.cells = [nbformat.v4.new_code_cell(c.format(text=TEXT, tokens=tokens)) for c in NOTEBOOK_CELLS]
    nb.metadata["kernelspec"] = {"name": "python3", "display_name": "Python 3", "language": "python"}
    nbformat.write(nb, path)


def run_cells(page, n: int) -> None:
    cells = page.locator(".jp-Notebook .jp-Cell")
    cells.first.click()
    for i in range(n):
        page.keyboard.press("Shift+Enter")
        page.wait_for_function(
            "(i) => /\\[\\d+\\]/.test(document.querySelectorAll('.jp-Notebook .jp-Cell')[i]"
            ".querySelector('.jp-InputArea-prompt').textContent)", arg=i, timeout=300_000)


def click_to_panel(page, what: str, i: int) -> tuple[float, float]:
    """(click -> panel drawn, request -> reply) in ms, measured in the page. Clicks the i-th
    element of the kind in view (or the next one, if that one's panel is already shown)."""
    for attempt in range(i, i + 5):
        before = page.evaluate("() => document.querySelector('.lmtt').dataset.panel || ''")
        point = page.evaluate(FIND, [what, attempt * 3])
        page.evaluate("() => { window.__t0 = null; document.addEventListener('pointerdown', "
                      "() => { window.__t0 = window.__t0 ?? performance.now(); }, {capture: true, once: true}); }")
        page.mouse.click(point["x"], point["y"])
        try:
            page.wait_for_function("(b) => { const d = document.querySelector('.lmtt').dataset; "
                                   "return d.panel && d.panel !== b; }", arg=before, timeout=20_000)
        except Exception:
            page.screenshot(path=str(ARTIFACTS / "bench-failed-click.png"))
            print(f"no new panel after clicking {what} at {point}; trying another", file=sys.stderr)
            continue
        return page.evaluate("() => { const d = document.querySelector('.lmtt').dataset; "
                             "return [parseFloat(d.panelAt) - window.__t0, parseFloat(d.panelMs || 'NaN')]; }")
    raise RuntimeError(f"no {what} click opened a new panel")


def main() -> int:
    parser = argparse.ArgumentParser()
    parser.add_argument("--tokens", type=int, default=256)
    parser.add_argument("--clicks", type=int, default=5, help="clicks per kind of panel")
    args = parser.parse_args()
    from playwright.sync_api import sync_playwright

    chromium = shutil.which("chromium")
    if chromium is None:
        print("needs Debian's chromium (apt-get install chromium)", file=sys.stderr)
        return 1
    ARTIFACTS.mkdir(exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix="lmtt-bench-"))
    write_notebook(tmp / "bench.ipynb", args.tokens)
    server, url, token = start_lab(tmp, tmp / "home")
    rows = []
    try:
        with sync_playwright() as p:
            browser = p.chromium.launch(executable_path=chromium, args=CHROMIUM_ARGS)
            page = browser.new_page(viewport={"width": 1500, "height": 1100})
            page.goto(f"{url}/lab/tree/bench.ipynb?token={token}")
            page.wait_for_selector(".jp-Notebook .jp-Cell", timeout=90_000)
            page.get_by_text("| Idle").wait_for(timeout=90_000)
            start = time.perf_counter()
            run_cells(page, len(NOTEBOOK_CELLS))
            print(f"notebook ran in {time.perf_counter() - start:.1f} s (load, analyse {args.tokens} tokens, show)")
            page.wait_for_selector(".lmtt svg path.edge", timeout=60_000)
            page.wait_for_function("() => document.querySelector('.lmtt').dataset.paintMs")
            render = page.evaluate("() => { const d = document.querySelector('.lmtt').dataset; "
                                   "return [parseFloat(d.renderMs), parseFloat(d.paintMs)]; }")
            sizes = json.loads(page.locator(".jp-Notebook .jp-Cell").nth(3).locator(".jp-OutputArea-output")
                               .first.text_content())
            drawn = page.locator(".lmtt text.token-label").count()
            page.locator(".lmtt-graph").scroll_into_view_if_needed()
            page.screenshot(path=str(ARTIFACTS / "bench-graph-256.png"))
            panels = {}
            for what in ("post", "attention", "ffn"):
                panels[what] = [click_to_panel(page, what, i) for i in range(args.clicks)]
                page.screenshot(path=str(ARTIFACTS / f"bench-panel-{what}.png"))
            browser.close()
    finally:
        server.terminate()
        server.wait(timeout=20)
        shutil.rmtree(tmp, ignore_errors=True)

    payload_mb = (sizes["json"] + sizes["buffers"]) / 1e6
    rows.append(("prompt", f"{sizes['tokens']} tokens ({drawn} columns near the view drawn)", ""))
    rows.append(("routes graph", f"{sizes['nodes']} nodes, {sizes['edges']} edges", ""))
    rows.append(("payload (info + graph)", f"{payload_mb:.3f} MB (JSON {sizes['json'] / 1e3:.1f} kB, "
                 f"buffers {sizes['buffers'] / 1e3:.1f} kB)", "< 2 MB"))
    rows.append(("first render: build the SVG", f"{render[0]:.1f} ms", "< 150 ms"))
    rows.append(("first render: to first paint", f"{render[1]:.1f} ms", "< 150 ms"))
    names = {"post": "residual node (logit lens + FFN update)", "attention": "attention edge (heads, 2 maps, logits)",
             "ffn": "FFN block (top neurons + logits)"}
    for what, values in panels.items():
        total = [v[0] for v in values]
        reply = [v[1] for v in values]
        rows.append((f"click to panel: {names[what]}",
                     f"median {statistics.median(total):.1f} ms, first {total[0]:.1f}, max {max(total):.1f} "
                     f"(kernel round trip median {statistics.median(reply):.1f})", "< 100 ms"))
    width = max(len(r[0]) for r in rows)
    print(f"\n{'measure'.ljust(width)}  value  [goal]")
    for name, value, goal in rows:
        print(f"{name.ljust(width)}  {value}  {'[' + goal + ']' if goal else ''}")
    print(f"\nscreenshots: {ARTIFACTS}/bench-graph-256.png, bench-panel-*.png")
    return 0


if __name__ == "__main__":
    sys.exit(main())
