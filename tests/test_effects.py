"""Effects (lmtt_widget.effects): the gradient effect of every part is the first-order change of the
metric when the part is scaled (finite differences, float64, every family; after a post-norm the part
is scaled with the norm's scale frozen, as the effects define it); integrated effects add up to the
exact removal; experts of a mixture; signs, zeros on future tokens, errors; the user's model is left
alone."""

from __future__ import annotations

import pytest
import torch

import lmtt_widget as lw
import tiny
from lmtt_widget import LmttError
from lmtt_widget import interventions as I
from lmtt_widget import vocab as V
from lmtt_widget.architectures import w_o
from lmtt_widget.tracing import Edit, trace

PROMPT = "When Mary and John went to the store, John gave"


ALL_FAMILIES = tiny.FAMILIES + tiny.NEW_FAMILIES
MOE = ["mixtral", "qwen2_moe", "qwen3_moe", "olmoe"]


@pytest.fixture(scope="module", params=ALL_FAMILIES)
def run64(request):
    return lw.analyze(tiny.load(request.param, seed=2, dtype=torch.float64), PROMPT)


def metric(run, eff, edits) -> float:
    """m of `run`'s prompt with `edits`, computed by a plain rerun."""
    capture = trace(run.model, run.family, run.shape, run.input_ids, edits)
    row = V.unembed(run.hf_model, run.family, capture.final_normed)[eff.position]
    return float(row[eff.answer] - row[eff.contrast])


def derivative(run, eff, edits_at, step: float = 1e-2) -> float:
    """dm/ds at s = 1 by central differences, `edits_at(s)` scaling a part by s (a step that is
    not tiny: some families' norms and rotary embeddings compute in float32 even in float64 models)."""
    return (metric(run, eff, edits_at(1 + step)) - metric(run, eff, edits_at(1 - step))) / (2 * step)


