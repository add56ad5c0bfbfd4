"""The widget with many prompts, Python side: a prompt list (from a list or a text file) that the
text box extends, switching instantly to prompts analysed before, the model's own continuation
with its tokens marked, an aggregate shown like a run whose clicks list the prompts behind them,
each openable. Commands as the page sends them; tiny random models; no browser."""

from __future__ import annotations

import gc
import re
import weakref

import pytest
import torch
from test_widget import invoke, refused

import lmtt_widget as lw
from lmtt_widget.widget import protocol as P
from tiny import IOI

PROMPTS = [IOI, "The capital of France is",
           "Hello world! Tokens, spaces and\nnewlines."]


@pytest.fixture()
def widget(model):
    return lw.show(model, PROMPTS, threshold=0.02)


def traced(monkeypatch, model) -> list:
    """A list that grows by one on every trace of `model` (each analysis traces once)."""
    calls = []
    trace = model.trace
    monkeypatch.setattr(model, "trace", lambda *a, **k: calls.append(1) or trace(*a, **k))
    return calls


# -- 5. prompt lists --------------------------------------------------------------------------------

def test_a_list_of_prompts_shows_the_first_and_lists_them_all(widget):
    assert widget.prompts == PROMPTS
    assert widget.run.prompt == PROMPTS[0]
    assert widget.prompt_list == {"prompts": PROMPTS, "current": 0, "analysed": [0], "aggregate": None}
    P.check(widget.prompt_list, P.TRAITS["prompt_list"])


def test_a_text_file_gives_one_prompt_per_line(model, tmp_path):
    path = tmp_path / "prompts.txt"
    path.write_text("\n".join(p.replace("\n", " ") for p in PROMPTS) + "\n\n", encoding="utf-8")
    for source in (path, str(path)):
        w = lw.show(model, source)
        assert w.prompts == [p.replace("\n", " ") for p in PROMPTS]
    empty = tmp_path / "empty.txt"
    empty.write_text("\n  \n", encoding="utf-8")
    with pytest.raises(lw.LmttError, match="has no prompts"):
        lw.show(model, empty)


def test_a_text_file_is_read_as_utf8_lines_split_at_newlines_only(model, tmp_path):
    path = tmp_path / "prompts.txt"  # a BOM, Windows line ends, and separators within lines
    path.write_bytes("\ufeffWhen Mary\x0cand John\r\n\r\nTom\x1cAnna\x85Bob\u2028Sue\r\nLast".encode("utf-8"))
    assert lw.show(model, path).prompts == ["When Mary\x0cand John", "Tom\x1cAnna\x85Bob\u2028Sue", "Last"]


def test_a_line_the_model_refuses_is_named_by_file_and_line(model, tmp_path):
    too_long = " ".join(["Mary"] * 100)  # over the tiny models' 64 positions
    path = tmp_path / "prompts.txt"
    path.write_text(f"Mary and John\n\n{too_long}\n", encoding="utf-8")
    w = lw.show(model, path)
    message = refused(invoke(w, "open_prompt", {"index": 1}))
    assert re.fullmatch(rf"{re.escape(str(path))} line 3: prompt is \d+ tokens long; this model reads at most 64",
                        message)
    assert refused(invoke(w, "analyze", {"prompt": too_long})) == message  # its text typed in: the same line
    path.write_text(f"{too_long}\nMary and John\n", encoding="utf-8")
    with pytest.raises(lw.LmttError, match=rf"{re.escape(str(path))} line 1: prompt is \d+ tokens long"):
        lw.show(model, path)  # the first line, analysed by show itself
    path.write_bytes(b"Mary and John\nTom \xff and Anna\n")
    with pytest.raises(lw.LmttError, match=rf"{re.escape(str(path))} line 2 is not UTF-8 text"):
        lw.show(model, path)
    assert "line" not in refused(invoke(lw.show(model, ["Mary and John", too_long]), "open_prompt", {"index": 1}))


@pytest.mark.parametrize("name", ["nope.txt", "/tmp/lmtt-no-such-folder/nope.txt", "data/ioi.json",
                                  "~/lmtt no such folder/ioi prompts.csv"])
