"""The small edits that ablations and patches are made of, and where a head sits in the tensors."""

from __future__ import annotations

import torch

from ..tracing import Edit


def put(site: str, layer: int, index, value) -> Edit:
    """Set tensor[index] at `site` to `value`: a number, or a tensor (cast to the tensor's dtype and device)."""
    def apply(x: torch.Tensor, state) -> None:
        x[index] = value.to(x) if isinstance(value, torch.Tensor) else value
    return Edit(site, layer, apply)


def unread(layer: int, index) -> Edit:
    """Set the captured probabilities [H, T, T] at `index` to 0: an activation replaced by a
    constant reads no source of this prompt, so the routes show no attention edge through it."""
    def apply(probs: torch.Tensor, state) -> None:
        probs[index] = 0.0
    return Edit("probs", layer, apply)


def rows(positions) -> slice | list[int]:
    """The index of `positions` (None: every position)."""
    return slice(None) if positions is None else list(positions)


def head_columns(shape, head: int) -> slice:
    """Head `head`'s columns in the output projection's input [T, H * head_dim]."""
    return slice(head * shape.head_dim, (head + 1) * shape.head_dim)


def kv_head(shape, head: int) -> int:
    """The key-value head that query head `head` reads (grouped-query attention shares them)."""
    return head // (shape.n_heads // shape.n_kv_heads)


def head_mix(run, layer: int, head: int, targets=slice(None)) -> torch.Tensor:
    """[T, head_dim] (or [head_dim] for one target) float32: head `head`'s slice of the output
    projection's input in `run`, sum_s A^h_ts v^h_s, at `targets`."""
    values = run.capture.values[layer][:, kv_head(run.shape, head)].float()  # [T, hd]
    return run.attention_pattern(layer)[head, targets].float() @ values
