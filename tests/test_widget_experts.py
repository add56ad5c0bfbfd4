"""Mixtures of experts in the widget: the FFN panel of an MoE layer lists the experts writing at the
token (routing weight, share, effect, tokens; the shared expert apart) and offers their ablations;
an expert is its own selection kind (its neurons, its write); w.selection / w.selected cover
experts; ablated experts show their clean values; the exported page carries the experts. Tiny
random Qwen2-MoE (a shared expert, one dense layer) and Mixtral; no browser."""

from __future__ import annotations

import pytest
import torch
from test_widget import invoke, refused

import lmtt_widget as lw
import tiny
from lmtt_widget import LmttError
from lmtt_widget.widget import selections
from lmtt_widget.widget.export import preloaded_panels
from tiny import IOI

MOE_LAYER, DENSE_LAYER = 0, 1  # tests/tiny.py: qwen2_moe has mlp_only_layers=[1]
TOKEN = 6


@pytest.fixture(scope="module")
def run():
    return lw.analyze(tiny.load("qwen2_moe"), IOI, progress=False)


@pytest.fixture()
def widget(run):
    return lw.Widget(run, threshold=0.01)


def test_the_ffn_panel_of_a_mixture_lists_its_experts_not_neurons(widget, run):
    data = widget.panel({"kind": "ffn", "layer": MOE_LAYER, "token": TOKEN})
    experts = run.expert_contributions(MOE_LAYER, TOKEN)
    assert data["neurons"] == [] and len(experts) == 3  # two routed, then the shared one
    assert [r["expert"] for r in data["experts"]] == [e.expert for e in experts]
    assert data["experts"][-1]["expert"] is None
    assert [r["weight"] for r in data["experts"]] == pytest.approx([e.weight for e in experts])
    assert [r["share"] for r in data["experts"]] == pytest.approx([e.share for e in experts])
    # the experts' effects add up to the update's (their writes add up to it)
    assert sum(r["effect"] for r in data["experts"]) == pytest.approx(data["ffn_effect"], rel=1e-4, abs=1e-6)
    # each row's tokens are its own write's through the vocabulary
    first = run.expert_logits(MOE_LAYER, TOKEN, experts[0].expert, k=selections.NEURON_LOGITS_K)
    assert [t for t, _ in data["experts"][0]["promoted"]] == [t for t, _ in first.promoted]


def test_the_ffn_selection_of_a_mixture_offers_its_routed_experts_and_gives_their_tensors(widget, run):
    widget.select("ffn", layer=MOE_LAYER, token=TOKEN)
    routed = [e.expert for e in run.expert_contributions(MOE_LAYER, TOKEN) if e.expert is not None]
    offers = [o["spec"] for o in widget.selection_info["ablations"]]
    assert offers == [*(["expert", MOE_LAYER, e] for e in routed), ["ffn", MOE_LAYER]]
    selected = widget.selected
    writes = run.expert_writes(MOE_LAYER, TOKEN)
    assert selected["experts"] == writes.experts
    torch.testing.assert_close(selected["expert_writes"].sum(0), run.capture.ffn_out[MOE_LAYER][TOKEN].float(),
                               rtol=1e-4, atol=1e-5)
    assert selected["expert_effects"].sum() == pytest.approx(float(selected["ffn_effect"]), rel=1e-4, abs=1e-6)


