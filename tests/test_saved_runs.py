"""Runs saved to one file and loaded back: routes, readouts and the widget as they were, nothing
recomputed; interventions again with the model it was made with, and no other; edges as a table."""

import json
import re
import runpy

import pytest
import torch
from test_widget import invoke, refused

import lmtt_widget as lw
import tiny
from lmtt_widget.widget import serialize as S
from tiny import IOI, IOI_CORRUPTED


@pytest.fixture(scope="module")
def run(model):
    return lw.analyze(model, IOI, progress=False)


@pytest.fixture(scope="module")
def path(run, tmp_path_factory):
    return run.to_file(tmp_path_factory.mktemp("runs") / "ioi.lmtt")


def no_tracing(monkeypatch, model):
    monkeypatch.setattr(model, "trace", lambda *a, **k: pytest.fail("traced again"))


def assert_same_routes(got, expected, **options):
    g, e = got.graph(**options), expected.graph(**options)
    assert set(g.edges(keys=True)) == set(e.edges(keys=True))
    for u, v, key, data in e.edges(keys=True, data=True):
        assert g.edges[u, v, key]["weight"] == data["weight"]
        assert g.edges[u, v, key].get("heads") == data.get("heads")


def test_a_saved_run_round_trips_exactly_without_its_model(run, path):
    loaded = lw.load_run(path)
    assert loaded.model is None
    assert loaded.tokens == run.tokens and loaded.prompt == run.prompt and torch.equal(loaded.input_ids, run.input_ids)
    for mine, theirs in zip(loaded.layers, run.layers):
        for name, tensor in theirs.tensors().items():
            assert torch.equal(getattr(mine, name), tensor), name
    for token, threshold in [(-1, 0.04), (5, 0.02), (-1, 0.1)]:
        assert_same_routes(loaded, run, token=token, threshold=threshold)
    assert loaded.top_tokens(k=5) == run.top_tokens(k=5)
    for layer in range(run.shape.n_layers):
        assert torch.equal(loaded.attention_pattern(layer), run.attention_pattern(layer))
        assert torch.equal(loaded.neuron_activations(layer), run.neuron_activations(layer))
        assert torch.equal(loaded.residual(layer, 3, "mid"), run.residual(layer, 3, "mid"))
    assert loaded.model_name == run.model_name and loaded.n_params == run.n_params


def test_readouts_through_the_vocabulary_need_the_model_and_say_so(path):
    loaded = lw.load_run(path)
    with pytest.raises(lw.LmttError, match=r"loaded from a file without its model.*load_run\(path, model="):
        loaded.logit_lens(1, 3)
    with pytest.raises(lw.LmttError, match="without its model"):
        loaded.intervene([("head", 1, 2)])


def test_with_its_model_readouts_come_from_the_file_and_interventions_work_again(run, path, model, monkeypatch):
    loaded = lw.load_run(path, model=model)
    no_tracing(monkeypatch, model)
    assert loaded.logit_lens(2, 4) == run.logit_lens(2, 4)
    assert loaded.head_logits(1, 2, -1, 3) == run.head_logits(1, 2, -1, 3)
    assert loaded.neuron_contributions(1, -1, k=4) == run.neuron_contributions(1, -1, k=4)
    torch.testing.assert_close(loaded.logits, run.logits, rtol=0, atol=0)
    monkeypatch.undo()
    (_, mine), (_, theirs) = loaded.intervene([("head", 1, 2)]), run.intervene([("head", 1, 2)])
    assert mine.to_dict() == theirs.to_dict()
    mean_edge = [("edge", 2, 3, 13, 1)]
    assert loaded.intervene(mean_edge, mode="mean")[1].to_dict() == run.intervene(mean_edge, mode="mean")[1].to_dict()


def test_a_file_made_for_another_model_is_refused(path):
    with pytest.raises(lw.LmttError, match=r"has its architecture but other weights"):
        lw.load_run(path, model=tiny.load("llama", seed=1))
    with pytest.raises(lw.LmttError, match=r"another architecture \(model_type 'llama' vs 'gpt2'"):
        lw.load_run(path, model=tiny.load("gpt2"))


