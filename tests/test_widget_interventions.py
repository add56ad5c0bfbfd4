"""The widget's interventions, Python side: ablate and undo swap the run shown and keep every
trait consistent with it; the before/after, graph difference and faithfulness traits are the
analysis core's results; w.code() runs and reproduces the logits; bad input is refused (from
Python with an LmttError, from the page with an error reply) and changes nothing. Tiny random
models; no browser."""

from __future__ import annotations

import json
import re
import runpy

import pytest
import torch
from test_widget import invoke, refused

import lmtt_widget as lw
from lmtt_widget import LmttError
from lmtt_widget import interventions as I
from lmtt_widget.widget import serialize as S
from lmtt_widget.widget.export import widget_state
from tiny import IOI


@pytest.fixture(scope="module")
def clean(model):
    return lw.analyze(model, IOI)


@pytest.fixture()
def widget(clean):
    return lw.Widget(clean, threshold=0.01)


def shows(w, run) -> None:
    """The widget's graph, payload and predictions are those of `run`."""
    expected = run.graph(w.target, w.threshold)
    assert set(w.graph.edges(keys=True)) == set(expected.edges(keys=True))
    assert w.payload == S.graph_payload(w.graph, run.shape.n_heads)
    assert w.info["predictions"]["tokens"] == S.run_info(run)["predictions"]["tokens"]


def test_ablate_shows_the_intervened_run_and_its_comparison_with_the_clean_one(widget, clean):
    comparison = widget.ablate(("head", 1, 2))
    expected_run, expected = clean.intervene(("head", 1, 2), position=widget.target)
    assert widget.run.clean is clean and widget.run.interventions == expected_run.interventions
    torch.testing.assert_close(widget.run.logits, expected_run.logits)
    assert comparison.to_dict() == expected.to_dict()
    assert widget.comparison == json.loads(json.dumps(expected.to_dict()))  # JSON-ready, as sent
    p_after = float(expected_run.logits[-1].softmax(-1)[expected.token_id])
    assert widget.comparison["after"]["probability"] == pytest.approx(p_after)
    assert widget.interventions == [
        {"kind": "head", "label": "head L1.2 (zero)", "spec": ["head", 1, 2], "mode": "zero"}]
    shows(widget, widget.run)
    assert widget.graph_diff["counts"]["vanished"]["attention"] > 0  # a head zeroed reads nothing
    assert widget.intervention_code == widget.code()


def test_a_second_ablation_adds_to_the_first_and_means_come_from_the_clean_run(widget, clean):
    widget.ablate(("edge", 2, 3, 9, 1))
    widget.ablate(("neuron", 1, 5, [3, 9]), mode="mean")
    assert [a["spec"] for a in widget.interventions] == [["edge", 2, 3, 9, 1], ["neuron", 1, 5, [3, 9]]]
    assert [a["mode"] for a in widget.interventions] == ["zero", "mean"]
    assert [clean.tokens[i] for i in (3, 9)] == [" and", " "]  # as the labels show them
    assert [a["label"] for a in widget.interventions] == ["edge L2 3 ␣and → 9 ␣, head 1 (zero)",
                                                          "neuron L1.5 at 3 ␣and, 9 ␣ (mean)"]
    both = [I.parse(clean, ("edge", 2, 3, 9, 1)), I.parse(clean, ("neuron", 1, 5, [3, 9]), "mean")]
    expected, _ = clean.intervene(both)
    torch.testing.assert_close(widget.run.logits, expected.logits)


def test_undo_reruns_the_clean_run_with_the_rest_and_the_last_undo_shows_the_clean_run(widget, clean):
    widget.ablate(("head", 0, 1), ("ffn", 2))
    widget.ablate(("attention", 1, [5]), mode="mean")
    widget.undo(0)
    rest = [I.parse(clean, ("ffn", 2)), I.parse(clean, ("attention", 1, [5]), "mean")]
    expected, comparison = clean.intervene(rest, position=widget.target)
    assert list(widget.run.interventions) == rest
    torch.testing.assert_close(widget.run.logits, expected.logits)
    assert widget.comparison["after"] == pytest.approx(comparison.after._asdict())
    widget.undo()
    widget.undo()
    assert widget.run is clean
    shown = (widget.interventions, widget.comparison, widget.graph_diff, widget.intervention_code)
    assert shown == ([], None, None, "")
    shows(widget, clean)


