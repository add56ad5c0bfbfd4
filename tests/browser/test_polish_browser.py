"""The widget shows the state it holds, in a real browser bridged to Python: a threshold of 0.0001
reads as such; after a refused analysis the prompt box keeps the text and says the graph is of the
prompt before; a new analysis clears the compare box; the controls are compact (options folded,
intervention controls only with a selection, the graph in a 1000 px window in the pair view); a
legend; vanished edges of an ablation's difference are drawn with their nodes."""

from __future__ import annotations

import math

import pytest
from page_actions import ablate

import lmtt_widget as lw
from tiny import IOI, IOI_CORRUPTED

pytestmark = pytest.mark.browser



def test_a_tiny_threshold_reads_as_it_is_and_the_slider_sets_one(model, page, harness):
    w = lw.Widget(lw.analyze(model, IOI), threshold=0.01)
    h = harness(w)
    w.threshold = 0.0001
    h.push()
    page.wait_for_function("() => document.querySelector('.threshold-value').textContent === '0.0001'")
    slider = page.locator(".lmtt-controls input[type=range]")
    assert float(slider.input_value()) == pytest.approx(-4)  # its left end, not pinned past it
    assert page.locator("path.edge").count() == w.graph.number_of_edges()
    slider.fill(str(math.log10(0.02)))  # the user moves it: a log scale
    page.wait_for_function("() => document.querySelector('.threshold-value').textContent === '0.02'")
    page.wait_for_function(f"() => document.querySelectorAll('path.edge').length === {w.graph.number_of_edges()}")
    assert w.threshold == pytest.approx(0.02)


def test_a_refused_prompt_stays_in_the_box_marked_as_not_shown(model, page, harness):
    w = lw.Widget(lw.analyze(model, IOI), threshold=0.01)
    harness(w)
    box = page.locator("textarea.prompt")
    assert page.locator(".prompt-note").is_hidden()
    box.fill("   ")
    page.click("button.analyze")
    page.wait_for_function("() => document.querySelector('.lmtt .message').textContent.includes('prompt is empty')")
    assert box.input_value() == "   " and w.run.prompt == IOI  # the user's text, the old graph
    note = page.locator(".prompt-note")
    assert "Not analysed yet: the graph shows the prompt analysed before" in note.text_content()
    assert "edited" in box.get_attribute("class")
    note.locator("button.restore").click()
    assert box.input_value() == IOI and note.is_hidden()


def test_a_new_analysis_clears_the_compare_box(model, page, harness):
    w = lw.Widget(lw.analyze(model, IOI), threshold=0.01)
    harness(w)
    page.fill("input.other-prompt", "half typed")
    page.fill("textarea.prompt", "The capital of France is")
    page.click("button.analyze")
    page.wait_for_function("() => document.querySelector('.lmtt .message').textContent.startsWith('Analysed')")
    assert page.locator("input.other-prompt").input_value() == ""
    assert page.locator("textarea.prompt").input_value() == "The capital of France is"
    assert page.locator(".prompt-note").is_hidden()


def test_controls_are_compact_and_intervention_controls_come_with_a_selection(model, page, harness, artifacts):
    page.set_viewport_size({"width": 1400, "height": 1000})
    w = lw.Widget(lw.analyze(model, IOI), other=lw.analyze(model, IOI_CORRUPTED), threshold=0.01)
    h = harness(w)
    assert page.locator(".ablate-row").is_hidden() and page.locator(".patch-row").is_hidden()
    assert page.locator("select.ablate-what option").count() == 0  # no empty list is shown
    assert page.locator("details.options").get_attribute("open") is None
    assert not page.locator("text=renormalise").is_visible()  # folded
    w.select("attention", layer=1, source=3, target=9, head=2)
    h.push()
    page.wait_for_selector(".ablate-row select.ablate-what")
    assert page.locator(".ablate-row").is_visible() and page.locator(".patch-row").is_visible()
    assert page.locator("select.patch-what option").count() > 0
    ablate(page, ["head", 1, 2])
    page.wait_for_selector(".prediction-change")
    graph = page.locator(".lmtt-graph").bounding_box()
    top = page.locator(".lmtt").bounding_box()["y"]
    assert graph["y"] + graph["height"] - top <= 1000  # the whole graph inside a 1000 px window, in the pair view
    legend = page.locator(".lmtt-legend .entry").all_text_contents()
    assert {"attention", "residual", "FFN"} <= set(legend) and any("share" in e for e in legend)
    page.screenshot(path=str(artifacts / "polish-pair-compact.png"))
    w.select()  # nothing selected: the ablate row goes, the active ablation stays listed
    h.push()
    page.wait_for_function("() => document.querySelector('.ablate-row').style.display === 'none'")
    assert page.locator(".ablation").is_visible()


POINTS = """() => [...document.querySelectorAll('path.diff-mark.vanished')].map((p) => {
  const a = p.getPointAtLength(0), b = p.getPointAtLength(p.getTotalLength());
  return [[a.x, a.y], [b.x, b.y]];
})"""


def test_vanished_edges_are_drawn_with_their_nodes(model, page, harness, artifacts):
    w = lw.Widget(lw.analyze(model, IOI), threshold=0.01)
    harness(w)
    ablate(page, ["attention", 1])
    page.wait_for_selector("path.diff-mark.vanished")
    ends = page.evaluate(POINTS)
    nodes = page.locator("circle.diff-node.vanished").evaluate_all(
        "cs => cs.map(c => [c.cx.baseVal.value, c.cy.baseVal.value])")
    assert ends and nodes
    for end in (e for pair in ends for e in pair):
        assert any(abs(end[0] - x) < 0.6 and abs(end[1] - y) < 0.6 for x, y in nodes), end
    # zooming moves the nodes: the marks follow them
    box = page.locator("svg.plot > rect.bg").bounding_box()
    page.mouse.move(box["x"] + box["width"] / 2, box["y"] + box["height"] / 2)
    page.mouse.wheel(0, -400)
    page.wait_for_timeout(100)
    ends, nodes = page.evaluate(POINTS), page.locator("circle.diff-node.vanished").evaluate_all(
        "cs => cs.map(c => [c.cx.baseVal.value, c.cy.baseVal.value])")
    for end in (e for pair in ends for e in pair):
        assert any(abs(end[0] - x) < 0.6 and abs(end[1] - y) < 0.6 for x, y in nodes), end
    page.screenshot(path=str(artifacts / "polish-vanished-edges.png"))