def test_the_fingerprint_takes_a_bfloat16_copy_for_the_same_model(path):
    lw.load_run(path, model=tiny.load("llama", dtype=torch.bfloat16))  # not refused


def test_queries_and_keys_kept_instead_of_probabilities_round_trip(model, tmp_path):
    small = lw.analyze(model, IOI, budget_bytes=20_000, progress=False)  # probabilities do not fit: q and k kept
    assert not any(isinstance(p, torch.Tensor) for p in small.capture.probs.values())
    loaded = lw.load_run(small.to_file(tmp_path / "qk.lmtt"))
    for layer in range(small.shape.n_layers):
        assert torch.equal(loaded.attention_pattern(layer), small.attention_pattern(layer))
    assert loaded.floor == small.floor > 0


def test_without_activations_a_file_keeps_routes_and_predictions_only(run, path, model, tmp_path):
    light = run.to_file(tmp_path / "light.lmtt", activations=False)
    assert light.stat().st_size < path.stat().st_size / 3
    loaded = lw.load_run(light)
    assert_same_routes(loaded, run, threshold=0.03)
    assert loaded.top_tokens(k=3) == run.top_tokens(k=3)
    with pytest.raises(lw.LmttError, match="without its model"):
        loaded.residual(0, 0)
    with_model = lw.load_run(light, model=model)  # the activations are traced again when read
    torch.testing.assert_close(with_model.residual(1, 4), run.residual(1, 4))


def test_the_widget_of_a_loaded_run_shows_what_the_original_showed(run, path, model):
    original, loaded = lw.Widget(run, threshold=0.02), lw.Widget(lw.load_run(path), threshold=0.02)
    for name in ("info", "target", "selection"):
        assert getattr(loaded, name) == getattr(original, name), name
    # without the model there are no effects: the same routes, drawn without them
    assert loaded.effects is None and original.effects is not None
    assert loaded.payload == S.graph_payload(run.graph(threshold=0.02), run.shape.n_heads)
    attention = {"kind": "attention", "layer": 1, "source": 3, "target": 13, "head": None}
    loaded.select(**attention)
    assert loaded.selection == original.select(**attention)
    with pytest.raises(lw.LmttError, match="without its model"):
        loaded.panel(attention)
    assert lw.Widget(lw.load_run(path, model=model), threshold=0.02).panel(attention) == original.panel(attention)


def test_files_that_are_not_saved_runs_are_refused(run, tmp_path):
    with pytest.raises(lw.LmttError, match="no such file"):
        lw.load_run(tmp_path / "missing.lmtt")
    junk = tmp_path / "junk.lmtt"
    junk.write_bytes(b"\x00" * 64)
    with pytest.raises(lw.LmttError, match="not a run saved by lmtt-widget"):
        lw.load_run(junk)
    from safetensors.torch import save_file
    save_file({"x": torch.zeros(2)}, str(tmp_path / "other.safetensors"))
    with pytest.raises(lw.LmttError, match="a safetensors file, but not a run"):
        lw.load_run(tmp_path / "other.safetensors")



def test_a_path_that_is_none_or_a_damaged_header_is_refused_by_name(tmp_path):
    for bad in (None, 3):
        with pytest.raises(lw.LmttError, match=rf"path must be a file's path \(a str or os.PathLike\), got "
                                               rf"{type(bad).__name__}"):
            lw.load_run(bad)
    from safetensors.torch import save_file
    for text in ("{not json", "[1, 2]"):
        damaged = tmp_path / "damaged.lmtt"
        save_file({"x": torch.zeros(2)}, str(damaged), metadata={"format": "lmtt-run", "lmtt": text})
        with pytest.raises(lw.LmttError, match="marked as a run saved by lmtt-widget, but its metadata is damaged"):
            lw.load_run(damaged)


def damaged_copy(path, target, change):
    """A copy of the run file `path` at `target`, its tensors and JSON metadata changed by `change(tensors, meta)`,
    as a hand edit or a bug would leave it."""
    from safetensors import safe_open
    from safetensors.torch import save_file

    with safe_open(str(path), framework="pt") as f:
        header, tensors = f.metadata(), {name: f.get_tensor(name) for name in f.keys()}
    meta = json.loads(header["lmtt"])
    change(tensors, meta)
    save_file({name: t.contiguous() for name, t in tensors.items()}, str(target),
              metadata={**header, "lmtt": json.dumps(meta)})
    return target


