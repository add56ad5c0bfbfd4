"""sdpa attention with probabilities computed when read gives what eager attention gives."""

import nnsight
import pytest
import torch

import lmtt_widget as lw
import tiny
from lmtt_widget import attention as A
from lmtt_widget.interventions import Ablation
from test_perf_paths import assert_same_graph
from tiny import IOI

N_TOKENS = 40


def ids(n=N_TOKENS, seed=1):
    return torch.randint(0, tiny.VOCAB, (1, n), generator=torch.Generator().manual_seed(seed))


def eager_and_lazy(hf_model, input_ids):
    """(eager attention's probabilities, ours), per layer, and both logits."""
    hf_model.set_attn_implementation("eager")
    eager = hf_model(input_ids, output_attentions=True)
    hf_model.set_attn_implementation(A.register())
    lazy = hf_model(input_ids, output_attentions=True)
    return eager, lazy


@pytest.mark.parametrize("family", tiny.FAMILIES)
def test_probabilities_and_outputs_match_eager_attention(family):
    hf_model = tiny.hf_model(family)
    eager, lazy = eager_and_lazy(hf_model, ids())
    torch.testing.assert_close(lazy.logits, eager.logits, rtol=1e-5, atol=1e-6)
    assert len(lazy.attentions) == len(eager.attentions) == hf_model.config.num_hidden_layers
    for want, got in zip(eager.attentions, lazy.attentions):
        assert isinstance(got, A.AttentionProbs) and got.shape == want.shape
        torch.testing.assert_close(got.dense(), want, rtol=1e-5, atol=1e-7)


def test_indexing_computes_the_rows_asked_for():
    eager, lazy = eager_and_lazy(tiny.hf_model("llama"), ids())
    want, got = eager.attentions[1], lazy.attentions[1]
    one = got[0]
    assert isinstance(one, A.AttentionProbs) and one.shape == want[0].shape
    assert isinstance(one[2], A.AttentionProbs)
    for index in [(2,), (2, 7), (2, 7, 3), (slice(None), slice(5, 12), slice(None, 12)), ([0, 3], 9, 4),
                  (slice(None), slice(5, 12), slice(0, 8)), (slice(None), slice(5, 12), slice(None, 30)),
                  (slice(1, 3), -1), (torch.tensor([1, 2]), slice(None), 0), (Ellipsis, 0)]:
        torch.testing.assert_close(A.dense(one[index]), want[0][index], rtol=1e-5, atol=1e-7)
    torch.testing.assert_close(one[2][7], want[0, 2, 7], rtol=1e-5, atol=1e-7)  # a head, then a row
    torch.testing.assert_close(got[0, 1, 5, 2], want[0, 1, 5, 2], rtol=1e-5, atol=1e-7)
    for head in range(want.shape[1]):  # one head's keys: grouped-query attention shares them
        torch.testing.assert_close(one[head].dense(), want[0, head], rtol=1e-5, atol=1e-7)
    for bad in [(slice(None), N_TOKENS), (0, -N_TOKENS - 1), (want.shape[1],)]:
        with pytest.raises(IndexError):
            A.dense(one[bad])


def test_a_sliding_window_mask_is_followed():
    hf_model = tiny.hf_model("mistral")
    hf_model.config.sliding_window = 8  # shorter than the prompt: sdpa gets a boolean mask
    eager, lazy = eager_and_lazy(hf_model, ids())
    probs = lazy.attentions[0][0]
    assert probs.mask is not None and probs.mask.dtype == torch.bool
    torch.testing.assert_close(probs.dense(), eager.attentions[0][0], rtol=1e-5, atol=1e-7)
    assert (probs.dense()[:, -1, :-8] == 0).all()


def test_an_additive_mask_is_added():
    g = torch.Generator().manual_seed(0)
    query, key = torch.randn(1, 2, 6, 4, generator=g), torch.randn(1, 2, 6, 4, generator=g)
    mask = torch.randn(1, 1, 6, 6, generator=g).masked_fill(torch.ones(6, 6, dtype=torch.bool).triu(1), -torch.inf)
    probs = A.AttentionProbs(query, key, mask, 0.5)
    torch.testing.assert_close(probs[0, :, 2:5], ((query @ key.transpose(-1, -2)) * 0.5 + mask).softmax(-1)[0, :, 2:5])


@pytest.mark.parametrize("family", ["llama", "gpt2", "gpt_neox"])
def test_an_analysis_is_the_same_with_either_attention(family):
    lazy_model = tiny.load(family)
    assert lazy_model._module.config._attn_implementation == "sdpa"  # the model's own; A.NAME inside the traces
    eager_hf = tiny.hf_model(family)
    eager_hf.set_attn_implementation("eager")
    eager_model = lw.load_model(eager_hf, tokenizer=tiny.tokenizer())
    assert eager_model._module.config._attn_implementation == "eager"  # it gives probabilities: it stays eager
    lazy, eager = lw.analyze(lazy_model, IOI), lw.analyze(eager_model, IOI)
    for layer in range(lazy.shape.n_layers):
        torch.testing.assert_close(lazy.attention_pattern(layer), eager.attention_pattern(layer), rtol=1e-5, atol=1e-7)
        torch.testing.assert_close(lazy.attention_contributions(layer), eager.attention_contributions(layer),
                                   rtol=1e-4, atol=1e-6)
    assert_same_graph(lazy.graph(threshold=0.02), eager.graph(threshold=0.02))
    # an edge ablation reads the probabilities inside the trace; a head's is set to 0 in the captured copy
    ablations = [Ablation("edge", 1, target=lazy.n_tokens - 1, source=2), Ablation("head", 0, head=1)]
    lazy_new, _ = lazy.intervene(ablations)
    eager_new, _ = eager.intervene(ablations)
    torch.testing.assert_close(lazy_new.logits, eager_new.logits, rtol=1e-5, atol=1e-6)
    assert not torch.allclose(lazy_new.logits, lazy.logits)


def test_a_model_without_probabilities_is_refused_with_the_fix():
    hf_model = tiny.hf_model("llama")
    hf_model.set_attn_implementation("sdpa")
    model = nnsight.TransformersModel(hf_model, tokenizer=tiny.tokenizer())  # not through lw.load_model
    with pytest.raises(lw.LmttError, match="'sdpa' attention gives no attention probabilities: load the model with"):
        lw.analyze(model, IOI)
    lw.analyze(lw.load_model(hf_model, tokenizer=tiny.tokenizer()), IOI)  # the package's traces get probabilities
    assert hf_model.config._attn_implementation == "sdpa"  # and the model stays the user's
