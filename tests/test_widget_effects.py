"""Effects in the widget's state (no browser): the contrast and "rank by" options, the graph kept
by effect, the missed edges, effects in the payload, the panels and `w.selected`."""

from __future__ import annotations

import math

import pytest
import torch

import lmtt_widget as lw
import tiny
from lmtt_widget.widget import serialize as S
from lmtt_widget.widget.state import View
from tiny import IOI


@pytest.fixture(scope="module")
def run():
    return lw.analyze(tiny.load("llama", seed=3), IOI)


def test_the_metric_follows_the_target_and_the_contrast(run):
    view = View.of(run, threshold=0.01)
    top = run.logits[-1].topk(3).indices.tolist()
    assert (view.effects.answer, view.effects.contrast) == (top[0], top[1])
    assert view.effects.position == run.n_tokens - 1
    third = view.set(contrast=run.decode(top[2]))
    assert third.contrast == top[2] and third.effects.contrast == top[2]
    assert third.traits()["effects"]["contrast_id"] == top[2]
    assert third.set(target=4).contrast is None  # another target: its own runner-up
    with pytest.raises(lw.LmttError, match="the prediction itself"):
        view.set(contrast=top[0])
    with pytest.raises(lw.LmttError, match="rank_by must be"):
        view.set(rank_by="weight")


def test_ranked_by_effect_the_graph_is_the_runs_routes_by_effect(run):
    view = View.of(run, threshold=0.05, rank_by="effect")
    expected = run.graph(threshold=0.05, by="effect", effects=run.effects())
    assert set(view.graph.edges(keys=True)) == set(expected.edges(keys=True)) and view.graph.graph["by"] == "effect"
    payload = view.traits()["payload"]
    assert payload["by"] == "effect"
    back = S.payload_graph(payload)
    for u, v, key, d in expected.edges(keys=True, data=True):
        got = back.edges[u, v, key]["effect"]
        assert (got is None) == (d["effect"] is None) and (got is None or got == pytest.approx(d["effect"], rel=1e-6))
    share_view = view.set(rank_by="share")
    assert all(d["effect"] is not None for *_, d in share_view.graph.edges(data=True) if d["kind"] != "residual")


def test_missed_edges_are_the_effect_routes_off_the_share_routes(run):
    view = View.of(run, threshold=0.02).set(show_missed=True)
    missed = view.traits()["effects"]["missed"]
    shares = run.graph(threshold=0.02)
    by_effect = run.graph(threshold=0.02, by="effect", effects=view.effects)
    expected = {(u, v, k) for u, v, k in by_effect.edges(keys=True) if k != "residual" and not shares.has_edge(u, v, k)}
    assert missed and {(tuple(m["source"]), tuple(m["target"]), m["kind"]) for m in missed} <= expected
    assert len(missed) == min(len(expected), 40)
    assert [abs(m["effect"]) for m in missed] == sorted((abs(m["effect"]) for m in missed), reverse=True)
    assert View.of(run, threshold=0.02).traits()["effects"]["missed"] == []  # drawn only when asked for


def test_panels_and_selected_carry_the_effects(run):
    view = View.of(run, threshold=0.01).select({"kind": "attention", "layer": 2, "source": 3, "target": 9, "head": 1})
    effects = view.effects
    panel = view.panel(view.selection)
    assert S.to_numpy(panel["effects"]).tolist() == pytest.approx(effects.edge(2, 9, 3).tolist())
    assert panel["metric"] == effects.metric
    selected = view.selected()
    assert selected["effects"].tolist() == pytest.approx(effects.edge(2, 9, 3).tolist())
    assert selected["effect_map"].shape == (run.n_tokens, run.n_tokens)
    ffn = view.select({"kind": "ffn", "layer": 1, "token": 9})
    panel = ffn.panel(ffn.selection)
    assert panel["ffn_effect"] == pytest.approx(float(effects.ffn(1)[9]))
    writes = effects.neuron_effects(1, 9)
    assert all(row["effect"] == pytest.approx(float(writes[row["index"]])) for row in panel["neurons"])
    assert ffn.selected()["neuron_effects"].shape == writes.shape
    # the panels' keys name the metric's position and contrast: another contrast asks for new panels
    other = ffn.set(contrast=int(run.logits[-1].topk(3).indices[2]))
    assert other.panel_key(other.selection) != ffn.panel_key(ffn.selection)


def test_an_intervened_view_keeps_the_clean_prediction_as_the_answer(run):
    view = View.of(run, threshold=0.01)
    ablated, _ = view.ablate(("head", 2, 1))
    assert ablated.effects.answer == view.effects.answer and ablated.effects.contrast == view.effects.contrast
    assert not math.isclose(ablated.effects.value, view.effects.value)


def test_the_widget_takes_the_options_from_python_and_the_page(run):
    w = lw.Widget(run, threshold=0.01, rank_by="effect")
    assert w.rank_by == "effect" and w.effects["metric"] == w.view.effects.metric
    third = run.decode(int(run.logits[-1].topk(3).indices[2]))
    w.contrast = third  # a one-token string from Python becomes its id
    assert w.contrast == int(run.logits[-1].topk(3).indices[2]) and w.effects["contrast"] == third
    w.set_state({"show_missed": True})  # from the page
    assert w.show_missed and w.effects["missed"] == w.view.missed()
    w.set_state({"contrast": int(run.logits[-1].argmax())})  # refused: the prediction itself
    assert w.notice["level"] == "error" and "the prediction itself" in w.notice["text"]
    assert w.effects["contrast"] == third