def drop(name):
    return lambda tensors, meta: tensors.pop(name)


def replace(name, make):
    return lambda tensors, meta: tensors.__setitem__(name, make(tensors[name]))


def first_edge_from(position):
    def edges(tensor):
        tensor = tensor.clone()
        tensor[0, 1] = position
        return tensor
    return edges


@pytest.mark.parametrize("change, message", [
    (drop("layers.1.heads"), r"it lacks tensor 'layers.1.heads'"),
    (drop("top.ids"), r"it lacks tensor 'top.ids'"),
    (drop("resid"), r"it lacks tensor 'resid'"),
    (replace("layers.1.edges", lambda t: t[:3, 0]),
     r"tensor 'layers.1.edges' has shape \[3\] where \[n, 2\] is expected"),
    (replace("layers.1.heads", lambda t: t[:-1]),
     r"tensor 'layers.1.heads' has shape \[(\d+), 4\] where \[n=(?!\1)\d+, 4\] is expected"),
    (replace("layers.2.heads", lambda t: t[:, :3]), r"tensor 'layers.2.heads' has shape \[\d+, 3\] where \[n=\d+, 4\]"),
    (replace("layers.0.ffn", lambda t: t[:5]), r"tensor 'layers.0.ffn' has shape \[5\] where \[23\] is expected"),
    (replace("top.ids", lambda t: t[:, :4]), r"tensor 'top.ids' has shape \[23, 4\] where \[23, k=10\] is expected"),
    (replace("resid", lambda t: t[:3]), r"tensor 'resid' has shape \[3, 23, 32\] where \[4, 23, 32\] is expected"),
    (replace("values", lambda t: t[:, :, :1]), r"tensor 'values' has shape \[3, 23, 1, 8\] where \[3, 23, 2, 8\]"),
    (replace("probs.1", lambda t: t[:, :-1]), r"tensor 'probs.1' has shape \[4, 22, 23\] where \[4, 23, 23\]"),
    (replace("layers.1.edges", first_edge_from(23)), r"tensor 'layers.1.edges' holds positions outside 0..22"),
    (replace("layers.1.edges", first_edge_from(-1)), r"tensor 'layers.1.edges' holds positions outside 0..22"),
    (replace("layers.1.edges", lambda t: t.flip(0)),
     r"tensor 'layers.1.edges' is not sorted by target, then source \(as run.to_file writes it\)"),
    (lambda tensors, meta: meta.pop("shape"), r"its metadata lacks 'shape'"),
    (lambda tensors, meta: meta.pop("tokens"), r"its metadata lacks 'tokens'"),
    (lambda tensors, meta: meta.pop("capture"), r"its metadata lacks 'capture'"),
    (lambda tensors, meta: meta["shape"].pop("n_heads"), r"its metadata's shape lacks 'n_heads'"),
    (lambda tensors, meta: meta["shape"].update(n_layers="3"), r"its metadata's shape has n_layers '3' where a "
                                                               r"positive integer is expected"),
    (lambda tensors, meta: meta["model"].pop("weights"), r"its metadata's model lacks 'weights'"),
    (lambda tensors, meta: meta.update(family="bloom"), r"it names the model family 'bloom', which this lmtt-widget "
                                                        r"does not know \(known: gpt2, llama, "),
    (lambda tensors, meta: meta.update(tokens=meta["tokens"][:-1]),
     r"tensor 'input_ids' has shape \[23\] where \[22\] is expected"),
    (lambda tensors, meta: meta["capture"]["probs"].update({"7": None}),
     r"its metadata's capture names layer '7' of a model with 3 layers"),
])
def test_a_damaged_file_is_refused_naming_what_is_missing_or_malformed(path, tmp_path, change, message):
    damaged = damaged_copy(path, tmp_path / "run.lmtt", change)
    with pytest.raises(lw.LmttError, match=rf"^{tmp_path / 'run.lmtt'} is damaged: {message}"):
        lw.load_run(damaged)