def scaled_edge(run, layer: int, source: int, target: int, head: int | None):
    """Edits that scale the term z^h_{target<-source} (one head, or all) by s in the attention update
    (after a post-norm, frozen at its scale: s_t A^h_ts v^h_s W_O^h M, w_o folding in M)."""
    heads = list(range(run.shape.n_heads)) if head is None else [head]
    group = run.shape.n_heads // run.shape.n_kv_heads
    w = w_o(run.hf_model, run.family, run.shape, layer)

    def edits_at(s):
        def scale(x, state):
            values = state.values[source, [h // group for h in heads]]  # [h, hd]
            weights = state.probs[heads, target, source]
            if state.attn_scale is not None:
                weights = weights * state.attn_scale[target]
            x[target] += (s - 1) * torch.einsum("h,hk,hkd->d", weights.to(x.dtype), values.to(x.dtype),
                                                w[heads].to(x.dtype))
        return [Edit("attention_output", layer, scale)]
    return edits_at


def test_the_gradient_effect_of_each_edge_is_the_first_order_change_of_its_scaled_term(run64):
    run, last = run64, run64.n_tokens - 1
    eff = run.effects()
    pairs = {}
    for layer in range(run.shape.n_layers):
        for source, target, head in ((0, last, None), (last, last, 1), (4, last, 2), (3, 6, None), (6, 6, 0)):
            effects = eff.edge(layer, target, source)
            pairs[layer, source, target, head] = (float(effects.sum() if head is None else effects[head]),
                                                  derivative(run, eff, scaled_edge(run, layer, source, target, head)))
    scale = max(abs(expected) for _, expected in pairs.values())
    assert scale > 0
    for where, (got, expected) in pairs.items():
        assert got == pytest.approx(expected, rel=1e-3, abs=2e-3 * scale), where


def test_ffn_and_neuron_effects_are_first_order_changes(run64):
    run = run64
    eff = run.effects()
    position = run.n_tokens - 3

    def ffn_at(layer):
        def edits_at(s):
            def scale(x, state):
                x[position] *= s
            return [Edit("ffn_output", layer, scale)]
        return edits_at
    expected = [derivative(run, eff, ffn_at(layer)) for layer in range(run.shape.n_layers)]
    scale = max(abs(e) for e in expected)
    for layer in range(run.shape.n_layers):
        tolerance = max(1e-6, 1e-3 * scale)
        assert float(eff.ffn(layer)[position]) == pytest.approx(expected[layer], rel=1e-3, abs=tolerance), layer
    dense = [layer for layer in range(run.shape.n_layers) if not run.has_experts(layer)]
    if not dense:
        return  # every FFN a mixture of experts: test_expert_effects_are_first_order_changes
    layer = dense[-1]
    top = eff.neurons(layer, position, k=3)
    assert [abs(n.effect) for n in top] == sorted((abs(n.effect) for n in top), reverse=True)
    if run.family.ffn_post_norm is None:
        def neuron_at(s):
            def scale(x, state):
                x[position, top[0].index] *= s
            return [Edit("ffn_out_proj_input", layer, scale)]
        assert top[0].effect == pytest.approx(derivative(run, eff, neuron_at), rel=1e-3, abs=1e-6)
    else:  # scaling an activation would move the norm's scale: the writes, frozen, add up to the update instead
        assert float(eff.neuron_effects(layer, position).sum()) == pytest.approx(float(eff.ffn(layer)[position]),
                                                                                 rel=1e-5, abs=1e-8)


@pytest.mark.parametrize("name", MOE)
def test_expert_effects_are_first_order_changes_and_drill_down_exactly(name):
    """Each expert's effect is the first-order change when its routing weight is scaled; the experts'
    effects add up to the FFN update's, an expert's neurons' to the expert's; a mixture has no
    layer-wide neurons."""
    run = lw.analyze(tiny.load(name, seed=2, dtype=torch.float64), PROMPT)
    eff, position = run.effects(), run.n_tokens - 1
    layer = next(layer for layer in range(run.shape.n_layers) if run.has_experts(layer))
    experts = eff.experts(layer, position)
    total = float(eff.ffn(layer)[position])
    assert sum(e.effect for e in experts) == pytest.approx(total, rel=1e-4, abs=1e-9)  # float32 sums
    routed = experts[0].expert

    def routed_at(s):
        def scale(x, state):
            x[position][state.experts[position] == routed] *= s
        return [Edit("routing_weights", layer, scale)]
    # a smaller step than elsewhere: OLMoE's large weights bend m within 1e-2 of the clean routing weight
    assert experts[0].effect == pytest.approx(derivative(run, eff, routed_at, step=1e-3), rel=2e-3)
    for expert in [e.expert for e in experts]:  # the routed ones and any shared expert (None)
        neurons = eff.expert_neurons(layer, position, expert, k=10**6)
        effect = next(e.effect for e in experts if e.expert == expert)
        assert sum(n.effect for n in neurons) == pytest.approx(effect, rel=1e-4, abs=1e-9)
        assert [abs(n.effect) for n in neurons] == sorted((abs(n.effect) for n in neurons), reverse=True)
    with pytest.raises(LmttError, match="mixture of experts.*eff.experts"):
        eff.neurons(layer, position)
    unrouted = next(e for e in range(4) if e not in [x.expert for x in experts])
    with pytest.raises(LmttError, match=f"expert {unrouted} does not write"):
        eff.expert_neurons(layer, position, unrouted)


def one_layer(name: str) -> torch.nn.Module:
    """A tiny model of family `name` cut to its first block (float64)."""
    hf = tiny.hf_model(name, seed=5, dtype=torch.float64)
    family = lw.architectures.family_of(hf)
    path, _, attribute = family.blocks.rpartition(".")
    parent = lw.architectures._get(hf, path)
    setattr(parent, attribute, torch.nn.ModuleList(list(getattr(parent, attribute))[:1]))
    hf.config.num_hidden_layers = 1
    if getattr(hf.config, "layer_types", None):
        hf.config.layer_types = hf.config.layer_types[:1]
    return hf


@pytest.mark.parametrize("name", [name for name in ALL_FAMILIES if name not in MOE])
def test_integrated_effects_of_the_edges_into_a_token_add_up_to_their_exact_removal(name):
    """In one block the path that scales the edge terms is a straight line, so the integrated
    effects of the edges into the target add up to removing them all (as steps grow); the
    gradient's first-order sum does not. (Not in a mixture of experts: along the path its router
    switches experts, a jump that no gradient sees.)"""
    run = lw.analyze(lw.load_model(one_layer(name), tokenizer=tiny.tokenizer()), PROMPT)
    last = run.n_tokens - 1
    exact = run.effects().exact([("edge", 0, source, last) for source in range(last + 1)])
    errors = {}
    for steps in (8, 32):
        eff = run.effects(method="integrated", steps=steps)
        errors[steps] = abs(float(eff.attention(0)[last].sum()) - exact)
    # the midpoint rule's error falls as 1 / steps^2 (1/16 from 8 to 32 steps) from wherever the
    # model's bend puts it (Gemma's final soft-cap and OLMo's strong norms: ~1e-3 |exact| at 32 steps)
    assert errors[32] <= max(1e-4 * max(1.0, abs(exact)), errors[8] / 8)


def test_effects_are_exactly_zero_on_future_tokens_and_flip_with_answer_and_contrast(run64):
    run = run64
    eff = run.effects()
    future = torch.ones(run.n_tokens, run.n_tokens, dtype=torch.bool).triu(1)
    for layer in range(run.shape.n_layers):
        assert torch.all(eff.attention(layer)[future] == 0)
    swapped = run.effects(eff.contrast, eff.answer)
    assert swapped.value == pytest.approx(-eff.value)
    torch.testing.assert_close(swapped.attention(1), -eff.attention(1), rtol=1e-4, atol=1e-7)
    torch.testing.assert_close(swapped.ffn(0), -eff.ffn(0), rtol=1e-4, atol=1e-7)


def test_exact_is_the_change_of_the_metric_under_the_same_ablations(run64):
    run = run64
    eff = run.effects(token=6)
    ablations = [("edge", 1, 2, 6), ("head", 0, 1)]
    logits = I.ablated_logits(run, ablations)
    assert eff.exact(ablations) == pytest.approx(eff.value - float(logits[6, eff.answer] - logits[6, eff.contrast]))


# -- refined: the largest estimates measured exactly ------------------------------------------------

def edge_terms_into(eff, target: int) -> dict[tuple[int, int, int], float]:
    """{(layer, source, head): effect} of every edge term into `target`."""
    return {(layer, source, head): float(value) for layer in range(eff.run.shape.n_layers)
            for source, row in enumerate(eff.attention(layer)[target, :target + 1]) for head, value in enumerate(row)}


# pre-norm sequential, post-norm (sandwich norms), parallel blocks, a mixture of experts
@pytest.mark.parametrize("name", ["llama", "gemma2", "gpt_neox", "mixtral"])
def test_refine_puts_the_exact_single_removal_in_place_of_the_largest_estimates_and_leaves_the_rest(name):
    run = lw.analyze(tiny.load(name, seed=2, dtype=torch.float64), PROMPT)
    last, n_layers = run.n_tokens - 1, run.shape.n_layers
    plain, eff = run.effects(), run.effects(refine=4)
    assert eff.method == "gradient+exact(4)" and plain.refined == [] and "gradient+exact(4)" in repr(eff)
    estimates = edge_terms_into(plain, last)
    largest = sorted(estimates, key=lambda e: -abs(estimates[e]))[:4]
    edges = [r for r in eff.refined if not r.part.is_ffn]
    ffn = [r for r in eff.refined if r.part.is_ffn]
    assert [tuple(r.part) for r in edges] == largest
    assert sorted(r.part.layer for r in ffn) == list(range(min(4, n_layers)))  # tiny models: every layer
    for r in eff.refined:
        layer, source, head = r.part
        if r.part.is_ffn:
            exact, now, before = eff.exact([("ffn", layer, last)]), eff.ffn(layer)[last], plain.ffn(layer)[last]
        else:
            exact = eff.exact([("edge", layer, source, last, head)])
            now, before = eff.edge(layer, last, source)[head], plain.edge(layer, last, source)[head]
        assert float(now) == pytest.approx(exact, rel=1e-5, abs=1e-7) == r.exact, r
        assert r.estimate == float(before)
    assert any(abs(r.exact - r.estimate) > 1e-3 * abs(r.exact) for r in eff.refined)  # 100x the tolerance
    for layer in range(n_layers):
        untouched = torch.ones(run.n_tokens, run.n_tokens, run.shape.n_heads, dtype=torch.bool)
        for r in edges:
            if r.part.layer == layer:
                untouched[last, r.part.source, r.part.head] = False
        assert torch.equal(eff.attention(layer)[untouched], plain.attention(layer)[untouched])
        refined_ffn = [last] if layer in [r.part.layer for r in ffn] else []
        others = [t for t in range(run.n_tokens) if t not in refined_ffn]
        assert torch.equal(eff.ffn(layer)[others], plain.ffn(layer)[others])


def test_refine_beyond_the_number_of_parts_measures_every_one(run):
    """refine=10**4 on 3 layers x 18 sources x 4 heads: every edge term into the target and every
    FFN update at it, at an earlier target too; the routes by effect use the exact values."""
    target = 6
    eff = run.effects(token=target, refine=10**4)
    shape = run.shape
    assert len(eff.refined) == shape.n_layers * (target + 1) * shape.n_heads + shape.n_layers
    assert {tuple(r.part) for r in eff.refined if not r.part.is_ffn} == set(edge_terms_into(eff, target))
    for r in eff.refined[::37]:
        ablation = r.part.ablation(target)
        assert r.exact == pytest.approx(eff.exact([ablation]), abs=1e-5), ablation
    exact = {tuple(r.part): r.exact for r in eff.refined}
    into = [d for _, v, key, d in eff.graph(threshold=1e-6).edges(keys=True, data=True)
            if key == "attention" and v[1] == shape.n_layers - 1 and d["target"] == target]
    assert into
    for d in into:
        assert d["head_effects"] == pytest.approx([exact[shape.n_layers - 1, d["source"], h]
                                                   for h in range(shape.n_heads)], abs=1e-7)


def test_refine_in_an_intervened_run_leaves_out_what_it_ablates_and_measures_the_intervened_run(run):
    last = run.n_tokens - 1
    plain = run.effects()
    layer, source, head = max(edge_terms_into(plain, last).items(), key=lambda item: abs(item[1]))[0]
    ablated, _ = run.intervene([("edge", layer, source, last), ("ffn", 0, last)])
    eff = ablated.effects(plain.answer, plain.contrast, refine=3)
    parts = [tuple(r.part) for r in eff.refined]
    assert len(parts) == 3 + 2 and not any(p[:2] == (layer, source) for p in parts)  # 3 edge terms, 2 FFN updates
    assert (0, None, None) not in parts
    for r in eff.refined:
        assert r.exact == pytest.approx(eff.exact([r.part.ablation(last)]), abs=1e-5)


@pytest.mark.demo
def test_refine_gives_the_saturated_head_of_a_fact_its_sign(demo_model):
    """The capital of Portugal: layer 23's head 4 reads the country with A > 0.9 and m is past its
    peak along its write, so the gradient says removing it raises m; removing it lowers m by
    1.35 (bench/README.md's facts analysis). Refined among the 10 largest, it gets its exact value."""
    run = lw.analyze(demo_model, "The capital of Portugal is")
    last, country = run.n_tokens - 1, run.tokens.index(" Portugal")
    plain, eff = run.effects(), run.effects(refine=10)
    assert float(plain.edge(23, last, country)[4]) < -1
    exact = eff.exact([("edge", 23, country, last, 4)])
    assert exact > 1 and float(eff.edge(23, last, country)[4]) == pytest.approx(exact, abs=1e-4)
    assert (23, country, 4) in [tuple(r.part) for r in eff.refined]


@pytest.fixture(scope="module")
def run():
    return lw.analyze(tiny.load("llama", seed=3), PROMPT)


def test_the_metric_and_its_defaults(run):
    top = run.logits[-1].topk(2).indices.tolist()
    eff = run.effects()
    assert (eff.answer, eff.contrast) == tuple(top)
    assert eff.value == pytest.approx(float(run.logits[-1, top[0]] - run.logits[-1, top[1]]))
    assert repr(run.decode(top[0])) in eff.metric and repr(run.decode(top[1])) in eff.metric
    other = run.effects(answer=top[1])  # the answer is the runner-up: the contrast becomes the top
    assert (other.answer, other.contrast) == (top[1], top[0])
    assert run.effects(" Mary", " John").answer == I.token_id(run, " Mary")


@pytest.mark.parametrize("call, message", [
    (lambda r: r.effects(" Mary and"), "not one"),
    (lambda r: r.effects(" Mary", " Mary"), "same token"),
    (lambda r: r.effects(token=99), "out of range"),
    (lambda r: r.effects(contrast=10**6), "out of range"),
    (lambda r: r.effects(method="saliency"), "method must be"),
    (lambda r: r.effects(method="integrated", steps=0), "steps must be a positive integer"),
    (lambda r: r.effects(refine=-1), "refine must be a non-negative integer, got -1"),
    (lambda r: r.effects(refine=2.5), "refine must be a non-negative integer, got 2.5"),
    (lambda r: r.effects(refine=True), "refine must be a non-negative integer"),
    (lambda r: r.effects().neurons(0, 1, k=0), "k must be a positive integer"),
    (lambda r: r.graph(by="effect"), "need effects"),
    (lambda r: r.graph(token=2, effects=r.effects()), "give token="),
    (lambda r: r.graph(by="weight"), "by must be"),
    (lambda r: r.graph(heads="max"), "heads must be"),
])
def test_bad_input_is_refused_clearly(run, call, message):
    with pytest.raises(LmttError, match=message):
        call(run)


def test_effects_leave_the_users_model_as_it_was():
    hf = tiny.hf_model("gpt2", seed=4)
    hf.train()
    ids = torch.tensor([tiny.tokenizer()(PROMPT)["input_ids"]])
    hf.eval()
    with torch.no_grad():
        before = hf(ids).logits
    hf.train()
    run = lw.analyze(lw.load_model(hf, tokenizer=tiny.tokenizer()), PROMPT)
    run.effects(method="integrated", steps=2)
    assert hf.training and all(p.grad is None and p.requires_grad for p in hf.parameters())
    hf.eval()
    with torch.no_grad():
        torch.testing.assert_close(hf(ids).logits, before)


def test_effects_kept_within_a_small_budget_are_those_above_the_floor(run):
    small = lw.analyze(run.model, PROMPT, budget_bytes=2000, floor=1e-3)
    full, kept = run.effects(), small.effects()
    floor = 1e-3 * abs(full.value)
    for layer in range(run.shape.n_layers):
        whole = full.attention(layer)
        above = whole.abs().sum(-1) > floor * 1.01
        torch.testing.assert_close(kept.attention(layer)[above], whole[above], rtol=1e-4, atol=1e-7)
        assert torch.all(kept.attention(layer).abs().sum(-1) <= torch.where(above, float("inf"), floor * 1.01))


# -- graphs ---------------------------------------------------------------------------------------

# sequential and parallel blocks, post-norms, experts
@pytest.fixture(scope="module", params=["llama", "gpt_neox", "gemma2", "mixtral"])
def family_run(request):
    return lw.analyze(tiny.load(request.param, seed=3), PROMPT)


def test_every_edge_carries_its_share_and_its_effect_or_none(family_run):
    run = family_run
    plain = run.graph(threshold=0.02)
    assert all(d["effect"] is None for *_, d in plain.edges(data=True))
    eff = run.effects()
    g = run.graph(threshold=0.02, effects=eff)
    assert set(g.edges(keys=True)) == set(plain.edges(keys=True))
    for u, v, key, d in g.edges(keys=True, data=True):
        assert d["weight"] == plain.edges[u, v, key]["weight"]
        if key == "attention":
            assert d["head_effects"] == pytest.approx(eff.edge(v[1], d["target"], d["source"]).tolist())
            assert d["effect"] == pytest.approx(sum(d["head_effects"]))
        elif key == "ffn":
            assert d["effect"] == pytest.approx(float(eff.ffn(v[1] if v[0] == "ffn" else u[1])[v[2]]))
        else:
            assert d["effect"] is None


def test_routes_by_effect_keep_the_edges_whose_effect_is_large_either_way(family_run):
    run, threshold = family_run, 0.05
    eff = run.effects()
    g = run.graph(by="effect", effects=eff, threshold=threshold)
    assert g.graph["by"] == "effect"
    cut = threshold * abs(eff.value)
    kinds = {key for *_, key in g.edges(keys=True)}
    assert "attention" in kinds
    for _, v, key, d in g.edges(keys=True, data=True):
        if key == "residual":
            assert d["effect"] is None
        else:
            assert abs(d["effect"]) > cut
        if key == "attention":
            assert d["weight"] == pytest.approx(float(run.edge_contributions(v[1], d["target"], d["source"]).sum()))
    signs = {d["effect"] > 0 for *_, d in g.edges(data=True) if d["effect"] is not None}
    assert signs == {True, False}  # supporting and opposing edges both
    last, top = run.shape.n_layers - 1, run.n_tokens - 1
    into_top = (eff.attention(last)[top].sum(-1).abs() > cut).nonzero()[:, 0].tolist()
    kept = sorted(d["source"] for u, v, key, d in g.edges(keys=True, data=True) if key == "attention" and v[1] == last)
    assert kept == into_top
    assert set(eff.graph(threshold).edges(keys=True)) == set(g.edges(keys=True))


def test_heads_each_is_the_lm_transparency_tools_rule(family_run):
    """Threshold and renormalise every (target, source, head) share, then add the heads: against a
    dense reference; its edges are a subset of those of the default (heads added first)."""
    run, threshold = family_run, 0.02
    each = run.full_graph(threshold, heads="each")
    summed = run.full_graph(threshold)
    assert set(each.edges(keys=True)) <= set(summed.edges(keys=True))
    into = "post" if run.shape.parallel else "mid"
    for layer in range(run.shape.n_layers):
        heads, residual = run.attention_contributions(layer)  # [T, T, H], [T]
        parts = [heads.flatten(1)] + ([run.ffn_contributions(layer)[0][:, None]] if run.shape.parallel else [])
        kept = [torch.where(p > threshold, p, 0.0) for p in parts]
        kept_residual = torch.where(residual > threshold, residual, 0.0)
        total = kept_residual + sum(p.sum(1) for p in kept)
        per_head = (kept[0] / total[:, None]).view_as(heads)
        expected = per_head.sum(-1)  # [T, T]
        got = torch.zeros_like(expected)
        for _, v, key, d in each.edges(keys=True, data=True):
            if key == "attention" and v == (into, layer, v[2]):
                got[d["target"], d["source"]] = d["weight"]
                assert d["heads"] == pytest.approx(per_head[d["target"], d["source"]].tolist(), abs=1e-6)
        torch.testing.assert_close(got, torch.where(expected > threshold, expected, 0.0))
    differ = [k for k in each.edges(keys=True) if abs(each.edges[k]["weight"] - summed.edges[k]["weight"]) > 1e-6]
    assert differ or each.number_of_edges() < summed.number_of_edges()  # the rules differ on these runs
