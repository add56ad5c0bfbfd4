"""One small adapter per model family: where the blocks, heads, norms and projections live.

Everything else in lmtt-widget speaks the method's language (residual, attention block, FFN
block, heads, neurons, experts); this module maps it onto a family's module tree. Paths are
dotted attribute names, valid both on the transformers module and on its nnsight envoy.

Supported: GPT-2; Llama (Llama 2/3, Mistral, Qwen2/3, SmolLM3); GPT-NeoX/Pythia; OPT; Gemma 2;
Gemma 3 (text models, and the text path of Gemma3ForConditionalGeneration); Phi-3; OLMo 2 and 3;
GPT-J; Falcon (parallel attention with multi-query, the new decoder architecture, the sequential
layout with ALiBi); Cohere and Cohere 2; and the mixtures of experts Mixtral, Qwen2-MoE,
Qwen3-MoE and OLMoE.

To add a family: write a `Family(...)` below (the paths; how value vectors sit in the value
projection's output; the kind of its norms; any norm after a sub-block; whether its blocks are
parallel; its experts if it has any) and list its `model_type`s; the reconstruction tests in
tests/test_families.py and tests/test_families_new.py tell whether it is right.

Where a family needs a decision of the method (design notes):

- Norms after a sub-block (Gemma 2/3's sandwich norms, OLMo 2/3's post-norms): what the block
  adds to the residual is norm(out), out the attention (or FFN) output. With its per-position
  scale frozen at the real value the norm is linear: norm(out)_i = s_i M(out_i) (+ its bias),
  s_i = 1 / rms(out_i) (RMSNorm; 1 / std for LayerNorm) and M the fixed channel map (centring
  for LayerNorm, then times the weight: Gemma's is 1 + weight). So each head-source part is
  z^h_{i<-j} = A^h_ij s_i v^h_j (W_O^h M): `w_o` folds M into W_O, the trace records s_i
  (`Capture.attn_scale`), and sum z + s_i M(b_O) is the real update. The FFN's update, its
  neurons' writes and its experts' outputs are scaled the same way (`Capture.ffn_scale`). The
  captured `attn_out` / `ffn_out` stay what is added to the residual, and the edit sites
  "attention_output" / "ffn_output" are that update (the norm's output).
- Parallel blocks (GPT-NeoX, GPT-J, Falcon's parallel and new decoder layouts, Cohere 1/2): one
  whole, the block's output, with the residual, every head-source part and the FFN update as parts.
- Mixtures of experts: the FFN block's update (the routed experts' weighted outputs plus any
  shared expert's gated output) is one part of the FFN block, as a dense FFN's update is;
  lmtt_widget.experts drills into it (routing weights, each expert's own output, the neurons
  inside an expert). A MoE layer has no layer-wide neurons: its neuron readouts refuse with a
  pointer to the expert-level ones. Dense layers of a MoE model (Qwen's `mlp_only_layers`) are
  ordinary FFNs.
- Attention soft-capping, sliding windows, ALiBi and clamped values only change what the model
  computes; the package reads what it really uses. Probabilities: from the same queries, keys and
  mask in the package's sdpa (a sliding window is in the mask); written by eager attention where
  sdpa has no soft-cap (soft-capped Gemma 2: `Family.trace_attention`); for Falcon, whose
  attention is a class of its own, computed from its queries, keys and mask (which carries ALiBi)
  under its sdpa path, or read from its eager output where the user's model runs eager
  (`Family.probs_from_inputs`; transformers' two paths differ for ALiBi models: eager adds ALiBi
  twice). Values: clamped as the model clamps them (OLMoE's `clip_qkv`: `Family.value_clamp`).
- Final logit soft-capping (Gemma 2, Gemma 3 text) and Cohere's logit scale apply where the
  model applies them: the logits and the logit lens go through them. Direct logit effects are
  linear in the update, so they include the logit scale and stop before a soft-cap (they are
  effects on the soft-cap's argument).
"""