def test_the_undamaged_copy_loads(path, tmp_path, run):  # the copying above changes nothing by itself
    assert_same_routes(lw.load_run(damaged_copy(path, tmp_path / "run.lmtt", lambda tensors, meta: None)), run)


def test_a_run_is_not_written_into_a_missing_folder_nor_over_a_folder(run, tmp_path):
    with pytest.raises(lw.LmttError, match=r"cannot write .*run.lmtt: there is no folder .*missing"):
        run.to_file(tmp_path / "missing" / "run.lmtt")
    with pytest.raises(lw.LmttError, match=r"cannot write .*: it is a folder; give a file's name"):
        run.to_file(tmp_path)
    assert list(tmp_path.iterdir()) == [] and list(tmp_path.parent.glob(f".{tmp_path.name}*")) == []

def test_the_file_is_safetensors_with_json_metadata_and_no_pickle(path):
    from safetensors import safe_open

    with safe_open(str(path), framework="pt") as f:
        meta = json.loads(f.metadata()["lmtt"])
    assert meta["prompt"] == IOI and meta["model"]["architecture"]["model_type"] == "llama"
    assert b"pickle" not in path.read_bytes()[:200] and not path.read_bytes().startswith(b"\x80")


# -- intervened runs -------------------------------------------------------------------------------

@pytest.fixture(scope="module")
def intervened(run, model):
    """Ablations in both modes, then a head's and a residual node's activation patched in from a
    corrupted prompt (whose run the file does not hold)."""
    ablated, _ = run.intervene([("head", 1, 2), ("neuron", 0, 5, [3, 13])])
    ablated, _ = ablated.intervene([("edge", 2, 3, 13, 1)], mode="mean")
    corrupted = lw.analyze(model, IOI_CORRUPTED, progress=False)
    patched, _ = lw.patch(corrupted, ablated, [("head", 1, 0, 13), ("mid", 2, 13)])
    return patched


@pytest.fixture(scope="module")
def intervened_path(intervened, tmp_path_factory):
    return intervened.to_file(tmp_path_factory.mktemp("runs") / "patched.lmtt")


def assert_same_shares(got, expected):
    for mine, theirs in zip(got.layers, expected.layers, strict=True):
        for name, tensor in theirs.tensors().items():
            assert torch.equal(getattr(mine, name), tensor), name


def test_an_intervened_run_round_trips_with_its_clean_run_and_what_was_changed(run, intervened, intervened_path):
    loaded = lw.load_run(intervened_path)
    assert_same_shares(loaded, intervened)
    for token, threshold in [(-1, 0.04), (13, 0.02)]:
        assert_same_routes(loaded, intervened, token=token, threshold=threshold)
    assert loaded.top_tokens(k=5) == intervened.top_tokens(k=5)
    for layer in range(run.shape.n_layers):
        assert torch.equal(loaded.attention_pattern(layer), intervened.attention_pattern(layer))
        assert torch.equal(loaded.residual(layer, 13, "mid"), intervened.residual(layer, 13, "mid"))
    # what was ablated and patched, listed as before saving
    assert loaded.interventions == intervened.interventions
    assert [ab.label(str) for ab in loaded.interventions] == [ab.label(str) for ab in intervened.interventions]
    assert [ab.mode for ab in loaded.interventions] == ["zero", "zero", "mean"]
    assert loaded.patches == intervened.patches and loaded.patches[0][1] == IOI_CORRUPTED
    for mine, theirs in zip(loaded.patch_ids, intervened.patch_ids, strict=True):
        assert torch.equal(mine, theirs)
    assert repr(loaded) == repr(intervened)
    # and the clean run it was made from
    assert loaded.clean is not None and loaded.clean.clean is None
    assert_same_shares(loaded.clean, run)
    assert_same_routes(loaded.clean, run, threshold=0.02)
    assert torch.equal(loaded.clean.residual(2, 13), run.residual(2, 13))


