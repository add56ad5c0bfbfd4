"""Interventions: every ablation equals the same change made with plain PyTorch hooks; an edge
ablation removes exactly its term; weights never change; code export runs; faithfulness numbers
(lmtt_widget.faithfulness) are those of the same ablations."""

import itertools
import json
import random
import re
import runpy
from collections import Counter
from dataclasses import asdict

import pytest
import torch

import lmtt_widget as lw
import tiny
from lmtt_widget import LmttError
from lmtt_widget import interventions as I
from lmtt_widget.architectures import out_proj_per_head
from lmtt_widget.faithfulness import faithfulness
from lmtt_widget.tracing import exclusive
from tiny import IOI

SWAPPED = "When John and Mary went to the store, Mary gave a drink to"  # same length in tokens
FAMILIES = ["llama", "gpt2", "gpt_neox", "opt"]  # grouped-query, Conv1D, parallel, 2-d FFN


@pytest.fixture(scope="module", autouse=True)
def one_thread():
    """These models are tiny: with a busy CPU, more threads only wait on each other (10x slower)."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


@pytest.fixture(scope="module", params=FAMILIES)
def run(request):
    return lw.analyze(tiny.load(request.param), IOI)


def modules(run, layer):
    return run.family.modules(run.hf_model, layer)


def hooked_logits(run, hooks) -> torch.Tensor:
    """[T, V] logits of the plain transformers forward with `hooks`: (module, "pre"|"post", fn),
    fn taking the module's input [T, .] (pre) or output (post) and returning the new one."""
    handles = []
    for module, when, fn in hooks:
        if when == "pre":
            def pre(m, args, fn=fn):
                x = args[0]
                return (fn(x.clone().view(run.n_tokens, -1)).view(x.shape),) + args[1:]
            handles.append(module.register_forward_pre_hook(pre))
        else:
            handles.append(module.register_forward_hook(lambda m, args, out, fn=fn: fn(out)))
    try:
        with torch.no_grad(), exclusive(run.model):  # attention gives its probabilities, as in the package's traces
            return run.hf_model(run.input_ids[None]).logits[0].float()
    finally:
        for handle in handles:
            handle.remove()


def recorded(run, module, when="pre") -> torch.Tensor:
    """[T, .]: the module's input (or output) in the plain clean forward."""
    seen = []

    def keep(x):
        seen.append((x[0] if isinstance(x, tuple) else x).clone())
        return x
    hooked_logits(run, [(module, when, keep)])
    return seen[0].view(run.n_tokens, -1)


def set_rows(update, rows, value):
    """A post hook on a module whose output is a tensor or a tuple starting with one."""
    def fn(out):
        tensor = out[0] if isinstance(out, tuple) else out
        tensor = tensor.clone()
        tensor.view(-1, tensor.shape[-1])[rows] = value
        return (tensor,) + tuple(out[1:]) if isinstance(out, tuple) else tensor
    return fn


@pytest.mark.parametrize("mode", ["zero", "mean"])
def test_head_ablation_equals_setting_its_slice_before_the_output_projection(run, mode):
    layer, head, hd = 1, 2, run.shape.head_dim
    cols = slice(head * hd, (head + 1) * hd)
    out_proj = modules(run, layer)["out_proj"]
    value = recorded(run, out_proj)[:, cols].mean(0) if mode == "mean" else 0.0

    def fn(x):
        x[:, cols] = value
        return x
    new, comparison = run.intervene(("head", layer, head), mode)
    expected = hooked_logits(run, [(out_proj, "pre", fn)])
    torch.testing.assert_close(new.logits, expected, atol=1e-5, rtol=0)
    assert comparison.after.logit == pytest.approx(float(expected[-1, comparison.token_id]), abs=1e-5)
    assert (new.logits - run.logits).abs().max() > 1e-4  # the ablation did something


def test_head_ablation_at_some_positions_only(run):
    layer, head, hd, rows = 0, 1, run.shape.head_dim, [3, 7]

    def fn(x):
        x[rows, head * hd:(head + 1) * hd] = 0
        return x
    new, _ = run.intervene(("head", layer, head, rows))
    torch.testing.assert_close(new.logits, hooked_logits(run, [(modules(run, layer)["out_proj"], "pre", fn)]),
                               atol=1e-5, rtol=0)
    # the head reads nothing at those targets any more: its shares there are 0
    assert new.attention_contributions(layer)[0][rows, :, head].abs().max() == 0


