"""Widget benchmark (not a test): the demo model's routes for prompts of several lengths, shown in a
real JupyterLab in headless chromium.

    .venv/bin/python bench/widget.py [--tokens 300,2048,4096] [--clicks 5] [--model demo|random] [--budget B]

For each length: the payload (the state the kernel sends: JSON + binary buffers); the first render
of the graph once the payload is in the page (building the SVG, and until the first frame is
painted); click-to-panel latency for each kind of panel, including the kernel round trip (the
click, the request over the kernel's websocket, Python computing the panel, the reply, the panel
drawn); and the page's longest task while panning, zooming and jumping along the overview strip
(a PerformanceObserver of long tasks). `--model random` uses a random-initialised model of the
demo's shape (same cost, no weights needed). Goals: first paint <= 200 ms, click -> panel <= 150 ms
(median), payload <= 2 MB at T=2048, no task > 200 ms while panning at T=4096.
Screenshots go to test-artifacts/.
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

IMPORTS = ("import json, time, torch\nimport lmtt_widget as lw\nfrom ipywidgets.widgets.widget import _remove_buffers\n"
           "from lmtt_widget.run import analyze_ids\n")
LOAD_CELL = {
    "demo": IMPORTS + "model = lw.load_model()\nw = None",
    "random": IMPORTS + "import copy\nfrom transformers import LlamaForCausalLM\n"
              "demo = lw.load_model()\nconfig = copy.deepcopy(demo._module.config)\ntorch.manual_seed(0)\n"
              "model = lw.load_model(LlamaForCausalLM(config).eval(), tokenizer=demo.tokenizer)\nw = None",
}
# per length: analyse and show (closing the widget before: its run would stay in memory), then the sizes
SHOW_CELL = ("if w is not None: w.close()\nids = model.tokenizer({text!r} * {repeats})['input_ids'][:{tokens}]\n"
             "start = time.perf_counter()\nrun = analyze_ids(model, torch.tensor(ids), progress=False{budget})\n"
             "analysed = time.perf_counter() - start\nw = lw.Widget(run)\nw")
SIZES_CELL = ("state, _, buffers = _remove_buffers({'info': w.info, 'payload': w.payload})\n"
              "print(json.dumps({'json': len(json.dumps(state)), 'buffers': sum(len(bytes(b)) for b in buffers), "
              "'edges': w.graph.number_of_edges(), 'nodes': w.graph.number_of_nodes(), 'tokens': run.n_tokens, "
              "'columns': len({n[2] for n in w.graph.nodes}), 'analyse_s': analysed}))")

# the last widget on the page (each length shows its own)
WIDGET = "[...document.querySelectorAll('.lmtt')].at(-1)"

# the i-th heaviest attention edge between two tokens (its middle), or node of a stage, in the plot,
# as the graph reports them (js/graph.ts, lmttInView: elements or painted, the same)
FIND = """([what, i]) => {
  const graph = [...document.querySelectorAll('.lmtt')].at(-1).querySelector('.lmtt-graph');
  const points = graph.lmttInView(what);
  return points[i % points.length];
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


def write_notebook(path: Path, lengths: list[int], model: str, budget: int | None) -> None:
    import nbformat

    nb = nbformat.v4.new_notebook()
    cells = [LOAD_CELL[model]]
    for tokens in lengths:
        cells += [SHOW_CELL.format(text=TEXT, tokens=tokens, repeats=tokens // 30 + 2,
                                   budget="" if budget is None else f", budget_bytes={budget}"), SIZES_CELL]
    nb.cells = [nbformat.v4.new_code_cell(c) for c in cells]
    nb.metadata["kernelspec"] = {"name": "python3", "display_name": "Python 3", "language": "python"}
    nbformat.write(nb, path)


def run_cell(page, i: int) -> None:
    """Run cell i (the notebook's cursor is on it) and wait for its execution count."""
    page.keyboard.press("Shift+Enter")
    page.wait_for_function(
        "(i) => /\\[\\d+\\]/.test(document.querySelectorAll('.jp-Notebook .jp-Cell')[i]"
        ".querySelector('.jp-InputArea-prompt').textContent)", arg=i, timeout=1_800_000)


def click_to_panel(page, what: str, i: int) -> tuple[float, float]:
    """(click -> panel drawn, request -> reply) in ms, measured in the page. Clicks the i-th
    element of the kind in view (or the next one, if that one's panel is already shown)."""
    for attempt in range(i, i + 5):
        before = page.evaluate(f"() => {WIDGET}.dataset.panel || ''")
        point = page.evaluate(FIND, [what, attempt * 3])
        page.evaluate("() => { window.__t0 = null; document.addEventListener('pointerdown', "
                      "() => { window.__t0 = window.__t0 ?? performance.now(); }, {capture: true, once: true}); }")
        page.mouse.click(point["x"], point["y"])
        try:
            page.wait_for_function(f"(b) => {{ const d = {WIDGET}.dataset; return d.panel && d.panel !== b; }}",
                                   arg=before, timeout=60_000)
        except Exception:
            page.screenshot(path=str(ARTIFACTS / "bench-failed-click.png"))
            print(f"no new panel after clicking {what} at {point}; trying another", file=sys.stderr)
            continue
        return page.evaluate(f"() => {{ const d = {WIDGET}.dataset; "
                             "return [parseFloat(d.panelAt) - window.__t0, parseFloat(d.panelMs || 'NaN')]; }")
    raise RuntimeError(f"no {what} click opened a new panel")


def repaint_after_payload(page) -> tuple[float, float]:
    """ms from a new payload in the page (the routes to another target, asked by a click on its
    cell) to the first frame painted with it: the first display also waits for JupyterLab to
    attach the output, this one does not; and the seconds from the click to that paint (the
    kernel's part: the new target's routes and effects)."""
    page.evaluate(f"() => {{ {WIDGET}.dataset.paintMs = ''; }}")
    cell = page.evaluate(f"() => {{ const cells = [...{WIDGET}.querySelectorAll('.target-cell:not(.active) rect')];"
                         " const r = cells.at(-1).getBoundingClientRect();"
                         " return {x: r.left + r.width / 2, y: r.top + r.height / 2}; }")
    start = time.perf_counter()
    page.mouse.click(cell["x"], cell["y"])
    page.wait_for_function(f"() => {WIDGET}.dataset.paintMs", timeout=900_000, polling=100)
    return float(page.evaluate(f"() => {WIDGET}.dataset.paintMs")), time.perf_counter() - start


def pan_long_tasks(page) -> tuple[float, int]:
    """(the longest task in ms, how many over 200 ms) while zooming in, dragging the graph both ways
    and jumping along the overview strip (which opens the gaps there)."""
    page.evaluate("() => { window.__long = []; window.__observer = new PerformanceObserver((list) => {"
                  " for (const e of list.getEntries()) window.__long.push(e.duration); });"
                  " window.__observer.observe({type: 'longtask'}); }")
    plot = page.evaluate(f"() => {{ const r = {WIDGET}.querySelector('svg.plot > rect.bg').getBoundingClientRect();"
                         " return {x: r.left, y: r.top, w: r.width, h: r.height}; }")
    cx, cy = plot["x"] + plot["w"] / 2, plot["y"] + plot["h"] / 2
    page.mouse.move(cx, cy)
    for _ in range(4):
        page.mouse.wheel(0, -250)
        page.wait_for_timeout(50)
    for direction in (1, -1, 1, -1, 1):
        page.mouse.move(cx, cy)
        page.mouse.down()
        page.mouse.move(cx + direction * 0.45 * plot["w"], cy, steps=12)
        page.mouse.up()
    strip = page.evaluate(f"() => {{ const r = {WIDGET}.querySelector('rect.ov-bg')?.getBoundingClientRect();"
                          " return r ? {x: r.left, y: r.top, w: r.width, h: r.height} : null; }")
    if strip:
        for k in range(1, 10):
            page.mouse.click(strip["x"] + strip["w"] * k / 10, strip["y"] + strip["h"] / 2)
            page.wait_for_timeout(60)
        for direction in (-1, 1, -1):
            page.mouse.move(cx, cy)
            page.mouse.down()
            page.mouse.move(cx + direction * 0.45 * plot["w"], cy, steps=12)
            page.mouse.up()
    page.keyboard.press("0")
    page.wait_for_timeout(300)
    durations = page.evaluate("() => { window.__observer.disconnect(); return window.__long; }")
    return (max(durations) if durations else 0.0), sum(d > 200 for d in durations)


def measure(page, tokens: int, clicks: int, sizes: dict) -> dict:
    page.wait_for_function(f"() => {WIDGET}?.dataset.paintMs", timeout=120_000)
    render = page.evaluate(f"() => {{ const d = {WIDGET}.dataset; "
                           "return [parseFloat(d.renderMs), parseFloat(d.paintMs)]; }")
    page.evaluate(f"() => {WIDGET}.querySelector('.lmtt-graph').scrollIntoView()")
    page.wait_for_timeout(300)
    page.screenshot(path=str(ARTIFACTS / f"bench-graph-{tokens}.png"))
    panels = {}
    if clicks:
        for what in ("post", "attention", "ffn"):
            panels[what] = [click_to_panel(page, what, i) for i in range(clicks)]
        page.screenshot(path=str(ARTIFACTS / f"bench-panels-{tokens}.png"))
    repaint = repaint_after_payload(page)
    longest, over = pan_long_tasks(page)
    page.screenshot(path=str(ARTIFACTS / f"bench-panned-{tokens}.png"))
    return {"sizes": sizes, "render": render, "repaint": repaint, "panels": panels, "longest_task": longest,
            "tasks_over_200": over}


def report(results: dict[int, dict]) -> list[tuple[str, str, str]]:
    names = {"post": "residual node (logit lens + FFN update)", "attention": "attention edge (heads, maps, logits)",
             "ffn": "FFN block (top neurons + logits)"}
    rows = []
    for tokens, r in results.items():
        s = r["sizes"]
        payload_mb = (s["json"] + s["buffers"]) / 1e6
        rows.append((f"T={tokens}: prompt", f"{s['tokens']} tokens, analysed in {s['analyse_s']:.1f} s; routes: "
                     f"{s['nodes']} nodes, {s['edges']} edges over {s['columns']} columns", ""))
        rows.append((f"T={tokens}: payload (info + graph)", f"{payload_mb:.3f} MB (JSON {s['json'] / 1e3:.1f} kB, "
                     f"buffers {s['buffers'] / 1e3:.1f} kB)", "<= 2 MB at 2048"))
        rows.append((f"T={tokens}: first render: build the SVG", f"{r['render'][0]:.1f} ms", ""))
        rows.append((f"T={tokens}: first display: to first paint", f"{r['render'][1]:.1f} ms (with JupyterLab "
                     "attaching the output)", ""))
        rows.append((f"T={tokens}: new payload (another target): to paint", f"{r['repaint'][0]:.1f} ms (click to "
                     f"paint {r['repaint'][1]:.1f} s: the kernel computes the routes and effects)", "<= 200 ms"))
        for what, values in r["panels"].items():
            total, reply = [v[0] for v in values], [v[1] for v in values]
            rows.append((f"T={tokens}: click to panel: {names[what]}",
                         f"median {statistics.median(total):.1f} ms, max {max(total):.1f} "
                         f"(kernel round trip median {statistics.median(reply):.1f})", "<= 150 ms median"))
        rows.append((f"T={tokens}: longest task while panning", f"{r['longest_task']:.0f} ms "
                     f"({r['tasks_over_200']} over 200 ms)", "none > 200 ms at 4096"))
    return rows


def main() -> int:
    parser = argparse.ArgumentParser()
    parser.add_argument("--tokens", default="300,2048,4096", help="prompt lengths, comma-separated")
    parser.add_argument("--clicks", type=int, default=5, help="clicks per kind of panel (0: none)")
    parser.add_argument("--click-max", type=int, default=2048, help="no clicks above this length")
    parser.add_argument("--model", choices=("demo", "random"), default="demo")
    parser.add_argument("--budget", type=int, default=None,
                        help="analyze's budget_bytes (default: the library's; more keeps every layer's FFN "
                             "activations at length, so that an FFN panel does not trace the model again)")
    args = parser.parse_args()
    lengths = [int(t) for t in args.tokens.split(",")]
    from playwright.sync_api import sync_playwright

    chromium = shutil.which("chromium")
    if chromium is None:
        print("needs Debian's chromium (apt-get install chromium)", file=sys.stderr)
        return 1
    ARTIFACTS.mkdir(exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix="lmtt-bench-"))
    write_notebook(tmp / "bench.ipynb", lengths, args.model, args.budget)
    server, url, token = start_lab(tmp, tmp / "home")
    results: dict[int, dict] = {}
    try:
        with sync_playwright() as p:
            browser = p.chromium.launch(executable_path=chromium, args=CHROMIUM_ARGS)
            page = browser.new_page(viewport={"width": 1500, "height": 1100})
            page.goto(f"{url}/lab/tree/bench.ipynb?token={token}")
            page.wait_for_selector(".jp-Notebook .jp-Cell", timeout=90_000)
            page.get_by_text("| Idle").wait_for(timeout=90_000)
            page.locator(".jp-Notebook .jp-Cell").first.click()
            run_cell(page, 0)
            for k, tokens in enumerate(lengths):
                start = time.perf_counter()
                run_cell(page, 1 + 2 * k)
                run_cell(page, 2 + 2 * k)
                sizes = json.loads(page.locator(".jp-Notebook .jp-Cell").nth(2 + 2 * k)
                                   .locator(".jp-OutputArea-output").first.text_content())
                print(f"T={tokens}: analysed and shown in {time.perf_counter() - start:.1f} s", flush=True)
                results[tokens] = measure(page, tokens, args.clicks if tokens <= args.click_max else 0, sizes)
                page.locator(".jp-Notebook .jp-Cell").nth(3 + 2 * k if k + 1 < len(lengths) else 2 + 2 * k).click()
                page.keyboard.press("Escape")  # command mode, on the next cell to run
            browser.close()
    finally:
        server.terminate()
        server.wait(timeout=20)
        shutil.rmtree(tmp, ignore_errors=True)

    rows = report(results)
    width = max(len(r[0]) for r in rows)
    budget = "the default budget" if args.budget is None else f"budget_bytes={args.budget}"
    print(f"\n{args.model} model, {budget}\n{'measure'.ljust(width)}  value  [goal]")
    for name, value, goal in rows:
        print(f"{name.ljust(width)}  {value}  {'[' + goal + ']' if goal else ''}")
    print(f"\nscreenshots: {ARTIFACTS}/bench-graph-*.png, bench-panels-*.png, bench-panned-*.png")
    return 0


if __name__ == "__main__":
    sys.exit(main())
