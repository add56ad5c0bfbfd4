"""An independent reference for the proximity shares (design.md §1), on configurations that
tests/tiny.py does not build: other GQA ratios and multi-query attention, head_dim != hidden / heads,
biases, RoPE scalings and partial rotary, query_pre_attn_scalar, sliding windows shorter than the
prompt, experts' top-k and norm_topk_prob, shared experts and sparse steps, clip_qkv, qk-norms,
Falcon without biases, GPT-2's layer-wise scaling, and prompts of 2, 7 and 30 tokens.

The reference knows each family only through the small `Layout` below and the plain transformers
forward pass: the attention probabilities and value vectors are those transformers' own eager
attention function receives and returns (recorded by wrapping it; Falcon's, whose attention is a
class of its own, from its own query_key_value split), W_O is sliced from the output projection's
weight, and a post-norm's frozen scale is computed from the attention output it normalises. Every
reference is checked against the real forward pass first (each head's value mix is the output
projection's input; the parts and the bias add up to the update; the blocks add up to the block's
output). Neuron and expert shares are checked the same way: neurons from the FFN output projection's
input and weight, each expert's write from the model's own experts module run with the other slots'
routing weights at 0. Each head's write (`head_output`), direct logit effects through the final norm
frozen at the real final residual (`direct_logits`) and the L2 option are checked too. Only the
comparison uses lmtt_widget, through its public API."""

from __future__ import annotations

import copy
import dataclasses
import functools
import sys

import pytest
import torch
import transformers
from test_interventions import one_thread  # noqa: F401 (an autouse fixture: tiny models run on one thread)

import lmtt_widget as lw
import tiny


@dataclasses.dataclass(frozen=True)
class Layout:
    """Where a family keeps what the reference reads (module paths from a decoder block)."""

    blocks: str
    attention: str
    out_proj: str
    ffn: str  # the module whose output is the FFN update (without a post-norm)
    ffn_out_proj: str  # in a dense block: the FFN's output projection, whose input holds the neurons' activations
    parallel: bool = False
    attn_post_norm: str | None = None
    ffn_post_norm: str | None = None
    post_norm_offset: float = 0.0  # Gemma's RMSNorm multiplies by 1 + weight
    fused_falcon: bool = False  # values and probabilities from Falcon's own split of query_key_value
    final_norm: str = "model.norm"  # from the causal LM; its offset is post_norm_offset's (Gemma: 1 + weight)


LLAMA = Layout("model.layers", "self_attn", "self_attn.o_proj", "mlp", "mlp.down_proj")
GEMMA = dataclasses.replace(LLAMA, attn_post_norm="post_attention_layernorm",
                            ffn_post_norm="post_feedforward_layernorm", post_norm_offset=1.0)
OLMO2 = dataclasses.replace(GEMMA, post_norm_offset=0.0)
COHERE = dataclasses.replace(LLAMA, parallel=True)
GPT2 = Layout("transformer.h", "attn", "attn.c_proj", "mlp", "mlp.c_proj", final_norm="transformer.ln_f")
GPTJ = Layout("transformer.h", "attn", "attn.out_proj", "mlp", "mlp.fc_out", parallel=True,
              final_norm="transformer.ln_f")
NEOX_PARALLEL = Layout("gpt_neox.layers", "attention", "attention.dense", "mlp", "mlp.dense_4h_to_h", parallel=True,
                       final_norm="gpt_neox.final_layer_norm")
NEOX_SEQUENTIAL = dataclasses.replace(NEOX_PARALLEL, parallel=False)
FALCON_PARALLEL = Layout("transformer.h", "self_attention", "self_attention.dense", "mlp", "mlp.dense_4h_to_h",
                         parallel=True, fused_falcon=True, final_norm="transformer.ln_f")
FALCON_SEQUENTIAL = dataclasses.replace(FALCON_PARALLEL, parallel=False)
OPT = Layout("model.decoder.layers", "self_attn", "self_attn.out_proj", "fc2", "fc2",
             final_norm="model.decoder.final_layer_norm")

SMALL = dict(vocab_size=tiny.VOCAB, max_position_embeddings=64, hidden_size=32, intermediate_size=40,
             num_hidden_layers=2, initializer_range=0.2, pad_token_id=0, bos_token_id=0, eos_token_id=0)
EXPERTS = dict(SMALL, num_experts=4, moe_intermediate_size=12)


def build(model_class: str, config_class: str, **kwargs):
    return lambda: getattr(transformers, model_class)(getattr(transformers, config_class)(**kwargs))


def falcon(**kwargs):
    return build("FalconForCausalLM", "FalconConfig", vocab_size=tiny.VOCAB, max_position_embeddings=64,
                 hidden_size=32, num_hidden_layers=2, num_attention_heads=4, initializer_range=0.2, bos_token_id=0,
                 eos_token_id=0, **kwargs)


def gemma3_multimodal():
    text = transformers.Gemma3TextConfig(**SMALL, num_attention_heads=2, num_key_value_heads=1, head_dim=20,
                                         query_pre_attn_scalar=10, sliding_window=4,
                                         layer_types=["full_attention", "sliding_attention"])
    vision = transformers.SiglipVisionConfig(hidden_size=16, intermediate_size=16, num_hidden_layers=1,
                                             num_attention_heads=2, image_size=8, patch_size=4)
    return transformers.Gemma3ForConditionalGeneration(transformers.Gemma3Config(
        text_config=text, vision_config=vision, mm_tokens_per_image=4, initializer_range=0.2))