@pytest.mark.parametrize("mode", ["zero", "mean"])
def test_neuron_ablation_equals_setting_its_activation(run, mode):
    layer, neuron, rows = 1, 5, [2, 9, 22]
    ffn_out_proj = modules(run, layer)["ffn_out_proj"]
    value = recorded(run, ffn_out_proj)[:, neuron].mean() if mode == "mean" else 0.0

    def fn(x):
        x[rows, neuron] = value
        return x
    new, _ = run.intervene([("neuron", layer, neuron, rows)], mode)
    torch.testing.assert_close(new.logits, hooked_logits(run, [(ffn_out_proj, "pre", fn)]), atol=1e-5, rtol=0)


@pytest.mark.parametrize("mode", ["zero", "mean"])
def test_block_ablations_equal_setting_the_blocks_update(run, mode):
    attention, ffn = modules(run, 0)["attention"], modules(run, 1)["ffn"]
    attn_value = recorded(run, attention, "post").mean(0) if mode == "mean" else 0.0
    ffn_value = recorded(run, ffn, "post").mean(0) if mode == "mean" else 0.0
    new, _ = run.intervene([("attention", 0), ("ffn", 1, [4, 5])], mode)
    expected = hooked_logits(run, [(attention, "post", set_rows(None, slice(None), attn_value)),
                                   (ffn, "post", set_rows(None, [4, 5], ffn_value))])
    torch.testing.assert_close(new.logits, expected, atol=1e-5, rtol=0)


@pytest.mark.parametrize("head", [None, 3])
def test_edge_ablation_removes_exactly_its_term_at_the_target(run, head):
    layer, source, target = 1, 4, 9
    heads = range(run.shape.n_heads) if head is None else [head]
    spec = ("edge", layer, source, target) + (() if head is None else (head,))
    new, _ = run.intervene(spec)
    clean_out, new_out = run.capture.attn_out[layer], new.capture.attn_out[layer]
    others = [i for i in range(run.n_tokens) if i != target]
    assert torch.equal(new_out[others], clean_out[others])
    assert torch.equal(new.capture.resid[layer], run.capture.resid[layer])  # earlier layers untouched
    term = sum(run.head_output(layer, h, target, source) for h in heads)
    torch.testing.assert_close(new_out[target] - clean_out[target], -term, atol=1e-7, rtol=1e-4)
    assert term.abs().max() > 1e-4
    # the routes of the intervened run no longer see the edge
    assert new.attention_contributions(layer)[0][target, source, list(heads)].abs().max() == 0


def test_mean_edge_ablation_reads_the_mean_value_vector(run):
    layer, source, target, head = 1, 2, 6, 1
    new, _ = run.intervene(("edge", layer, source, target, head), "mean")
    kv = head // (run.shape.n_heads // run.shape.n_kv_heads)
    values = run.capture.values[layer][:, kv].float()
    w = out_proj_per_head(modules(run, layer)["out_proj"], run.shape.n_heads, run.shape.head_dim)[head].float()
    weight = run.attention_pattern(layer)[head, target, source].float()
    expected = run.capture.attn_out[layer][target] - weight * (values[source] - values.mean(0)) @ w
    torch.testing.assert_close(new.capture.attn_out[layer][target], expected, atol=1e-5, rtol=0)


def test_interventions_never_change_the_weights(run):
    before = {name: p.clone() for name, p in run.hf_model.state_dict().items()}
    for mode in ("zero", "mean"):
        run.intervene([("head", 0, 1), ("neuron", 1, 3), ("attention", 1, 5), ("ffn", 0), ("edge", 1, 2, 8)], mode)
    other = lw.analyze(run.model, SWAPPED)
    I.patch(other, run, [("post", 0, 3), ("head", 1, 0, 5), ("embed", -1, 2), ("ffn", 1, 4)])
    run.faithfulness(k=2, draws=1, candidates=4)  # with the effects: a backward pass, no gradient kept
    after = run.hf_model.state_dict()
    assert all(torch.equal(before[name], after[name]) for name in before)
    torch.testing.assert_close(lw.analyze(run.model, IOI).logits, run.logits, atol=0, rtol=0)


def test_interventions_add_up_and_record_themselves(run):
    once, _ = run.intervene([("head", 0, 1), ("edge", 1, 2, 8, 0)])
    first, _ = run.intervene(("head", 0, 1))
    second, comparison = first.intervene(("edge", 1, 2, 8, 0))
    torch.testing.assert_close(second.logits, once.logits, atol=1e-6, rtol=0)
    assert [a.as_tuple() for a in second.interventions] == [("head", 0, 1), ("edge", 1, 2, 8, 0)]
    assert second.clean is run
    assert comparison.before.logit == pytest.approx(float(first.logits[-1, comparison.token_id]))


