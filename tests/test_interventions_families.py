"""Interventions on the families added for issue 12 (Gemma 2/3, Phi-3, OLMo 2/3, GPT-J, Falcon,
Cohere 1/2 and the mixtures of experts): each ablation equals the same change made with plain
PyTorch hooks on the transformers model, and the generated nnsight code reproduces them."""

import runpy

import pytest
import torch
from test_families_new import MOE, PROMPT, SWAPPED, attn_bias_part, head_source_parts, hooked_logits, modules
from test_interventions import one_thread  # noqa: F401 (an autouse fixture: tiny models run on one thread)

import lmtt_widget as lw
import tiny
from lmtt_widget import LmttError
from lmtt_widget import interventions as I

POST_NORM = ["gemma2", "gemma3_text", "gemma3", "olmo2", "olmo3"]


@pytest.fixture(scope="module", params=tiny.NEW_FAMILIES)
def run(request):
    return lw.analyze(tiny.load(request.param), PROMPT)


def dense_layer(run) -> int | None:
    return next((layer for layer in range(run.shape.n_layers) if not run.has_experts(layer)), None)


# -- edges ----------------------------------------------------------------------------------------


@pytest.mark.parametrize("head", [None, 3])
def test_an_edge_ablation_equals_removing_its_parts_with_a_hook(run, head):
    """The parts come from the clean run's tensors: an edit of layer 1's update changes nothing
    the parts of layer 1 are made of (values, probabilities, a post-norm's scale)."""
    layer, source, target = 1, 7, 9  # inside OLMo 3's sliding window of 4
    parts = head_source_parts(run, layer)[target, source]  # [H, d]
    term = parts.sum(0) if head is None else parts[head]
    new, _ = run.intervene(("edge", layer, source, target) + (() if head is None else (head,)))

    def remove(x):
        x[target] -= term.to(x)
    expected = hooked_logits(run, modules(run, layer)["attn_update"], remove)
    torch.testing.assert_close(new.logits, expected, atol=1e-5, rtol=0)
    assert term.abs().max() > 1e-5 and (new.logits - run.logits).abs().max() > 0


def test_ablating_every_edge_into_a_target_leaves_only_the_output_bias_there(run):
    """Every head-source part of the target gone, what is left of the update there is the
    output bias (through any post-norm): with no bias, the same as ablating the attention block."""
    layer, target = 1, 7
    edges = [("edge", layer, source, target) for source in range(target + 1)]
    new, _ = run.intervene(edges)
    bias = attn_bias_part(run, layer)[target]

    def leave_bias(x):
        x[target] = bias.to(x)
    expected = hooked_logits(run, modules(run, layer)["attn_update"], leave_bias)
    torch.testing.assert_close(new.logits, expected, atol=1e-5, rtol=0)
    if modules(run, layer)["out_proj"].bias is None:
        block, _ = run.intervene(("attention", layer, [target]))
        torch.testing.assert_close(new.logits, block.logits, atol=1e-5, rtol=0)


# -- generated code ---------------------------------------------------------------------------------


def exported_logits(run, source: str, tmp_path) -> torch.Tensor:
    # a file of its own for each script: nnsight keeps what it read of a trace's source by file and line
    path = tmp_path / f"reproduce_{run.family.name}_{len(list(tmp_path.iterdir()))}.py"
    path.write_text(source)
    return runpy.run_path(str(path), init_globals={"model": run.model})["logits"].float()


@pytest.mark.parametrize("mode", ["zero", "mean"])
def test_exported_code_runs_and_gives_the_same_logits(run, mode, tmp_path):
    ablations = [("head", 1, 2), ("attention", 0, [4]), ("ffn", 1), ("edge", 1, 7, 9), ("edge", 0, 0, 3, 3)]
    layer = dense_layer(run)
    if layer is not None:
        ablations.append(("neuron", layer, 5, [1, 3]))
    new, _ = run.intervene(ablations, mode)
    assert (new.logits - run.logits).abs().max() > 1e-3
    source = I.code(run, ablations, mode, model_expr="model")
    torch.testing.assert_close(exported_logits(run, source, tmp_path), new.logits, atol=1e-4, rtol=0)


