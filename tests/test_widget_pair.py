"""The widget's pair of prompts, Python side: the difference is interventions.compare's, a patch
shows interventions.patch's run and numbers, patches and ablations combine and undo one by one,
the target and threshold recompute the difference, and prompts that do not align are refused (in
Python with an error, from the page with an error reply) without changing anything. Tiny random
models; no browser."""

from __future__ import annotations

import pytest
import torch
from test_widget import invoke, refused

import lmtt_widget as lw
from lmtt_widget import LmttError
from lmtt_widget.widget import serialize as S
from lmtt_widget.widget.export import widget_state
from tiny import IOI, IOI_CORRUPTED


@pytest.fixture(scope="module")
def runs(model):
    return lw.analyze(model, IOI), lw.analyze(model, IOI_CORRUPTED)


@pytest.fixture()
def widget(runs):
    return lw.Widget(runs[0], other=runs[1], threshold=0.01)


def diff_counts(diff) -> dict:
    return {sort: {kind: sum(c.kind == kind for c in getattr(diff, sort)) for kind in S.KINDS}
            for sort in ("appeared", "vanished", "changed")}


def test_pair_shows_the_difference_of_the_two_prompts_routes(widget, runs):
    clean, corrupted = runs
    assert widget.run is clean and widget.other is corrupted
    assert widget.pair["prompt"] == IOI_CORRUPTED and widget.pair["tokens"] == list(corrupted.tokens)
    top = corrupted.logits[-1].softmax(-1).max()
    assert widget.pair["top"][0][1] == pytest.approx(float(top))
    diff = lw.compare(corrupted, clean, token=widget.target, threshold=0.01)
    assert widget.graph_diff["against"] == "other" and widget.graph_diff["counts"] == diff_counts(diff)
    assert widget.graph_diff["unchanged"] == diff.unchanged
    assert widget.comparison is None and widget.patches == [] and widget.interventions == []
    # another target or threshold: the difference of those routes
    widget.threshold = 0.03
    assert widget.graph_diff["counts"] == diff_counts(lw.compare(corrupted, clean, token=widget.target, threshold=0.03))
    widget.target = 15
    assert widget.graph_diff["counts"] == diff_counts(lw.compare(corrupted, clean, token=15, threshold=0.03))
    assert widget.pair["top"][0][1] == pytest.approx(float(corrupted.logits[15].softmax(-1).max()))


def test_patch_shows_the_patched_run_and_undo_restores(widget, runs):
    clean, corrupted = runs
    last = clean.n_tokens - 1
    comparison = widget.patch(("head", 1, 2, last))
    expected_run, expected = lw.patch(corrupted, clean, ("head", 1, 2, last), position=widget.target)
    torch.testing.assert_close(widget.run.logits, expected_run.logits)
    assert comparison.to_dict() == expected.to_dict()
    assert widget.comparison["after"] == pytest.approx(expected.after._asdict())
    assert widget.comparison["after"]["logit"] != pytest.approx(widget.comparison["before"]["logit"], abs=1e-6)
    assert clean.tokens[last] == " to"  # as the label shows it
    assert widget.patches == [
        {"node": ["head", 1, 2, last], "label": f"head L1.2 at {last} ␣to", "source": IOI_CORRUPTED}]
    assert set(widget.graph.edges(keys=True)) == set(expected_run.graph(widget.target, 0.01).edges(keys=True))
    assert widget.graph_diff["against"] == "other"
    widget.diff_against = "clean"  # what the patch changed in the routes
    counts = diff_counts(lw.compare(clean, widget.run, token=widget.target, threshold=0.01))
    assert widget.graph_diff["counts"] == counts
    assert widget.intervention_code == widget.code() and "# patch ('head', 1, 2," in widget.code()
    with pytest.raises(LmttError, match="already patched"):
        widget.patch(("head", 1, 2, -1))
    assert widget.unpatch() is None
    assert widget.run is clean and widget.patches == [] and widget.comparison is None


def test_patches_and_ablations_combine_and_undo_separately(widget, runs):
    clean, corrupted = runs
    widget.ablate(("head", 0, 1))
    widget.patch(("post", 0, 15), ("embed", -1, 15))
    ablated, _ = clean.intervene(("head", 0, 1))
    by_hand, _ = lw.patch(corrupted, ablated, [("post", 0, 15), ("embed", -1, 15)])
    torch.testing.assert_close(widget.run.logits, by_hand.logits)
    widget.unpatch(0)  # the residual node goes, the embedding and the ablation stay
    assert [p["node"] for p in widget.patches] == [["embed", -1, 15]] and len(widget.interventions) == 1
    widget.undo()  # the ablation goes, the patch stays
    only_patch, _ = lw.patch(corrupted, clean, ("embed", -1, 15))
    torch.testing.assert_close(widget.run.logits, only_patch.logits)
    assert widget.interventions == [] and len(widget.patches) == 1
    # patching the embedding of the one token that differs gives the other prompt's prediction
    torch.testing.assert_close(widget.run.logits, corrupted.logits, atol=1e-4, rtol=1e-4)


