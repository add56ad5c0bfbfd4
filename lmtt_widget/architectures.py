"""One small adapter per model family: where the blocks, heads, norms and projections live.

Everything else in lmtt-widget speaks the method's language (residual, attention block, FFN
block, heads, neurons); this module maps it onto a family's module tree. Paths are dotted
attribute names, valid both on the transformers module and on its nnsight envoy.

To add a family: write a `Family(...)` below (the paths, how value vectors sit in the value
projection's output, the final norm's kind) and list its `model_type`s; the reconstruction
tests in tests/test_families.py tell whether it is right.
"""

from __future__ import annotations

import functools
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import torch

from .errors import LmttError


def _get(root: Any, path: str) -> Any:
    return functools.reduce(getattr, path.split("."), root)


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


@dataclass(frozen=True)
class Family:
    name: str
    model_types: tuple[str, ...]
    blocks: str  # the list of Transformer blocks, from the causal-LM module
    attention: str  # in a block; its output is (attn_out, attention_probabilities)
    value_proj: str  # in a block; the projection whose output holds the value vectors
    out_proj: str  # in a block; the attention output projection W_O
    ffn: str  # in a block; its output is the FFN block's update
    ffn_out_proj: str  # in a block; its input holds the neurons' activations
    final_norm: str
    norm_kind: str  # "rms" or "layer" (the final norm)
    values: Callable[[torch.Tensor, int, int, int], torch.Tensor]
    parallel: Callable[[Any], bool] = lambda config: False
    check: Callable[[Any], None] = lambda config: None

    def modules(self, root: Any, layer: int) -> dict[str, Any]:
        """The block's modules in the order the forward pass runs them (nnsight needs that)."""
        block = _get(root, self.blocks)[layer]
        return {
            "block": block,
            "value_proj": _get(block, self.value_proj),
            "out_proj": _get(block, self.out_proj),
            "attention": _get(block, self.attention),
            "ffn_out_proj": _get(block, self.ffn_out_proj),
            "ffn": _get(block, self.ffn),
        }

    def get(self, root: Any, what: str) -> Any:
        return _get(root, getattr(self, what))


def _opt_check(config: Any) -> None:
    if not getattr(config, "do_layer_norm_before", True):
        raise LmttError(
            "this OPT model normalises after each block (do_layer_norm_before=False, e.g. opt-350m): "
            "its residual stream is not a sum of block updates, so information flow routes do not apply"
        )
    if getattr(config, "word_embed_proj_dim", config.hidden_size) != config.hidden_size:
        raise LmttError("OPT models with project_in/project_out (word_embed_proj_dim != hidden_size) are not supported")


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
        norm_kind="layer",
        values=_values_gpt2,
    ),
    Family(
        name="llama",
        model_types=("llama", "mistral", "qwen2", "qwen3", "smollm3"),
        blocks="model.layers",
        attention="self_attn",
        value_proj="self_attn.v_proj",
        out_proj="self_attn.o_proj",
        ffn="mlp",
        ffn_out_proj="mlp.down_proj",
        final_norm="model.norm",
        norm_kind="rms",
        values=_values_separate,
    ),
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
        norm_kind="layer",
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
        norm_kind="layer",
        values=_values_separate,
        check=_opt_check,
    ),
)


def supported_model_types() -> list[str]:
    return [t for family in FAMILIES for t in family.model_types]


def family_of(model: torch.nn.Module) -> Family:
    """The adapter for a transformers causal LM, or a clear error saying what is supported."""
    model_type = getattr(getattr(model, "config", None), "model_type", None)
    for family in FAMILIES:
        if model_type in family.model_types:
            family.check(model.config)
            return family
    raise LmttError(
        f"model type {model_type!r} is not supported. Supported: {', '.join(supported_model_types())} "
        "(families: " + ", ".join(f.name for f in FAMILIES) + "). To add a family, write a Family "
        "adapter in lmtt_widget/architectures.py (module paths, value layout, final norm kind)."
    )


def out_proj_per_head(module: torch.nn.Module, n_heads: int, head_dim: int) -> torch.Tensor:
    """W_O as [H, head_dim, d]: the slice of the output projection that each head writes through."""
    return _weight_in_out(module).reshape(n_heads, head_dim, -1)


def w_o(hf_model, family: Family, shape: Shape, layer: int) -> torch.Tensor:
    """[H, head_dim, d]: the output projection's slice for each head of `layer`."""
    return out_proj_per_head(family.modules(hf_model, layer)["out_proj"], shape.n_heads, shape.head_dim)


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
    config: Any = model.config  # a transformers PretrainedConfig
    n_heads = config.num_attention_heads
    d_model = config.hidden_size
    head_dim = getattr(config, "head_dim", None) or d_model // n_heads
    return Shape(
        n_layers=len(family.get(model, "blocks")),
        n_heads=n_heads,
        n_kv_heads=getattr(config, "num_key_value_heads", None) or n_heads,
        head_dim=head_dim,
        d_model=d_model,
        d_vocab=config.vocab_size,
        n_ctx=getattr(config, "max_position_embeddings", None),
        parallel=family.parallel(config),
    )
