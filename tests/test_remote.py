"""Routes computed inside the trace, where the model runs (NDIF with remote=True): the same
numbers as `analyze`, through nnsight's simulation of the remote path."""

import nnsight
import pytest
import torch

import lmtt_widget as lw
import tiny
from lmtt_widget.remote import analyze_compact

PROMPT = "When Mary and John went to the store, John gave"


@pytest.mark.parametrize("family", ["gpt2", "llama", "gpt_neox", "opt"])
def test_compact_shares_through_the_simulated_remote_path_equal_analyze(family):
    model = tiny.load(family)
    run = lw.analyze(model, PROMPT)
    compact = analyze_compact(model, PROMPT, remote="local", floor=0.0)
    assert compact.tokens == run.tokens
    for layer in range(run.shape.n_layers):
        torch.testing.assert_close(compact.attention_contributions(layer)[0], run.attention_contributions(layer)[0])
        torch.testing.assert_close(compact.ffn_contributions(layer)[0], run.ffn_contributions(layer)[0])
    assert [t for t, _ in compact.top_tokens(k=3)] == [t for t, _ in run.top_tokens(k=3)]
    assert compact.top_tokens(k=3)[0][1] == pytest.approx(run.top_tokens(k=1)[0][1], rel=1e-5)


def test_routes_from_shares_above_a_floor_are_exact_at_thresholds_above_it():
    model = tiny.load("llama", seed=3)
    run = lw.analyze(model, PROMPT)
    compact = analyze_compact(model, PROMPT, floor=0.02)
    edges = compact.attention_contributions(1)[0].sum(-1)
    assert torch.all((edges == 0) | (edges > 0.02))
    assert (edges == 0).sum() > (run.attention_contributions(1)[0].sum(-1) == 0).sum()  # something was dropped
    for threshold, renormalize in [(0.02, True), (0.05, False), (0.04, True)]:
        expected = run.graph(threshold=threshold, renormalize=renormalize)
        got = compact.graph(threshold=threshold, renormalize=renormalize)
        assert set(got.edges(keys=True)) == set(expected.edges(keys=True))
        for u, v, key, data in expected.edges(keys=True, data=True):
            assert got.edges[u, v, key]["weight"] == pytest.approx(data["weight"], rel=1e-6)


def test_bad_floor_and_too_many_top_tokens():
    model = tiny.load("gpt2")
    with pytest.raises(lw.LmttError, match=r"floor must be a number in \[0, 1\)"):
        analyze_compact(model, PROMPT, floor=1.0)
    with pytest.raises(lw.LmttError, match="only the top 3 tokens were kept"):
        analyze_compact(model, PROMPT, k=3).top_tokens(k=5)


@pytest.mark.demo
def test_the_demo_model_sends_back_little(ioi_run, demo_model):
    compact = analyze_compact(demo_model, ioi_run.prompt, remote="local", floor=0.01)
    assert compact.top_tokens(k=1)[0][0] == " Mary"
    capture = ioi_run.capture
    full = sum(t.numel() * t.element_size()
               for t in capture.resid + capture.attn_out + capture.ffn_out + list(capture.probs.values()))
    assert compact.payload_bytes < full / 5


def test_an_eager_model_as_a_remote_one_runs_gives_the_same_shares():
    hf_model = tiny.hf_model("llama")
    hf_model.set_attn_implementation("eager")  # what a server runs: this package's attention is not there
    compact = analyze_compact(nnsight.TransformersModel(hf_model, tokenizer=tiny.tokenizer()), PROMPT,
                              remote="local", floor=0.0)
    run = lw.analyze(tiny.load("llama"), PROMPT)
    for layer in range(run.shape.n_layers):
        torch.testing.assert_close(compact.attention_contributions(layer)[0], run.attention_contributions(layer)[0],
                                   rtol=1e-4, atol=1e-6)


def test_a_model_whose_attention_gives_no_probabilities_is_refused_with_the_fix():
    hf_model = tiny.hf_model("llama")
    hf_model.set_attn_implementation("sdpa")
    with pytest.raises(lw.LmttError, match="'sdpa' attention gives no attention probabilities.*'eager'"):
        analyze_compact(nnsight.TransformersModel(hf_model, tokenizer=tiny.tokenizer()), PROMPT)
