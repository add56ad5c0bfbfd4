"""What a run keeps follows its memory budget, and what it drops changes no answer it gives."""

import pytest
import torch

import lmtt_widget as lw
import tiny
from lmtt_widget.attention import AttentionProbs
from lmtt_widget.run import DEFAULT_FLOOR, analyze_ids
from test_perf_paths import assert_same_graph

N_TOKENS = 60
SMALL_BUDGET = 20_000  # below what every layer's probabilities, shares or FFN activations take


@pytest.fixture(scope="module", params=["llama", "gpt_neox"])  # sequential and parallel blocks
def runs(request):
    """(a run that keeps everything, the same prompt analysed under a small budget)."""
    model = tiny.load(request.param)
    ids = torch.randint(0, tiny.VOCAB, (N_TOKENS,), generator=torch.Generator().manual_seed(0))
    return analyze_ids(model, ids), analyze_ids(model, ids, budget_bytes=SMALL_BUDGET)


def test_a_small_budget_keeps_no_probabilities_whole_and_only_edges_above_the_floor(runs):
    full, small = runs
    assert full.floor == 0 and len(full.capture.probs) == full.shape.n_layers
    assert small.floor == DEFAULT_FLOOR and small.capture.neurons == {}
    # sdpa attention: every layer's queries and keys, O(T d), instead of its [H, T, T]
    assert all(isinstance(p, AttentionProbs) for p in small.capture.probs.values())
    assert sum(p.nbytes for p in small.capture.probs.values()) < sum(p.nbytes for p in full.capture.probs.values())
    assert sum(layer.nbytes for layer in small.layers) < sum(layer.nbytes for layer in full.layers)
    for layer in range(full.shape.n_layers):
        heads = full.attention_contributions(layer)[0]
        above = heads.sum(-1, keepdim=True) > DEFAULT_FLOOR
        assert len(small.layers[layer].edges) == above.sum() < len(full.layers[layer].edges)
        torch.testing.assert_close(small.attention_contributions(layer)[0], heads * above, rtol=1e-5, atol=1e-7)
        torch.testing.assert_close(small.ffn_contributions(layer), full.ffn_contributions(layer), rtol=1e-5, atol=1e-7)


def test_probabilities_not_kept_whole_are_computed_and_activations_traced_again_when_asked_for(runs):
    full, small = runs
    for layer in (0, full.shape.n_layers - 1):
        torch.testing.assert_close(small.attention_pattern(layer), full.attention_pattern(layer), rtol=0, atol=0)
    assert small._probs_traced == {}  # from the kept queries and keys: no second trace
    torch.testing.assert_close(small.head_output(1, 2, N_TOKENS - 1), full.head_output(1, 2, N_TOKENS - 1))
    torch.testing.assert_close(small.neuron_activations(1), full.neuron_activations(1), rtol=0, atol=0)


