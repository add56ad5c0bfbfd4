"""The fast paths against the naive formulas they replace (float64 references)."""

import pytest
import torch

import lmtt_widget as lw
import tiny
from lmtt_widget import contributions as C
from lmtt_widget import graph as G
from lmtt_widget import run as R
from tiny import IOI


def random_layer(n_tokens=24, n_heads=6, n_kv=2, head_dim=4, d=20, seed=0, zeros=0, peaked=False):
    g = torch.Generator().manual_seed(seed)
    whole = torch.randn(n_tokens, d, generator=g, dtype=torch.float64)
    whole[:, :zeros] = 0  # sign(0): both sides must agree
    scores = torch.randn(n_heads, n_tokens, n_tokens, generator=g, dtype=torch.float64) * (8 if peaked else 2)
    scores = scores.masked_fill(torch.ones(n_tokens, n_tokens, dtype=torch.bool).triu(1), float("-inf"))
    probs = scores.softmax(-1)
    values = torch.randn(n_tokens, n_kv, head_dim, generator=g, dtype=torch.float64)
    w_o = torch.randn(n_heads, head_dim, d, generator=g, dtype=torch.float64)
    head_out = C.head_outputs(w_o, values, n_heads).double()
    return whole, probs, values, w_o, head_out


def assert_prox_close(fast, reference):
    scale = reference.abs().max().clamp_min(1e-12)
    torch.testing.assert_close(fast.double() / scale, reference / scale, rtol=0, atol=1e-5)


CASES = [
    dict(),
    dict(n_tokens=1),
    dict(d=5, head_dim=5, n_heads=2, n_kv=1),  # d below the L1 levels
    dict(d=136, head_dim=17, n_heads=8, n_kv=8, n_tokens=24),  # every L1 level, no GQA
    dict(zeros=3),
    dict(peaked=True, n_tokens=32),  # large weights: many coordinates overshoot
]


@pytest.mark.parametrize("p", [1, 2])
@pytest.mark.parametrize("case", range(len(CASES)))
@pytest.mark.parametrize("given", ["head_out", "head_out, values and w_o", "values and w_o"])
@pytest.mark.parametrize("budget", [C.DEFAULT_BUDGET_BYTES, 3000])  # 3000: one target per chunk
def test_head_source_proximity_matches_the_formula(p, case, given, budget):
    whole, probs, values, w_o, head_out = random_layer(seed=case, **CASES[case])
    reference = C.head_source_proximity_reference(whole, probs, head_out, p)
    kwargs = dict(values=values, w_o=w_o) if "w_o" in given else {}
    given_head_out = head_out.float() if "head_out" in given else None
    fast = C.head_source_proximity(whole.float(), probs.float(), given_head_out, p, budget, **kwargs)
    assert fast.dtype == torch.float32 and fast.shape == reference.shape
    assert (fast >= 0).all()
    assert_prox_close(fast, reference)


def test_the_reference_is_the_formula_on_each_part():
    whole, probs, values, w_o, head_out = random_layer(n_tokens=6, n_heads=2, n_kv=1, d=7, head_dim=3)
    reference = C.head_source_proximity_reference(whole, probs, head_out, 1)
    for i in range(6):
        for j in range(6):
            for h in range(2):
                part = probs[h, i, j] * head_out[j, h]
                expected = max(0.0, float(whole[i].abs().sum() - (whole[i] - part).abs().sum())) if j <= i else 0.0
                assert float(reference[i, j, h]) == pytest.approx(expected, abs=1e-9)


def test_half_precision_inputs_are_computed_in_float32():
    whole, probs, values, w_o, _ = (t.bfloat16() for t in random_layer())
    head_out = C.head_outputs(w_o, values, w_o.shape[0])  # float32, as _layer_shares makes it
    for p in (1, 2):
        fast = C.head_source_proximity(whole, probs, head_out, p, 3000, values=values, w_o=w_o)
        assert fast.dtype == torch.float32
        reference = C.head_source_proximity_reference(whole.double(), probs.double(), head_out.double(), p)
        assert_prox_close(fast, reference)


def test_sources_after_the_target_get_nothing():
    whole, probs, values, w_o, head_out = random_layer()
    probs = probs + 0.01  # even with weight above the diagonal, only causal sources count
    fast = C.head_source_proximity(whole.float(), probs.float(), head_out.float(), 1, 3000)
    assert (fast.permute(2, 0, 1).triu(1) == 0).all()


# -- whole models ---------------------------------------------------------------------------