def test_an_edge_inside_an_ablated_head_is_not_removed_twice(run):
    alone, _ = run.intervene(("head", 1, 2))
    both, _ = run.intervene([("head", 1, 2), ("edge", 1, 3, 7, 2), ("attention", 0, 5), ("edge", 0, 1, 5)])
    only_attention, _ = run.intervene([("head", 1, 2), ("attention", 0, 5)])
    torch.testing.assert_close(both.logits, only_attention.logits, atol=1e-6, rtol=0)
    assert (alone.logits - only_attention.logits).abs().max() > 1e-5


def test_comparison_reports_the_original_prediction(run):
    _, comparison = run.intervene(("attention", 2 if run.shape.n_layers > 2 else 1), against=" Mary")
    new_logits = run.intervene(("attention", 2 if run.shape.n_layers > 2 else 1))[0].logits[-1]
    clean = run.logits[-1]
    token = int(clean.argmax())
    mary = tiny.tokenizer()(" Mary", add_special_tokens=False)["input_ids"][0]
    assert comparison.token_id == token and comparison.against_id == mary
    assert comparison.before.probability == pytest.approx(float(clean.softmax(-1)[token]))
    assert comparison.after.probability == pytest.approx(float(new_logits.softmax(-1)[token]))
    assert comparison.after.logit_diff == pytest.approx(float(new_logits[token] - new_logits[mary]))
    assert comparison.top_before[0][1] == pytest.approx(comparison.before.probability)
    assert set(comparison.to_dict()) >= {"before", "after", "prob_change", "logit_change", "logit_diff_change"}
    assert json.loads(json.dumps(comparison.to_dict()))["after"]["probability"] == comparison.after.probability


@pytest.mark.parametrize("spec, message", [
    (("head", 9, 0), "layer 9 is out of range: valid are 0.."),
    (("head", 0, 4), "head 4 is out of range: valid are 0..3"),
    (("neuron", 0, 48), "neuron 48 is out of range: valid are 0..47"),
    (("ffn", 0, [1, 99]), "position 99 is out of range"),
    (("head", 0, 1, 2.5), "positions are a position or a list of them, got 2.5"),
    (("edge", 0, 5, 2), "source 5 is after its target 2"),
    (("edge", 0, 1, 40), "target 40 is out of range"),
    (("edge", 0, 1, 4, 7), "head 7 is out of range"),
    (("mlp", 0), "an ablation is a tuple starting with one of"),
    (("attention",), "takes 1 or 2 values"),
    ([], "no ablations given"),
])
def test_bad_ablations_are_refused_with_the_valid_range(spec, message):
    run = lw.analyze(tiny.load("llama"), IOI)
    with pytest.raises(LmttError, match=message.replace("(", r"\(")):
        run.intervene(spec)


def test_bad_mode_and_tokens_are_refused():
    run = lw.analyze(tiny.load("llama"), IOI)
    with pytest.raises(LmttError, match="mode must be one of"):
        run.intervene(("ffn", 0), "resample")
    with pytest.raises(LmttError, match="not one"):
        run.intervene(("ffn", 0), against=" Mary and John")
    with pytest.raises(LmttError, match="k must be a positive integer"):
        run.faithfulness(k=0)


@pytest.mark.parametrize("mode", ["zero", "mean"])
def test_exported_code_runs_and_gives_the_same_logits(run, mode, tmp_path):
    ablations = [("head", 1, 2), ("neuron", 1, 5, [1, 3]), ("attention", 0, 4), ("ffn", 1),
                 ("edge", 1, 1, 5), ("edge", 0, 0, 7, 3)]
    new, _ = run.intervene(ablations, mode)
    source = I.code(run, ablations, mode, model_expr="model")
    path = tmp_path / f"reproduce_{run.family.name}_{run.shape.n_kv_heads}_{mode}.py"
    path.write_text(source)
    result = runpy.run_path(str(path), init_globals={"model": run.model})
    torch.testing.assert_close(result["logits"].float(), new.logits, atol=1e-5, rtol=0)
    assert "lmtt_widget.load_model()" in I.code(new)  # an intervened run exports its own ablations


def test_exported_code_reproduces_patches_with_ablations(run, tmp_path):
    other = lw.analyze(run.model, SWAPPED)
    ablated, _ = run.intervene([("head", 1, 1), ("ffn", 0, [2])])
    stages = ["embed", "ffn", "post"] + ([] if run.shape.parallel else ["mid"])
    nodes = [("head", 1, 2, 9)] + [(stage, -1 if stage == "embed" else 1, 3 + i) for i, stage in enumerate(stages)]
    patched, _ = I.patch(other, ablated, nodes)
    source = I.code(patched, model_expr="model")
    assert source.count("# patch (") == len(nodes) and "from the other prompt" in source
    path = tmp_path / f"patched_{run.family.name}.py"
    path.write_text(source)
    result = runpy.run_path(str(path), init_globals={"model": run.model})
    torch.testing.assert_close(result["logits"].float(), patched.logits, atol=1e-5, rtol=0)
    assert not torch.allclose(patched.logits, ablated.logits)


