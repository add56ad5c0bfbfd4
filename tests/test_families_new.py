"""The method's exactness on tiny random models of the families added for issue 12: Gemma 2/3,
Phi-3, OLMo 2/3, GPT-J, Falcon (three layouts), Cohere 1/2, and the mixtures of experts Mixtral,
Qwen2-MoE, Qwen3-MoE and OLMoE. Norm weights and biases are spread, and weights are larger than
the default initialisation, so that norms, biases, soft-caps, windows and clamps all matter.

References come from the plain transformers forward pass, read with PyTorch hooks."""

import pytest
import torch
from test_interventions import one_thread  # noqa: F401 (an autouse fixture: tiny models run on one thread)

import lmtt_widget as lw
import tiny
from lmtt_widget import LmttError, vocab
from lmtt_widget.architectures import norm_eps, post_norm_map, w_o
from lmtt_widget.attention import in_traces
from lmtt_widget.contributions import head_outputs
from lmtt_widget.run import analyze_ids
from lmtt_widget.tracing import Edit

PROMPT = "When Mary and John went to the store, John gave"
SWAPPED = "When John and Mary went to the store, Mary gave"
MOE = ["mixtral", "qwen2_moe", "qwen3_moe", "olmoe"]


@pytest.fixture(scope="module", params=tiny.NEW_FAMILIES)
def name(request):
    return request.param


@pytest.fixture(scope="module")
def run(name):
    return lw.analyze(tiny.load(name), PROMPT)


def eager_model(name):
    """The same tiny model, running transformers' eager attention."""
    model = tiny.hf_model(name)
    if model._can_set_attn_implementation():
        model.set_attn_implementation("eager")
    model.config._attn_implementation = "eager"  # Falcon's own attention reads the config
    return model


def modules(run, layer):
    return run.family.modules(run.hf_model, layer)


def recorded(run, watched, input_ids=None):
    """{module: its first output [T, .]} (or {(module, "in"): its input}) in the plain forward pass."""
    seen, handles = {}, []

    def keep(key, tensor) -> None:  # a hook returning None leaves the module's output alone
        seen.setdefault(key, tensor.clone())
    for key in watched:
        module, which = key if isinstance(key, tuple) else (key, "out")
        if which == "in":
            hook = module.register_forward_pre_hook(lambda m, args, key=key: keep(key, args[0]))
        else:
            hook = module.register_forward_hook(
                lambda m, args, out, key=key: keep(key, out[0] if isinstance(out, tuple) else out))
        handles.append(hook)
    try:
        with torch.no_grad():
            run.hf_model((run.input_ids if input_ids is None else input_ids)[None])
    finally:
        for handle in handles:
            handle.remove()
    return {key: value.reshape(-1, value.shape[-1]) for key, value in seen.items()}


def hooked_logits(run, module, fn, when="out"):
    """[T, V] logits of the plain forward pass with `fn` changing a module's output [T, d] (or input) in place."""
    def post(m, args, out):
        tensor = out[0] if isinstance(out, tuple) else out
        fn(tensor.view(run.n_tokens, -1))

    def pre(m, args):
        fn(args[0].view(run.n_tokens, -1))
    handle = module.register_forward_hook(post) if when == "out" else module.register_forward_pre_hook(pre)
    try:
        with torch.no_grad():
            return run.hf_model(run.input_ids[None]).logits[0].float()
    finally:
        handle.remove()


def attn_bias_part(run, layer):
    """[T, d]: the part of the attention update that no head holds: the output bias, through a post-norm."""
    m = modules(run, layer)
    bias = m["out_proj"].bias
    if bias is None:
        return torch.zeros(run.n_tokens, run.shape.d_model)
    scale = run.capture.attn_scale[layer][:, None] if run.capture.attn_scale else None
    return post_norm_map(run.family, m["attn_post_norm"], bias.detach().float().expand(run.n_tokens, -1), scale)


def head_source_parts(run, layer):
    """[T_target, T_source, H, d]: every part z^h_{i<-j}, scaled by a post-norm's frozen scale."""
    u = head_outputs(w_o(run.hf_model, run.family, run.shape, layer), run.capture.values[layer], run.shape.n_heads)
    weights = run.attention_pattern(layer).float().permute(1, 2, 0)  # [T, T, H]
    if run.capture.attn_scale:
        weights = weights * run.capture.attn_scale[layer][:, None, None]
    return weights[..., None] * u[None]