def neox(**kwargs):
    return build("GPTNeoXForCausalLM", "GPTNeoXConfig", **{**SMALL, **kwargs})


def gpt2(**kwargs):
    return build("GPT2LMHeadModel", "GPT2Config", vocab_size=tiny.VOCAB, n_positions=64, n_embd=32, n_layer=3, n_head=4,
                 initializer_range=0.2, bos_token_id=0, eos_token_id=0, **kwargs)


CASES: dict[str, tuple] = {
    # Llama-likes: GQA ratios 1, 2, 4 and multi-query, head_dim != hidden / heads, biases, RoPE scalings
    "llama_mqa_head_dim_12_biases_linear_rope": (LLAMA, build(
        "LlamaForCausalLM", "LlamaConfig", **SMALL, num_attention_heads=4, num_key_value_heads=1, head_dim=12,
        attention_bias=True, mlp_bias=True, rope_scaling={"rope_type": "linear", "factor": 2.0})),
    "llama_gqa4_llama3_rope": (LLAMA, build(
        "LlamaForCausalLM", "LlamaConfig", **SMALL, num_attention_heads=8, num_key_value_heads=2,
        rope_scaling={"rope_type": "llama3", "factor": 4.0, "low_freq_factor": 1.0, "high_freq_factor": 4.0,
                      "original_max_position_embeddings": 16})),
    "llama_mha_yarn_attention_bias": (LLAMA, build(
        "LlamaForCausalLM", "LlamaConfig", **SMALL, num_attention_heads=4, num_key_value_heads=4,
        attention_bias=True, rope_scaling={"rope_type": "yarn", "factor": 2.0,
                                           "original_max_position_embeddings": 32})),
    "mistral_window_5_gqa2": (LLAMA, build(
        "MistralForCausalLM", "MistralConfig", **SMALL, num_attention_heads=4, num_key_value_heads=2,
        sliding_window=5)),
    "qwen2_sliding_layers_mqa": (LLAMA, build(
        "Qwen2ForCausalLM", "Qwen2Config", **SMALL, num_attention_heads=4, num_key_value_heads=1,
        use_sliding_window=True, sliding_window=3, max_window_layers=1)),
    "qwen3_head_dim_16_gqa4": (LLAMA, build(
        "Qwen3ForCausalLM", "Qwen3Config", **SMALL, num_attention_heads=8, num_key_value_heads=2, head_dim=16,
        attention_bias=True)),
    # Gemma 2: another query_pre_attn_scalar, no soft-caps (sdpa path); and with soft-caps, multi-query
    "gemma2_scalar_32_no_softcap": (GEMMA, build(
        "Gemma2ForCausalLM", "Gemma2Config", **SMALL, num_attention_heads=4, num_key_value_heads=2, head_dim=12,
        query_pre_attn_scalar=32, attn_logit_softcapping=None, final_logit_softcapping=None, sliding_window=3,
        layer_types=["full_attention", "sliding_attention"])),
    "gemma2_softcap_mqa_window_6": (GEMMA, build(
        "Gemma2ForCausalLM", "Gemma2Config", **SMALL, num_attention_heads=4, num_key_value_heads=1, head_dim=8,
        query_pre_attn_scalar=4, attn_logit_softcapping=3.0, final_logit_softcapping=5.0, sliding_window=6,
        layer_types=["sliding_attention", "sliding_attention"])),
    # Gemma 3: sliding windows much shorter than a 30-token prompt, grouped KV, its local RoPE
    "gemma3_window_3_gqa2": (GEMMA, build(
        "Gemma3ForCausalLM", "Gemma3TextConfig", **SMALL, num_attention_heads=4, num_key_value_heads=2,
        head_dim=12, query_pre_attn_scalar=12, sliding_window=3, attention_bias=True,
        layer_types=["sliding_attention", "full_attention"])),
    "gemma3_multimodal_text_path_mqa": (dataclasses.replace(GEMMA, blocks="model.language_model.layers",
                                                            final_norm="model.language_model.norm"),
                                        lambda: gemma3_multimodal()),
    # Phi-3: grouped KV in its fused qkv_proj, partial rotary
    "phi3_gqa2_partial_rotary": (LLAMA, build(
        "Phi3ForCausalLM", "Phi3Config", **SMALL, num_attention_heads=4, num_key_value_heads=2,
        partial_rotary_factor=0.5)),
    "phi3_mqa": (LLAMA, build("Phi3ForCausalLM", "Phi3Config", **SMALL, num_attention_heads=4,
                              num_key_value_heads=1)),
    # OLMo 2 / 3: post-norms, multi-query, windows
    "olmo2_mqa": (OLMO2, build("Olmo2ForCausalLM", "Olmo2Config", **SMALL, num_attention_heads=4,
                               num_key_value_heads=1)),
    "olmo3_window_2_gqa4": (OLMO2, build(
        "Olmo3ForCausalLM", "Olmo3Config", **SMALL, num_attention_heads=8, num_key_value_heads=2, sliding_window=2,
        layer_types=["sliding_attention", "full_attention"])),
    # GPT-J: full rotary, a head dimension of 12
    "gptj_2_heads_rotary_8": (GPTJ, build(
        "GPTJForCausalLM", "GPTJConfig", vocab_size=tiny.VOCAB, n_positions=64, n_embd=24, n_layer=2, n_head=2,
        rotary_dim=8, initializer_range=0.2, bos_token_id=0, eos_token_id=0)),
    # GPT-NeoX: partial rotary, no attention bias, both residual layouts
    "neox_rotary_quarter_parallel": (NEOX_PARALLEL, neox(num_attention_heads=2, rotary_pct=0.25)),
    "neox_no_bias_sequential": (NEOX_SEQUENTIAL, neox(num_attention_heads=4, attention_bias=False,
                                                      use_parallel_residual=False)),
    # Falcon: every layout, without biases
    "falcon_mqa_parallel_no_bias": (FALCON_PARALLEL, falcon(bias=False)),
    "falcon_classic_parallel": (FALCON_PARALLEL, falcon(multi_query=False, bias=True)),
    "falcon_new_mqa_no_bias": (FALCON_PARALLEL, falcon(new_decoder_architecture=True, num_kv_heads=1, bias=False)),
    "falcon_new_kv4_one_norm": (FALCON_PARALLEL, falcon(new_decoder_architecture=True, num_kv_heads=4,
                                                        num_ln_in_parallel_attn=1, bias=True)),
    "falcon_alibi_sequential_no_bias": (FALCON_SEQUENTIAL, falcon(parallel_attn=False, alibi=True,
                                                                  multi_query=False, bias=False)),
    "falcon_alibi_parallel_mqa": (FALCON_PARALLEL, falcon(alibi=True, bias=True)),
    # Cohere: qk-norm, grouped KV; Cohere 2 multi-query with windows
    "cohere_qk_norm_gqa4": (COHERE, build(
        "CohereForCausalLM", "CohereConfig", **SMALL, num_attention_heads=8, num_key_value_heads=2,
        use_qk_norm=True, logit_scale=0.5)),
    "cohere2_mqa_window_3": (COHERE, build(
        "Cohere2ForCausalLM", "Cohere2Config", **SMALL, num_attention_heads=4, num_key_value_heads=1,
        sliding_window=3, layer_types=["sliding_attention", "full_attention"])),
    # mixtures of experts: top-k 1 and 3, norm_topk_prob off, sparse steps, clip_qkv on and off
    "mixtral_top1_mqa": (LLAMA, build("MixtralForCausalLM", "MixtralConfig", **SMALL, num_attention_heads=4,
                                      num_key_value_heads=1, num_local_experts=4, num_experts_per_tok=1)),
    "mixtral_top3_window_4": (LLAMA, build("MixtralForCausalLM", "MixtralConfig", **SMALL, num_attention_heads=4,
                                           num_key_value_heads=2, num_local_experts=4, num_experts_per_tok=3,
                                           sliding_window=4)),
    "qwen2_moe_sparse_step_2": (LLAMA, build(
        "Qwen2MoeForCausalLM", "Qwen2MoeConfig", **EXPERTS, num_attention_heads=4, num_key_value_heads=2,
        num_experts_per_tok=2, shared_expert_intermediate_size=20, decoder_sparse_step=2, mlp_only_layers=[],
        norm_topk_prob=False)),
    "qwen3_moe_top1_unnormalised": (LLAMA, build(
        "Qwen3MoeForCausalLM", "Qwen3MoeConfig", **EXPERTS, num_attention_heads=4, num_key_value_heads=1,
        num_experts_per_tok=1, norm_topk_prob=False)),
    "qwen3_moe_dense_first_layer": (LLAMA, build(
        "Qwen3MoeForCausalLM", "Qwen3MoeConfig", **EXPERTS, num_attention_heads=4, num_key_value_heads=4,
        num_experts_per_tok=2, norm_topk_prob=False, mlp_only_layers=[0])),
    "olmoe_no_clip_top1": (LLAMA, build("OlmoeForCausalLM", "OlmoeConfig", **SMALL, num_attention_heads=4,
                                        num_key_value_heads=4, num_experts=4, num_experts_per_tok=1, clip_qkv=None)),
    "olmoe_clip_03_gqa2": (LLAMA, build("OlmoeForCausalLM", "OlmoeConfig", **SMALL, num_attention_heads=4,
                                        num_key_value_heads=2, num_experts=4, num_experts_per_tok=3, clip_qkv=0.3)),
    # OPT without biases; GPT-2 with its layer-wise scaling, upcast attention, and unscaled attention
    "opt_no_bias": (OPT, build("OPTForCausalLM", "OPTConfig", vocab_size=tiny.VOCAB, max_position_embeddings=64,
                               hidden_size=32, ffn_dim=40, num_hidden_layers=2, num_attention_heads=2,
                               word_embed_proj_dim=32, enable_bias=False, init_std=0.2)),
    "gpt2_inverse_layer_idx_upcast": (GPT2, gpt2(scale_attn_by_inverse_layer_idx=True, reorder_and_upcast_attn=True)),
    "gpt2_unscaled": (GPT2, gpt2(scale_attn_weights=False)),
    # users' models running eager attention (the package then reads the probabilities they return)
    "gpt2_upcast_user_eager": (GPT2, gpt2(reorder_and_upcast_attn=True, attn_implementation="eager")),
    "gemma3_window_3_user_eager": (GEMMA, build(
        "Gemma3ForCausalLM", "Gemma3TextConfig", **SMALL, num_attention_heads=4, num_key_value_heads=1,
        head_dim=8, query_pre_attn_scalar=8, sliding_window=3, layer_types=["sliding_attention", "full_attention"],
        attn_implementation="eager")),
    "falcon_new_kv2_user_eager": (FALCON_PARALLEL, falcon(new_decoder_architecture=True, num_kv_heads=2, bias=False,
                                                          attn_implementation="eager")),
    "mixtral_head_dim_12_user_eager": (LLAMA, build(
        "MixtralForCausalLM", "MixtralConfig", **SMALL, num_attention_heads=4, num_key_value_heads=2, head_dim=12,
        num_local_experts=4, num_experts_per_tok=2, attn_implementation="eager")),
}
LENGTHS = (2, 7, 30)