@pytest.mark.parametrize("threshold", [DEFAULT_FLOOR, 0.01, 0.04])
@pytest.mark.parametrize("renormalize", [True, False])
def test_routes_at_or_above_the_floor_are_those_of_the_full_shares(runs, threshold, renormalize):
    full, small = runs
    for token in (N_TOKENS - 1, N_TOKENS // 2):
        assert_same_graph(small.graph(token, threshold, renormalize), full.graph(token, threshold, renormalize))
    assert_same_graph(small.full_graph(threshold, renormalize), full.full_graph(threshold, renormalize))


def test_routes_below_the_floor_are_refused_with_the_way_out(runs):
    full, small = runs
    with pytest.raises(lw.LmttError, match=r"threshold 0.0005 is below this analysis' floor 0.001.*floor=0.0005"):
        small.graph(threshold=0.0005)
    assert full.graph(threshold=0.0005).number_of_edges() > small.graph(threshold=DEFAULT_FLOOR).number_of_edges()


def test_an_explicit_floor_wins_over_the_budget(runs):
    full, _ = runs
    kept_all = analyze_ids(full.model, full.input_ids, budget_bytes=SMALL_BUDGET, floor=0)
    assert kept_all.floor == 0
    torch.testing.assert_close(kept_all.attention_contributions(1)[0], full.attention_contributions(1)[0],
                               rtol=1e-5, atol=1e-7)
    coarse = analyze_ids(full.model, full.input_ids, floor=0.05)
    assert_same_graph(coarse.graph(threshold=0.05), full.graph(threshold=0.05))


@pytest.mark.parametrize("floor", [-0.1, 1, 1.5, "0.01", True])
def test_a_bad_floor_is_named(runs, floor):
    full, _ = runs
    with pytest.raises(lw.LmttError, match="floor must be a number in \\[0, 1\\)"):
        analyze_ids(full.model, full.input_ids, floor=floor)


def test_the_widget_refuses_a_threshold_below_the_floor_and_keeps_its_graph(runs):
    _, small = runs
    w = lw.Widget(small, threshold=0.01)
    drawn = w.payload
    with pytest.raises(lw.LmttError, match="below this analysis' floor"):
        w.threshold = 0.0005
    assert w.threshold == 0.01 and w.payload is drawn
    with pytest.raises(lw.LmttError, match="below this analysis' floor"):
        lw.Widget(small, threshold=0.0005)


def test_a_head_patched_from_a_run_without_kept_probabilities_is_the_same(runs):
    full, small = runs
    other = analyze_ids(full.model, full.input_ids.flip(0))
    node = ("head", 1, 2, N_TOKENS - 1)
    from_small, _ = lw.patch(small, other, node)
    from_full, _ = lw.patch(full, other, node)
    torch.testing.assert_close(from_small.logits, from_full.logits, rtol=0, atol=0)
    assert not torch.allclose(from_full.logits, other.logits)  # the patch changed something


def test_runs_made_from_a_run_keep_its_floor_or_the_threshold_shown(runs):
    full, _ = runs
    kept_all = analyze_ids(full.model, full.input_ids, budget_bytes=SMALL_BUDGET, floor=0)
    ablated, _ = kept_all.intervene([("head", 1, 0)])
    assert ablated.floor == 0 and ablated.budget_bytes == SMALL_BUDGET
    w = lw.Widget(kept_all, threshold=0.0005)
    w.analyze("When Mary and John went to the store, John gave a drink to Mary. " * 2)
    assert w.run.floor == 0.0005  # 52 tokens: without it the budget would have set a floor of 1e-3
    assert w.run.n_tokens == 52 and w.info["tokens"] == w.run.tokens and w.payload


def test_one_head_or_one_edge_reads_the_same_as_all_of_them(runs):
    _, small = runs
    heads = small.attention_contributions(1)[0]  # [T, T, H]
    for head in (0, -1):
        torch.testing.assert_close(small.head_contributions(1, head), heads[..., head], rtol=0, atol=0)
    kept = small.layers[1].edges[len(small.layers[1].edges) // 2].tolist()
    for target, source in [kept, (N_TOKENS - 1, 0), (5, 5), (3, 4)]:  # kept, maybe dropped, diagonal, future
        torch.testing.assert_close(small.edge_contributions(1, target, source), heads[target, source], rtol=0, atol=0)
    assert small.edge_contributions(1, *kept).sum() > DEFAULT_FLOOR
    with pytest.raises(lw.LmttError, match="head 9 is out of range"):
        small.head_contributions(1, 9)


def test_eager_patterns_traced_again_stay_cached_as_far_as_the_budget_goes_most_recent_first(runs):
    full, _ = runs
    hf_model = tiny.hf_model("gpt_neox" if full.shape.parallel else "llama")
    hf_model.set_attn_implementation("eager")  # its probabilities are tensors: not kept, traced again
    eager = lw.load_model(hf_model, tokenizer=tiny.tokenizer())
    two_layers = 2 * full.attention_pattern(0).numel() * 4 + 1000  # two layers' [H, T, T] float32, not three
    run = analyze_ids(eager, full.input_ids, budget_bytes=two_layers)
    assert run.capture.probs == {}
    for layer in (0, 1, 0, 2):  # 0 is asked for again, so 1 is the one to go
        torch.testing.assert_close(run.attention_pattern(layer), full.attention_pattern(layer), rtol=1e-5, atol=1e-7)
    assert list(run._probs_traced) == [0, 2]


@pytest.mark.parametrize("family", ["llama", "gpt_neox", "gemma2"])  # sequential, parallel, post-norm blocks
def test_what_is_traced_again_stops_after_its_layer_and_equals_what_was_kept(family):
    """A layer's FFN activations, or (eager attention) probabilities, not kept cost a forward pass
    up to that layer, not a whole one."""
    hf_model = tiny.hf_model(family)
    hf_model.set_attn_implementation("eager")  # probabilities are tensors: not kept either, traced again
    model = lw.load_model(hf_model, tokenizer=tiny.tokenizer())
    ids = torch.randint(0, tiny.VOCAB, (N_TOKENS,), generator=torch.Generator().manual_seed(0))
    full, small = analyze_ids(model, ids), analyze_ids(model, ids, budget_bytes=SMALL_BUDGET)
    assert len(full.capture.neurons) == len(full.capture.probs) == full.shape.n_layers
    assert small.capture.neurons == small.capture.probs == {}
    started: list[int] = []
    hooks = [block.register_forward_pre_hook(lambda *_, layer=layer: started.append(layer))
             for layer, block in enumerate(small.family.get(hf_model, "blocks"))]
    try:
        last = full.shape.n_layers - 1
        for read in ("neuron_activations", "attention_pattern"):
            for layer in (0, last // 2, last):
                started.clear()
                mine, kept = getattr(small, read)(layer), getattr(full, read)(layer)
                torch.testing.assert_close(mine, kept, rtol=0, atol=0)
                assert started == list(range(layer + 1))
    finally:
        for hook in hooks:
            hook.remove()
