"""The panels, Python side: a neuron as its own selection kind; how much a panel lists (the page's
"more"); an ablated or patched component's panel shows its clean values (and effects) and says so; updates that
are all zeros list no tokens; long prompts' attention maps carry the tokens that matter. Tiny
random models; no browser."""

# ruff: noqa: F811  (the fixtures clean and widget, imported from test_widget_interventions, are parameters here)
from __future__ import annotations

import pytest
import torch
from test_widget import invoke, refused
from test_widget_interventions import clean, widget  # noqa: F401  (the same fixtures)

import lmtt_widget as lw
from lmtt_widget import LmttError
from lmtt_widget import vocab as V
from lmtt_widget.widget import selections
from lmtt_widget.widget import serialize as S
from tiny import IOI, IOI_CORRUPTED


def values(encoded) -> torch.Tensor:
    return torch.from_numpy(S.to_numpy(encoded).copy())


# -- the neuron kind -----------------------------------------------------------------------------

def test_a_neuron_is_its_own_selection_with_activations_positions_and_signed_tokens(widget, clean):
    acts = clean.neuron_activations(1)  # [T, d_ff]
    neuron = int((acts[6] < 0).nonzero()[0])  # one that is negative at token 6: its tokens flip
    widget.select("neuron", layer=1, token=6, neuron=neuron)
    assert widget.selection == {"kind": "neuron", "layer": 1, "token": 6, "neuron": neuron}
    data = widget.panel(widget.selection)
    assert data["activation"] == pytest.approx(float(acts[6, neuron])) and data["activation"] < 0
    torch.testing.assert_close(values(data["activations"]), acts[:, neuron].float())
    by_size = acts[:, neuron].abs().argsort(descending=True)[:selections.STRONGEST].tolist()
    assert [p for p, _ in data["strongest"]] == by_size
    assert data["share"] == pytest.approx(float(clean.neuron_shares(1, 6)[0][neuron]))
    # signed by the activation: what the neuron's output row alone suppresses, its write promotes
    w_out = clean.neuron_writes(1, 6)[neuron] / float(acts[6, neuron])
    row_alone = V.top_bottom(clean.direct_logits(w_out, 6), 8, clean.decode)
    assert [t for t, _ in data["effect"]["promoted"]] == [t for t, _ in row_alone.suppressed]
    assert widget.selected["activation"] == pytest.approx(data["activation"])
    offers = [o["spec"] for o in widget.selection_info["ablations"]]
    assert ["neuron", 1, neuron] in offers and ["ffn", 1] in offers


def test_a_neuron_out_of_range_is_refused(widget):
    with pytest.raises(LmttError, match="neuron 4800 is out of range"):
        widget.select("neuron", layer=1, token=6, neuron=4800)


# -- how much a panel lists -----------------------------------------------------------------------

def test_panel_options_list_more_tokens_neurons_and_logits(widget, clean):
    more = {"tokens": 30, "logits": 15, "neurons": 20}
    residual = widget.panel({"kind": "residual", "stage": "post", "layer": 1, "token": 4}, more)
    assert [t["token"] for t in residual["lens"]] == [t.token for t in clean.logit_lens(1, 4, "post", k=30)]
    assert len(residual["blocks"][0]["promoted"]) == 15
    ffn = widget.panel({"kind": "ffn", "layer": 2, "token": 6}, more)
    assert [n["index"] for n in ffn["neurons"]] == [n.index for n in clean.neuron_contributions(2, 6, k=20)]
    default = widget.panel({"kind": "ffn", "layer": 2, "token": 6})
    assert len(default["neurons"]) == selections.NEURONS_K and len(default["block"]["promoted"]) == selections.LOGITS_K
    # from the page: the options travel in the request, and bad ones are refused
    reply = invoke(widget, "panel", {"selection": {"kind": "ffn", "layer": 2, "token": 6}, "options": {"neurons": 20}})
    assert reply["ok"] and len(reply["result"]["neurons"]) == 20
    assert "in 1..200" in refused(invoke(widget, "panel", {"selection": {"kind": "ffn", "layer": 2, "token": 6},
                                                           "options": {"neurons": 0}}))
    assert "unknown 'k'" in refused(invoke(widget, "panel", {"selection": {"kind": "ffn", "layer": 2, "token": 6},
                                                             "options": {"k": 3}}), "malformed")


# -- panels after interventions -------------------------------------------------------------------