def test_an_intervened_file_names_its_interventions_in_its_json(intervened_path):
    from safetensors import safe_open

    with safe_open(str(intervened_path), framework="pt") as f:
        meta = json.loads(f.metadata()["lmtt"])
    assert [(entry["spec"], entry["mode"]) for entry in meta["interventions"]] == [
        (["head", 1, 2], "zero"), (["neuron", 0, 5, [3, 13]], "zero"), (["edge", 2, 3, 13, 1], "mean")]
    assert meta["interventions"][0]["description"] == "head 2 of layer 1, all positions, zeroed"
    assert [entry["node"] for entry in meta["patches"]] == [["head", 1, 0, 13], ["mid", 2, 13]]
    assert meta["clean"]["prompt"] == IOI
    assert not intervened_path.read_bytes().startswith(b"\x80")


def test_with_its_model_a_loaded_intervened_run_reruns_and_takes_more(intervened, intervened_path, model,
                                                                    monkeypatch):
    loaded = lw.load_run(intervened_path, model=model)
    no_tracing(monkeypatch, model)  # its readouts come from the file
    assert loaded.logit_lens(2, 13) == intervened.logit_lens(2, 13)
    torch.testing.assert_close(loaded.logits, intervened.logits, rtol=0, atol=0)
    torch.testing.assert_close(loaded.clean.logits, intervened.clean.logits, rtol=0, atol=0)
    monkeypatch.undo()
    (mine, mine_change), (theirs, theirs_change) = (r.intervene([("ffn", 1, [13])]) for r in (loaded, intervened))
    assert mine_change.to_dict() == theirs_change.to_dict()
    assert_same_shares(mine, theirs)
    assert mine.interventions == theirs.interventions and mine.patches == theirs.patches
    assert lw.code(loaded) == lw.code(intervened)  # the patches' source prompts are traced from their ids


def test_without_activations_a_loaded_intervened_run_traces_again_with_its_interventions(intervened, model,
                                                                                       tmp_path):
    loaded = lw.load_run(intervened.to_file(tmp_path / "light.lmtt", activations=False), model=model)
    assert not loaded.holds_activations  # (the clean run's are traced again: the mean ablation's edits read them)
    assert_same_routes(loaded, intervened, threshold=0.02)
    torch.testing.assert_close(loaded.residual(2, 13, "mid"), intervened.residual(2, 13, "mid"))
    torch.testing.assert_close(loaded.logits, intervened.logits)
    assert not torch.allclose(loaded.logits, intervened.clean.logits)  # the interventions, not the clean pass


def test_the_widget_of_a_loaded_intervened_run_with_its_model_shows_what_the_original_showed(intervened,
                                                                                           intervened_path, model):
    original, loaded = lw.Widget(intervened, threshold=0.02), lw.Widget(lw.load_run(intervened_path, model=model),
                                                                        threshold=0.02)
    for name in ("info", "payload", "graph_diff", "comparison", "interventions", "patches", "intervention_code"):
        assert getattr(loaded, name) == getattr(original, name), name
    assert len(loaded.interventions) == 3 and len(loaded.patches) == 2


def test_the_widget_adds_ablations_to_a_loaded_patched_run_keeping_its_patches(intervened, intervened_path, model,
                                                                             tmp_path):
    """As on the run before saving: the patches keep the activations they were saved with (their
    source prompt's run is not at hand), the ablation is added, and the code reruns the same."""
    loaded = lw.load_run(intervened_path, model=model)
    direct, _ = intervened.intervene([("ffn", 1, [13])])
    widget = lw.Widget(loaded, threshold=0.02)
    reply = invoke(widget, "ablate", {"spec": ["ffn", 1, [13]], "mode": "zero"})  # as the page asks
    assert reply["ok"] is True, reply
    assert widget.run.patches == intervened.patches and widget.run.interventions == direct.interventions
    assert_same_shares(widget.run, direct)
    torch.testing.assert_close(widget.run.logits, direct.logits, rtol=0, atol=0)
    assert not torch.allclose(widget.run.logits, intervened.logits)  # the ablation did something
    path = tmp_path / "reproduce.py"
    path.write_text(widget.code(model_expr="model"))
    result = runpy.run_path(str(path), init_globals={"model": model})
    torch.testing.assert_close(result["logits"].float(), direct.logits, atol=1e-5, rtol=0)
    # undoing the ablation, then a patch, keeps the rest as saved
    widget.undo()
    torch.testing.assert_close(widget.run.logits, intervened.logits, rtol=0, atol=0)
    widget.unpatch(0)
    only_mid, _ = lw.patch(lw.analyze(model, IOI_CORRUPTED, progress=False), intervened.clean.intervene(
        list(intervened.interventions))[0], ("mid", 2, 13))
    assert widget.run.patches == only_mid.patches
    torch.testing.assert_close(widget.run.logits, only_mid.logits, rtol=0, atol=0)


