"""End to end: the quickstart notebook in a real JupyterLab, a click in the page, and the Python
kernel sees the selection; the Ablate button reruns in the kernel and the page shows the kernel's
before/after; the notebook's pair of prompts shows its patch."""

from __future__ import annotations

import re

import pytest

from clicks import click_when_still

pytestmark = [pytest.mark.e2e, pytest.mark.demo, pytest.mark.browser]

# the middle of a clear attention edge between two tokens in the lowest layers (the notebook
# itself selects one in layer 22, so this click must change the selection)
EDGE_MIDPOINT = """() => {
  const paths = [...document.querySelector('.lmtt').querySelectorAll('path.edge.attention')]  // the first widget's
    .filter((p) => p.getAttribute('d').includes('C') && parseFloat(p.getAttribute('stroke-width')) > 1.2);
  const mid = (p) => p.getPointAtLength(p.getTotalLength() / 2);
  paths.sort((a, b) => mid(b).y - mid(a).y);
  const p = paths[0];
  const pt = mid(p);
  const m = p.getScreenCTM();
  return {x: pt.x * m.a + pt.y * m.c + m.e, y: pt.x * m.b + pt.y * m.d + m.f};
}"""


def run_all(page) -> None:
    """Run the cells one by one (Shift+Enter), each code cell to its end."""
    cells = page.locator(".jp-Notebook .jp-Cell")
    cells.first.click()
    for i in range(cells.count()):
        page.keyboard.press("Shift+Enter")
        if "jp-CodeCell" in (cells.nth(i).get_attribute("class") or ""):
            page.wait_for_function(
                "(i) => /\\[\\d+\\]/.test(document.querySelectorAll('.jp-Notebook .jp-Cell')[i]"
                ".querySelector('.jp-InputArea-prompt').textContent)", arg=i, timeout=120_000)


def kernel_head(page) -> int:
    """The head that Python chose for the notebook's own selection (cell 8's output)."""
    text = page.locator(".jp-Notebook .jp-Cell").nth(8).locator(".jp-OutputArea-output").first.text_content()
    return int(re.search(r"'head': (\d+)", text).group(1))


def output(page, index: int) -> str:
    return page.locator(".jp-Notebook .jp-Cell").nth(index).locator(".jp-OutputArea-output").first.text_content()


def run_cell(page, index: int) -> None:
    cell = page.locator(".jp-Notebook .jp-Cell").nth(index)
    cell.locator(".jp-InputArea-editor").click()
    page.keyboard.press("Shift+Enter")


def test_quickstart_click_reaches_the_kernel(jupyterlab, lab_page, artifacts):
    try:
        check_quickstart(jupyterlab, lab_page, artifacts)
    finally:
        lab_page.screenshot(path=str(artifacts / "e2e-lab-last.png"))


def check_quickstart(jupyterlab, page, artifacts):
    url, token, _ = jupyterlab
    page.goto(f"{url}/lab/tree/quickstart.ipynb?token={token}")
    page.wait_for_selector(".jp-Notebook .jp-Cell", timeout=90_000)
    page.get_by_text(re.compile(r"Python 3 \(ipykernel\) \| Idle")).wait_for(timeout=90_000)
    run_all(page)
    page.wait_for_selector(".lmtt svg path.edge.attention", timeout=30_000)
    page.screenshot(path=str(artifacts / "e2e-lab-ran.png"))
    outputs = page.locator(".jp-Notebook .jp-Cell").nth(5).locator(".jp-OutputArea-output").all_text_contents()
    assert [o.strip() for o in outputs] == ["None"]  # nothing selected yet
    page.screenshot(path=str(artifacts / "e2e-lab-widget.png"))
    page.locator(".lmtt-graph").first.scroll_into_view_if_needed()
    before = page.evaluate("() => document.querySelector('.lmtt').dataset.panel")
    # the edge, then the effects' metric: at the target (13), against the runner-up (null)
    assert before == f"attention/22/1/13/{kernel_head(page)}/13/null/1"
    click_when_still(page, lambda: page.evaluate(EDGE_MIDPOINT))
    page.wait_for_function("(b) => { const p = document.querySelector('.lmtt').dataset.panel; return p && p !== b; }",
                           arg=before, timeout=60_000)
    where = page.locator(".lmtt-panel .where").first.text_content()
    heading = page.locator(".lmtt-panel h3").first.text_content()
    source, target = [int(n) for n in re.findall(r"(?:from|to) (\d+)", where)]
    layer = int(re.search(r"layer (\d+)", heading).group(1))
    head = int(page.locator(".lmtt .heads button.head.active").first.get_attribute("data-head"))
    page.screenshot(path=str(artifacts / "e2e-lab-attention.png"))
    # ask the kernel: re-run `print(w.selection)`
    run_cell(page, 5)
    page.wait_for_function(
        "() => document.querySelectorAll('.jp-Notebook .jp-Cell')[5].querySelector('.jp-OutputArea-output')"
        "?.textContent.includes('attention')",
        timeout=60_000)
    printed = page.locator(".jp-Notebook .jp-Cell").nth(5).locator(".jp-OutputArea-output").first.text_content()
    assert printed.strip() == str({"kind": "attention", "layer": layer, "source": source, "target": target,
                                   "head": head})
    assert page.dialogs == []
    check_ablate_round_trip(page, artifacts, ["edge", layer, source, target, head])
    check_pair(page)


ABLATIONS_CELL = 14  # print([a["spec"] for a in w.interventions], p before, p after)


def check_ablate_round_trip(page, artifacts, spec):
    """The Ablate button on the clicked edge: the kernel reruns, the page shows its before/after."""
    widget = page.locator(".lmtt").first
    assert widget.locator(".ablation").count() == 1  # the notebook's own head ablation
    head_ablation = output(page, ABLATIONS_CELL).strip()
    assert widget.locator("select.ablate-what option").first.text_content().endswith(f", head {spec[4]}")
    widget.locator("button.ablate").click()  # the first choice: this edge, this head
    widget.locator(".ablation").nth(1).wait_for(timeout=60_000)
    prob = widget.locator(".prediction-change .metric.prob").text_content()
    before, after = [float(x) for x in re.findall(r"\d+\.\d{3}", prob)[:2]]
    page.screenshot(path=str(artifacts / "e2e-lab-ablate.png"))
    run_cell(page, ABLATIONS_CELL)
    page.wait_for_function(
        "([i, old]) => { const o = document.querySelectorAll('.jp-Notebook .jp-Cell')[i]"
        ".querySelector('.jp-OutputArea-output');"
        " return o && o.textContent.trim() !== '' && o.textContent.trim() !== old; }",
        arg=[ABLATIONS_CELL, head_ablation], timeout=60_000)
    printed = output(page, ABLATIONS_CELL).strip()
    specs = printed[:printed.rindex("]") + 1]
    assert specs.startswith("[['head', 22, ") and specs.endswith(f", {spec!r}]".replace('"', "'"))
    assert [float(x) for x in printed[len(specs):].split()] == [before, after]


def check_pair(page):
    """The notebook's pair of prompts: the other prompt, the difference marks and the patch."""
    pair = page.locator(".lmtt").nth(1)
    pair.scroll_into_view_if_needed()
    assert pair.locator(".lmtt-pair.paired .pair-other .tok.differs").text_content() == "␣Mary"
    assert pair.locator("path.diff-mark").count() > 0
    assert pair.locator(".patched").text_content().startswith("residual post L20 at 13")
    assert re.search(r"p 0\.\d{3} → 0\.\d{3}", pair.locator(".prediction-change .metric.prob").text_content())