def test_code_runs_and_reproduces_the_logits_shown(widget, tmp_path):
    widget.ablate(("head", 1, 2), ("edge", 2, 3, 9))
    widget.ablate(("neuron", 0, 7), mode="mean")
    source = widget.code(model_expr="model")
    assert widget.intervention_code == widget.code()
    assert source.split("model = model\n")[1] == widget.code().split("here\n")[1]  # all but how the model loads
    path = tmp_path / "reproduce.py"
    path.write_text(source)
    result = runpy.run_path(str(path), init_globals={"model": widget.run.model})
    torch.testing.assert_close(result["logits"].float(), widget.run.logits, atol=1e-5, rtol=0)


def test_code_loads_the_model_the_way_it_was_loaded(widget, model, monkeypatch):
    widget.ablate(("head", 0, 1))
    assert "model = lmtt_widget.load_model()  # the widget's model was passed in loaded" in widget.code()
    monkeypatch.setattr(model._module.config, "name_or_path", "HuggingFaceTB/SmolLM2-360M")
    assert "model = lmtt_widget.load_model('HuggingFaceTB/SmolLM2-360M')\n" in widget.code()
    assert "model = custom()\n" in widget.code(model_expr="custom()")


def test_a_new_target_recomputes_the_comparison_and_the_difference_there(widget, clean):
    widget.ablate(("head", 1, 2))
    widget.target = 9
    expected = I.compare_logits(clean, clean.logits, widget.run.logits, 9)
    assert widget.comparison["position"] == 9 and widget.comparison == json.loads(json.dumps(expected.to_dict()))
    diff = I.compare(clean, widget.run, token=9, threshold=widget.threshold)
    assert widget.graph_diff["counts"]["vanished"]["attention"] == sum(c.kind == "attention" for c in diff.vanished)
    listed = [c for c in widget.graph_diff["vanished"] if c["kind"] == "attention"]
    assert listed == [dict(c._asdict(), source=list(c.source), target=list(c.target))
                      for c in diff.vanished if c.kind == "attention"][:12]


def test_faithfulness_is_the_run_shown_at_the_target_and_contrast_and_cleared_by_a_new_one(widget, clean):
    report = widget.measure_faithfulness(k=3)
    expected = clean.faithfulness(token=widget.target, k=3, by=("share", "effect"))
    assert report.to_dict() == expected.to_dict()
    assert widget.faithfulness == json.loads(json.dumps(expected.to_dict()))
    row = widget.faithfulness["rows"][1]
    assert (row["by"], row["k"]) == ("effect", 3)
    assert row["fraction"] == pytest.approx(row["drop"]["logit_diff"] / row["best"])
    widget.threshold = 0.02  # the edges into the target do not depend on the routes' threshold
    assert widget.faithfulness is not None
    third = clean.decode(int(clean.logits[widget.target].topk(3).indices[2]))
    widget.contrast = third
    assert widget.faithfulness is None
    reply = invoke(widget, "faithfulness", {"k": 2, "mode": "zero"})  # from the button
    assert reply["ok"] is True and reply["result"] == widget.faithfulness
    assert [r["k"] for r in widget.faithfulness["rows"]] == [2, 2] and widget.faithfulness["contrast"] == third
    assert widget.notice is None and widget.busy == ""


def test_commands_from_the_frontend_ablate_and_undo(widget):
    reply = invoke(widget, "ablate", {"spec": ["edge", 2, 3, 9, 1], "mode": "mean"})
    assert [a["spec"] for a in widget.interventions] == [["edge", 2, 3, 9, 1]]
    assert widget.interventions[0]["mode"] == "mean"
    assert reply["ok"] is True and json.loads(json.dumps(reply["result"])) == widget.comparison
    assert widget.busy == "" and widget.notice is None
    reply = invoke(widget, "undo", {"index": 0})
    # the clean run shown: no comparison
    assert reply == {"kind": "lmtt-reply", "id": "c-1", "ok": True, "result": None, "buffer_paths": []}
    assert widget.interventions == [] and widget.run.clean is None and widget.comparison is None


