"""A model the user hands to `load_model` stays theirs: in their own code it behaves exactly as
an untouched copy of the same weights, before and after the package's analyses."""

import copy

import pytest
import torch

import lmtt_widget as lw
import tiny
from lmtt_widget.tracing import Edit, trace
from tiny import IOI

FAMILIES = ["llama", "gpt2", "gpt_neox", "opt"]


def ids(n=12, seed=1):
    return torch.randint(1, tiny.VOCAB, (1, n), generator=torch.Generator().manual_seed(seed))


def left_padded():
    """Two prompts of 7 and 12 tokens, the shorter padded on the left: (ids [2, 12], mask [2, 12])."""
    short, long = ids(7, seed=2), ids(12, seed=3)
    input_ids = torch.cat([torch.cat([torch.zeros(1, 5, dtype=torch.long), short], 1), long])
    mask = torch.ones_like(input_ids)
    mask[0, :5] = 0
    return input_ids, mask


def assert_behaves_like(model, untouched):
    """Logits, attentions (tensors or nothing, as before), a left-padded batch and greedy generation."""
    input_ids, mask = left_padded()
    for inputs in [dict(input_ids=ids()), dict(input_ids=input_ids, attention_mask=mask)]:
        with torch.no_grad():
            got, want = model(**inputs, output_attentions=True), untouched(**inputs, output_attentions=True)
        assert not got.logits.isnan().any()
        torch.testing.assert_close(got.logits, want.logits, rtol=0, atol=0)
        assert len(got.attentions) == len(want.attentions)
        for mine, theirs in zip(got.attentions, want.attentions):
            assert type(mine) is type(theirs) is torch.Tensor
            torch.testing.assert_close(mine, theirs, rtol=0, atol=0)
        if got.attentions:
            torch.stack(got.attentions).sum().cpu()  # what a user does with them
    greedy = dict(max_new_tokens=6, do_sample=False, pad_token_id=0)
    assert torch.equal(model.generate(ids(), **greedy), untouched.generate(ids(), **greedy))


@pytest.mark.parametrize("family", FAMILIES)
@pytest.mark.parametrize("attention", ["sdpa", "eager"])
def test_a_users_model_behaves_as_before_after_load_model_and_an_analysis(family, attention):
    hf_model = tiny.hf_model(family)
    hf_model.set_attn_implementation(attention)
    untouched = copy.deepcopy(hf_model)
    model = lw.load_model(hf_model, tokenizer=tiny.tokenizer())
    assert hf_model.config._attn_implementation == attention
    assert_behaves_like(hf_model, untouched)
    run = lw.analyze(model, IOI)
    run.attention_pattern(1)  # computed when read, after the trace
    assert hf_model.config._attn_implementation == attention
    assert_behaves_like(hf_model, untouched)


def test_an_sdpa_models_attention_still_comes_from_queries_and_keys_in_the_analysis():
    """The analysis keeps its speed: probabilities not kept whole stay queries and keys."""
    model = tiny.load("llama")
    assert model._module.config._attn_implementation == "sdpa"
    run = lw.analyze(model, IOI, budget_bytes=2_000)
    assert all(isinstance(p, lw.attention.AttentionProbs) for p in run.capture.probs.values())
    assert len(run.capture.probs) == run.shape.n_layers


def test_an_error_inside_a_trace_leaves_the_users_attention_as_it_was():
    hf_model = tiny.hf_model("llama")
    untouched = copy.deepcopy(hf_model)
    model = lw.load_model(hf_model, tokenizer=tiny.tokenizer())
    run = lw.analyze(model, IOI)

    def fail(tensor, state):
        raise RuntimeError("an edit that fails")

    with pytest.raises(Exception, match="an edit that fails"):
        trace(model, run.family, run.shape, run.input_ids, [Edit("attention_output", 1, fail)])
    assert hf_model.config._attn_implementation == "sdpa"
    assert_behaves_like(hf_model, untouched)
    torch.testing.assert_close(lw.analyze(model, IOI).logits, run.logits, rtol=0, atol=0)  # and it still works


def test_a_model_in_training_mode_is_analysed_without_dropout_and_keeps_its_mode():
    hf_model = tiny.hf_model("gpt2")  # dropout 0.1 in its embeddings, attention and residuals
    model = lw.load_model(hf_model, tokenizer=tiny.tokenizer())
    evaluated = lw.analyze(model, IOI)
    hf_model.train()
    hf_model.transformer.h[1].attn.eval()  # a mode the user set on one module
    for _ in range(2):
        torch.testing.assert_close(lw.analyze(model, IOI).logits, evaluated.logits, rtol=0, atol=0)
    assert hf_model.training and hf_model.transformer.h[0].training and not hf_model.transformer.h[1].attn.training


@pytest.mark.parametrize("family", ["llama", "gpt_neox"])
def test_a_users_model_behaves_as_before_after_traces_stopped_at_a_layer(family):
    """Activations not kept are traced again up to their layer only: the stopped forward passes
    leave nothing behind."""
    hf_model = tiny.hf_model(family)
    untouched = copy.deepcopy(hf_model)
    model = lw.load_model(hf_model, tokenizer=tiny.tokenizer())
    run = lw.analyze(model, IOI, budget_bytes=2_000)
    assert run.capture.neurons == {}
    run.neuron_activations(0)
    run.neuron_activations(1)
    assert_behaves_like(hf_model, untouched)
    again = lw.analyze(model, IOI)
    torch.testing.assert_close(again.neuron_activations(1), run.neuron_activations(1), rtol=0, atol=0)