@pytest.fixture(scope="module", params=tiny.FAMILIES)
def family_run(request):
    return lw.analyze(tiny.load(request.param), IOI)


@pytest.mark.parametrize("distance", ["l1", "l2"])
def test_layer_shares_match_the_naive_formula(family_run, distance, monkeypatch):
    run = family_run if distance == "l1" else lw.analyze(family_run.model, IOI, distance="l2")
    p = C.distance_order(distance)

    def naive(whole, probs, head_out, p, budget=None, *, values, w_o, valid):  # a batch of one; one chunk
        assert whole.shape[0] == 1 and valid is None
        head_out = C.head_outputs(w_o.double(), values[0].double(), w_o.shape[0])
        prox = C.head_source_proximity_reference(whole[0].double(), probs[0].double(), head_out, p)
        yield 0, whole.shape[1], prox.float()[None]

    capture = run.capture
    for layer in range(run.shape.n_layers):
        fast = run.layers[layer]
        monkeypatch.setattr(C, "head_source_proximity_chunks", naive)
        expected = R.block_shares(capture.resid[layer], capture.attn_out[layer], capture.ffn_out[layer],
                                  capture.resid[layer + 1], run.attention_pattern(layer), capture.values[layer],
                                  R.w_o(run.hf_model, run.family, run.shape, layer), run.shape.parallel, p,
                                  C.DEFAULT_BUDGET_BYTES)
        monkeypatch.undo()
        torch.testing.assert_close(fast.dense(), expected.dense(), rtol=1e-5, atol=1e-6)
        for name in ("attn_residual", "ffn", "ffn_residual"):
            torch.testing.assert_close(getattr(fast, name), getattr(expected, name), rtol=1e-5, atol=1e-6)


def keep_plain(edges: G.LayerEdges, threshold: float, active: torch.Tensor | None, parallel: bool):
    """Which edges of a layer to keep (above threshold, and reaching an active node if given),
    and which nodes feeding the layer they make active. (The plain form of graph._layer_graph.)"""
    everything = torch.ones_like(edges.ffn, dtype=torch.bool)
    active_out = everything if active is None else active
    ffn = active_out & (edges.ffn > threshold)
    if parallel:
        active_in_attn = active_out
        ffn_residual = torch.zeros_like(ffn)
    else:
        ffn_residual = active_out & (edges.ffn_residual > threshold)
        active_in_attn = everything if active is None else (ffn | ffn_residual)
    attention = active_in_attn[:, None] & (edges.attention > threshold)
    attn_residual = active_in_attn & (edges.attn_residual > threshold)
    feeding = attention.any(0) | attn_residual | (ffn if parallel else torch.zeros_like(ffn))
    return dict(attention=attention, attn_residual=attn_residual, ffn=ffn, ffn_residual=ffn_residual), feeding


def naive_graph(run, token, threshold, renormalize=True):
    """The plain walk: every layer's edges as whole [T, T] and [T, T, H] tensors, then masks (no
    effects given: every edge's effect is None)."""
    g = G._new_graph(run)
    active = None
    if token is not None:
        active = torch.zeros(run.n_tokens, dtype=torch.bool)
        active[token] = True
    layers = range(run.shape.n_layers)
    for layer in (reversed(layers) if token is not None else layers):
        e = G.layer_edges(run, layer, threshold, renormalize)
        keep, feeding = keep_plain(e, threshold, active, run.shape.parallel)
        active = feeding if token is not None else None
        before, mid, ffn, post = G._node_names(run, layer)
        attn_into = post if run.shape.parallel else mid
        ffn_from = before if run.shape.parallel else mid
        for i, j in keep["attention"].nonzero().tolist():
            g.add_edge(before(j), attn_into(i), "attention", kind="attention", weight=float(e.attention[i, j]),
                       heads=e.heads[i, j].tolist(), source=j, target=i, effect=None, head_effects=None)
        for i in keep["attn_residual"].nonzero()[:, 0].tolist():
            g.add_edge(before(i), attn_into(i), "residual", kind="residual", weight=float(e.attn_residual[i]),
                       effect=None)
        for i in keep["ffn"].nonzero()[:, 0].tolist():
            g.add_edge(ffn_from(i), ffn(i), "ffn", kind="ffn", weight=float(e.ffn[i]), effect=None)
            g.add_edge(ffn(i), post(i), "ffn", kind="ffn", weight=float(e.ffn[i]), effect=None)
        if not run.shape.parallel:
            for i in keep["ffn_residual"].nonzero()[:, 0].tolist():
                g.add_edge(mid(i), post(i), "residual", kind="residual", weight=float(e.ffn_residual[i]), effect=None)
    return g


