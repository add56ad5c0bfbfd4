"""Proximity importances (Ferrando & Voita, 2024) and threshold-and-renormalise.

A whole `y` is a sum of parts `p_k`; part k's importance is
`prox(p_k, y) = max(0, ||y|| - ||y - p_k||)`, and its share is prox over the sum of all prox.
Everything here works in float32, whatever the model's dtype.
"""

from __future__ import annotations

import torch

from .errors import LmttError

DISTANCES = {"l1": 1, "l2": 2}
DEFAULT_BUDGET_BYTES = 256 * 2**20


def distance_order(distance: str) -> int:
    try:
        return DISTANCES[distance]
    except KeyError:
        raise LmttError(f"distance must be one of {sorted(DISTANCES)}, got {distance!r}") from None


def proximity(parts: torch.Tensor, whole: torch.Tensor, p: int) -> torch.Tensor:
    """prox of each part: parts [..., n, d], whole [..., d] -> [..., n]."""
    whole_norm = torch.linalg.vector_norm(whole, ord=p, dim=-1, keepdim=True)
    return (whole_norm - torch.linalg.vector_norm(whole.unsqueeze(-2) - parts, ord=p, dim=-1)).clamp_min(0)


def head_source_proximity(
    whole: torch.Tensor,  # [T, d]: the whole at each target position
    probs: torch.Tensor,  # [H, T, T]: attention probabilities, target x source
    head_out: torch.Tensor,  # [T, H, d]: v_j^h W_O^h, each head's write for a unit weight on source j
    p: int,
    budget_bytes: int = DEFAULT_BUDGET_BYTES,
) -> torch.Tensor:
    """prox of every part z^h_{i<-j} = A^h_ij * head_out[j, h] for the whole at i: [T_target, T_source, H].

    Targets are taken in chunks so that the [chunk, sources, H, d] differences stay under
    `budget_bytes`; only causal sources (j <= i) are computed, the rest are exactly 0.
    """
    n_tokens, n_heads, d = head_out.shape
    whole = whole.float()
    head_out = head_out.float()
    probs_ts = probs.float().permute(1, 2, 0)  # [T, T, H]
    whole_norm = torch.linalg.vector_norm(whole, ord=p, dim=-1)  # [T]
    prox = torch.zeros(n_tokens, n_tokens, n_heads)
    # the differences tensor plus one temporary of its size, for a chunk against all sources
    chunk = max(1, budget_bytes // (2 * n_tokens * n_heads * d * 4))
    for start in range(0, n_tokens, chunk):
        stop = min(start + chunk, n_tokens)
        diff = whole[start:stop, None, None, :] - probs_ts[start:stop, :stop, :, None] * head_out[None, :stop]
        dist = torch.linalg.vector_norm(diff, ord=p, dim=-1)  # [chunk, stop, H]
        del diff
        prox[start:stop, :stop] = (whole_norm[start:stop, None, None] - dist).clamp_min(0)
    causal = torch.ones(n_tokens, n_tokens, dtype=torch.bool).tril()
    return prox * causal[:, :, None]


def shares(*prox: torch.Tensor, residual: torch.Tensor) -> tuple[tuple[torch.Tensor, ...], torch.Tensor]:
    """Normalise the prox of one whole's parts into shares that sum to 1 per target.

    `prox` are tensors [T, ...] of non-residual parts; `residual` [T]. Where every prox is 0
    (a degenerate whole) the residual gets all of the weight.
    """
    total = residual + sum(part.flatten(1).sum(1) for part in prox)  # [T]
    degenerate = total <= 0
    safe = torch.where(degenerate, torch.ones_like(total), total)
    scaled = tuple(part / safe.view(-1, *[1] * (part.dim() - 1)) for part in prox)
    scaled = tuple(torch.where(degenerate.view(-1, *[1] * (s.dim() - 1)), torch.zeros_like(s), s) for s in scaled)
    res = torch.where(degenerate, torch.ones_like(residual), residual / safe)
    return scaled, res


def threshold_renormalize(
    parts: torch.Tensor, residual: torch.Tensor, threshold: float
) -> tuple[torch.Tensor, torch.Tensor]:
    """Within each whole (a row), zero the shares not above `threshold` and renormalise the rest.

    parts [T, ...] and residual [T] are the shares of each row's parts. If nothing survives in
    a row, its residual gets all of the weight.
    """
    kept_parts = torch.where(parts > threshold, parts, torch.zeros_like(parts))
    kept_residual = torch.where(residual > threshold, residual, torch.zeros_like(residual))
    (renormed,), res = shares(kept_parts, residual=kept_residual)
    return renormed, res