def test_a_missing_file_is_refused_not_analysed_as_a_prompt(model, name):
    with pytest.raises(lw.LmttError, match=re.escape(f"no such prompt file: {name!r}") + ".*pass it in a list"):
        lw.show(model, name)
    with pytest.raises(lw.LmttError, match="no such prompt file"):
        lw.show(model, [IOI]).prompts = name


@pytest.mark.parametrize("prompt", ["Mary went to the store.", "Open the file notes.txt", "Compute 3/4 of it.",
                                    "Mary.John", "https://github.com", "e.g."])
def test_a_prompt_that_is_not_a_file_name_is_analysed(model, prompt):
    assert lw.show(model, prompt).run.prompt == prompt


def test_a_prompt_with_a_newline_is_one_prompt(model):
    assert lw.show(model, PROMPTS[2]).prompts == [PROMPTS[2]]


@pytest.mark.parametrize("prompts, message", [
    ([], "the list of prompts is empty"), ([PROMPTS[0], ""], "prompt 1 must be a non-empty string"),
    ({"a": 1}, "a list of strings or a text file .* got dict"),
])
def test_bad_prompt_lists_are_refused(model, prompts, message):
    with pytest.raises(lw.LmttError, match=message):
        lw.show(model, prompts)


def test_switching_back_to_an_analysed_prompt_is_instant(widget, model, monkeypatch):
    calls = traced(monkeypatch, model)
    reply = invoke(widget, "open_prompt", {"index": 1})
    assert reply["ok"] and reply["result"]["n_tokens"] == widget.run.n_tokens
    traces = len(calls)  # the analysis, and the effects' forward and backward pass
    assert widget.run.prompt == PROMPTS[1] and traces == 2
    first_run = widget.view.prompts.cache.get(PROMPTS[0])
    invoke(widget, "open_prompt", {"index": 0})
    assert widget.run is first_run and len(calls) == traces  # nothing traced again
    assert widget.prompt_list["current"] == 0 and widget.prompt_list["analysed"] == [0, 1]
    assert widget.target == widget.run.n_tokens - 1 and widget.selection is None


def test_the_text_box_adds_to_the_list(widget):
    assert invoke(widget, "analyze", {"prompt": "Mary and John"})["ok"]
    assert widget.prompts == [*PROMPTS, "Mary and John"] and widget.prompt_list["current"] == 3
    invoke(widget, "analyze", {"prompt": PROMPTS[1]})  # already listed: shown, not added again
    assert widget.prompts == [*PROMPTS, "Mary and John"] and widget.prompt_list["current"] == 1


def test_the_cache_is_bounded(model, monkeypatch):
    from lmtt_widget.widget import prompts

    monkeypatch.setattr(prompts, "CACHED_RUNS", 2)
    w = lw.show(model, [f"Mary and John went {i}" for i in range(4)])
    for i in range(1, 4):
        w.open_prompt(i)
    assert len(w.view.prompts.cache.runs) == 2 and w.prompt_list["analysed"] == [2, 3]


def test_w_prompts_can_be_set_from_python(widget):
    widget.prompts = ["Alice and Bob", PROMPTS[0]]
    assert widget.prompts == ["Alice and Bob", PROMPTS[0]]
    assert widget.prompt_list["current"] == 1  # the prompt shown is in the new list
    with pytest.raises(lw.LmttError, match="prompt 0 must be a non-empty string"):
        widget.prompts = [3]


def test_bad_requests_change_nothing(widget):
    before = widget.prompt_list
    assert "prompt 7 is out of range" in refused(invoke(widget, "open_prompt", {"index": 7}))
    assert "shows no aggregate" in refused(invoke(widget, "open_aggregate", {}))
    assert widget.prompt_list == before and widget.run.prompt == PROMPTS[0]


# -- 4. the model's own continuation in the widget ---------------------------------------------------

def test_generate_shows_the_continuation_marked_and_lists_it(widget, model):
    reply = invoke(widget, "generate", {"prompt": PROMPTS[1], "max_new_tokens": 5, "chat": False})
    assert reply["ok"], reply
    run = widget.run
    assert reply["result"]["n_generated"] == len(run.generated) > 0
    expected = lw.generate(model, PROMPTS[1], max_new_tokens=5)
    assert run.input_ids.tolist() == expected.input_ids.tolist()
    assert widget.info["generated"] == [run.generated.start, run.generated.stop]
    assert widget.prompts[-1] == run.prompt and widget.prompt_list["current"] == len(widget.prompts) - 1
    for position in run.generated:  # each generated token can be the target
        widget.target = position
        assert widget.payload["target"] == position
    assert "no chat template" in refused(invoke(widget, "generate", {"prompt": "Hi", "max_new_tokens": 3,
                                                                      "chat": True}))