def test_a_patched_run_shown_beside_another_prompt_keeps_the_activations_it_was_patched_with(intervened, model):
    """A third prompt as the other one: ablating does not patch again from it."""
    third = lw.analyze(model, IOI.replace("Mary and John", "John and Mary"), progress=False)
    widget = lw.Widget(intervened, other=third, threshold=0.02)
    widget.ablate(("ffn", 1, [13]))
    direct, _ = intervened.intervene([("ffn", 1, [13])])
    assert widget.run.patches == intervened.patches  # still from the corrupted prompt
    torch.testing.assert_close(widget.run.logits, direct.logits, rtol=0, atol=0)


def test_the_widget_of_a_loaded_intervened_run_without_its_model_shows_its_routes_and_interventions(intervened,
                                                                                                 intervened_path):
    original = lw.Widget(intervened, threshold=0.02)
    loaded = lw.Widget(lw.load_run(intervened_path), threshold=0.02)
    for name in ("info", "graph_diff", "interventions", "patches"):
        assert getattr(loaded, name) == getattr(original, name), name
    weights = {(u, v, k): d["weight"] for u, v, k, d in original.graph.edges(keys=True, data=True)}
    assert {(u, v, k): d["weight"] for u, v, k, d in loaded.graph.edges(keys=True, data=True)} == weights
    # what reads the model's weights says so: the before/after of the logits, the code, the panels
    assert loaded.comparison is None and original.comparison is not None
    assert loaded.intervention_code.startswith("# this run was loaded from a file without its model")
    with pytest.raises(lw.LmttError, match="needs the model's weights"):
        loaded.panel({"kind": "ffn", "layer": 1, "token": 4})


NEEDS_MODEL = r"loaded from a file without its model.*needs the model's weights: lw\.load_run\(path, model="
ABLATION = {"spec": ["head", 1, 0], "mode": "zero"}


def test_the_widget_of_a_run_loaded_without_its_model_refuses_new_prompts_saying_how_to_give_it(path):
    w = lw.show(lw.load_run(path), threshold=0.02)
    before = w.prompt_list
    with pytest.raises(lw.LmttError, match="analysing a new prompt: .*" + NEEDS_MODEL):
        w.analyze("Alice and Bob")
    for name, request, what in [
            ("analyze", {"prompt": "Alice and Bob"}, "analysing a new prompt"),
            ("generate", {"prompt": "Alice and Bob", "max_new_tokens": 3, "chat": False}, "generating a continuation"),
            ("pair", {"prompt": IOI_CORRUPTED}, "analysing a new prompt"),
            ("ablate", ABLATION, ""), ("faithfulness", {"k": 2, "mode": "zero"}, "faithfulness compares")]:
        assert refused(invoke(w, name, request)).startswith(what), name
        assert re.search(NEEDS_MODEL, refused(invoke(w, name, request))), name
    with pytest.raises(lw.LmttError, match="routes by effect need effects, and this run was loaded"):
        w.rank_by = "effect"
    assert w.prompt_list == before and w.rank_by == "share"


def test_a_pair_of_runs_loaded_without_their_model_is_shown_and_refuses_what_needs_it(run, model, tmp_path):
    corrupted = lw.analyze(model, IOI_CORRUPTED, progress=False)
    clean, other = (lw.load_run(r.to_file(tmp_path / f"{i}.lmtt")) for i, r in enumerate([run, corrupted]))
    w = lw.Widget(clean, other=other, threshold=0.02, prompts=[IOI, "Alice and Bob"])
    assert w.pair["top"] == [[token, p] for token, p in corrupted.top_tokens(w.target, k=3)]
    assert re.search(NEEDS_MODEL, refused(invoke(w, "patch", {"node": ["post", 1, 3]})))
    assert re.search("analysing a new prompt: .*" + NEEDS_MODEL, refused(invoke(w, "open_prompt", {"index": 1})))
    assert invoke(w, "swap", {})["ok"] and w.run.prompt == IOI_CORRUPTED