def test_rerun_keeps_chosen_patches_with_their_values_and_checks_its_arguments(run):
    other = lw.analyze(run.model, SWAPPED)
    patched, _ = I.patch(other, run, [("post", 1, 3), ("embed", -1, 2)])
    again = I.rerun(patched, [("head", 1, 1)], [1])  # the second patch kept, an ablation added
    ablated, _ = run.intervene([("head", 1, 1)])
    expected, _ = I.patch(other, ablated, [("embed", -1, 2)])
    torch.testing.assert_close(again.logits, expected.logits, atol=1e-5, rtol=0)
    assert [node for node, _ in again.patches] == [patched.patches[1][0]]
    for ablations, indices, message in [(("head", 1, 1), [], r"ablations must be a list of ablations"),
                                        ([], 0, r"patch_indices must be a list of positions in run.patches"),
                                        ([], [2], r"patch 2 is out of range: valid are 0\.\.1")]:
        with pytest.raises(lw.LmttError, match=message):
            I.rerun(patched, ablations, indices)


def test_patching_every_embedding_or_final_residual_gives_the_other_prompts_logits(run):
    other = lw.analyze(run.model, SWAPPED)
    last = run.shape.n_layers - 1
    for stage, layer in (("embed", -1), ("post", last)):
        patched, comparison = I.patch(other, run, [(stage, layer, i) for i in range(run.n_tokens)])
        torch.testing.assert_close(patched.logits, other.logits, atol=1e-5, rtol=0)
        assert comparison.before.logit == pytest.approx(float(run.logits[-1, comparison.token_id]))


def test_patching_one_node_equals_a_hook(run):
    other = lw.analyze(run.model, SWAPPED)
    layer, position = 0, 3
    block = modules(run, layer)["block"]
    patched, _ = I.patch(other, run, ("post", layer, position))
    expected = hooked_logits(run, [(block, "post", set_rows(None, position, other.capture.resid[layer + 1][position]))])
    torch.testing.assert_close(patched.logits, expected, atol=1e-5, rtol=0)
    # a head's output, and (sequential blocks) the residual after attention
    hd, head = run.shape.head_dim, 1
    head_in = recorded(other, modules(run, 1)["out_proj"])[position, head * hd:(head + 1) * hd]

    def fn(x):
        x[position, head * hd:(head + 1) * hd] = head_in
        return x
    patched, _ = I.patch(other, run, ("head", 1, head, position))
    torch.testing.assert_close(patched.logits, hooked_logits(run, [(modules(run, 1)["out_proj"], "pre", fn)]),
                               atol=1e-5, rtol=0)
    if not run.shape.parallel:
        patched, _ = I.patch(other, run, ("mid", 1, position))
        mid = patched.capture.resid[1][position] + patched.capture.attn_out[1][position]
        torch.testing.assert_close(mid, other.capture.resid[1][position] + other.capture.attn_out[1][position],
                                   atol=1e-5, rtol=0)


def test_two_prompts_of_different_lengths_are_refused():
    model = tiny.load("llama")
    run, shorter = lw.analyze(model, IOI), lw.analyze(model, "The capital of France is")
    for call in (lambda: I.patch(shorter, run, ("post", 0, 1)), lambda: I.compare(run, shorter)):
        with pytest.raises(LmttError, match="(23 and 7|7 and 23) tokens long, so their positions do not align"):
            call()
    with pytest.raises(LmttError, match="stage in"):
        I.patch(run, run, ("resid", 0, 1))


def test_compare_lists_the_edge_an_ablation_removes(run):
    assert I.compare(run, run, full=True).appeared == [] and I.compare(run, run, full=True).changed == []
    threshold, layer = 0.001, 1
    edges = [(d["weight"], u, v) for u, v, kind, d in run.full_graph(threshold).edges(keys=True, data=True)
             if kind == "attention" and v[1] == layer and u[2] != v[2]]
    _, source, target = max(edges)
    new, _ = run.intervene(("edge", layer, source[2], target[2]))
    diff = I.compare(run, new, threshold=threshold, full=True)
    assert (source, target, "attention") in [(c.source, c.target, c.kind) for c in diff.vanished]
    assert json.loads(json.dumps(diff.to_dict()))["vanished"]