@functools.cache
def made(name: str) -> torch.nn.Module:
    """The case's tiny model, its norms and biases spread so that they matter (built once; tests copy it)."""
    torch.manual_seed(len(name))
    model = tiny._spread_norms(CASES[name][1]().float().eval())
    tiny._spread_biases(model, seed=3)
    return model


def fresh(name: str) -> torch.nn.Module:
    return copy.deepcopy(made(name))


def prompt_ids(n_tokens: int) -> list[int]:
    return torch.randint(1, tiny.VOCAB, (n_tokens,), generator=torch.Generator().manual_seed(n_tokens)).tolist()


def _get(root, path: str):
    return functools.reduce(getattr, path.split("."), root)


def _first(output) -> torch.Tensor:
    return output[0] if isinstance(output, tuple) else output


# -- the reference's reading of the plain forward pass ---------------------------------------------


@dataclasses.dataclass
class Block:
    """What one block did at batch 0, float64."""

    x: torch.Tensor  # [T, d] the residual entering the block
    out: torch.Tensor  # [T, d] the residual leaving it
    attn_out: torch.Tensor  # [T, d] the attention module's output (before any post-norm)
    mixed: torch.Tensor  # [T, H * hd] the output projection's input: every head's value mix
    attn_update: torch.Tensor  # [T, d] what the attention adds (after a post-norm)
    ffn_update: torch.Tensor  # [T, d] what the FFN module (or its post-norm) outputs
    probs: torch.Tensor | None = None  # [H, T, T]
    values: torch.Tensor | None = None  # [T, KV, hd]