def test_a_continuation_reopened_after_it_left_the_cache_keeps_its_tokens_and_marks(model, monkeypatch):
    from lmtt_widget.widget import prompts

    monkeypatch.setattr(prompts, "CACHED_RUNS", 1)
    w = lw.show(model, PROMPTS[:2], threshold=0.02)
    assert invoke(w, "generate", {"prompt": PROMPTS[1], "max_new_tokens": 6, "chat": False})["ok"]
    generated = w.run
    index = w.prompt_list["current"]
    w.open_prompt(0)  # the continuation's run leaves the cache
    assert index not in w.prompt_list["analysed"]
    assert invoke(w, "open_prompt", {"index": index})["ok"]
    assert w.run is not generated and w.run.prompt == generated.prompt
    assert w.run.input_ids.tolist() == generated.input_ids.tolist()
    assert w.run.generated == generated.generated and w.info["generated"] == [generated.generated.start,
                                                                             generated.generated.stop]
    w.prompts = [PROMPTS[0]]  # a new list drops what it kept of the continuation
    assert w.view.prompts.continued == ()


def test_a_continuations_text_typed_after_it_left_the_cache_opens_its_entry(model, monkeypatch):
    from lmtt_widget.widget import prompts

    monkeypatch.setattr(prompts, "CACHED_RUNS", 1)
    w = lw.show(model, PROMPTS[:2], threshold=0.02)
    assert invoke(w, "generate", {"prompt": PROMPTS[1], "max_new_tokens": 6, "chat": False})["ok"]
    generated, listed = w.run, list(w.prompts)
    index = w.prompt_list["current"]
    w.open_prompt(0)  # the continuation's run leaves the cache
    assert index not in w.prompt_list["analysed"]
    assert invoke(w, "analyze", {"prompt": generated.prompt})["ok"]  # its exact text in the text box
    assert w.prompts == listed and w.prompt_list["current"] == index
    assert w.run is not generated and w.run.input_ids.tolist() == generated.input_ids.tolist()
    assert w.run.generated == generated.generated and w.info["generated"] == [generated.generated.start,
                                                                             generated.generated.stop]
    torch.testing.assert_close(w.run.logits, generated.logits)


# -- 3. an aggregate in the widget ----------------------------------------------------------------

@pytest.fixture(scope="module")
def agg(model):
    runs = lw.analyze_many(model, [f"When {a} and {b} went to the store, {b} gave a drink to"
                                   for a, b in [("Mary", "John"), ("John", "Mary"), ("Tom", "Alice")]])
    return lw.aggregate(runs, [{"IO": 1, "S1": 3, "S2": -5, "END": -1}] * 3)


def test_an_aggregate_is_shown_like_a_run_with_position_names(agg):
    w = lw.show(agg, threshold=0.01)
    assert w.info["tokens"] == ["IO", "S1", "S2", "END"] and w.info["aggregate"] == 3
    graph = agg.graph(token=-1, threshold=0.01)
    assert len(w.payload["edges"]["weight"]["data"]) == 4 * graph.number_of_edges()
    assert w.prompt_list["aggregate"] == {"n_prompts": 3, "positions": ["IO", "S1", "S2", "END"], "shown": True}
    assert w.prompt_list["current"] is None and w.prompts == [run.prompt for run in agg.runs]
    P.check(w.info, P.TRAITS["info"])


