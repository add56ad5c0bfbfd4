"""End to end in Notebook 7 (`jupyter notebook`): a notebook that shows the demo model's routes,
the widget renders in the page, a click on an attention edge, and the kernel sees the selection."""

from __future__ import annotations

import json
import re
import time

import pytest

from clicks import HEAVIEST_EDGE_MIDPOINT, click_when_still
from tiny import IOI

pytestmark = [pytest.mark.e2e, pytest.mark.demo, pytest.mark.browser]

CELLS = [
    f"import lmtt_widget as lw\nw = lw.show(lw.load_model(), {IOI!r})\nw",
    "print(w.selection)",
]


OUTPUT = ("(i) => document.querySelectorAll('.jp-Notebook .jp-Cell')[i].querySelector('.jp-OutputArea-output')"
          "?.textContent ?? ''")


def notebook(cells: list[str]) -> str:
    return json.dumps({
        "cells": [{"cell_type": "code", "execution_count": None, "id": f"cell{i}", "metadata": {}, "outputs": [],
                   "source": source} for i, source in enumerate(cells)],
        "metadata": {"kernelspec": {"display_name": "Python 3 (ipykernel)", "language": "python", "name": "python3"}},
        "nbformat": 4, "nbformat_minor": 5})


def run_cell(page, index: int, timeout_s: float = 120) -> None:
    """Run one code cell (Shift+Enter in its editor) and wait for its execution count.

    A Shift+Enter pressed while the page is still connecting its kernel can be lost: if the
    cell neither runs ("[*]") nor gets a new count within a few seconds, press it again."""
    cell = page.locator(".jp-Notebook .jp-Cell").nth(index)
    prompt = cell.locator(".jp-InputArea-prompt")
    old = prompt.text_content()
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        cell.locator(".jp-InputArea-editor").click()
        page.keyboard.press("Shift+Enter")
        pressed = time.monotonic()
        while time.monotonic() < deadline:
            now = prompt.text_content()
            if re.search(r"\[\d+\]", now) and now != old:
                return
            if "*" not in now and time.monotonic() - pressed > 10:
                break  # not started: press again
            page.wait_for_timeout(200)
    raise AssertionError(f"cell {index} did not run within {timeout_s:.0f} s (prompt {prompt.text_content()!r})")


def test_notebook7_click_reaches_the_kernel(notebook7, e2e_page, artifacts):
    url, token, root = notebook7
    (root / "routes.ipynb").write_text(notebook(CELLS))
    page = e2e_page
    try:
        page.goto(f"{url}/notebooks/routes.ipynb?token={token}")
        page.wait_for_selector(".jp-Notebook .jp-Cell .jp-InputArea-editor", timeout=90_000)
        # Notebook 7's notebook page, not JupyterLab
        assert page.evaluate("() => [JSON.parse(document.getElementById('jupyter-config-data').textContent).appName,"
                             " document.body.dataset.notebook]") == ["Jupyter Notebook", "notebooks"]
        run_cell(page, 0)
        widget = page.locator(".lmtt").first
        widget.locator("svg path.edge.attention").first.wait_for(timeout=60_000)
        # the graph and the prediction of the last token
        assert widget.locator("svg circle.node").count() > 0
        labels = widget.locator("svg text.token-label").all_text_contents()
        assert labels[:3] == ["When", "␣Mary", "␣and"]
        assert widget.locator(".predictions .pred").first.text_content().startswith("␣Mary")
        page.screenshot(path=str(artifacts / "e2e-nb7-widget.png"))

        run_cell(page, 1)
        assert page.evaluate(OUTPUT, 1).strip() == "None"
        widget.locator(".lmtt-graph").scroll_into_view_if_needed()
        click_when_still(page, lambda: widget.locator("svg path.edge.attention").evaluate_all(HEAVIEST_EDGE_MIDPOINT))
        page.wait_for_function("() => (document.querySelector('.lmtt').dataset.panel || '').startsWith('attention/')",
                               timeout=60_000)
        panel = page.evaluate("() => document.querySelector('.lmtt').dataset.panel")
        page.screenshot(path=str(artifacts / "e2e-nb7-attention.png"))
        # the panel's key: the edge, then the effects' metric (its position and contrast: the runner-up),
        # then whether effects are on (they are, for a prompt this short)
        _, layer, source, target, head, position, contrast, with_effects = panel.split("/")
        assert contrast == "null" and with_effects == "1"
        run_cell(page, 1)
        expected = {"kind": "attention", "layer": int(layer), "source": int(source), "target": int(target),
                    "head": int(head)}
        assert page.evaluate(OUTPUT, 1).strip() == str(expected)
        assert page.dialogs == []
        assert page.external == set()  # no CDN or other request outside the server
    finally:
        page.screenshot(path=str(artifacts / "e2e-nb7-last.png"))