class ValueRecorder:
    """Wraps transformers' eager attention functions (and GPT-2's upcast path) so that each call
    records the value vectors [B, KV, T, hd] it receives and the probabilities [B, H, T, T] it returns."""

    def __init__(self, monkeypatch, model, layout: Layout):
        self.seen: dict[int, tuple[torch.Tensor, torch.Tensor]] = {}
        attentions = [_get(block, layout.attention) for block in _get(model, layout.blocks)]
        self.layer_of = {id(module): layer for layer, module in enumerate(attentions)}
        for module_name in {type(m).__module__ for m in attentions}:
            modeling = sys.modules[module_name]
            if hasattr(modeling, "eager_attention_forward"):
                monkeypatch.setattr(modeling, "eager_attention_forward", self.wrap(modeling.eager_attention_forward))
        for module in attentions:
            if hasattr(module, "_upcast_and_reordered_attn"):
                bound = module._upcast_and_reordered_attn
                monkeypatch.setattr(module, "_upcast_and_reordered_attn",
                                    lambda q, k, v, *a, m=module, f=bound: self.record(m, v, f(q, k, v, *a)))

    def wrap(self, eager):
        def recording(module, query, key, value, *args, **kwargs):
            return self.record(module, value, eager(module, query, key, value, *args, **kwargs))
        return recording

    def record(self, module, value, result):
        if id(module) not in self.layer_of:  # another model's attention running eager: not recorded here
            return result
        self.seen[self.layer_of[id(module)]] = (value[0].detach().transpose(0, 1).double(),
                                                result[1][0].detach().double())
        return result


def falcon_probs_and_values(module, kwargs) -> tuple[torch.Tensor, torch.Tensor]:
    """Falcon's probabilities [H, T, T] as its sdpa path computes them (softmax of q k^T / sqrt(hd)
    plus the mask it is given, which carries ALiBi) and its values [T, KV, hd], from its own split."""
    from transformers.models.falcon.modeling_falcon import apply_rotary_pos_emb

    query, key, value = module._split_heads(module.query_key_value(kwargs["hidden_states"]))
    query, key = query.transpose(1, 2), key.transpose(1, 2)  # [B, heads, T, hd]
    if kwargs.get("alibi") is None:
        query, key = apply_rotary_pos_emb(query, key, *kwargs["position_embeddings"])
    query, key = query[0].double(), key[0].double()
    groups = query.shape[0] // key.shape[0]
    scores = query @ key.repeat_interleave(groups, 0).transpose(-1, -2) / query.shape[-1] ** 0.5
    mask = kwargs["attention_mask"]
    if mask.dtype == torch.bool:
        scores = scores.masked_fill(~mask[0], float("-inf"))
    else:
        scores = scores + mask[0].double()
    return scores.softmax(-1), value[0].detach().double()