# -- the forward pass -----------------------------------------------------------------------------


def test_the_trace_gives_the_plain_forward_passes_logits_under_eager_attention_too(name, run):
    with torch.no_grad():
        logits = run.hf_model(run.input_ids[None]).logits[0].float()
        eager = eager_model(name)(run.input_ids[None]).logits[0].float()
    torch.testing.assert_close(run.logits, logits, rtol=1e-5, atol=1e-5)
    if name != "falcon_alibi":  # transformers' eager Falcon adds ALiBi twice (test_alibi_... below)
        torch.testing.assert_close(eager, logits, rtol=1e-5, atol=1e-5)


def test_blocks_add_what_the_residual_receives(run):
    c = run.capture
    for layer in range(run.shape.n_layers):
        m = modules(run, layer)
        seen = recorded(run, [m["attn_update"], m["ffn_update"]])
        torch.testing.assert_close(c.attn_out[layer], seen[m["attn_update"]], rtol=1e-5, atol=1e-5)
        torch.testing.assert_close(c.ffn_out[layer], seen[m["ffn_update"]], rtol=1e-5, atol=1e-5)
        torch.testing.assert_close(c.resid[layer] + c.attn_out[layer] + c.ffn_out[layer], c.resid[layer + 1],
                                   rtol=1e-5, atol=1e-5)


def test_head_source_parts_add_up_to_the_attention_update(run):
    for layer in range(run.shape.n_layers):
        total = head_source_parts(run, layer).sum((1, 2)) + attn_bias_part(run, layer)
        torch.testing.assert_close(total, run.capture.attn_out[layer], rtol=1e-4, atol=1e-5)
        by_head = torch.stack([sum(run.head_output(layer, h, t) for h in range(run.shape.n_heads))
                               for t in range(run.n_tokens)])
        torch.testing.assert_close(by_head + attn_bias_part(run, layer), run.capture.attn_out[layer],
                                   rtol=1e-4, atol=1e-5)


def test_a_post_norm_scale_is_what_makes_the_parts_add_up(run):
    """Without the frozen scale the parts would not add up: the scale is not close to 1."""
    if not run.capture.attn_scale:
        assert run.family.attn_post_norm is None and not run.capture.ffn_scale
        return
    layer = 1
    unscaled = head_source_parts(run, layer) / run.capture.attn_scale[layer][:, None, None, None]
    m = modules(run, layer)
    mapped = post_norm_map(run.family, m["attn_post_norm"], unscaled.sum((1, 2)))
    assert (mapped - run.capture.attn_out[layer]).abs().max() > 0.1
    raw = recorded(run, [m["attention"]])[m["attention"]]
    expected = (raw.float().pow(2).mean(-1) + norm_eps(m["attn_post_norm"])).rsqrt()  # RMSNorm's 1 / rms
    torch.testing.assert_close(run.capture.attn_scale[layer], expected, rtol=1e-6, atol=0)


@pytest.mark.parametrize("distance", ["l1", "l2"])
def test_shares_follow_the_proximity_formula(run, distance):
    if distance != run.distance:
        run = lw.analyze(run.model, run.prompt, distance=distance)
    order = {"l1": 1, "l2": 2}[distance]
    c = run.capture
    for layer in range(run.shape.n_layers):
        i = run.n_tokens - 1 - layer
        x, attn = c.resid[layer][i], c.attn_out[layer][i]
        whole = c.resid[layer + 1][i] if run.shape.parallel else x + attn
        z = head_source_parts(run, layer)[i]  # [T_source, H, d]
        parts = [x] + list(z.reshape(-1, z.shape[-1])) + ([c.ffn_out[layer][i]] if run.shape.parallel else [])
        prox = torch.stack([(whole.norm(p=order) - (whole - p).norm(p=order)).clamp_min(0) for p in parts])
        expected = prox / prox.sum()
        heads, residual = run.attention_contributions(layer)
        assert residual[i] == pytest.approx(float(expected[0]), rel=1e-4)
        torch.testing.assert_close(heads[i].reshape(-1), expected[1:1 + z.shape[0] * z.shape[1]], rtol=1e-4, atol=1e-6)
        if run.shape.parallel:
            assert run.ffn_contributions(layer)[0][i] == pytest.approx(float(expected[-1]), rel=1e-4)