def test_swap_shows_the_other_prompt(widget, runs):
    clean, corrupted = runs
    widget.patch(("ffn", 1, 15))
    widget.swap()
    assert widget.run is corrupted and widget.other is clean and widget.patches == []
    assert widget.info["prompt"] == IOI_CORRUPTED and widget.pair["prompt"] == IOI
    assert widget.graph_diff["counts"] == diff_counts(lw.compare(clean, corrupted, token=widget.target, threshold=0.01))
    reply = invoke(widget, "swap", {})
    assert reply == {"kind": "lmtt-reply", "id": "c-1", "ok": True, "result": None, "buffer_paths": []}
    assert widget.run is clean and widget.other is corrupted and widget.notice is None


def test_prompts_that_do_not_align_are_refused(model, runs):
    clean, _ = runs
    with pytest.raises(LmttError, match="23 and 6 tokens long"):
        lw.Widget(clean, other=lw.analyze(model, "Hello there"))
    w = lw.Widget(clean)
    assert w.pair is None and w.graph_diff is None
    with pytest.raises(LmttError, match="needs a second prompt"):
        w.patch(("post", 0, 1))
    view, before = w.view, widget_state(w)
    message = refused(invoke(w, "pair", {"prompt": "When Mary went to the store, John gave a drink to"}))
    assert message.startswith("comparing two prompts:") and "tokens long" in message
    assert w.other is None and w.pair is None
    assert w.view is view and widget_state(w) == before
    reply = invoke(w, "pair", {"prompt": IOI_CORRUPTED})
    assert reply["ok"] is True and reply["result"] is None
    assert w.other.prompt == IOI_CORRUPTED and w.notice is None and w.graph_diff["against"] == "other"
    # a new prompt for the shown side must align too: the graph stays
    view, before = w.view, widget_state(w)
    with pytest.raises(LmttError, match="tokens long"):
        w.analyze("Hello there")
    assert "tokens long" in refused(invoke(w, "analyze", {"prompt": "Hello there"}))
    assert w.run is clean and w.view is view and widget_state(w) == before


def test_bad_patches_from_the_page_are_refused_visibly(widget, runs):
    view, before = widget.view, widget_state(widget)
    assert "layer 9" in refused(invoke(widget, "patch", {"node": ["head", 9, 0, 3]}))
    assert "99" in refused(invoke(widget, "patch", {"node": ["post", 0, 99]}))
    assert "request.node: expected a list" in refused(invoke(widget, "patch", {"node": "post"}), "malformed")
    assert "no patch to undo" in refused(invoke(widget, "unpatch", {"index": 0}))
    assert widget.run is runs[0] and widget.patches == []
    assert widget.view is view and widget_state(widget) == before


def test_show_pair_and_the_saved_page_keep_the_pair(model, tmp_path):
    w = lw.show_pair(model, IOI, IOI_CORRUPTED)
    assert w.run.prompt == IOI and w.other.prompt == IOI_CORRUPTED
    with pytest.raises(TypeError, match="two prompts"):
        lw.show_pair(model, IOI)
    html = w.save_html(tmp_path / "pair.html").read_text()
    assert '"pair"' in html and "Mary gave" in html


def test_show_reference_draws_the_other_prompt_or_the_clean_run(widget, runs):
    clean, corrupted = runs
    diff = widget.graph_diff
    widget.show_reference = True  # the other prompt's routes, the same marks
    assert set(widget.graph.edges(keys=True)) == set(corrupted.graph(widget.target, 0.01).edges(keys=True))
    assert widget.payload == S.graph_payload(widget.graph, corrupted.shape.n_heads)
    assert widget.graph_diff == diff and widget.run is clean
    widget.patch(("post", 0, 15))  # a new run is drawn with its own routes
    assert widget.show_reference is False
    assert set(widget.graph.edges(keys=True)) == set(widget.run.graph(widget.target, 0.01).edges(keys=True))
    widget.diff_against = "clean"
    widget.show_reference = True  # now the clean run's routes
    assert set(widget.graph.edges(keys=True)) == set(clean.graph(widget.target, 0.01).edges(keys=True))
    assert widget.graph_diff["against"] == "clean"