def test_a_click_on_an_edge_lists_the_prompts_behind_it_and_each_opens(agg, model, monkeypatch):
    w = lw.Widget(agg, threshold=0.01)
    u, v, data = next((u, v, d) for u, v, k, d in agg.graph(threshold=0.01).edges(keys=True, data=True)
                      if k == "attention")
    w.select("attention", layer=v[1], source=u[2], target=v[2])
    assert w.selection_info["ablations"] == []  # nothing to intervene on in an aggregate
    reply = invoke(w, "panel", {"selection": w.selection})
    assert reply["ok"], reply
    panel = reply["result"]
    P.check(panel, P.PanelData)
    assert sorted(row["index"] for row in panel["rows"] if row["in_routes"]) == data["prompts"]
    assert panel["support"] == pytest.approx(data["support"])
    assert panel["mean"] == pytest.approx(data["share"], abs=1e-6)
    calls = traced(monkeypatch, model)
    index = panel["rows"][0]["index"]
    assert invoke(w, "open_prompt", {"index": index})["ok"]
    assert w.run.prompt == agg.runs[index].prompt and w.prompt_list["current"] == index
    assert w.run is not agg.runs[index]  # a copy: what is traced for the panels stays with the widget
    # the aggregate held its run: nothing analysed again, only the effects traced (the compact run's
    # logits for the answer, then the forward and backward pass)
    assert w.prompt_list["aggregate"]["shown"] is False and len(calls) == 2
    assert invoke(w, "ablate", {"spec": ["head", 1, 0], "mode": "zero"})["ok"]  # a run of its own now
    assert invoke(w, "open_aggregate", {})["ok"]
    assert w.run is agg and w.info["aggregate"] == 3


def test_an_aggregate_refuses_what_needs_one_prompt(agg):
    w = lw.Widget(agg, threshold=0.01)
    assert "open one of its prompts for ablations" in refused(invoke(w, "ablate", {"spec": ["head", 1, 0],
                                                                                   "mode": "zero"}))
    assert "open one of its prompts" in refused(invoke(w, "faithfulness", {"k": 2, "mode": "zero"}))
    with pytest.raises(lw.LmttError, match="no neurons or experts to select"):
        w.select("ffn", layer=1, token=2, neuron=3)
    residual = w.panel({"kind": "residual", "stage": "post", "layer": 1, "token": 3})
    assert len(residual["rows"]) == 3 and all(isinstance(row["share"], float) for row in residual["rows"])
    assert torch.tensor([r["share"] for r in residual["rows"]]).mean() == pytest.approx(
        float(agg.layers[1].ffn_residual[3]), abs=1e-6)


def live_runs_holding_activations(shown: list[weakref.ref]) -> int:
    gc.collect()
    return sum(run is not None and run.holds_activations for run in (ref() for ref in shown))


def test_an_aggregates_prompts_opened_keep_their_activations_in_the_bounded_cache_only(agg, model, monkeypatch):
    from lmtt_widget.widget import prompts

    monkeypatch.setattr(prompts, "CACHED_RUNS", 1)
    w = lw.Widget(agg, threshold=0.01)
    shown = []
    for index in [0, 1, 2, 0]:
        assert invoke(w, "open_prompt", {"index": index})["ok"]
        assert invoke(w, "panel", {"selection": {"kind": "ffn", "layer": 1, "token": 4}})["ok"]  # traces again
        shown.append(weakref.ref(w.run))
    assert not any(run.holds_activations for run in agg.runs)  # the user's runs stay compact
    assert live_runs_holding_activations(shown) == 1 and len(w.view.prompts.cache.runs) == 1
    fresh = lw.analyze(model, agg.runs[0].prompt)
    torch.testing.assert_close(w.run.residual(1, 4), fresh.residual(1, 4))
    assert invoke(w, "open_aggregate", {})["ok"] and invoke(w, "open_prompt", {"index": 0})["ok"]
    assert w.run is shown[-1]()  # still cached: nothing traced again


def test_runs_that_left_the_cache_and_ablated_runs_no_longer_shown_are_let_go(model, monkeypatch):
    from lmtt_widget.widget import prompts

    monkeypatch.setattr(prompts, "CACHED_RUNS", 2)
    w = lw.show(model, [f"Mary and John went {i}" for i in range(5)], threshold=0.02)
    shown = []
    for index in range(5):
        w.open_prompt(index)
        shown.append(weakref.ref(w.run))
        for head in (0, 1):
            w.ablate(("head", 1, head))
            shown.append(weakref.ref(w.run))
    # the two prompts cached, and the run shown (the last one, ablated twice)
    assert live_runs_holding_activations(shown) == 3