@pytest.mark.parametrize("ablation, error, why, python_why", [
    (["head", 3, 0], "refused", "layer 3 is out of range", "layer 3 is out of range"),
    (["head", 0, 4], "refused", "head 4 is out of range", "head 4 is out of range"),
    (["neuron", 0, 48], "refused", "neuron 48 is out of range", "neuron 48 is out of range"),
    (["edge", 0, 9, 3], "refused", "source 9 is after its target 3", "source 9 is after its target 3"),
    (["edge", 0, 1, 99], "refused", "target 99 is out of range", "target 99 is out of range"),
    (["head", 0, 1, [99]], "refused", "position 99 is out of range", "position 99 is out of range"),
    (["attention"], "refused", "takes 1 or 2 values", "takes 1 or 2 values"),
    ("head 0 1", "malformed", "request.spec: expected a list", "an ablation is a tuple"),
])
def test_bad_ablations_from_the_frontend_are_refused_visibly_and_change_nothing(widget, ablation, error, why,
                                                                                python_why):
    widget.ablate(("ffn", 0))
    view, before = widget.view, widget_state(widget)
    assert why in refused(invoke(widget, "ablate", {"spec": ablation, "mode": "zero"}), error)
    assert widget.view is view and widget_state(widget) == before
    with pytest.raises(LmttError, match=re.escape(python_why)):  # from Python: raised
        widget.ablate(tuple(ablation) if isinstance(ablation, list) else ablation)
    assert widget.view is view and widget_state(widget) == before


def test_repeats_bad_modes_and_undo_with_nothing_are_refused(widget):
    widget.ablate(("head", 0, 1))
    assert "already ablated" in refused(invoke(widget, "ablate", {"spec": ["head", 0, 1], "mode": "zero"}))
    assert len(widget.interventions) == 1
    with pytest.raises(LmttError, match="already ablated"):
        widget.ablate(("head", 0, 1))
    message = refused(invoke(widget, "ablate", {"spec": ["head", 0, 2], "mode": "resample"}), "malformed")
    assert "request.mode" in message and "'zero' | 'mean'" in message and len(widget.interventions) == 1
    with pytest.raises(LmttError, match="mode must be one of"):
        widget.ablate(("head", 0, 2), mode="resample")
    assert "intervention 5 is out of range" in refused(invoke(widget, "undo", {"index": 5}))
    assert len(widget.interventions) == 1
    assert "missing 'index'" in refused(invoke(widget, "undo", {}), "malformed") and len(widget.interventions) == 1
    widget.undo()
    with pytest.raises(LmttError, match="no intervention to undo"):
        widget.undo()
    assert refused(invoke(widget, "undo", {"index": -1})) == "there is no intervention to undo"
    assert widget.notice is None  # errors are replies, not notices


def test_a_new_prompt_clears_the_interventions(widget):
    widget.ablate(("head", 0, 1))
    widget.measure_faithfulness(k=2)
    widget.analyze("The capital of France is Paris.")
    assert widget.run.clean is None
    assert (widget.interventions, widget.comparison, widget.graph_diff, widget.faithfulness) == ([], None, None, None)


def test_a_widget_of_an_intervened_run_lists_its_ablations(clean):
    run, _ = clean.intervene([("head", 0, 1), ("ffn", 1)])
    w = lw.Widget(run, threshold=0.01)
    assert [a["spec"] for a in w.interventions] == [["head", 0, 1], ["ffn", 1]]
    assert w.comparison["before"]["probability"] == pytest.approx(float(clean.logits[-1].softmax(-1).max()))
    w.undo()
    assert [a["spec"] for a in w.interventions] == [["head", 0, 1]] and w.run.clean is clean


def test_interventions_never_change_the_weights(widget, model):
    weights = {name: p.detach().clone() for name, p in model._module.named_parameters()}
    widget.ablate(("head", 1, 2), ("edge", 2, 3, 9), ("neuron", 0, 7))
    widget.ablate(("attention", 0), mode="mean")
    widget.measure_faithfulness(k=2)
    widget.undo()
    for name, p in model._module.named_parameters():
        assert torch.equal(p, weights[name]), name
