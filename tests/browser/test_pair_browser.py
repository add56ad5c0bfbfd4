"""The pair view in a real browser, bridged to the Python widget: two prompts' routes and their
difference marked on the graph, a patch from the other prompt round-trips with Python's numbers
before and after, undo restores the clean run, and a prompt of another length is refused visibly."""

from __future__ import annotations

import pytest

import lmtt_widget as lw
from lmtt_widget.widget.selections import visible
from page_numbers import fmt, signed
from tiny import IOI, IOI_CORRUPTED

pytestmark = pytest.mark.browser



def test_pair_shows_both_prompts_and_their_difference(model, page, harness, artifacts):
    w = lw.Widget(lw.analyze(model, IOI), other=lw.analyze(model, IOI_CORRUPTED), threshold=0.01)
    harness(w)
    page.wait_for_selector(".lmtt-pair.paired")
    shown = page.locator(".pair-shown .tok").all_text_contents()
    other = page.locator(".pair-other .tok").all_text_contents()
    assert len(shown) == len(other) == w.run.n_tokens
    differs = [int(t.get_attribute("title").split()[0]) for t in page.locator(".pair-other .tok.differs").all()]
    assert differs == [i for i, (a, b) in enumerate(zip(w.run.tokens, w.other.tokens)) if a != b] == [15]
    # the difference is the one of interventions.compare(other, shown), marked on the graph
    diff = lw.compare(w.other, w.run, token=w.target, threshold=w.threshold)
    assert w.graph_diff["against"] == "other"
    for sort in ("appeared", "vanished", "changed"):
        assert w.graph_diff["counts"][sort]["attention"] == sum(c.kind == "attention" for c in getattr(diff, sort))
    listed = sum(len([c for c in w.graph_diff[s] if c["kind"] == "attention"])
                 for s in ("appeared", "vanished", "changed"))
    assert listed > 0 and page.locator("path.diff-mark").count() == listed
    assert page.locator(".card.diff h3").text_content() == "Routes: this prompt vs the other prompt"
    assert page.locator(".prediction-change").count() == 0  # nothing patched yet
    page.screenshot(path=str(artifacts / "browser-pair.png"), full_page=True)
    # show the other prompt: the roles swap, in Python too
    page.click("button.swap")
    page.wait_for_function("() => document.querySelector('.pair-other .tok.differs').textContent === '␣John'")
    assert w.run.prompt == IOI_CORRUPTED and w.other.prompt == IOI
    assert page.errors == []


def test_patch_a_head_round_trips_and_undo_restores(model, page, harness, artifacts):
    w = lw.Widget(lw.analyze(model, IOI), other=lw.analyze(model, IOI_CORRUPTED), threshold=0.01)
    h = harness(w)
    clean_edges = page.locator("path.edge").count()
    last = w.run.n_tokens - 1
    assert page.locator("button.patch").is_disabled()  # nothing selected
    w.select("attention", layer=1, source=15, target=last, head=2)
    h.push()
    page.wait_for_selector("canvas.heatmap")
    labels = page.locator("select.patch-what option").all_text_contents()
    assert labels[0] == f"head L1.2 output at {last} ␣to" and labels[1] == f"residual mid L1 at {last} ␣to"
    page.click("button.patch")
    page.wait_for_selector(".prediction-change")
    assert w.patches == [{"node": ["head", 1, 2, last], "label": f"head L1.2 at {last} {visible(w.run.tokens[last])}",
                          "source": IOI_CORRUPTED}]
    # the numbers are interventions.patch's, done by hand
    _, expected = lw.patch(w.other, w.run.clean, ("head", 1, 2, last), position=w.target)
    c = w.comparison
    assert c["after"] == pytest.approx(expected.after._asdict())
    assert c["before"] == pytest.approx(expected.before._asdict())
    assert c["after"]["probability"] != pytest.approx(c["before"]["probability"], abs=1e-7)  # the patch did something
    text = page.locator(".prediction-change .metric.prob").text_content()
    assert f"{fmt(c['before']['probability'])} → {fmt(c['after']['probability'])} ({signed(c['prob_change'])})" in text
    assert page.locator(".patched").count() == 1
    assert page.locator(".patched").text_content().startswith(f"head L1.2 at {last}")
    assert page.locator("path.edge").count() == w.graph.number_of_edges()
    # the code box shows the code of the patch (interventions.code; tested to run in test_interventions)
    assert "# patch ('head', 1, 2," in w.code() and page.locator("textarea.code-text").input_value() == w.code()
    # with a patch active, the diff can be against the clean run instead of the other prompt
    assert w.graph_diff["against"] == "other"
    page.select_option("select.diff-against", "clean")
    page.wait_for_function("() => document.querySelector('.card.diff h3').textContent === 'Routes: patched vs clean'")
    assert w.diff_against == "clean" and w.graph_diff["against"] == "clean"
    page.screenshot(path=str(artifacts / "browser-pair-patch.png"), full_page=True)

    page.click(".patched button.unpatch")
    page.wait_for_function("() => document.querySelectorAll('.patched').length === 0")
    assert w.patches == [] and w.run.clean is None and w.comparison is None
    assert page.locator(".prediction-change").count() == 0 and page.locator("path.edge").count() == clean_edges
    assert w.graph_diff["against"] == "other"  # back to the pair's difference
    assert page.errors == []


def test_patch_a_residual_node_with_an_ablation_active(model, page, harness):
    w = lw.Widget(lw.analyze(model, IOI), other=lw.analyze(model, IOI_CORRUPTED), threshold=0.01)
    h = harness(w)
    w.ablate(("head", 0, 1))
    w.select("residual", stage="post", layer=0, token=15)
    h.push()
    page.wait_for_selector(".ablation")
    page.click("button.patch")
    page.wait_for_selector(".patched")
    assert w.patches[0]["node"] == ["post", 0, 15] and [a["spec"] for a in w.interventions] == [["head", 0, 1]]
    ablated, _ = w.run.clean.intervene(("head", 0, 1))
    _, by_hand = lw.patch(w.other, ablated, ("post", 0, 15), position=w.target)
    assert w.comparison["after"] == pytest.approx(by_hand.after._asdict())
    # undoing the ablation keeps the patch
    page.click(".ablation button.undo")
    page.wait_for_function("() => document.querySelectorAll('.ablation').length === 0")
    assert w.interventions == [] and len(w.patches) == 1 and page.locator(".patched").count() == 1
    assert page.errors == []


def test_prompts_of_another_length_are_refused_visibly(model, page, harness):
    w = lw.Widget(lw.analyze(model, IOI), threshold=0.01)
    harness(w)
    assert page.locator(".lmtt-pair.paired").count() == 0
    page.fill("input.other-prompt", "When Mary went to the store, John gave a drink to")
    page.click("button.compare-with")
    page.wait_for_function("() => document.querySelector('.lmtt .message').textContent.includes('Refused')")
    message = page.locator(".lmtt .message").text_content()
    assert f"{w.run.n_tokens} and" in message and "tokens long" in message
    assert w.other is None and page.locator(".lmtt-pair.paired").count() == 0
    # a prompt of the same length starts the pair
    page.fill("input.other-prompt", IOI_CORRUPTED)
    page.click("button.compare-with")
    page.wait_for_selector(".lmtt-pair.paired")
    assert w.other.prompt == IOI_CORRUPTED and page.locator(".lmtt .message").is_hidden()
    assert page.errors == []