def test_faithfulness_numbers_are_those_of_the_same_ablations(run):
    """The table's drops (one-position reruns from the clean keys and values) are those of the same
    edges ablated with run.intervene (the whole prompt rerun)."""
    result = run.faithfulness(k=(2, 3), draws=2, seed=1, candidates=6)
    last = run.n_tokens - 1
    assert [(row.by, row.k) for row in result.rows] == [("share", 2), ("share", 3), ("effect", 2), ("effect", 3)]
    for row in result.rows:
        scores = [e.score for e in row.edges]
        assert len(row.edges) == row.k and scores == sorted(scores, reverse=True)
        for edges, drop in [(row.edges, row.drop)] + list(zip(*_draws(row))):
            _, comparison = run.intervene([("edge", e.layer, e.source, e.target) for e in edges],
                                          against=result.contrast_id)
            assert result.clean.probability - drop.probability == pytest.approx(comparison.after.probability, abs=1e-6)
            assert result.clean.logit_diff - drop.logit_diff == pytest.approx(comparison.after.logit_diff, abs=1e-5)
        ranked = {(e.layer, e.source) for e in row.edges}
        for draw in _draws(row)[0]:  # matched to the ranking's layers, into the same token, never its edges
            assert Counter(e.layer for e in draw) == Counter(e.layer for e in row.edges)
            assert {e.target for e in draw} == {last} and not ranked & {(e.layer, e.source) for e in draw}
        best = [(e.layer, e.source, e.target) for e in result.best_edges[:row.k]]
        _, comparison = run.intervene([("edge", *e) for e in best], against=result.contrast_id)
        assert result.clean.logit_diff - row.best == pytest.approx(comparison.after.logit_diff, abs=1e-5)
        assert row.fraction == pytest.approx(row.drop.logit_diff / row.best)
    alone = [e.score for e in result.best_edges]
    assert alone == sorted(alone, reverse=True)
    assert run.faithfulness(k=(2, 3), draws=2, seed=1, candidates=6).to_dict() == result.to_dict()
    assert json.loads(json.dumps(result.to_dict()))["rows"][0]["drop"]["probability"] == result.rows[0].drop.probability


def _draws(row):
    """(each draw's random edges, each draw's drops)."""
    return row.random_edges, row.random


# -- the demo model --------------------------------------------------------------------------

