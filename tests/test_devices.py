"""A model whose layers sit on different devices (accelerate's device_map, e.g. "auto" over
several GPUs) gives the same analysis as the same weights on one device."""

import pytest
import torch
from accelerate import dispatch_model

import lmtt_widget as lw
import tiny
from tiny import IOI

SWAPPED = "When John and Mary went to the store, Mary gave a drink to"  # same length in tokens
FAMILIES = ["llama", "gpt2", "gpt_neox"]  # grouped-query, tied unembedding (Conv1D), parallel blocks
TOL = dict(rel=1e-4, abs=1e-6)  # float32 rounding

two_gpus = pytest.mark.skipif(torch.cuda.device_count() < 2, reason="needs 2 CUDA devices to split a model over")


def split_map(family: str, first, second) -> dict:
    """Embeddings and layer 0 on `first`; layers 1-2 and the final norm on `second`; the
    unembedding with the final norm, or with the embedding it is tied to (GPT-2)."""
    return {
        "llama": {"model.embed_tokens": first, "model.rotary_emb": first, "model.layers.0": first,
                  "model.layers.1": second, "model.layers.2": second, "model.norm": second, "lm_head": second},
        "gpt2": {"transformer.wte": first, "lm_head": first, "transformer.wpe": first, "transformer.drop": first,
                 "transformer.h.0": first, "transformer.h.1": second, "transformer.h.2": second,
                 "transformer.ln_f": second},
        "gpt_neox": {"gpt_neox.embed_in": first, "gpt_neox.emb_dropout": first, "gpt_neox.rotary_emb": first,
                     "gpt_neox.layers.0": first, "gpt_neox.layers.1": second, "gpt_neox.layers.2": second,
                     "gpt_neox.final_layer_norm": second, "lm_head": second},
    }[family]


def dispatched(family: str, first, second):
    """The tiny model with accelerate's device hooks, placed by `split_map`."""
    hf = tiny.hf_model(family)
    dispatch_model(hf, split_map(family, first, second), force_hooks=True,
                   skip_keys=hf._skip_keys_device_placement)  # as from_pretrained(device_map=...) does
    return lw.load_model(hf, tokenizer=tiny.tokenizer())


def routes(shares) -> list:
    return sorted(shares.graph().edges(keys=True, data=True), key=lambda edge: edge[:3])


def analysis(run) -> list:
    """What a user reads off a run: every layer's shares, the routes, vocabulary readouts, neurons."""
    layers = range(run.shape.n_layers)
    stages = ["post"] if run.shape.parallel else ["mid", "post"]
    return [
        [run.attention_contributions(layer) + run.ffn_contributions(layer) for layer in layers],
        routes(run),
        run.top_tokens(k=5),
        run.logit_lens(0, -1, "embed", k=5),
        [run.logit_lens(layer, -1, stage, k=5) for layer in layers for stage in stages],
        [run.head_logits(layer, 1, -1, source=source, k=5) for layer in layers for source in (None, 0)],
        [run.block_logits(layer, -1, "ffn", k=5) for layer in layers],
        [run.neuron_contributions(layer, -1, k=5) for layer in layers],
        [run.neuron_logits(layer, 3, -1, k=5) for layer in layers],
    ]


def interventions(run) -> list:
    """Mean ablations of each kind and patches from another prompt, across the device boundary."""
    last = run.n_tokens - 1
    ablations = [("head", 1, 0), ("neuron", 0, 3, [last]), ("attention", 2, [last - 1]), ("ffn", 1),
                 ("edge", 1, 0, last)]
    ablated, comparison = run.intervene(ablations, mode="mean")
    nodes = [("embed", -1, 2), ("post", 0, last), ("head", 1, 0, last), ("ffn", 1, last)]
    if not run.shape.parallel:
        nodes.append(("mid", 1, last))
    patched, patch_comparison = lw.patch(lw.analyze(run.model, SWAPPED), run, nodes)
    return [comparison.to_dict(), analysis(ablated), patch_comparison.to_dict(), analysis(patched)]


def labels_and_numbers(value) -> tuple[list, list]:
    """Tokens, indices and names (to compare exactly) apart from floats (to compare within TOL)."""
    if isinstance(value, torch.Tensor):
        return [], value.flatten().tolist()
    if isinstance(value, float):
        return [], [value]
    if isinstance(value, (str, int, type(None))):
        return [value], []
    labels, numbers = [], []
    for item in (sorted(value.items()) if isinstance(value, dict) else value):
        more_labels, more_numbers = labels_and_numbers(item)
        labels += more_labels
        numbers += more_numbers
    return labels, numbers


def assert_same(got, want) -> None:
    (got_labels, got_numbers), (want_labels, want_numbers) = labels_and_numbers(got), labels_and_numbers(want)
    assert got_labels == want_labels
    assert got_numbers == pytest.approx(want_numbers, **TOL)


@pytest.mark.parametrize("family", FAMILIES)
def test_device_hooks_on_one_device_change_nothing(family):
    model = dispatched(family, "cpu", "cpu")
    assert hasattr(model._module.get_output_embeddings(), "_hf_hook")  # accelerate moves tensors between modules
    run, reference = lw.analyze(model, IOI), lw.analyze(tiny.load(family), IOI)
    assert_same(analysis(run), analysis(reference))
    assert_same(interventions(run), interventions(reference))
    assert_same(routes(lw.analyze_compact(model, IOI)), routes(reference))


@two_gpus
@pytest.mark.parametrize("family", FAMILIES)
def test_a_model_split_over_two_gpus_gives_the_same_analysis(family):
    model = dispatched(family, 0, 1)
    assert {p.device.index for p in model._module.parameters()} == {0, 1}
    one_gpu = lw.load_model(tiny.hf_model(family), tokenizer=tiny.tokenizer(), device="cuda:0")
    run, reference = lw.analyze(model, IOI), lw.analyze(one_gpu, IOI)
    assert_same(analysis(run), analysis(reference))
    assert_same(interventions(run), interventions(reference))
    assert_same(routes(lw.analyze_compact(model, IOI)), routes(reference))  # shares computed inside the trace


@two_gpus
def test_device_map_auto_with_a_memory_cap_splits_the_layers_and_changes_nothing(tmp_path):
    tiny.hf_model("llama").save_pretrained(tmp_path)
    # 175 kB in all: capped at 150 kB, GPU 0 gets the embeddings (41 kB) and layer 0 (31 kB), GPU 1 the rest
    model = lw.load_model(tmp_path, tokenizer=tiny.tokenizer(), device_map="auto",
                          max_memory={0: 150_000, 1: 10**9})
    assert len(set(model._module.hf_device_map.values())) == 2, model._module.hf_device_map
    one_gpu = lw.load_model(tiny.hf_model("llama"), tokenizer=tiny.tokenizer(), device="cuda:0")
    run, reference = lw.analyze(model, IOI), lw.analyze(one_gpu, IOI)
    assert_same(analysis(run), analysis(reference))
    assert_same(interventions(run), interventions(reference))