def test_exported_code_reproduces_patches(run, tmp_path):
    other = lw.analyze(run.model, SWAPPED)
    stages = ["embed", "ffn", "post"] + ([] if run.shape.parallel else ["mid"])
    nodes = [("head", 1, 2, 9)] + [(stage, -1 if stage == "embed" else 1, 3 + i) for i, stage in enumerate(stages)]
    patched, _ = lw.patch(other, run, nodes)
    assert (patched.logits - run.logits).abs().max() > 1e-3
    torch.testing.assert_close(exported_logits(run, I.code(patched, model_expr="model"), tmp_path), patched.logits,
                               atol=1e-4, rtol=0)


# -- mixtures of experts ------------------------------------------------------------------------------


@pytest.fixture(scope="module", params=MOE)
def moe_run(request):
    return lw.analyze(tiny.load(request.param), PROMPT)


def moe_layer(run) -> int:
    return next(layer for layer in range(run.shape.n_layers) if run.has_experts(layer))


def routed_logits(run, layer, expert, positions):
    """[T, V]: the plain forward pass with a hook zeroing `expert`'s routing weight at `positions`."""
    def hook(module, args, out):
        _, weights, selected = out
        dropped = (selected == expert) & torch.isin(torch.arange(run.n_tokens), torch.tensor(positions))[:, None]
        return out[0], weights.masked_fill(dropped, 0), selected
    handle = modules(run, layer)["router"].register_forward_hook(hook)
    try:
        with torch.no_grad():
            return run.hf_model(run.input_ids[None]).logits[0].float()
    finally:
        handle.remove()


def test_an_expert_ablation_equals_zeroing_its_routing_weight_by_hand(moe_run, tmp_path):
    run, layer = moe_run, moe_layer(moe_run)
    everywhere = list(range(run.n_tokens))
    expert = run.expert_writes(layer, 6).experts[0]
    for positions in (None, [2, 6]):
        spec = ("expert", layer, expert) + (() if positions is None else (positions,))
        new, _ = run.intervene(spec)
        expected = routed_logits(run, layer, expert, everywhere if positions is None else positions)
        torch.testing.assert_close(new.logits, expected, atol=1e-5, rtol=0)
        assert (new.logits - run.logits).abs().max() > 1e-3
        torch.testing.assert_close(exported_logits(run, I.code(run, spec, model_expr="model"), tmp_path), new.logits,
                                   atol=1e-4, rtol=0)
    ablation = I.parse(run, ("expert", layer, expert, [2, 6]))
    assert ablation.describe() == f"expert {expert} of layer {layer}, positions 2, 6, its routing weight zeroed"
    assert I.parse(run, ablation.as_tuple()) == ablation


def test_expert_and_neuron_ablations_refuse_the_wrong_kind_of_layer(moe_run):
    run, layer = moe_run, moe_layer(moe_run)
    with pytest.raises(LmttError, match="mixture of experts.*'expert'"):
        run.intervene(("neuron", layer, 0))
    with pytest.raises(LmttError, match="mode 'zero' only"):
        run.intervene(("expert", layer, 0), "mean")
    with pytest.raises(LmttError, match="expert"):
        run.intervene(("expert", layer, 99))
    dense = dense_layer(run)
    if dense is not None:
        with pytest.raises(LmttError, match="dense"):
            run.intervene(("expert", dense, 0))


def test_faithfulness_drops_are_those_of_the_same_edges_ablated(run):
    """The table's drops come from one-position reruns from the clean keys and values (whole reruns
    for Falcon); they equal run.intervene's, also after post-norms and in sliding-window layers."""
    result = run.faithfulness(k=(2, 4), draws=1, seed=1, candidates=8)
    for row in result.rows:
        for edges, drop in [(row.edges, row.drop), (row.random_edges[0], row.random[0])]:
            _, comparison = run.intervene([("edge", e.layer, e.source, e.target) for e in edges],
                                          against=result.contrast_id)
            assert result.clean.logit_diff - drop.logit_diff == pytest.approx(comparison.after.logit_diff, abs=1e-4)
    assert any(abs(row.drop.logit_diff) > 1e-3 for row in result.rows)