from __future__ import annotations

import functools
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import torch

from .attention import NAME as PACKAGE_SDPA
from .attention import AttentionProbs, check_gives_probs, in_traces
from .errors import LmttError


def _get(root: Any, path: str) -> Any:
    return functools.reduce(getattr, path.split("."), root)


def _has(root: Any, path: str) -> bool:
    try:
        _get(root, path)
    except AttributeError:
        return False
    return True


def text_config(model: torch.nn.Module) -> Any:
    """The config of a causal LM's text model (a multimodal model's `text_config`, else its own)."""
    config: Any = model.config  # a transformers PretrainedConfig
    return config.get_text_config()


# -- where value vectors sit in the value projection's output [T, width] -> [T, KV, head_dim] ---------

def _values_separate(proj_out: torch.Tensor, n_heads: int, n_kv: int, head_dim: int) -> torch.Tensor:
    # a v_proj of its own: [T, n_kv * head_dim]
    return proj_out.reshape(-1, n_kv, head_dim)


def _values_gpt2(proj_out: torch.Tensor, n_heads: int, n_kv: int, head_dim: int) -> torch.Tensor:
    # c_attn: [T, 3d] = q | k | v
    d = n_heads * head_dim
    return proj_out.reshape(-1, 3 * d)[:, 2 * d :].reshape(-1, n_heads, head_dim)


def _values_neox(proj_out: torch.Tensor, n_heads: int, n_kv: int, head_dim: int) -> torch.Tensor:
    # query_key_value: per head, q | k | v of head_dim each
    return proj_out.reshape(-1, n_heads, 3 * head_dim)[..., 2 * head_dim :]


def _values_after_qk(proj_out: torch.Tensor, n_heads: int, n_kv: int, head_dim: int) -> torch.Tensor:
    # Phi-3's qkv_proj: [T, (H + 2 KV) head_dim] = q (H heads) | k (KV heads) | v (KV heads)
    return proj_out[:, (n_heads + n_kv) * head_dim :].reshape(-1, n_kv, head_dim)