def test_an_ablated_head_shows_its_clean_maps_and_says_so(widget, clean):
    sel = {"kind": "attention", "layer": 1, "source": 2, "target": 5, "head": 3}
    widget.ablate(("head", 1, 3))
    assert float(widget.run.head_contributions(1, 3).abs().sum()) == 0  # in the run shown: nothing
    data = widget.panel(sel)
    assert data["intervened"] == {"how": "ablated", "label": widget.interventions[0]["label"]}
    torch.testing.assert_close(values(data["importance"]), clean.head_contributions(1, 3).float())
    assert float(values(data["importance"]).sum()) > 0
    top = clean.head_logits(1, 3, 5, 2, k=8).promoted[0]
    assert data["from_source"]["promoted"][0] == [top[0], pytest.approx(top[1])]
    # its effects too are the clean run's (in the run shown the ablated head's term, and effect, is 0)
    clean_effects = widget.view.effects_of(clean).edge(1, 5, 2).float()
    assert float(widget.view.effects.edge(1, 5, 2)[3]) == 0 and float(clean_effects[3]) != 0
    torch.testing.assert_close(values(data["effects"]), clean_effects)
    # another head of the layer is not ablated: its panel reads the run shown
    other = widget.panel({**sel, "head": 2})
    assert other["intervened"] is None
    torch.testing.assert_close(values(other["importance"]), widget.run.head_contributions(1, 2).float())


def test_an_ablated_ffn_block_and_neuron_show_their_clean_values(widget, clean):
    widget.ablate(("ffn", 2, [6]))
    ffn = widget.panel({"kind": "ffn", "layer": 2, "token": 6})
    assert ffn["intervened"]["how"] == "ablated"
    assert ffn["ffn_share"] == pytest.approx(float(clean.ffn_contributions(2)[0][6]))
    assert ffn["block"]["promoted"][0][0] == clean.block_logits(2, 6, "ffn", k=8).promoted[0][0]
    assert widget.panel({"kind": "ffn", "layer": 2, "token": 5})["intervened"] is None  # only token 6 is
    neuron = clean.neuron_contributions(1, 4, k=1)[0].index
    widget.ablate(("neuron", 1, neuron))
    data = widget.panel({"kind": "neuron", "layer": 1, "token": 4, "neuron": neuron})
    assert data["intervened"]["how"] == "ablated"
    assert data["activation"] == pytest.approx(float(clean.neuron_activations(1)[4, neuron])) != 0


def test_a_patched_head_says_so(model, clean):
    w = lw.Widget(clean, other=lw.analyze(model, IOI_CORRUPTED), threshold=0.01)
    w.patch(("head", 2, 1, 9))
    data = w.panel({"kind": "attention", "layer": 2, "source": 3, "target": 9, "head": 1})
    assert data["intervened"] == {"how": "patched", "label": w.patches[0]["label"]}
    residual = w.panel({"kind": "residual", "stage": "post", "layer": 1, "token": 9})
    assert residual["intervened"] is None


def test_an_update_of_zeros_lists_no_tokens(clean):
    zeros = clean.direct_logits(torch.zeros(clean.shape.d_model), 3)
    assert S.effect(V.top_bottom(zeros, 5, clean.decode)) == {"promoted": [], "suppressed": []}


# -- long prompts' maps ----------------------------------------------------------------------------

def test_long_prompts_maps_carry_the_tokens_that_matter(widget, clean, monkeypatch):
    # as if the prompt were longer than the maps' limit
    monkeypatch.setattr(selections, "MAP_FULL", 20)
    monkeypatch.setattr(selections, "FOCUS_MAX", 14)
    sel = {"kind": "attention", "layer": 2, "source": 3, "target": 16, "head": 0}
    data = widget.panel(sel)
    positions = S.to_numpy(data["positions"]).tolist()
    assert positions == sorted(positions) and len(positions) == 20 < clean.n_tokens
    near = {0, 1, 2, 3, 4, 5, 14, 15, 16, 17, 18}  # the first token, the edge's ends and their neighbours
    focus = set(data["focus"])
    assert near <= focus <= set(positions) and len(focus) == 14
    nearest_routes = sorted(set(widget.view.route_tokens()) - near, key=lambda t: abs(t - 16))[:3]
    assert focus - near == set(nearest_routes)
    pattern = clean.attention_pattern(2)[0].float()
    rows = torch.tensor(positions)
    torch.testing.assert_close(values(data["pattern"]), pattern[rows][:, rows])
    torch.testing.assert_close(values(data["importance"]), clean.head_contributions(2, 0)[rows][:, rows].float())
    torch.testing.assert_close(values(data["row_pattern"]), pattern[16])
    torch.testing.assert_close(values(data["heads_row"]), clean.attention_pattern(2)[:, 16].float())


def test_attention_rows_equal_the_pattern_whether_or_not_the_probabilities_were_kept(model):
    kept = lw.analyze(model, IOI)
    lazy = lw.analyze(model, IOI, budget_bytes=2_000)  # the probabilities do not fit: computed when read
    targets = [0, 3, 4, 5, 11, 16]
    for run in (kept, lazy):
        torch.testing.assert_close(run.attention_rows(1, targets), kept.attention_pattern(1)[:, targets].float())
        torch.testing.assert_close(run.attention_rows(1, targets, head=2),
                                   kept.attention_pattern(1)[2, targets].float())
        torch.testing.assert_close(run.head_contribution_rows(1, 2, targets), run.head_contributions(1, 2)[targets])
