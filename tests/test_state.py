"""The state a user builds lives in one immutable `View`, usable without a widget or a kernel:
every action returns a new snapshot and leaves the old one as it was."""

from __future__ import annotations

import dataclasses

import pytest
import torch

import lmtt_widget as lw
from lmtt_widget.widget import protocol as P
from lmtt_widget.widget.export import preloaded_panels
from lmtt_widget.widget.state import View
from tiny import IOI, IOI_CORRUPTED


@pytest.fixture(scope="module")
def run(model):
    return lw.analyze(model, IOI)


def test_a_view_is_immutable_and_its_actions_return_new_snapshots(run):
    view = View.of(run, threshold=0.01)
    with pytest.raises(dataclasses.FrozenInstanceError):
        view.target = 3  # type: ignore[misc]
    moved = view.set(target=4)
    assert (view.target, moved.target) == (run.n_tokens - 1, 4)
    selected = moved.select({"kind": "attention", "layer": 1, "source": 2, "target": 4})
    assert moved.selection is None and selected.selection["head"] == int(run.edge_contributions(1, 4, 2).argmax())
    ablated, comparison = selected.ablate(("head", 1, 2))
    assert selected.run is run and run.clean is None  # the snapshot it came from is untouched
    assert ablated.run.clean is run and [ab.as_tuple() for ab in ablated.run.interventions] == [("head", 1, 2)]
    assert ablated.selection == selected.selection  # an intervened run keeps the selection
    expected = run.intervene(("head", 1, 2), position=4)[1]
    assert comparison.after.probability == pytest.approx(expected.after.probability)
    restored, none = ablated.undo()
    assert none is None and restored.run is run and restored.traits()["comparison"] is None


def test_traits_of_a_view_hold_their_declared_types(run):
    view = View.of(run, threshold=0.01).select({"kind": "ffn", "layer": 2, "token": 3, "neuron": 5})
    view, _ = view.ablate(("neuron", 2, 5, [3]), mode="mean")
    traits = view.traits()
    for name, value in traits.items():
        P.check(value, P.TRAITS[name], name)
    # an FFN panel shows effects on the metric at the view's target (22) for its contrast (None: the runner-up)
    assert traits["selection_info"]["key"] == "ffn/2/3/22/null/1"
    assert [o["spec"] for o in traits["selection_info"]["ablations"]] == [["neuron", 2, 5], ["ffn", 2]]
    assert traits["interventions"] == [{"kind": "neuron", "label": f"neuron L2.5 at 3 {_visible(run.tokens[3])} (mean)",
                                        "spec": ["neuron", 2, 5, [3]], "mode": "mean"}]


def _visible(token: str) -> str:
    return token.replace(" ", "␣")


def test_bad_options_raise_and_leave_the_view_as_it_was(run):
    view = View.of(run, threshold=0.01)
    for options, error in [({"threshold": 2}, "threshold must be a number in"),
                           ({"target": 99}, "position 99 is out of range"),
                           ({"renormalize": "yes"}, "renormalize must be True or False"),
                           ({"selection": {"kind": "ffn", "layer": 9, "token": 0}}, "layer 9 is out of range"),
                           ({"selection": {"kind": "ffn", "token": 0}}, "selection is missing 'layer'"),
                           ({"diff_against": "x"}, "diff_against must be 'other' or 'clean'"),
                           ({"colour": "red"}, "unknown view option")]:
        with pytest.raises(lw.LmttError, match=error):
            view.set(**options)
    assert view == View.of(run, threshold=0.01)


def test_another_target_or_contrast_clears_a_measured_faithfulness(run):
    """Faithfulness measures the edges into the target for the effects' metric: the threshold
    drawn does not change it; the target and the contrast do."""
    view, report = View.of(run, threshold=0.01).measure_faithfulness(k=2, draws=1)
    assert view.faithfulness is report and [row["k"] for row in view.traits()["faithfulness"]["rows"]] == [2, 2]
    assert view.set(selection={"kind": "ffn", "layer": 0, "token": 1}).faithfulness is report
    assert view.set(threshold=0.02).faithfulness is report
    third = int(run.logits[view.target].topk(3).indices[2])
    assert view.set(target=3).faithfulness is None and view.set(contrast=third).faithfulness is None


def test_a_pair_patches_and_swaps_without_a_widget(model, run):
    other = lw.analyze(model, IOI_CORRUPTED)
    view = View.of(run, other, threshold=0.01)
    assert view.reference == (other, "other") and view.traits()["graph_diff"]["against"] == "other"
    last = run.n_tokens - 1
    patched, comparison = view.patch(("head", 1, 2, last))
    expected = lw.patch(other, run, ("head", 1, 2, last), position=last)[1]
    assert comparison.after.probability == pytest.approx(expected.after.probability)
    assert patched.traits()["patches"][0]["source"] == IOI_CORRUPTED
    swapped = patched.swap()
    assert swapped.run is other and swapped.other is run and swapped.run.patches == ()
    with pytest.raises(lw.LmttError, match="already patched"):
        patched.patch(("head", 1, 2, last))


def test_panels_and_selected_tensors_come_from_the_view(run):
    view = View.of(run, threshold=0.01).select({"kind": "residual", "stage": "mid", "layer": 1, "token": 4})
    selected = view.selected()
    expected = run.capture.resid[1][4] + run.capture.attn_out[1][4]
    assert torch.allclose(selected["residual"], expected)
    panel = view.panel({"kind": "residual", "stage": "mid", "layer": 1, "token": 4})
    assert [t["token"] for t in panel["lens"]] == [t.token for t in run.logit_lens(1, 4, "mid", k=10)]
    preloaded = preloaded_panels(view)
    assert view.panel_key(view.selection) == "residual/mid/1/4/1" and "residual/mid/1/4/1" in preloaded
    for data in preloaded.values():
        P.check(data, P.PanelData)
