"""The single nnsight trace: one forward pass that captures what the method needs, per layer."""

from __future__ import annotations

from dataclasses import dataclass

import nnsight
import torch

from .architectures import Family, Shape


@dataclass
class Capture:
    """What one forward pass leaves behind (batch dimension dropped; model dtype and device)."""

    resid: list[torch.Tensor]  # L+1 x [T, d]: resid[0] the embeddings, resid[l+1] after block l
    attn_out: list[torch.Tensor]  # L x [T, d]: the attention block's update (output bias included)
    ffn_out: list[torch.Tensor]  # L x [T, d]: the FFN block's update
    probs: list[torch.Tensor]  # L x [H, T, T]: attention probabilities, target x source
    values: list[torch.Tensor]  # L x [T, KV, head_dim]: value vectors of the KV heads (bias included)
    final_normed: torch.Tensor  # [T, d]: the final norm's output, what the unembedding reads


def _first(value):
    return value[0] if isinstance(value, tuple) else value


def trace(model, family: Family, shape: Shape, input_ids: torch.Tensor, edits=None) -> Capture:
    """Run the model once on `input_ids` [T] and capture residuals, updates, probabilities, values.

    `edits` (None: the plain forward pass) change the forward pass; lmtt_widget.interventions
    defines them. Not yet applied: see issue #4.
    """
    n_tokens = input_ids.shape[0]

    def rows(tensor: torch.Tensor) -> torch.Tensor:  # [1, T, ...] or [T, ...] -> [T, ...]
        return tensor.reshape(n_tokens, *tensor.shape[-1:])

    with torch.no_grad(), model.trace(input_ids[None]):
        resid, attn_out, ffn_out = nnsight.save([]), nnsight.save([]), nnsight.save([])
        probs, values = nnsight.save([]), nnsight.save([])
        for layer in range(shape.n_layers):
            modules = family.modules(model, layer)
            if layer == 0:
                resid.append(rows(_first(modules["block"].input)))
            value_proj = rows(modules["value_proj"].output)
            values.append(family.values(value_proj, shape.n_heads, shape.n_kv_heads, shape.head_dim))
            attention = modules["attention"].output
            attn_out.append(rows(attention[0]))
            probs.append(attention[1][0])
            ffn_out.append(rows(modules["ffn"].output))
            resid.append(rows(_first(modules["block"].output)))
        final_normed = rows(family.get(model, "final_norm").output).save()
    def plain(tensors):
        return [t.detach() for t in tensors]

    return Capture(plain(resid), plain(attn_out), plain(ffn_out), plain(probs), plain(values), final_normed.detach())