# -- edges as a table ----------------------------------------------------------------------------

def test_edges_are_the_routes_as_a_dataframe(run):
    table = run.edges(threshold=0.01)
    graph = run.graph(threshold=0.01)
    assert len(table) == graph.number_of_edges()
    assert list(table.columns[:9]) == ["kind", "layer", "source_stage", "source", "source_token", "target_stage",
                                       "target", "target_token", "weight"]
    assert list(table.source_token) == [run.tokens[p] for p in table.source]  # the tokens' texts, for a paper's table
    assert list(table.target_token) == [run.tokens[p] for p in table.target]
    assert set(table[table.target == run.n_tokens - 1].target_token) == {run.tokens[-1]} == {" to"}
    assert list(table.weight) == sorted(table.weight, reverse=True)
    attention = table[table.kind == "attention"]
    heads = attention[[f"head_{h}" for h in range(run.shape.n_heads)]]
    torch.testing.assert_close(torch.tensor(heads.sum(axis=1).values), torch.tensor(attention.weight.values))
    assert set(table.kind) == {"attention", "residual", "ffn"}
    row = attention.iloc[0]
    data = graph.edges[(("embed", -1, row.source) if row.layer == 0 else ("post", row.layer - 1, row.source)),
                       ("mid", row.layer, row.target), "attention"]
    assert data["weight"] == row.weight
    assert table[table.kind != "attention"][[f"head_{h}" for h in range(run.shape.n_heads)]].isna().all().all()


@pytest.mark.parametrize("family", ["gemma2", "olmoe", "falcon_alibi"])
def test_families_with_post_norms_experts_or_alibi_round_trip(family, tmp_path):
    model = tiny.load(family)
    run = lw.analyze(model, IOI, progress=False)
    loaded = lw.load_run(run.to_file(tmp_path / f"{family}.lmtt"), model=model)
    assert_same_routes(loaded, run, threshold=0.02)
    for name in ("attn_scale", "ffn_scale"):
        assert len(getattr(loaded.capture, name)) == len(getattr(run.capture, name))
        for mine, theirs in zip(getattr(loaded.capture, name), getattr(run.capture, name)):
            assert torch.equal(mine, theirs)
    assert loaded.head_logits(1, 1, -1, 3) == run.head_logits(1, 1, -1, 3)
    assert loaded.block_logits(1, -1, "ffn") == run.block_logits(1, -1, "ffn")
    torch.testing.assert_close(loaded.attention_pattern(2), run.attention_pattern(2))


@pytest.mark.parametrize("change, message", [
    (drop("clean.layers.0.heads"), r"it lacks tensor 'clean.layers.0.heads'"),
    (replace("clean.resid", lambda t: t[:, :5]), r"tensor 'clean.resid' has shape \[4, 5, 32\] where \[4, 23, 32\]"),
    (drop("patches.1.value"), r"it lacks tensor 'patches.1.value'"),
    (lambda tensors, meta: meta["clean"].pop("floor"), r"its metadata of the clean run lacks 'floor'"),
    (lambda tensors, meta: meta.pop("patches"), r"its metadata lacks 'patches'"),
    (lambda tensors, meta: meta["patches"][0].update(node=["neck", 1, 0]),
     r"its metadata's patch 0 has node \['neck', 1, 0\], not one of the kinds embed, "),
])
def test_a_damaged_intervened_file_is_refused_naming_what(intervened_path, tmp_path, change, message):
    damaged = damaged_copy(intervened_path, tmp_path / "patched.lmtt", change)
    with pytest.raises(lw.LmttError, match=rf"^{tmp_path / 'patched.lmtt'} is damaged: {message}"):
        lw.load_run(damaged)