def test_direct_logit_effects_add_up_to_the_logits_before_any_soft_cap(run):
    """The embedding and every block's update, each through the final norm at its real scale, plus
    the biases of the final norm and the unembedding, times the logit scale: the logits' argument."""
    i = run.n_tokens - 1
    c = run.capture
    writes = torch.stack([c.resid[0][i], *(u[i] for u in c.attn_out + c.ffn_out)])  # [1 + 2L, d]
    total = vocab.direct_logits(run.hf_model, run.family, writes, c.resid[-1][i]).sum(0)
    norm_bias = getattr(run.family.get(run.hf_model, "final_norm"), "bias", None)
    head = run.hf_model.get_output_embeddings()
    with torch.no_grad():
        biases = head(torch.zeros(run.shape.d_model) if norm_bias is None else norm_bias)  # W_U b_norm + b_U
        expected = head(c.final_normed[i])
    scale = run.family.logit_scale(run.hf_model.config.get_text_config())
    torch.testing.assert_close(total + scale * biases, scale * expected, rtol=1e-4, atol=1e-4)


def test_the_logit_lens_of_the_last_residual_is_the_prediction(run):
    lens = run.logit_lens(run.shape.n_layers - 1, -1, k=3)
    assert [t.token for t in lens] == [t for t, _ in run.top_tokens(k=3)]
    assert [t.probability for t in lens] == pytest.approx([p for _, p in run.top_tokens(k=3)], rel=1e-5)


# -- FFN: neurons and experts -----------------------------------------------------------------


def dense_layers(run):
    return [layer for layer in range(run.shape.n_layers) if modules(run, layer)["ffn_out_proj"] is not None]


def test_neuron_writes_add_up_to_the_ffn_update(run):
    i = run.n_tokens - 1
    for layer in dense_layers(run):
        m = modules(run, layer)
        bias = m["ffn_out_proj"].bias
        scale = run.capture.ffn_scale[layer][i] if run.capture.ffn_scale else None
        bias_part = 0 if bias is None else post_norm_map(run.family, m["ffn_post_norm"], bias.detach().float(), scale)
        torch.testing.assert_close(run.neuron_writes(layer, i).sum(0) + bias_part, run.capture.ffn_out[layer][i],
                                   rtol=1e-4, atol=1e-5)
        shares, residual = run.neuron_shares(layer, i)
        assert float(shares.sum() + residual) == pytest.approx(1.0, abs=1e-5)


def test_a_mixture_of_experts_layer_has_expert_neurons_only(run):
    moe = [layer for layer in range(run.shape.n_layers) if layer not in dense_layers(run)]
    assert bool(moe) == (run.family.experts is not None) and (run.family.name != "qwen2_moe" or 1 not in moe)
    assert [layer for layer in range(run.shape.n_layers) if run.has_experts(layer)] == moe
    for layer in moe:
        with pytest.raises(LmttError, match=f"layer {layer}'s FFN is a mixture of experts.*expert_contributions"):
            run.neuron_activations(layer)
    for layer in dense_layers(run):
        with pytest.raises(LmttError, match=f"layer {layer}'s FFN is dense"):
            run.expert_contributions(layer, 0)