def edge_hooks(run, edges):
    """Plain hooks removing sum_h A^h_ts v^h_s W_O^h at t, for each (layer, source, target)."""
    hooks, values = [], {}
    n_rep = run.shape.n_heads // run.shape.n_kv_heads
    for layer in sorted({e[0] for e in edges}):
        mods = modules(run, layer)

        def keep(out, layer=layer):
            values[layer] = out[0].view(run.n_tokens, run.shape.n_kv_heads, run.shape.head_dim)
            return out

        def remove(out, layer=layer, w=mods["out_proj"].weight):
            update, probs = out[0].clone(), out[1]
            for (edge_layer, s, t) in edges:
                if edge_layer == layer:
                    for h in range(run.shape.n_heads):
                        w_h = w[:, h * run.shape.head_dim:(h + 1) * run.shape.head_dim]  # nn.Linear: [d, hd]
                        update[0, t] -= probs[0, h, t, s] * (w_h @ values[layer][s, h // n_rep])
            return (update,) + tuple(out[1:])
        hooks += [(mods["value_proj"], "post", keep), (mods["attention"], "post", remove)]
    return hooks


@pytest.mark.demo
def test_demo_faithfulness_equals_the_same_ablations_by_hand(ioi_run):
    result = ioi_run.faithfulness(k=5, draws=3, seed=0)
    assert result.token == " Mary" and result.clean.probability == pytest.approx(0.92, abs=0.01)
    mary, other = ioi_run.logits[-1].topk(2).indices.tolist()
    for row in result.rows:
        for edges, drop in [(row.edges, row.drop)] + list(zip(*_draws(row))):
            logits = hooked_logits(ioi_run, edge_hooks(ioi_run, [(e.layer, e.source, e.target) for e in edges]))[-1]
            assert result.clean.probability - drop.probability == pytest.approx(float(logits.softmax(-1)[mary]),
                                                                                abs=1e-5)
            assert result.clean.logit - drop.logit == pytest.approx(float(logits[mary]), abs=1e-4)
            assert result.clean.logit_diff - drop.logit_diff == pytest.approx(float(logits[mary] - logits[other]),
                                                                              abs=1e-4)
        # what the rankings claim, measured: their edges matter more than random ones
        assert row.drop.logit_diff > row.random_mean.logit_diff


@pytest.mark.demo
def test_demo_the_mary_heads_of_layer_23_matter_more_than_other_heads_there(ioi_run):
    """The two layer-23 heads with the largest share on ' Mary' -> last, that edge ablated for
    them, against the same for 6 random pairs of that layer's heads (bench/faithfulness.py: all pairs)."""
    mary, last = ioi_run.tokens.index(" Mary"), ioi_run.n_tokens - 1
    top = ioi_run.attention_contributions(23)[0][last, mary].topk(2).indices.tolist()
    token = int(ioi_run.logits[-1].argmax())

    def p_mary(heads):
        logits = I.ablated_logits(ioi_run, [("edge", 23, mary, last, h) for h in heads])
        return float(logits[-1].softmax(-1)[token])
    pairs = random.Random(0).sample(list(itertools.combinations(range(ioi_run.shape.n_heads), 2)), 6)
    mean_random = sum(p_mary(pair) for pair in pairs) / len(pairs)
    assert ioi_run.decode(token) == " Mary"
    assert p_mary(top) < mean_random < float(ioi_run.logits[-1].softmax(-1)[token])


def test_neuron_activations_of_an_intervened_forward(run):
    """tracing.neuron_activations repeats a run's edits (for Run.neuron_activations of an intervened run)."""
    from lmtt_widget.tracing import neuron_activations

    new, _ = run.intervene([("head", 0, 1), ("neuron", 1, 3, [2])])
    acts = neuron_activations(run.model, run.family, run.shape, run.input_ids, [1], new.edits)[1]
    seen = []

    def zero_head(x):
        x[:, run.shape.head_dim:2 * run.shape.head_dim] = 0
        return x

    def keep(x):
        seen.append(x.clone())
        return x
    hooked_logits(run, [(modules(run, 0)["out_proj"], "pre", zero_head),
                        (modules(run, 1)["ffn_out_proj"], "pre", keep)])
    expected = seen[0]
    expected[2, 3] = 0
    torch.testing.assert_close(acts, expected, atol=1e-6, rtol=0)
    assert torch.equal(neuron_activations(run.model, run.family, run.shape, run.input_ids, [1])[1],
                       run.neuron_activations(1))


def test_neuron_readouts_of_an_intervened_run_follow_its_interventions(run):
    ablated, _ = run.intervene([("attention", 0)])
    seen = []
    hooks = [(modules(run, 0)["attention"], "post", lambda out: (torch.zeros_like(out[0]),) + tuple(out[1:])),
             (modules(run, 1)["ffn_out_proj"], "pre", lambda x: seen.append(x.clone()) or x)]
    hooked_logits(run, hooks)
    torch.testing.assert_close(ablated.neuron_activations(1), seen[0].view(run.n_tokens, -1), rtol=1e-5, atol=1e-6)
    assert not torch.allclose(ablated.neuron_activations(1), run.neuron_activations(1))


def test_compare_builds_both_graphs_as_asked(run):
    new, _ = run.intervene([("attention", 0)])
    for renormalize in (True, False):
        diff = I.compare(run, new, threshold=0.03, renormalize=renormalize)
        before = set(run.graph(threshold=0.03, renormalize=renormalize).edges(keys=True))
        after = set(new.graph(threshold=0.03, renormalize=renormalize).edges(keys=True))
        assert {(c.source, c.target, c.kind) for c in diff.appeared} == after - before
        assert {(c.source, c.target, c.kind) for c in diff.vanished} == before - after


# -- repeats and overlaps ----------------------------------------------------------------------

@pytest.mark.parametrize("spec", [("head", 1, 2), ("head", 1, 2, [3, 5]), ("neuron", 1, 5), ("attention", 0, [4]),
                                  ("ffn", 1), ("edge", 1, 4, 9), ("edge", 1, 4, 9, 2)])
def test_a_repeated_ablation_is_refused(run, spec):
    with pytest.raises(LmttError, match=rf"{re.escape(repr(spec))} in mode 'zero' is already ablated"):
        run.intervene([spec, spec])
    once, _ = run.intervene(spec)
    with pytest.raises(LmttError, match="already ablated"):  # also on top of an intervened run
        once.intervene(spec)
    with pytest.raises(LmttError, match="already ablated"):
        I.ablated_logits(once, [spec])


def test_overlapping_edges_remove_each_heads_term_once(run):
    layer, source, target, head = 1, 4, 9, 2
    every_head = ("edge", layer, source, target)
    all_heads, _ = run.intervene(every_head)
    for together in ([every_head, every_head + (head,)], [every_head + (head,), every_head]):
        both, _ = run.intervene(together)
        torch.testing.assert_close(both.logits, all_heads.logits, atol=1e-6, rtol=0)
        torch.testing.assert_close(I.ablated_logits(run, together), all_heads.logits, atol=1e-6, rtol=0)
    stepwise, _ = run.intervene(every_head + (head,))
    stepwise, _ = stepwise.intervene(every_head)
    torch.testing.assert_close(stepwise.logits, all_heads.logits, atol=1e-6, rtol=0)
    # the target's update lost every head's term exactly once
    term = sum(run.head_output(layer, h, target, source) for h in range(run.shape.n_heads))
    torch.testing.assert_close(both.capture.attn_out[layer][target], run.capture.attn_out[layer][target] - term,
                               atol=1e-6, rtol=1e-4)
    heads = [every_head + (h,) for h in range(run.shape.n_heads)]
    torch.testing.assert_close(run.intervene(heads)[0].logits, all_heads.logits, atol=1e-6, rtol=0)


@pytest.mark.parametrize("mode", ["zero", "mean"])
def test_overlapping_positions_of_one_component_act_once_on_their_union(run, mode):
    for part, other, union in [(("head", 1, 2, [3, 5]), ("head", 1, 2), ("head", 1, 2)),
                               (("neuron", 1, 5, [1, 2]), ("neuron", 1, 5, [2, 9]), ("neuron", 1, 5, [1, 2, 9])),
                               (("attention", 0, [4]), ("attention", 0), ("attention", 0))]:
        torch.testing.assert_close(I.ablated_logits(run, [part, other], mode), I.ablated_logits(run, [union], mode),
                                   atol=1e-6, rtol=0)


def test_overlapping_ablations_in_two_modes_are_refused(run):
    for first, second in [(("head", 1, 2, [3, 5]), ("head", 1, 2)), (("edge", 1, 4, 9), ("edge", 1, 4, 9, 2)),
                          (("ffn", 0, [1, 2]), ("ffn", 0, [2]))]:
        with pytest.raises(LmttError, match="overlaps .* already ablated in mode 'zero'"):
            run.intervene([I.parse(run, first), I.parse(run, second, "mean")])
    # apart, or a head or block that covers an edge, are fine
    run.intervene([I.parse(run, ("head", 1, 2, [3])), I.parse(run, ("head", 1, 2, [5]), "mean")])
    run.intervene([I.parse(run, ("head", 1, 2)), I.parse(run, ("edge", 1, 4, 9, 2), "mean")])


# -- bad arguments ---------------------------------------------------------------------------

@pytest.mark.parametrize("tolerance", [-1, -0.01, "0.1", None, True, float("nan")])
def test_compare_refuses_a_bad_tolerance(tolerance):
    run = lw.analyze(tiny.load("llama"), IOI)
    with pytest.raises(LmttError, match="tolerance must be a number >= 0"):
        I.compare(run, run, tolerance=tolerance)


def test_a_run_argument_that_is_not_a_run_is_named():
    run = lw.analyze(tiny.load("llama"), IOI)
    calls = [(lambda: I.patch(run, "x", ("post", 0, 1)), "run_into"),
             (lambda: I.patch(None, run, ("post", 0, 1)), "run_from"),
             (lambda: I.compare(run, 3), "run_b"), (lambda: I.compare([run], run), "run_a"),
             (lambda: I.check_pair(run, "other", "comparing two prompts"), "run_b"),
             (lambda: I.intervene("x", ("head", 0, 1)), "run"), (lambda: faithfulness(object()), "run"),
             (lambda: I.code(42), "run")]
    for call, name in calls:
        with pytest.raises(LmttError, match=rf"\b{name} must be a Run \(from lmtt_widget.analyze\), got "):
            call()


def test_intervening_in_steps_equals_intervening_at_once_in_any_order(run):
    edge, head = ("edge", 1, 3, 7, 2), ("head", 1, 2)  # the head ablation covers the edge
    at_once, _ = run.intervene([edge, head])
    edge_first, _ = run.intervene(edge)
    torch.testing.assert_close(edge_first.intervene(head)[0].logits, at_once.logits, atol=1e-6, rtol=0)
    torch.testing.assert_close(I.ablated_logits(edge_first, head), at_once.logits, atol=1e-6, rtol=0)
    torch.testing.assert_close(run.intervene(head)[0].intervene(edge)[0].logits, at_once.logits, atol=1e-6, rtol=0)


# -- the kinds ---------------------------------------------------------------------------------

def test_each_kind_describes_itself_and_parses_back_from_its_tuple_form(run):
    last = run.shape.n_layers - 1
    words = [
        (("head", 1, 2), "zero", "head 2 of layer 1, all positions, zeroed"),
        (("head", 1, 2, [3]), "mean", "head 2 of layer 1, position 3, set to its mean"),
        (("neuron", 1, 5, [9, 2, 9]), "zero", "neuron 5 of layer 1, positions 2, 9, zeroed"),
        (("attention", 0, 4), "mean", "the attention block of layer 0, position 4, set to its mean"),
        (("ffn", -1), "zero", f"the FFN block of layer {last}, all positions, zeroed"),
        (("edge", 1, 4, 9), "zero", "edge 4 -> 9 of layer 1, all heads, zeroed"),
        (("edge", 1, 4, 9, -1), "mean", f"edge 4 -> 9 of layer 1, head {run.shape.n_heads - 1}, "
                                        "its value vector set to the mean"),
    ]
    for spec, mode, description in words:
        ablation = I.parse(run, spec, mode)
        assert type(ablation) is I.ABLATIONS[spec[0]] and ablation.kind == spec[0] and ablation.mode == mode
        assert ablation.describe() == description
        assert I.parse(run, ablation.as_tuple(), mode) == ablation == I.parse(run, ablation)
        assert I.Ablation(**asdict(ablation)) == ablation and hash(I.Ablation(**asdict(ablation))) == hash(ablation)
        assert json.loads(json.dumps(asdict(ablation)))["layer"] == ablation.layer


def test_patch_nodes_are_their_checked_tuples_and_describe_themselves(run):
    last, end = run.shape.n_layers - 1, run.n_tokens - 1
    words = {("head", 1, 2, -1): (("head", 1, 2, end), f"the output of head 2 of layer 1 at position {end}"),
             ("embed", -1, 3): (("embed", -1, 3), "the embedding at position 3"),
             ("ffn", -1, 4): (("ffn", last, 4), f"the FFN update of layer {last} at position 4"),
             ("post", 0, 5): (("post", 0, 5), "the residual after layer 0 at position 5")}
    if not run.shape.parallel:
        words[("mid", 1, 2)] = (("mid", 1, 2), "the residual after the attention block of layer 1 at position 2")
    for node, (checked, description) in words.items():
        parsed = I.parse_node(run, node)
        assert type(parsed) is I.NODES[node[0]] and parsed == checked and parsed.as_tuple() == checked
        assert parsed.describe() == description and I.parse_node(run, parsed) == parsed
    for node, message in [(("embed", 0, 3), "the embedding node's layer is -1"), (("post", 0), "stage in"),
                          (("head", 0, 9, 1), "head 9 is out of range"), ([3, 0, 1], "stage in")]:
        with pytest.raises(LmttError, match=message):
            I.parse_node(run, node)


def test_a_new_kind_is_one_class():
    """Adding a kind is writing one class: parse, intervene and the check for repeats take it."""
    from lmtt_widget.interventions.edits import put, rows

    class ResidualAblation(I.Ablation, kind="residual"):  # the residual after a block
        ARITY, FORM = (1, 2), "('residual', layer[, positions])"

        @classmethod
        def from_args(cls, run, layer, args, mode):
            positions = tuple(run.position(p) for p in args[0]) if args else None
            return cls("residual", layer, positions=positions, mode=mode)

        def as_tuple(self):
            return ("residual", self.layer) + (() if self.positions is None else (list(self.positions),))

        def describe(self):
            return f"the residual after layer {self.layer}, zeroed"

        def component(self):
            return ("residual", self.layer)

        def edits(self, clean, everything):
            return [put("block_output", self.layer, rows(self.positions), 0.0)]

    try:
        run = lw.analyze(tiny.load("llama"), IOI)
        new, _ = run.intervene(("residual", 1, [3, 4]))
        expected = hooked_logits(run, [(modules(run, 1)["block"], "post", set_rows(None, [3, 4], 0.0))])
        torch.testing.assert_close(new.logits, expected, atol=1e-5, rtol=0)
        assert isinstance(new.interventions[0], ResidualAblation)
        with pytest.raises(LmttError, match="already ablated"):
            new.intervene(("residual", 1, [3, 4]))
        with pytest.raises(LmttError, match=r"'residual'.*\('residual', layer\[, positions\]\)"):
            run.intervene(("mlp", 1))
    finally:
        del I.ABLATIONS["residual"]


def test_faithfulness_of_an_intervened_run_never_ablates_its_ablated_edges_again(run):
    last = run.n_tokens - 1  # every edge into the last token ablated, but from the first token and itself
    ablated, _ = run.intervene([("edge", layer, source, last) for layer in range(run.shape.n_layers)
                                for source in range(1, last)])
    result = ablated.faithfulness(k=4, draws=5, seed=0, candidates=5)
    into_last = [e for row in result.rows for draw in [row.edges] + row.random_edges for e in draw]
    into_last += result.best_edges
    assert into_last and {e.source for e in into_last} <= {0, last}