def test_without_effects_the_widget_works_by_share_and_refuses_what_needs_them():
    """An aggregate has no effects: the routes are drawn by share, the panels come without effect
    fields, and what needs effects is refused. A family with post-norms (Gemma 2) has them."""
    gemma = lw.analyze(tiny.load("gemma2"), "Hello world")
    assert lw.Widget(gemma, threshold=0.01).effects is not None
    aggregate = lw.aggregate(lw.analyze_many(tiny.load("llama", seed=3), [IOI, IOI.replace("Mary", "Anne")]))
    w = lw.Widget(aggregate, threshold=0.01)
    assert w.view.effects is None and w.effects is None
    assert w.graph.number_of_edges() == aggregate.graph(threshold=0.01).number_of_edges()
    w.show_missed = True
    assert w.effects is None
    with pytest.raises(lw.LmttError, match="routes by effect need effects"):
        w.view.set(rank_by="effect")
    with pytest.raises(lw.LmttError, match="aggregate"):
        w.view.measure_faithfulness()
    u, v, d = next((u, v, d) for u, v, k, d in w.graph.edges(keys=True, data=True) if k == "attention")
    w.selection = {"kind": "attention", "layer": v[1], "source": d["source"], "target": d["target"]}
    panel = w.panel(w.selection)
    assert "effects" not in panel and "metric" not in panel and panel["rows"]
    ffn = w.panel({"kind": "ffn", "layer": 0, "token": -1})
    assert "ffn_effect" not in ffn and "metric" not in ffn and ffn["rows"]


def test_effects_turned_off_cost_nothing_and_come_back_when_on(run, monkeypatch):
    w = lw.Widget(run, threshold=0.01, rank_by="effect")
    calls = []
    original = lw.Run.effects
    monkeypatch.setattr(lw.Run, "effects", lambda self, *a, **k: calls.append(a) or original(self, *a, **k))
    w.set_state({"with_effects": False})  # from the page
    assert w.with_effects is False and w.effects is None and w.view.effects is None
    assert w.rank_by == "share"  # the routes by effect fall back to share
    assert all(d["effect"] is None for *_, d in w.graph.edges(keys=True, data=True))
    w.target = 5  # another target: nothing computed
    w.select("attention", layer=1, source=2, target=5)
    assert "effects" not in w.panel(w.selection) and "effects" not in w.selected
    assert calls == []
    with pytest.raises(lw.LmttError, match=r"effects are turned off \(turn them on: w.with_effects = True\)"):
        w.view.set(rank_by="effect")
    w.with_effects = True
    assert w.effects["metric"] == w.view.effects.metric and len(calls) == 1
    assert all(d["effect"] is not None for _, _, kind, d in w.graph.edges(keys=True, data=True) if kind != "residual")
    w.set_state({"with_effects": "no"})
    assert w.notice["level"] == "error" and "with_effects must be True or False" in w.notice["text"]
    assert lw.show(run, with_effects=False).effects is None


def test_long_prompts_show_no_effects_until_asked(run, monkeypatch):
    from lmtt_widget.widget import state

    monkeypatch.setattr(state, "EFFECTS_AUTO_MAX", run.n_tokens - 1)  # this prompt is "long"
    w = lw.Widget(run, threshold=0.01)
    assert w.with_effects is False and w.effects is None and w.view.with_effects is None
    with pytest.raises(lw.LmttError, match=rf"effects are off for prompts over {run.n_tokens - 1} tokens"):
        w.view.set(rank_by="effect")
    w.target = 4  # still automatic, still off
    assert w.view.with_effects is None and w.effects is None
    w.set_state({"with_effects": True})  # asked from the page: computed, and it stays asked
    assert w.view.with_effects is True and w.effects["metric"] == w.view.effects.metric
    monkeypatch.setattr(state, "EFFECTS_AUTO_MAX", run.n_tokens)  # as long as the limit: on by default
    assert lw.Widget(run, threshold=0.01).effects is not None


def test_a_neurons_panel_and_tensors_carry_its_effect_and_an_edges_its_heads(run):
    w = lw.Widget(run, threshold=0.01)
    effects = w.view.effects
    w.select("neuron", layer=1, token=6, neuron=7)
    expected = float(effects.neuron_effects(1, 6)[7])
    data = w.panel(w.selection)
    assert data["neuron_effect"] == pytest.approx(expected) and data["metric"] == effects.metric
    assert float(w.selected["effect"]) == pytest.approx(expected)
    assert w.view.panel_key(w.selection).endswith(f"/{w.target}/null/1")  # another metric: another panel
    # one edge's heads, read without the layer's dense map, equal that map's row
    dense = effects.attention(2)
    for target, source in [(9, 3), (5, 5), (0, 0)]:
        assert torch.equal(effects.edge(2, target, source), dense[target, source])