@pytest.mark.parametrize("family", MOE)
def test_expert_writes_add_up_to_the_ffn_update_and_drill_into_neurons(family):
    run = lw.analyze(tiny.load(family), PROMPT)
    layer = 0
    m = modules(run, layer)
    experts = m["ffn"].experts
    seen = recorded(run, [(m["ffn"], "in")])[(m["ffn"], "in")]  # the FFN block's input, from a hook
    for i in range(run.n_tokens):
        writes = run.expert_writes(layer, i)
        torch.testing.assert_close(writes.writes.sum(0), run.capture.ffn_out[layer][i], rtol=1e-5, atol=1e-6)
        k = run.hf_model.config.num_experts_per_tok
        shared = family == "qwen2_moe"
        assert len(writes.experts) == k + shared and (None in writes.experts) == shared
        # the router's choice, computed here by hand from the hooked input
        probs = (seen[i] @ m["ffn"].gate.weight.T).softmax(-1)
        top = probs.topk(k)
        assert writes.experts[:k] == top.indices.tolist()
        weights = top.values / top.values.sum() if run.hf_model.config.get_text_config().to_dict().get(
            "norm_topk_prob", family == "mixtral") else top.values
        torch.testing.assert_close(writes.weights[:k], weights, rtol=1e-5, atol=1e-7)
        for at, expert in enumerate(writes.experts[:k]):  # an expert's own output, by hand
            gate, up = (seen[i] @ experts.gate_up_proj[expert].T).chunk(2)
            by_hand = (experts.act_fn(gate) * up) @ experts.down_proj[expert].T * weights[at]
            torch.testing.assert_close(writes.writes[at], by_hand, rtol=1e-5, atol=1e-6)
    i = run.n_tokens - 1
    contributions = run.expert_contributions(layer, i)
    writes = run.expert_writes(layer, i)
    assert [c.expert for c in contributions] == writes.experts
    _, residual = run._ffn_part_shares(layer, i, writes.writes)
    assert sum(c.share for c in contributions) + float(residual) == pytest.approx(1.0, abs=1e-5)
    for expert in writes.experts:  # every writing expert's neurons add up to its write
        acts = run.expert_neuron_activations(layer, i, expert)
        top = run.expert_neuron_contributions(layer, i, expert, k=1000)
        assert len(top) == len(acts) and top[0].share >= top[-1].share
        at = writes.experts.index(expert)
        out = m["ffn"].shared_expert.down_proj.weight.T if expert is None else experts.down_proj[expert].T
        torch.testing.assert_close((acts[:, None] * out.detach() * writes.weights[at]).sum(0), writes.writes[at],
                                   rtol=1e-5, atol=1e-6)
    top = run.expert_logits(layer, i, writes.experts[0], k=2).promoted[0]
    direct = vocab.direct_logits(run.hf_model, run.family, writes.writes[0], run.capture.resid[-1][i])
    assert top[1] == pytest.approx(float(direct.max()), rel=1e-5)
    unselected = next(e for e in range(experts.gate_up_proj.shape[0]) if e not in writes.experts)
    with pytest.raises(LmttError, match=f"expert {unselected} does not write at position {i} of layer 0"):
        run.expert_neuron_contributions(layer, i, unselected)
    with pytest.raises(LmttError, match="expert 9 is out of range: valid are 0..3"):
        run.expert_neuron_activations(layer, i, 9)


def test_routes_and_readouts(run):
    """Routes come from the shares as for every family; readouts read the writes as the residual receives them."""
    graph = run.graph(threshold=0.04)
    stages = {node[0] for node in graph.nodes}
    assert ("post", run.shape.n_layers - 1, run.n_tokens - 1) in graph.nodes
    assert ("mid" in stages) == (not run.shape.parallel)
    assert all(0.04 < data["weight"] <= 1 + 1e-6 for *_, data in graph.edges(data=True))
    layer, head, i = 1, 1, run.n_tokens - 1
    effect = run.head_logits(layer, head, i, k=2)
    direct = vocab.direct_logits(run.hf_model, run.family, run.head_output(layer, head, i), run.capture.resid[-1][i])
    assert effect.promoted[0][1] == pytest.approx(float(direct.max()), rel=1e-5)
    for layer in dense_layers(run)[:1]:
        n = run.neuron_contributions(layer, i, k=1)[0].index
        direct = vocab.direct_logits(run.hf_model, run.family, run.neuron_writes(layer, i)[n], run.capture.resid[-1][i])
        assert run.neuron_logits(layer, n, i, k=1).suppressed[0][1] == pytest.approx(float(direct.min()), rel=1e-5)


# -- attention features: what the model really computes is what is read ----------------------


def eager_attentions(run, family):
    with torch.no_grad():
        return eager_model(family)(run.input_ids[None], output_attentions=True).attentions


def test_soft_capped_attention_is_read_from_eager_attention_with_the_cap():
    run = lw.analyze(tiny.load("gemma2"), PROMPT)
    assert in_traces(run.hf_model) == "eager"
    capped = eager_attentions(run, "gemma2")
    uncapped_model = eager_model("gemma2")
    for layer in range(run.shape.n_layers):
        uncapped_model.model.layers[layer].self_attn.attn_logit_softcapping = None
    with torch.no_grad():
        uncapped = uncapped_model(run.input_ids[None], output_attentions=True).attentions
    for layer in range(run.shape.n_layers):
        torch.testing.assert_close(run.attention_pattern(layer).float(), capped[layer][0], rtol=1e-6, atol=1e-7)
        assert (capped[layer] - uncapped[layer]).abs().max() > 0.05  # the cap matters here