def forward_blocks(model, layout: Layout, ids: list[int], monkeypatch=None) -> tuple[list[Block], torch.Tensor]:
    """Each block's tensors and the logits [T, V] of one plain forward pass; with `monkeypatch`,
    the probabilities and values of its eager attention too (Falcon: of its own attention)."""
    blocks = _get(model, layout.blocks)
    seen: dict[tuple[int, str], torch.Tensor] = {}
    handles = []
    recorder = ValueRecorder(monkeypatch, model, layout) if monkeypatch and not layout.fused_falcon else None

    def keep(key, tensor):  # batch 1: [T, width] (OPT's FFN runs on [B * T, d])
        seen[key] = tensor.detach().reshape(-1, tensor.shape[-1]).double()

    for layer, block in enumerate(blocks):
        def on_block_in(m, args, kwargs, layer=layer):
            keep((layer, "x"), args[0] if args else kwargs["hidden_states"])

        def on_attention_in(m, args, kwargs, layer=layer):
            probs, values = falcon_probs_and_values(m, {**dict(zip(["hidden_states"], args)), **kwargs})
            seen[(layer, "probs")], seen[(layer, "values")] = probs, values
        handles.append(block.register_forward_pre_hook(on_block_in, with_kwargs=True))
        handles.append(block.register_forward_hook(lambda m, a, out, layer=layer: keep((layer, "out"), _first(out))))
        attention = _get(block, layout.attention)
        if layout.fused_falcon and monkeypatch:
            handles.append(attention.register_forward_pre_hook(on_attention_in, with_kwargs=True))
        handles.append(attention.register_forward_hook(
            lambda m, a, out, layer=layer: keep((layer, "attn_out"), _first(out))))
        handles.append(_get(block, layout.out_proj).register_forward_pre_hook(
            lambda m, args, layer=layer: keep((layer, "mixed"), args[0])))
        for what, path in (("attn_update", layout.attn_post_norm or layout.attention),
                           ("ffn_update", layout.ffn_post_norm or layout.ffn)):
            handles.append(_get(block, path).register_forward_hook(
                lambda m, a, out, layer=layer, what=what: keep((layer, what), _first(out))))
    try:
        with torch.no_grad():
            logits = model(torch.tensor([ids])).logits[0].double()
    finally:
        for handle in handles:
            handle.remove()
    fields = ("x", "out", "attn_out", "mixed", "attn_update", "ffn_update")
    result = [Block(*(seen[(layer, f)] for f in fields)) for layer in range(len(blocks))]
    for layer, block in enumerate(result):
        if recorder is not None:
            block.values, block.probs = recorder.seen[layer]
        elif (layer, "probs") in seen:
            block.probs, block.values = seen[(layer, "probs")], seen[(layer, "values")]
    return result, logits


def eager_copy(model):
    copied = copy.deepcopy(model)
    copied.set_attn_implementation("eager")
    copied.config._attn_implementation = "eager"  # Falcon's own attention reads the config
    return copied


# -- the reference shares --------------------------------------------------------------------------


def proximity(parts: torch.Tensor, whole: torch.Tensor, order: int = 1) -> torch.Tensor:
    """prox(p, y) = max(0, ||y|| - ||y - p||) over the last axis (L1, or L2 with order 2); parts [..., d],
    whole broadcast."""
    def norm(v):
        return torch.linalg.vector_norm(v, ord=order, dim=-1)
    return (norm(whole) - norm(whole - parts)).clamp_min(0)


def normalised(residual: torch.Tensor, *others: torch.Tensor) -> tuple[torch.Tensor, ...]:
    """Shares (residual [T], others [T, ...]) of one whole per target; a degenerate whole's residual gets 1."""
    total = residual + sum(o.reshape(len(o), -1).sum(1) for o in others)
    degenerate = total <= 0
    safe = torch.where(degenerate, torch.ones_like(total), total)
    res = torch.where(degenerate, torch.ones_like(residual), residual / safe)
    return (res, *(torch.where(degenerate.view(-1, *[1] * (o.dim() - 1)), 0.0, o / safe.view(-1, *[1] * (o.dim() - 1)))
                   for o in others))


def out_proj_slices(module, n_heads: int) -> torch.Tensor:
    """[H, hd, d] from the output projection's weight (nn.Linear: [d, H hd]; GPT-2's Conv1D: [H hd, d])."""
    weight = module.weight.detach().double()
    if type(module).__name__ != "Conv1D":
        weight = weight.T
    return weight.reshape(n_heads, -1, weight.shape[-1])