@pytest.mark.parametrize("which", [0, -1])  # the strongest routed expert; the shared one
def test_an_expert_panel_shows_its_weight_share_write_and_neurons(widget, run, which):
    expert = run.expert_contributions(MOE_LAYER, TOKEN)[which]
    widget.select("expert", layer=MOE_LAYER, token=TOKEN, expert=expert.expert)
    assert widget.selection == {"kind": "expert", "layer": MOE_LAYER, "token": TOKEN, "expert": expert.expert}
    data = widget.panel(widget.selection)
    assert data["weight"] == pytest.approx(expert.weight) and data["share"] == pytest.approx(expert.share)
    neurons = run.expert_neuron_contributions(MOE_LAYER, TOKEN, expert.expert, k=selections.NEURONS_K)
    assert [n["index"] for n in data["neurons"]] == [n.index for n in neurons]
    assert [n["share"] for n in data["neurons"]] == pytest.approx([n.share for n in neurons])
    effects = {n.index: n.effect for n in widget.view.effects.expert_neurons(MOE_LAYER, TOKEN, expert.expert, k=10_000)}
    assert [n["effect"] for n in data["neurons"]] == pytest.approx([effects[n.index] for n in neurons])
    write = run.expert_logits(MOE_LAYER, TOKEN, expert.expert, k=selections.LOGITS_K)
    assert [t for t, _ in data["write"]["promoted"]] == [t for t, _ in write.promoted]
    more = widget.panel(widget.selection, {"neurons": 14})
    assert len(more["neurons"]) == 14
    # w.selected: the expert's write is its neurons' writes
    selected = widget.selected
    torch.testing.assert_close(selected["neuron_writes"].sum(0), selected["write"], rtol=1e-4, atol=1e-5)
    assert float(selected["routing_weight"]) == pytest.approx(expert.weight)


def test_selections_that_do_not_exist_are_refused_by_name(widget, run):
    writing = [e.expert for e in run.expert_contributions(MOE_LAYER, TOKEN)]
    idle = next(e for e in range(run.n_experts(MOE_LAYER)) if e not in writing)
    with pytest.raises(LmttError, match=f"expert {idle} does not write at token {TOKEN}"):
        widget.select("expert", layer=MOE_LAYER, token=TOKEN, expert=idle)
    with pytest.raises(LmttError, match="expert 99 is out of range"):
        widget.select("expert", layer=MOE_LAYER, token=TOKEN, expert=99)
    with pytest.raises(LmttError, match=f"layer {DENSE_LAYER}'s FFN is dense"):
        widget.select("expert", layer=DENSE_LAYER, token=TOKEN, expert=0)
    with pytest.raises(LmttError, match="mixture of experts: its neurons belong to its experts"):
        widget.select("ffn", layer=MOE_LAYER, token=TOKEN, neuron=3)
    # from the page: refused with the same words, the selection kept
    reply = invoke(widget, "panel", {"selection": {"kind": "expert", "layer": MOE_LAYER, "token": TOKEN,
                                                   "expert": idle}})
    assert f"expert {idle} does not write" in refused(reply)
    # the dense layer of the same model keeps its neurons
    assert len(widget.panel({"kind": "ffn", "layer": DENSE_LAYER, "token": TOKEN})["neurons"]) == selections.NEURONS_K


def test_an_ablated_expert_shows_its_clean_values_and_the_ablation_removes_its_write(widget, run):
    expert = run.expert_contributions(MOE_LAYER, TOKEN)[0].expert
    sel = {"kind": "expert", "layer": MOE_LAYER, "token": TOKEN, "expert": expert}
    clean = widget.panel(sel)
    reply = invoke(widget, "ablate", {"spec": ["expert", MOE_LAYER, expert, [TOKEN]], "mode": "zero"})
    assert reply["ok"], reply
    shown = widget.run
    # in the run shown the expert no longer writes there: the FFN update lost exactly its write
    torch.testing.assert_close(shown.capture.ffn_out[MOE_LAYER][TOKEN].float(),
                               run.capture.ffn_out[MOE_LAYER][TOKEN].float()
                               - run.expert_writes(MOE_LAYER, TOKEN).writes[0], rtol=1e-4, atol=1e-5)
    data = widget.panel(sel)
    assert data["intervened"]["how"] == "ablated" and f"expert L{MOE_LAYER}.{expert}" in data["intervened"]["label"]
    assert data["weight"] == pytest.approx(clean["weight"]) and data["neurons"] == clean["neurons"]


def test_a_mixtral_widget_exports_with_its_experts(tmp_path):
    run = lw.analyze(tiny.load("mixtral"), IOI, progress=False)
    w = lw.Widget(run, threshold=0.01)
    w.select("ffn", layer=1, token=TOKEN)
    panel = next(p for p in preloaded_panels(w.view).values() if p["selection"]["kind"] == "ffn")
    assert panel["neurons"] == [] and len(panel["experts"]) == 2  # top-2 routing, no shared expert
    path = w.save_html(tmp_path / "mixtral.html")
    assert "experts" in path.read_text()