def test_final_logit_soft_cap_is_applied_to_logits_and_the_logit_lens():
    run = lw.analyze(tiny.load("gemma2"), PROMPT)
    cap = run.hf_model.config.final_logit_softcapping
    raw = run.hf_model.lm_head(run.capture.final_normed).float()
    assert (raw.abs().max() / cap) > 1  # the cap bends these logits
    torch.testing.assert_close(run.logits, cap * torch.tanh(raw / cap))
    lens = run.logit_lens(run.shape.n_layers - 1, -1, k=1)[0]
    assert lens.probability == pytest.approx(float(run.logits[-1].softmax(-1).max()), rel=1e-5)


@pytest.mark.parametrize("family", ["gemma3_text", "olmo3", "cohere2"])
def test_sliding_window_layers_read_only_their_window(family):
    run = lw.analyze(tiny.load(family), PROMPT)
    config = run.hf_model.config.get_text_config()
    window = config.sliding_window
    eager = eager_attentions(run, family)
    distance = torch.arange(run.n_tokens)[:, None] - torch.arange(run.n_tokens)[None, :]
    for layer, kind in enumerate(config.layer_types):
        pattern = run.attention_pattern(layer).float()
        torch.testing.assert_close(pattern, eager[layer][0], rtol=1e-5, atol=1e-6)
        beyond = pattern[:, distance >= window]
        if kind == "sliding_attention":
            assert beyond.abs().max() == 0
            assert run.attention_contributions(layer)[0][distance >= window].abs().max() == 0
        else:
            assert beyond.abs().max() > 0.01