def post_norm_frozen(norm, layout: Layout, out: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """(scale [T], channel weight [d]) of an RMS post-norm at the real sub-block output: norm(u) = s u w."""
    eps = next(float(getattr(norm, n)) for n in ("eps", "variance_epsilon") if hasattr(norm, n))
    scale = (out.float().pow(2).mean(-1) + eps).rsqrt().double()
    return scale, norm.weight.detach().double() + layout.post_norm_offset


def reference_layer(model, layout: Layout, layer: int, block: Block, order: int = 1) -> dict[str, torch.Tensor]:
    """The shares of one block's parts, from the block's tensors and the module weights (L1, or L2
    with `order` 2), and the parts z^h_{i<-j} themselves ("parts" [T_target, T_source, H, d])."""
    module = _get(model, layout.blocks)[layer]
    out_proj = _get(module, layout.out_proj)
    n_heads, n_tokens = block.probs.shape[0], block.x.shape[0]
    w_o = out_proj_slices(out_proj, n_heads)  # [H, hd, d]
    kv_of_head = torch.arange(n_heads) // (n_heads // block.values.shape[1])
    values = block.values[:, kv_of_head]  # [T, H, hd]
    # the reference must describe the real forward pass: each head's value mix is what W_O reads
    torch.testing.assert_close(torch.einsum("hij,jhe->ihe", block.probs, values).reshape(n_tokens, -1), block.mixed,
                               rtol=1e-4, atol=1e-4)
    head_out = torch.einsum("jhe,hed->jhd", values, w_o)  # [T_source, H, d]
    parts = block.probs.permute(1, 2, 0)[..., None] * head_out[None]  # [T_target, T_source, H, d]
    bias = torch.zeros(block.x.shape[-1], dtype=torch.float64) if out_proj.bias is None else out_proj.bias.double()
    bias_part = bias.expand(n_tokens, -1).detach()
    if layout.attn_post_norm:
        scale, weight = post_norm_frozen(_get(module, layout.attn_post_norm), layout, block.attn_out)
        parts = parts * (scale[:, None, None, None] * weight)
        bias_part = bias_part * scale[:, None] * weight
    torch.testing.assert_close(parts.sum((1, 2)) + bias_part, block.attn_update, rtol=1e-4, atol=1e-4)
    ffn = block.out - block.x - block.attn_update
    torch.testing.assert_close(ffn, block.ffn_update, rtol=1e-4, atol=1e-4)  # blocks add up
    def prox(p, whole):
        return proximity(p, whole, order)
    if layout.parallel:
        whole = block.out
        res, heads, ffn_share = normalised(prox(block.x, whole), prox(parts, whole[:, None, None]), prox(ffn, whole))
        return dict(attn_residual=res, heads=heads, ffn=ffn_share, ffn_residual=res, parts=parts)
    mid = block.x + block.attn_update
    res, heads = normalised(prox(block.x, mid), prox(parts, mid[:, None, None]))
    ffn_residual, ffn_share = normalised(prox(mid, block.out), prox(ffn, block.out))
    return dict(attn_residual=res, heads=heads, ffn=ffn_share, ffn_residual=ffn_residual, parts=parts)


def direct_logits(model, layout: Layout, updates: torch.Tensor, final: torch.Tensor) -> torch.Tensor:
    """[n, V]: updates [n, d] through the final norm, its scale frozen at the real final residual
    `final` [d], then the unembedding (no bias) and any logit scale (Cohere), before any soft-cap."""
    norm = _get(model, layout.final_norm)
    eps = next(float(getattr(norm, n)) for n in ("eps", "variance_epsilon") if hasattr(norm, n))
    if "RMS" not in type(norm).__name__:  # a LayerNorm centres first
        final, updates = final - final.mean(), updates - updates.mean(-1, keepdim=True)
    weight = norm.weight.detach().double() + layout.post_norm_offset
    normed = updates * (final.float().pow(2).mean() + eps).rsqrt().double() * weight
    unembedding = model.get_output_embeddings().weight.detach().double()  # [V, d]
    return normed @ unembedding.T * getattr(model.config, "logit_scale", 1.0)


def ffn_internals(model, layout: Layout, ids: list[int]) -> list[dict]:
    """Per block of one plain forward pass: the FFN's raw output [T, d] (before any post-norm) and
    either its neurons' activations [T, d_ff] (a dense FFN) or its experts' writes: for each position,
    {expert: (routing weight, weight * the expert's output [d])}, the shared expert under None
    (its gate, gate * its output). Each expert's write comes from the model's own experts module,
    run again with every other slot's routing weight set to 0."""
    found: list[dict] = [{} for _ in _get(model, layout.blocks)]
    handles = []

    def remember(seen: dict, key: str, value) -> None:  # a hook returning None leaves the module's output alone
        seen.setdefault(key, value.detach().reshape(-1, value.shape[-1]).clone() if key != "routed" else value)

    for layer, block in enumerate(_get(model, layout.blocks)):
        seen = found[layer]
        handles.append(_get(block, layout.ffn).register_forward_hook(
            lambda m, a, out, seen=seen: remember(seen, "raw", _first(out))))
        experts = getattr(block.mlp, "experts", None) if hasattr(block, "mlp") else None
        if experts is None:
            handles.append(_get(block, layout.ffn_out_proj).register_forward_pre_hook(
                lambda m, args, seen=seen: remember(seen, "acts", args[0])))
            continue
        handles.append(experts.register_forward_pre_hook(lambda m, args, seen=seen: remember(seen, "routed", args)))
        if hasattr(block.mlp, "shared_expert"):
            for name in ("shared_expert", "shared_expert_gate"):
                handles.append(getattr(block.mlp, name).register_forward_hook(
                    lambda m, a, out, seen=seen, name=name: remember(seen, name, out)))
    try:
        with torch.no_grad():
            model(torch.tensor([ids]))
    finally:
        for handle in handles:
            handle.remove()
    for block, seen in zip(_get(model, layout.blocks), found):
        if "routed" in seen:
            seen["experts"] = expert_writes(block.mlp.experts, *seen.pop("routed"), seen)
    return found


@torch.no_grad()
def expert_writes(experts, hidden, index, weights, seen) -> list[dict]:
    per_position = []
    for t in range(hidden.shape[0]):
        writes = {}
        for slot, expert in enumerate(index[t].tolist()):
            only = torch.zeros_like(weights[t:t + 1])
            only[0, slot] = weights[t, slot]
            writes[expert] = (float(weights[t, slot]), experts(hidden[t:t + 1], index[t:t + 1], only)[0].double())
        if "shared_expert" in seen:
            gate = torch.sigmoid(seen["shared_expert_gate"][t, 0])
            writes[None] = (float(gate), (gate * seen["shared_expert"][t]).double())
        per_position.append(writes)
    return per_position


def ffn_part_shares(writes: torch.Tensor, block: Block, position: int) -> tuple[torch.Tensor, torch.Tensor]:
    """(shares [n] of parts of the FFN update [n, d], residual's share) in the residual after the block,
    whose other part is everything else in it (out - the FFN update)."""
    whole = block.out[position]
    residual = whole - block.ffn_update[position]
    res, shares = normalised(proximity(residual, whole)[None], proximity(writes, whole)[None])
    return shares[0], res[0]


def through_post_norm(model, layout: Layout, layer: int, raw: torch.Tensor, position: int, writes: torch.Tensor):
    if not layout.ffn_post_norm:
        return writes
    scale, weight = post_norm_frozen(_get(_get(model, layout.blocks)[layer], layout.ffn_post_norm), layout, raw)
    return writes * scale[position] * weight


# -- the comparison --------------------------------------------------------------------------------


def assert_shares(run, layer: int, expected: dict, where: str) -> None:
    heads, attn_residual = run.attention_contributions(layer)
    ffn, ffn_residual = run.ffn_contributions(layer)
    got = dict(attn_residual=attn_residual, heads=heads, ffn=ffn, ffn_residual=ffn_residual)
    for key, value in got.items():
        torch.testing.assert_close(value.double(), expected[key], rtol=0, atol=1e-4,
                                   msg=lambda m, key=key: f"{where}, {key}: {m}")


def user_outputs(model, ids: list[int]) -> list[torch.Tensor]:
    """What the user's own code gets: logits, hidden states, and any attention probabilities."""
    with torch.no_grad():
        out = model(torch.tensor([ids]), output_hidden_states=True, output_attentions=True)
    return [out.logits, *out.hidden_states, *[a for a in out.attentions or () if a is not None]]


REAL = ("x", "out", "attn_out", "mixed", "attn_update", "ffn_update")  # Block's fields read from the user's model


@pytest.fixture(params=list(CASES))
def case(request):
    return request.param


def test_shares_match_an_independent_reference(case, monkeypatch):
    layout = CASES[case][0]
    user_model = fresh(case)
    # Falcon's probabilities are computed from the user's model itself (its eager path adds ALiBi twice)
    reference = user_model if layout.fused_falcon else eager_copy(user_model)
    model = lw.load_model(user_model, tokenizer=tiny.tokenizer())
    own_attention = user_model.config._attn_implementation
    for n_tokens in LENGTHS:
        ids = prompt_ids(n_tokens)
        before, logits = forward_blocks(user_model, layout, ids)
        blocks, _ = forward_blocks(reference, layout, ids, monkeypatch)
        for block, real in zip(blocks, before):  # the user's model (sdpa) did what the eager copy did
            torch.testing.assert_close(block.mixed, real.mixed, rtol=1e-4, atol=1e-4)
        own_outputs = user_outputs(user_model, ids)
        run = lw.analyze(model, ids)
        torch.testing.assert_close(run.logits.double(), logits, rtol=1e-5, atol=1e-5)
        # the logit lens at the top of the stack reads the model's own prediction (soft-caps, scales, biases)
        lens = run.logit_lens(len(before) - 1, n_tokens - 1, k=5)
        top = logits[-1].softmax(-1).topk(5)
        assert [x.probability for x in lens] == pytest.approx(top.values.tolist(), abs=1e-5)
        assert [x.token for x in lens] == [tiny.tokenizer().decode([i]) for i in top.indices.tolist()]
        l2 = lw.analyze(model, ids, distance="l2") if n_tokens == 7 else None  # the same formula with ||.||_2
        for layer, (block, real) in enumerate(zip(blocks, before)):
            block = dataclasses.replace(block, **{f: getattr(real, f) for f in REAL})  # eager's A and v, real rest
            expected = reference_layer(user_model, layout, layer, block)
            assert_shares(run, layer, expected, f"layer {layer}, T={n_tokens}")
            last, parts = n_tokens - 1, expected["parts"]
            for head in range(parts.shape[2]):  # each head's write, from one source and from all
                for source in (0, last):
                    torch.testing.assert_close(run.head_output(layer, head, last, source).double(),
                                               parts[last, source, head], rtol=1e-4, atol=1e-5)
                torch.testing.assert_close(run.head_output(layer, head, last).double(), parts[last, :, head].sum(0),
                                           rtol=1e-4, atol=1e-5)
            updates = torch.stack([block.attn_update[last], block.ffn_update[last]])
            torch.testing.assert_close(run.direct_logits(updates.float(), last).double(),
                                       direct_logits(user_model, layout, updates, before[-1].out[last]),
                                       rtol=1e-4, atol=1e-4)
            if l2 is not None:
                assert_shares(l2, layer, reference_layer(user_model, layout, layer, block, order=2),
                              f"L2, layer {layer}")
        # the user's model is still theirs: same attention, same outputs (logits, hidden states, probabilities)
        assert user_model.config._attn_implementation == own_attention
        torch.testing.assert_close(user_outputs(user_model, ids), own_outputs, rtol=0, atol=0)


# -- configurations the method cannot follow: refused, naming the option -----------------------------

REFUSED = {
    # post-LN (opt-350m): the residual stream is normalised after each block, not a sum of updates
    "do_layer_norm_before": build("OPTForCausalLM", "OPTConfig", vocab_size=tiny.VOCAB, max_position_embeddings=64,
                                  hidden_size=32, ffn_dim=40, num_hidden_layers=2, num_attention_heads=2,
                                  word_embed_proj_dim=32, do_layer_norm_before=False),
    "word_embed_proj_dim": build("OPTForCausalLM", "OPTConfig", vocab_size=tiny.VOCAB, max_position_embeddings=64,
                                 hidden_size=32, ffn_dim=40, num_hidden_layers=2, num_attention_heads=2,
                                 word_embed_proj_dim=16),
    # checkpoints fine-tuned before transformers 4.20.1: no final norm before the unembedding
    "_remove_final_layer_norm": build("OPTForCausalLM", "OPTConfig", vocab_size=tiny.VOCAB,
                                      max_position_embeddings=64, hidden_size=32, ffn_dim=40, num_hidden_layers=2,
                                      num_attention_heads=2, word_embed_proj_dim=32, _remove_final_layer_norm=True),
    # EmbeddingGemma-style attention: a token reads later tokens, so its parts are not the sources j <= i
    "use_bidirectional_attention": build("Gemma3ForCausalLM", "Gemma3TextConfig", **SMALL, num_attention_heads=4,
                                         num_key_value_heads=2, head_dim=8, query_pre_attn_scalar=8, sliding_window=3,
                                         use_bidirectional_attention=True,
                                         layer_types=["sliding_attention", "full_attention"]),
}


@pytest.mark.parametrize("option", list(REFUSED))
def test_configurations_the_method_cannot_follow_are_refused_by_name(option):
    with pytest.raises(lw.LmttError, match=option):
        lw.load_model(REFUSED[option]().eval(), tokenizer=tiny.tokenizer())


def test_neuron_and_expert_shares_match_an_independent_reference(case):
    layout = CASES[case][0]
    user_model = fresh(case)
    run = lw.analyze(lw.load_model(user_model, tokenizer=tiny.tokenizer()), prompt_ids(7))
    ids = run.input_ids.tolist()
    blocks, _ = forward_blocks(user_model, layout, ids)
    for layer, (block, inside) in enumerate(zip(blocks, ffn_internals(user_model, layout, ids))):
        module = _get(_get(user_model, layout.blocks)[layer], layout.ffn_out_proj) if "acts" in inside else None
        for position in range(len(ids)):
            where = f"layer {layer}, position {position}"
            if module is not None:  # neurons: a_n * W_out[n]; the output bias belongs to no part
                w_out = out_proj_slices(module, 1)[0]  # [d_ff, d]
                writes = inside["acts"][position].double()[:, None] * w_out
                writes = through_post_norm(user_model, layout, layer, inside["raw"].double(), position, writes)
                torch.testing.assert_close(writes.sum(0) + through_post_norm(
                    user_model, layout, layer, inside["raw"].double(), position,
                    torch.zeros(1) if module.bias is None else module.bias.double()), block.ffn_update[position],
                    rtol=1e-4, atol=1e-4)
                shares, residual = ffn_part_shares(writes, block, position)
                got, got_residual = run.neuron_shares(layer, position)
                torch.testing.assert_close(got.double(), shares, rtol=0, atol=1e-4, msg=where)
                torch.testing.assert_close(float(got_residual), float(residual), rtol=0, atol=1e-4, msg=where)
                continue
            written = inside["experts"][position]
            writes = torch.stack([through_post_norm(user_model, layout, layer, inside["raw"].double(), position, w)
                                  for _, w in written.values()])
            torch.testing.assert_close(writes.sum(0), block.ffn_update[position], rtol=1e-4, atol=1e-4)
            shares, _ = ffn_part_shares(writes, block, position)
            expected = {e: (weight, float(s)) for (e, (weight, _)), s in zip(written.items(), shares)}
            got = {x.expert: (x.weight, x.share) for x in run.expert_contributions(layer, position)}
            assert got.keys() == expected.keys(), where
            for e, (weight, share) in expected.items():
                assert got[e] == pytest.approx((weight, share), abs=1e-4), f"{where}, expert {e}"