def assert_same_graph(got, expected):
    edges = {(u, v, k): d for u, v, k, d in got.edges(keys=True, data=True)}
    reference = {(u, v, k): d for u, v, k, d in expected.edges(keys=True, data=True)}
    assert edges.keys() == reference.keys()
    for key, data in reference.items():
        assert edges[key].keys() == data.keys()
        assert edges[key]["weight"] == pytest.approx(data["weight"], rel=1e-5, abs=1e-7)
        if "heads" in data:
            assert edges[key]["heads"] == pytest.approx(data["heads"], rel=1e-5, abs=1e-7)
            assert (edges[key]["source"], edges[key]["target"]) == (data["source"], data["target"])


@pytest.mark.parametrize("threshold", [0.001, 0.04, 0.2])
@pytest.mark.parametrize("renormalize", [True, False])
def test_routes_and_full_graph_match_the_plain_walk(family_run, threshold, renormalize):
    for token in (family_run.n_tokens - 1, family_run.n_tokens // 2, 0):
        assert_same_graph(family_run.graph(token=token, threshold=threshold, renormalize=renormalize),
                          naive_graph(family_run, token, threshold, renormalize))
    assert_same_graph(family_run.full_graph(threshold=threshold, renormalize=renormalize),
                      naive_graph(family_run, None, threshold, renormalize))


@pytest.mark.parametrize("p", [1, 2])
@pytest.mark.parametrize("padding", ["right", "left"])
@pytest.mark.parametrize("budget", [C.DEFAULT_BUDGET_BYTES, 3000])  # 3000: one target per chunk
def test_a_padded_batch_gives_each_prompt_the_prox_it_gets_alone(p, padding, budget):
    """Prompts of different lengths padded into one batch: each one's prox equal those of the prompt
    alone and the float64 formula; the padding (NaN everywhere) reads and is read by nothing."""
    lengths, n_tokens = [24, 9, 1, 17], 24
    layers = [random_layer(n_tokens=n, d=136, head_dim=17, n_heads=8, n_kv=2, seed=seed, peaked=seed % 2 == 1)
              for seed, n in enumerate(lengths)]  # d=136: every L1 level
    scales = [torch.rand(n, dtype=torch.float64) + 0.5 for n in lengths]
    whole = torch.full((len(lengths), n_tokens, 136), float("nan"))
    probs = torch.full((len(lengths), 8, n_tokens, n_tokens), float("nan"))
    values = torch.full((len(lengths), n_tokens, 2, 17), float("nan"))
    scale = torch.full((len(lengths), n_tokens), float("nan"))
    valid = torch.zeros(len(lengths), n_tokens, dtype=torch.bool)
    for row, (n, (w, pr, v, _, _), s) in enumerate(zip(lengths, layers, scales)):
        at = slice(0, n) if padding == "right" else slice(n_tokens - n, n_tokens)
        whole[row, at], values[row, at], scale[row, at], valid[row, at] = w.float(), v.float(), s.float(), True
        probs[row, :, at, at] = pr.float()
        probs[row, :, at, :at.start] = 0  # as the attention mask leaves them
    w_o = layers[0][3].float()  # one layer's weights for every prompt, as in a batch
    batched = torch.zeros(len(lengths), n_tokens, n_tokens, 8)
    for start, stop, block in C.head_source_proximity_chunks(whole, probs, None, p, budget, values=values, w_o=w_o,
                                                             target_scale=scale, valid=valid):
        batched[:, start:stop, :stop] = block
    for row, (n, (w, pr, v, _, _), s) in enumerate(zip(lengths, layers, scales)):
        at = slice(0, n) if padding == "right" else slice(n_tokens - n, n_tokens)
        own, outside = batched[row, at, at], batched[row].clone()
        outside[at, at] = 0
        assert (outside == 0).all() and not own.isnan().any()  # nothing outside the prompt
        alone = C.head_source_proximity(w.float(), pr.float(), None, p, budget, values=v.float(), w_o=w_o,
                                        target_scale=s.float())
        torch.testing.assert_close(own, alone, rtol=0, atol=1e-5 * float(alone.abs().max().clamp_min(1e-12)))
        head_out = C.head_outputs(w_o.double(), v, 8).double()
        assert_prox_close(own, C.head_source_proximity_reference(w, pr * s[None, :, None], head_out, p))
