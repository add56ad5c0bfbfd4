"""marimo: tests/e2e/marimo_app.py under `marimo run` shows a tiny model's widget through
`mo.ui.anywidget` (anywidget's module spec, no Jupyter); a click on an attention edge draws its
panel (a custom message to Python and back) and reaches Python (a cell that reads `w.selection`
reruns)."""

from __future__ import annotations

import ast

import pytest

from clicks import HEAVIEST_EDGE_MIDPOINT, click_when_still

pytestmark = [pytest.mark.e2e, pytest.mark.browser]



def test_marimo_renders_and_a_click_reaches_python(marimo_app, e2e_page, artifacts):
    url, token = marimo_app
    page = e2e_page
    try:
        page.goto(f"{url}/?access_token={token}")
        widget = page.locator(".lmtt").first
        widget.locator("svg path.edge.attention").first.wait_for(state="attached", timeout=60_000)
        labels = widget.locator("svg text.token-label").all_text_contents()
        assert labels[2:5] == ["␣Mary", "␣and", "␣John"]
        assert widget.locator(".predictions .pred").count() > 0
        kernel = page.locator("#kernel-selection")
        assert kernel.text_content() == "None"
        page.screenshot(path=str(artifacts / "e2e-marimo-widget.png"))

        widget.locator(".lmtt-graph").scroll_into_view_if_needed()
        click_when_still(page, lambda: widget.locator("svg path.edge.attention").evaluate_all(HEAVIEST_EDGE_MIDPOINT))
        page.wait_for_function("(el) => (el.dataset.panel || '').startsWith('attention/')",
                               arg=widget.element_handle(), timeout=30_000)
        # the panel's key: the edge, then the effects' metric (its position and contrast: the runner-up),
        # then whether effects are on (they are, for a prompt this short)
        _, layer, source, target, head, position, contrast, with_effects = widget.get_attribute("data-panel").split("/")
        assert contrast == "null" and with_effects == "1"
        assert widget.locator(".lmtt-panel h3").first.text_content().strip() == f"Attention edge, layer {layer}"
        assert widget.locator(".heads button.head").count() == 4  # the heads' shares, from Python
        expected = {"kind": "attention", "layer": int(layer), "source": int(source), "target": int(target),
                    "head": int(head)}
        page.wait_for_function("(el) => el.textContent.includes('attention')", arg=kernel.element_handle(),
                               timeout=30_000)
        assert ast.literal_eval(kernel.text_content()) == expected
        page.screenshot(path=str(artifacts / "e2e-marimo-attention.png"))
        assert page.dialogs == []
        assert page.external == set()  # no CDN or other request outside the server
    finally:
        page.screenshot(path=str(artifacts / "e2e-marimo-last.png"))