def test_alibi_probabilities_are_those_the_model_uses():
    """Falcon's attention is its own class: under sdpa (its default) the probabilities are computed
    from its queries, keys and ALiBi mask; under eager they are eager's (which adds ALiBi twice)."""
    from transformers.models.falcon.modeling_falcon import build_alibi_tensor

    run = lw.analyze(tiny.load("falcon_alibi"), PROMPT)
    T, H, hd = run.n_tokens, run.shape.n_heads, run.shape.head_dim
    assert run.hf_model.config._attn_implementation == "sdpa" and not run.shape.parallel
    alibi = build_alibi_tensor(torch.ones(1, T), H, torch.float32).view(H, 1, T) / hd ** 0.5
    future = torch.ones(T, T, dtype=torch.bool).triu(1)
    for layer in range(run.shape.n_layers):
        fused = modules(run, layer)["value_proj"]
        qkv = recorded(run, [fused])[fused].view(T, H, 3, hd)
        scores = qkv[:, :, 0].transpose(0, 1) @ qkv[:, :, 1].permute(1, 2, 0) / hd ** 0.5  # [H, T, T]
        by_hand = (scores + alibi).masked_fill(future, float("-inf")).softmax(-1)
        torch.testing.assert_close(run.attention_pattern(layer), by_hand, rtol=1e-5, atol=1e-6)
        assert (scores.masked_fill(future, float("-inf")).softmax(-1) - by_hand).abs().max() > 0.05  # ALiBi matters
    torch.testing.assert_close(head_source_parts(run, 1).sum((1, 2)) + attn_bias_part(run, 1),
                               run.capture.attn_out[1], rtol=1e-4, atol=1e-5)
    eager = lw.analyze(lw.load_model(eager_model("falcon_alibi"), tokenizer=tiny.tokenizer()), PROMPT)
    with torch.no_grad():
        out = eager.hf_model(eager.input_ids[None], output_attentions=True)
    torch.testing.assert_close(eager.logits, out.logits[0], rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(eager.attention_pattern(1), out.attentions[1][0], rtol=1e-6, atol=1e-7)
    assert (eager.logits - run.logits).abs().max() > 0.01


def test_clamped_values_are_the_values_the_model_uses():
    run = lw.analyze(tiny.load("olmoe"), PROMPT)
    clip = run.hf_model.config.clip_qkv
    for layer in range(run.shape.n_layers):
        v_proj = modules(run, layer)["value_proj"]
        raw = recorded(run, [v_proj])[v_proj]  # the hook sees v_proj's output before the in-place clamp
        assert raw.abs().max() > clip  # the clamp bites
        torch.testing.assert_close(run.capture.values[layer], raw.clamp(-clip, clip).view_as(run.capture.values[layer]))


def test_falcon_layouts():
    shapes = {name: lw.analyze(tiny.load(name), PROMPT).shape
              for name in ["falcon", "falcon_new", "falcon_new_one_norm", "falcon_alibi"]}
    assert {name: (s.n_kv_heads, s.parallel) for name, s in shapes.items()} == {
        "falcon": (1, True), "falcon_new": (2, True), "falcon_new_one_norm": (2, True), "falcon_alibi": (4, False)}


def test_gemma2_shares_from_the_model_tensors_by_hand():
    """Sandwich norms, by hand: z = A v W_O^h (1 + w) / rms(attention output), from hooked tensors."""
    run = lw.analyze(tiny.load("gemma2"), PROMPT)
    layer, i = 1, run.n_tokens - 1
    attn = run.hf_model.model.layers[layer].self_attn
    norm = run.hf_model.model.layers[layer].post_attention_layernorm
    seen = recorded(run, [attn.v_proj, attn])
    probs = eager_attentions(run, "gemma2")[layer][0]  # [H, T, T]
    values = seen[attn.v_proj].view(run.n_tokens, run.shape.n_kv_heads, run.shape.head_dim)
    raw = seen[attn][i]
    scale = (1 + norm.weight) / (raw.pow(2).mean() + norm.eps).sqrt()  # [d]
    w_out = attn.o_proj.weight.T.reshape(run.shape.n_heads, run.shape.head_dim, -1)
    parts = [probs[h, i, j] * (values[j, h // 2] @ w_out[h]) * scale
             for j in range(run.n_tokens) for h in range(run.shape.n_heads)]
    x = run.capture.resid[layer][i]
    whole = x + norm(raw)
    bias = attn.o_proj.bias * scale
    torch.testing.assert_close(sum(parts) + bias, norm(raw), rtol=1e-4, atol=1e-5)
    prox = torch.stack([(whole.abs().sum() - (whole - p).abs().sum()).clamp_min(0) for p in [x] + parts])
    heads, residual = run.attention_contributions(layer)
    torch.testing.assert_close(heads[i].reshape(-1), (prox / prox.sum())[1:], rtol=1e-4, atol=1e-6)


# -- interventions through the trace's edit sites ---------------------------------------------


@pytest.mark.parametrize("mode", ["zero", "mean"])
def test_block_ablations_set_the_update_the_residual_receives(run, mode):
    m0, m1 = modules(run, 0), modules(run, 1)
    seen = recorded(run, [m0["attn_update"], m1["ffn_update"]])
    attn_value = seen[m0["attn_update"]].mean(0) if mode == "mean" else 0.0
    new, _ = run.intervene([("attention", 0)], mode)

    def set_attention(x):
        x[:] = attn_value
    torch.testing.assert_close(new.logits, hooked_logits(run, m0["attn_update"], set_attention), atol=1e-5, rtol=0)
    ffn_value = seen[m1["ffn_update"]].mean(0) if mode == "mean" else 0.0
    new, _ = run.intervene([("ffn", 1, [4, 5])], mode)

    def set_ffn(x):
        x[[4, 5]] = ffn_value
    torch.testing.assert_close(new.logits, hooked_logits(run, m1["ffn_update"], set_ffn), atol=1e-5, rtol=0)


def test_head_and_neuron_ablations_change_the_sub_blocks_input(run):
    layer, head, hd = 1, 2, run.shape.head_dim
    new, _ = run.intervene(("head", layer, head))

    def zero_head(x):
        x[:, head * hd:(head + 1) * hd] = 0
    expected = hooked_logits(run, modules(run, layer)["out_proj"], zero_head, when="in")
    torch.testing.assert_close(new.logits, expected, atol=1e-5, rtol=0)
    assert (new.logits - run.logits).abs().max() > 1e-4
    for layer in dense_layers(run)[:1]:
        new, _ = run.intervene(("neuron", layer, 5, [2, 9]))

        def zero_neuron(x):
            x[[2, 9], 5] = 0
        expected = hooked_logits(run, modules(run, layer)["ffn_out_proj"], zero_neuron, when="in")
        torch.testing.assert_close(new.logits, expected, atol=1e-5, rtol=0)


def test_an_edge_removed_at_the_update_site_with_the_frozen_scale_is_exactly_its_part(run):
    """What an edge ablation must do: remove attn_scale[t] * A^h_ts v^h_s W_O^h M from the update."""
    layer, source, target, head = 1, 4, 9, 3
    w = w_o(run.hf_model, run.family, run.shape, layer)[head]
    kv = head // (run.shape.n_heads // run.shape.n_kv_heads)

    def remove(x, state):
        term = state.probs[head, target, source].float() * state.values[source, kv].float() @ w
        if state.attn_scale is not None:
            term = term * state.attn_scale[target]
        x[target] -= term.to(x)
    new = analyze_ids(run.model, run.input_ids, edits=[Edit("attention_output", layer, remove)])
    change = new.capture.attn_out[layer] - run.capture.attn_out[layer]
    torch.testing.assert_close(change[target], -head_source_parts(run, layer)[target, source, head],
                               atol=1e-6, rtol=1e-4)
    assert change[[t for t in range(run.n_tokens) if t != target]].abs().max() == 0


@pytest.mark.parametrize("family", MOE)
def test_an_expert_zeroed_at_the_routing_weights_site_removes_exactly_its_write(family):
    run = lw.analyze(tiny.load(family), PROMPT)
    layer, target = 0, 6
    writes = run.expert_writes(layer, target)
    expert = writes.experts[1]

    def drop(weights, state):
        weights[target][state.experts[target] == expert] = 0
    new = analyze_ids(run.model, run.input_ids, edits=[Edit("routing_weights", layer, drop)])
    change = new.capture.ffn_out[layer] - run.capture.ffn_out[layer]
    torch.testing.assert_close(change[target], -writes.writes[1], atol=1e-6, rtol=1e-5)
    assert change[[t for t in range(run.n_tokens) if t != target]].abs().max() == 0


def test_patching_the_residual_after_attention(run):
    if run.shape.parallel:
        return
    other = lw.analyze(run.model, SWAPPED)
    patched, _ = lw.patch(other, run, ("mid", 1, 3))
    c, o = patched.capture, other.capture
    torch.testing.assert_close(c.resid[1][3] + c.attn_out[1][3], o.resid[1][3] + o.attn_out[1][3], atol=1e-5, rtol=0)


def test_value_code_gives_the_value_vectors(run):
    """The code a generated script uses for the value vectors reads what the trace reads."""
    proj = recorded(run, [modules(run, 0)["value_proj"]])[modules(run, 0)["value_proj"]]
    clamp = run.family.value_clamp(run.hf_model.config.get_text_config())
    code = run.family.values_code("out", run.shape, clamp)
    torch.testing.assert_close(eval(code, {"out": proj, "T": run.n_tokens}), run.capture.values[0])


# -- the remote-compact path ------------------------------------------------------------------


def test_compact_shares_through_the_simulated_remote_path_equal_analyze(run):
    from lmtt_widget.remote import analyze_compact

    compact = analyze_compact(run.model, PROMPT, remote="local", floor=0.0)
    for layer in range(run.shape.n_layers):
        torch.testing.assert_close(compact.attention_contributions(layer)[0], run.attention_contributions(layer)[0])
        torch.testing.assert_close(compact.ffn_contributions(layer)[0], run.ffn_contributions(layer)[0])
    assert compact.top_tokens(k=3)[0][1] == pytest.approx(run.top_tokens(k=1)[0][1], rel=1e-5)


# -- loading --------------------------------------------------------------------------------------


@pytest.mark.parametrize("family, in_trace", [("falcon_new", "sdpa"), ("gemma2", "eager"), ("gemma3", "lmtt_sdpa")])
def test_a_saved_model_loads_and_keeps_its_attention(family, in_trace, tmp_path):
    """Falcon keeps its own attention class (sdpa; probabilities from its queries and keys),
    soft-capped Gemma 2 runs eager, the others the package's sdpa, in traces only."""
    tiny.hf_model(family).save_pretrained(tmp_path)
    tiny.tokenizer().save_pretrained(tmp_path)
    model = lw.load_model(str(tmp_path))
    own = model._module.config._attn_implementation
    assert in_traces(model._module) == in_trace
    run = lw.analyze(model, PROMPT)
    assert model._module.config._attn_implementation == own
    with torch.no_grad():
        torch.testing.assert_close(run.logits, model._module(run.input_ids[None]).logits[0].float(),
                                   rtol=1e-5, atol=1e-5)