def _values_per_kv_group(proj_out: torch.Tensor, n_heads: int, n_kv: int, head_dim: int) -> torch.Tensor:
    # Falcon's query_key_value: per KV head, its H / KV query heads, then k, then v (multi-query:
    # one group; the classic layout: one query head per group)
    return proj_out.reshape(-1, n_kv, n_heads // n_kv + 2, head_dim)[:, :, -1]


# the same, as code on an expression of the projection's output [T, width]
_VALUES_CODE: dict[Callable[..., torch.Tensor], str] = {
    _values_separate: "{out}.reshape(T, {kv}, {hd})",
    _values_gpt2: "{out}[:, {two_d}:].reshape(T, {h}, {hd})",
    _values_neox: "{out}.reshape(T, {h}, 3 * {hd})[..., {two_hd}:]",
    _values_after_qk: "{out}[:, {qk}:].reshape(T, {kv}, {hd})",
    _values_per_kv_group: "{out}.reshape(T, {kv}, {per_group}, {hd})[:, :, -1]",
}


# -- norms -----------------------------------------------------------------------------------------

@dataclass(frozen=True)
class Norm:
    """How a family's norms compute: norm(x) = scale(x) * M(x) (+ bias), RMSNorm (scale 1 / rms(x))
    or LayerNorm (scale 1 / std(x), M centres x first); M then multiplies by the weight plus
    `weight_offset` (Gemma's RMSNorm multiplies by 1 + weight). Frozen at a real input's scale,
    the norm is the linear map scale * M."""

    kind: str  # "rms" or "layer"
    weight_offset: float = 0.0

    def scale(self, x: torch.Tensor, eps: float) -> torch.Tensor:
        """[...] float32: the per-position scale the norm applies to x [..., d]."""
        x = x.float()
        if self.kind == "layer":
            x = x - x.mean(-1, keepdim=True)
        return (x.pow(2).mean(-1) + eps).rsqrt()

    def channel_map(self, u: torch.Tensor, weight: torch.Tensor | None) -> torch.Tensor:
        """M(u) float32: the norm's linear map at scale 1, on the last axis of u [..., d]."""
        u = u.float()
        if self.kind == "layer":
            u = u - u.mean(-1, keepdim=True)
        if weight is None:
            return u
        return u * (weight.detach().float().to(u.device) + self.weight_offset)


def norm_eps(norm: torch.nn.Module) -> float:
    for name in ("variance_epsilon", "eps", "epsilon"):
        if hasattr(norm, name):
            return float(getattr(norm, name))
    raise AttributeError(f"cannot find the epsilon of {type(norm).__name__}")


# -- mixtures of experts ---------------------------------------------------------------------------

@dataclass(frozen=True)
class Experts:
    """Where a sparse FFN block's parts live, in a block (see lmtt_widget.experts)."""

    router: str = "mlp.gate"  # output (router logits, routing weights [T, k], selected experts [T, k])
    experts: str = "mlp.experts"  # gate_up_proj [E, 2 d_ff, d], down_proj [E, d, d_ff], _apply_gate
    input_norm: str = "post_attention_layernorm"  # the norm whose output the FFN block reads
    shared: str | None = None  # a dense MLP that every token goes through (Qwen2-MoE) ...
    shared_gate: str | None = None  # ... scaled by sigmoid(this linear map of the FFN input)


# -- families ---------------------------------------------------------------------------------------

@dataclass(frozen=True)
class Family:
    name: str
    model_types: tuple[str, ...]
    blocks: str  # the list of Transformer blocks, from the causal-LM module
    attention: str  # in a block; its output is (attn_out, attention_probabilities)
    value_proj: str  # in a block; the projection whose output holds the value vectors
    out_proj: str  # in a block; the attention output projection W_O
    ffn: str  # in a block; its output is the FFN's output (its update, unless ffn_post_norm)
    ffn_out_proj: str  # in a dense block; its input holds the neurons' activations
    final_norm: str
    norm: Norm  # the kind of the family's norms (the final norm and any post-norm)
    values: Callable[[torch.Tensor, int, int, int], torch.Tensor]
    attn_post_norm: str | None = None  # in a block; a norm between the attention output and the residual
    ffn_post_norm: str | None = None  # in a block; a norm between the FFN output and the residual
    experts: Experts | None = None  # for mixtures of experts; blocks without them are dense
    parallel: Callable[[Any], bool] = lambda config: False
    kv_heads: Callable[[Any], int | None] = lambda config: None  # None: num_key_value_heads, else H
    value_clamp: Callable[[Any], float | None] = lambda config: None  # values clamped to [-c, c]
    # the attention the package's traces run: PACKAGE_SDPA (sdpa with probabilities computed when
    # read), "eager" (where only eager gives the probabilities the model uses) or None (the model's
    # own: a family whose attention is its own class, not transformers' attention interface)
    trace_attention: Callable[[Any], str | None] = lambda config: PACKAGE_SDPA
    # for such a family: its probabilities under sdpa (which returns none), from the attention
    # module's keyword inputs, the value projection's output [T, width] and the Shape
    probs_from_inputs: Callable[[dict, torch.Tensor, Any], Any] | None = None
    logit_scale: Callable[[Any], float] = lambda config: 1.0  # the logits are lm_head(x) times this
    logit_softcap: Callable[[Any], float | None] = lambda config: None  # then c * tanh(logits / c)
    check: Callable[[Any], None] = lambda config: None

    def modules(self, root: Any, layer: int) -> dict[str, Any]:
        """The block's modules in the order the forward pass runs them (nnsight needs that).
        "attn_update" / "ffn_update" are the modules whose output is added to the residual (a
        post-norm, or the sub-block itself); "attn_post_norm" / "ffn_post_norm" are None without
        one. In a mixture-of-experts block "ffn_out_proj" is None and "router" is the router;
        in a dense block "router" is None."""
        block = _get(root, self.blocks)[layer]
        experts = self.experts if self.is_moe(block) else None
        attn_post = None if self.attn_post_norm is None else _get(block, self.attn_post_norm)
        ffn_post = None if self.ffn_post_norm is None else _get(block, self.ffn_post_norm)
        attention, ffn = _get(block, self.attention), _get(block, self.ffn)
        return {
            "block": block,
            "value_proj": _get(block, self.value_proj),
            "out_proj": _get(block, self.out_proj),
            "attention": attention,
            "attn_post_norm": attn_post,
            "attn_update": attention if attn_post is None else attn_post,
            "router": None if experts is None else _get(block, experts.router),
            "ffn_out_proj": None if experts else _get(block, self.ffn_out_proj),
            "ffn": ffn,
            "ffn_post_norm": ffn_post,
            "ffn_update": ffn if ffn_post is None else ffn_post,
        }

    def get(self, root: Any, what: str) -> Any:
        return _get(root, getattr(self, what))

    def is_moe(self, block: Any) -> bool:
        """Whether a block's FFN is a mixture of experts."""
        return self.experts is not None and _has(block, self.experts.experts)

    def value_vectors(self, proj_out: torch.Tensor, shape: Shape, clamp: float | None) -> torch.Tensor:
        """[T, KV, head_dim]: the value vectors in the value projection's output [T, width], clamped
        to [-clamp, clamp] where the family clamps them (`value_clamp(config)`)."""
        values = self.values(proj_out, shape.n_heads, shape.n_kv_heads, shape.head_dim)
        # a copy first: the model clamps the projection's output in place after this reads it, which
        # would break a backward pass through our clamp (an edge ablation's term, under effects)
        return values if clamp is None else values.clone().clamp(-clamp, clamp)

    def values_code(self, proj_out: str, shape: Shape, clamp: float | None) -> str:
        """`value_vectors` as code, on the expression `proj_out` of the projection's output [T, width]."""
        h, kv, hd = shape.n_heads, shape.n_kv_heads, shape.head_dim
        code = _VALUES_CODE[self.values].format(out=proj_out, h=h, kv=kv, hd=hd, two_d=2 * h * hd, two_hd=2 * hd,
                                                qk=(h + kv) * hd, per_group=h // kv + 2)
        return code if clamp is None else f"{code}.clamp({-clamp!r}, {clamp!r})"

    def final_logits(self, logits: torch.Tensor, config: Any) -> torch.Tensor:
        """The model's logits from lm_head's output: times the logit scale, then soft-capped."""
        scale, cap = self.logit_scale(config), self.logit_softcap(config)
        if scale != 1.0:
            logits = logits * scale
        return logits if cap is None else cap * torch.tanh(logits / cap)


def _opt_check(config: Any) -> None:
    if not getattr(config, "do_layer_norm_before", True):
        raise LmttError(
            "this OPT model normalises after each block (do_layer_norm_before=False, e.g. opt-350m): "
            "its residual stream is not a sum of block updates, so information flow routes do not apply"
        )
    if getattr(config, "_remove_final_layer_norm", False):
        raise LmttError("OPT models without a final layer norm (_remove_final_layer_norm=True, checkpoints fine-tuned "
                        "before transformers 4.20.1) are not supported: the logit lens reads the residual stream "
                        "through the final norm")
    if getattr(config, "word_embed_proj_dim", config.hidden_size) != config.hidden_size:
        raise LmttError("OPT models with project_in/project_out (word_embed_proj_dim != hidden_size) are not supported")


def _falcon_kv_heads(config: Any) -> int:
    if config.new_decoder_architecture:
        return config.num_kv_heads
    return 1 if config.multi_query else config.num_attention_heads


def _softcapped_is_eager(config: Any) -> str:
    """sdpa has no soft-cap: soft-capped attention runs eager attention, which writes its probabilities."""
    return "eager" if getattr(config, "attn_logit_softcapping", None) is not None else PACKAGE_SDPA


def _falcon_probs(inputs: dict, fused: torch.Tensor, shape: Shape) -> AttentionProbs:
    """Falcon's probabilities under its sdpa path: softmax(q k^T / sqrt(head_dim) + mask), with the
    queries and keys of its fused projection [T, width] (rotated unless it uses ALiBi) and the mask
    it is given (carrying ALiBi where the model uses it). Its eager path returns its own; it adds
    ALiBi twice (into the logits and through the mask), so the two differ for ALiBi models."""
    from transformers.models.falcon.modeling_falcon import apply_rotary_pos_emb

    per_group = shape.n_heads // shape.n_kv_heads
    qkv = fused.reshape(-1, shape.n_kv_heads, per_group + 2, shape.head_dim)
    query = qkv[:, :, :per_group].reshape(-1, shape.n_heads, shape.head_dim).transpose(0, 1)[None]  # [1, H, T, hd]
    key = qkv[:, :, per_group].transpose(0, 1)[None]  # [1, KV, T, hd]
    if inputs.get("alibi") is None:
        query, key = apply_rotary_pos_emb(query, key, *inputs["position_embeddings"])
    return AttentionProbs(query, key, inputs.get("attention_mask"), shape.head_dim ** -0.5, groups=per_group)


def _causal_check(config: Any) -> None:
    if getattr(config, "use_bidirectional_attention", False):
        raise LmttError(
            "this model's attention is bidirectional (use_bidirectional_attention=True, e.g. EmbeddingGemma): a "
            "token reads later tokens, so its residual stream is not built from the sources j <= i that "
            "information flow routes follow; use a causal model (use_bidirectional_attention=False)"
        )


def _final_softcap(config: Any) -> float | None:
    return getattr(config, "final_logit_softcapping", None)


_LLAMA_PATHS: dict[str, Any] = dict(blocks="model.layers", attention="self_attn", value_proj="self_attn.v_proj",
                    out_proj="self_attn.o_proj", ffn="mlp", ffn_out_proj="mlp.down_proj", final_norm="model.norm")
_SANDWICH: dict[str, Any] = dict(attn_post_norm="post_attention_layernorm", ffn_post_norm="post_feedforward_layernorm")
_GEMMA: dict[str, Any] = dict(norm=Norm("rms", weight_offset=1.0), values=_values_separate,
                              trace_attention=_softcapped_is_eager, check=_causal_check, **_SANDWICH)

FAMILIES: tuple[Family, ...] = (
    Family(
        name="gpt2",
        model_types=("gpt2",),
        blocks="transformer.h",
        attention="attn",
        value_proj="attn.c_attn",
        out_proj="attn.c_proj",
        ffn="mlp",
        ffn_out_proj="mlp.c_proj",
        final_norm="transformer.ln_f",
        norm=Norm("layer"),
        values=_values_gpt2,
    ),
    Family(name="llama", model_types=("llama", "mistral", "qwen2", "qwen3", "smollm3"), **_LLAMA_PATHS,
           norm=Norm("rms"), values=_values_separate),
    Family(
        name="gpt_neox",
        model_types=("gpt_neox",),
        blocks="gpt_neox.layers",
        attention="attention",
        value_proj="attention.query_key_value",
        out_proj="attention.dense",
        ffn="mlp",
        ffn_out_proj="mlp.dense_4h_to_h",
        final_norm="gpt_neox.final_layer_norm",
        norm=Norm("layer"),
        values=_values_neox,
        parallel=lambda config: bool(getattr(config, "use_parallel_residual", True)),
    ),
    Family(
        name="opt",
        model_types=("opt",),
        blocks="model.decoder.layers",
        attention="self_attn",
        value_proj="self_attn.v_proj",
        out_proj="self_attn.out_proj",
        ffn="fc2",
        ffn_out_proj="fc2",
        final_norm="model.decoder.final_layer_norm",
        norm=Norm("layer"),
        values=_values_separate,
        check=_opt_check,
    ),
    Family(name="gemma", model_types=("gemma2", "gemma3_text"), **_LLAMA_PATHS, **_GEMMA,
           logit_softcap=_final_softcap),
    # Gemma3ForConditionalGeneration: the text path (the language model inside); it applies no final soft-cap
    Family(name="gemma3_multimodal", model_types=("gemma3",), **_GEMMA,
           **{**_LLAMA_PATHS, "blocks": "model.language_model.layers", "final_norm": "model.language_model.norm"}),
    Family(name="phi3", model_types=("phi3",), **{**_LLAMA_PATHS, "value_proj": "self_attn.qkv_proj"},
           norm=Norm("rms"), values=_values_after_qk),
    Family(name="olmo2", model_types=("olmo2", "olmo3"), **_LLAMA_PATHS, **_SANDWICH, norm=Norm("rms"),
           values=_values_separate),
    Family(
        name="gptj",
        model_types=("gptj",),
        blocks="transformer.h",
        attention="attn",
        value_proj="attn.v_proj",
        out_proj="attn.out_proj",
        ffn="mlp",
        ffn_out_proj="mlp.fc_out",
        final_norm="transformer.ln_f",
        norm=Norm("layer"),
        values=_values_separate,
        parallel=lambda config: True,
    ),
    Family(
        name="falcon",
        model_types=("falcon",),
        blocks="transformer.h",
        attention="self_attention",
        value_proj="self_attention.query_key_value",
        out_proj="self_attention.dense",
        ffn="mlp",
        ffn_out_proj="mlp.dense_4h_to_h",
        final_norm="transformer.ln_f",
        norm=Norm("layer"),
        values=_values_per_kv_group,
        parallel=lambda config: bool(config.new_decoder_architecture or config.parallel_attn),
        kv_heads=_falcon_kv_heads,
        trace_attention=lambda config: None,  # its own class, not transformers' attention interface
        probs_from_inputs=_falcon_probs,
    ),
    Family(name="cohere", model_types=("cohere", "cohere2"), **_LLAMA_PATHS, norm=Norm("layer"),
           values=_values_separate, parallel=lambda config: True, logit_scale=lambda config: config.logit_scale),
    Family(name="mixtral", model_types=("mixtral", "qwen3_moe"), **_LLAMA_PATHS, norm=Norm("rms"),
           values=_values_separate, experts=Experts()),
    Family(name="qwen2_moe", model_types=("qwen2_moe",), **_LLAMA_PATHS, norm=Norm("rms"), values=_values_separate,
           experts=Experts(shared="mlp.shared_expert", shared_gate="mlp.shared_expert_gate")),
    Family(name="olmoe", model_types=("olmoe",), **_LLAMA_PATHS, norm=Norm("rms"), values=_values_separate,
           experts=Experts(), value_clamp=lambda config: config.clip_qkv),
)


def supported_model_types() -> list[str]:
    return [t for family in FAMILIES for t in family.model_types]


def family_for(model_type: str | None) -> Family | None:
    """The adapter for a config's `model_type`, or None."""
    return next((family for family in FAMILIES if model_type in family.model_types), None)


def family_of(model: torch.nn.Module) -> Family:
    """The adapter for a transformers causal LM, or a clear error saying what is supported."""
    model_type = getattr(getattr(model, "config", None), "model_type", None)
    family = family_for(model_type)
    if family is not None:
        family.check(text_config(model))
        return family
    raise LmttError(
        f"model type {model_type!r} is not supported. Supported model types: {', '.join(supported_model_types())} "
        "(families: " + ", ".join(f.name for f in FAMILIES) + "). To add a family, write a Family adapter in "
        "lmtt_widget/architectures.py (module paths, where the value vectors sit, the norms' kind, any norm "
        "after a sub-block, parallel blocks, experts); tests/test_families_new.py checks that its parts add up."
    )


def check_attention(model: torch.nn.Module, family: Family) -> None:
    """An LmttError, with the fix, where the package's traces of the model would give no
    probabilities, or not those the model uses."""
    if family.probs_from_inputs is not None:
        return  # read from its output (eager) or computed from its inputs (sdpa)
    check_gives_probs(model)
    implementation = in_traces(model)
    if family.trace_attention(text_config(model)) == "eager" and implementation != "eager":
        raise LmttError(f"this {family.name} model's attention gives the probabilities it uses only under eager "
                        f"attention (its traces would run {implementation!r}): load it with lw.load_model, or create "
                        "it with attn_implementation='eager'")


def out_proj_per_head(module: torch.nn.Module, n_heads: int, head_dim: int) -> torch.Tensor:
    """W_O as [H, head_dim, d]: the slice of the output projection that each head writes through."""
    return _weight_in_out(module).reshape(n_heads, head_dim, -1)


def w_o(hf_model, family: Family, shape: Shape, layer: int) -> torch.Tensor:
    """[H, head_dim, d]: what each head of `layer` writes into the residual per unit of its value
    mix: its slice of the output projection W_O^h, followed by the linear map M of a norm after
    the attention block where the family has one (that norm's per-position scale,
    `Capture.attn_scale`, multiplies on top; see the module's design notes)."""
    modules = family.modules(hf_model, layer)
    return post_norm_map(family, modules["attn_post_norm"],
                         out_proj_per_head(modules["out_proj"], shape.n_heads, shape.head_dim))


def post_norm_map(family: Family, post_norm, writes: torch.Tensor, scale: torch.Tensor | None = None) -> torch.Tensor:
    """Writes [..., d] into a sub-block's output as the residual receives them: through the norm
    after it (None: none), frozen at `scale` (None: the linear map alone, at scale 1)."""
    if post_norm is None:
        return writes
    mapped = family.norm.channel_map(writes, getattr(post_norm, "weight", None))
    return mapped if scale is None else mapped * scale.to(mapped.device)


def _weight_in_out(module: torch.nn.Module) -> torch.Tensor:
    """A projection's weight as [in, out], for nn.Linear ([out, in]) and GPT-2's Conv1D ([in, out])."""
    weight = module.weight.detach()  # type: ignore[operator]  # torch types module attributes as Tensor | Module
    return weight if type(module).__name__ == "Conv1D" else weight.T


def ffn_out_matrix(module: torch.nn.Module) -> torch.Tensor:
    """The FFN output projection as [d_ff, d]: row n is what neuron n writes, per unit activation."""
    return _weight_in_out(module)


@dataclass(frozen=True)
class Shape:
    n_layers: int
    n_heads: int
    n_kv_heads: int
    head_dim: int
    d_model: int
    d_vocab: int
    n_ctx: int | None
    parallel: bool


def shape_of(model: torch.nn.Module, family: Family) -> Shape:
    config: Any = text_config(model)  # a transformers PretrainedConfig
    n_heads = config.num_attention_heads
    d_model = config.hidden_size
    head_dim = getattr(config, "head_dim", None) or d_model // n_heads
    n_kv = family.kv_heads(config) or getattr(config, "num_key_value_heads", None) or n_heads
    return Shape(
        n_layers=len(family.get(model, "blocks")),
        n_heads=n_heads,
        n_kv_heads=n_kv,
        head_dim=head_dim,
        d_model=d_model,
        d_vocab=config.vocab_size,
        n_ctx=getattr(config, "max_position_embeddings", None),
        parallel=family.parallel(config),
    )
