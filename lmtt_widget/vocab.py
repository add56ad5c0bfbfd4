"""Reading residual nodes and component writes through the vocabulary.

- logit lens: `W_U · norm_final(x)` of a residual node, with rank changes along the stream;
- direct logit effect of an update u (block, head, neuron): `W_U · N(u)`, where N is the
  final norm linearised with the per-token scale that the real final residual has
  (RMSNorm: gamma * u / s; LayerNorm: gamma * (u - mean u) / s; Gemma's gamma is 1 + weight).
  Biases belong to no update.

Logits are what the model computes from the final norm's output: the unembedding, times a
family's logit scale (Cohere), then its final soft-cap (Gemma 2, Gemma 3 text models), so the
logit lens of the last residual gives the model's own logits. Direct logit effects are linear in
the update: they include the logit scale and stop before the soft-cap (an effect on its argument).
"""

from __future__ import annotations

from collections.abc import Callable
from typing import NamedTuple

import torch

from .architectures import Family, norm_eps, text_config


class LensToken(NamedTuple):
    token: str
    probability: float
    rank: int  # 0-based rank at this node
    rank_change: int | None  # rank at the previous node minus rank here (> 0: moved up); None at the embedding


class LogitEffect(NamedTuple):
    promoted: list[tuple[str, float]]  # largest direct logit effects first
    suppressed: list[tuple[str, float]]  # most negative first


def unembed(hf_model, family: Family, normed: torch.Tensor) -> torch.Tensor:
    """Logits of already-normalised residuals [..., d] -> [..., V], as the model computes them."""
    head = hf_model.get_output_embeddings()
    with torch.no_grad():
        return family.final_logits(head(normed.to(head.weight.device, head.weight.dtype)), text_config(hf_model))


@torch.no_grad()
def top_predictions(hf_model, family: Family, normed: torch.Tensor, k: int,
                    budget_bytes: int) -> tuple[torch.Tensor, torch.Tensor]:
    """The model's top-k next tokens after each of the already-normalised residuals `normed`
    [N, d]: (probabilities [N, k], ids [N, k]), from logits made a slice of rows at a time (about
    `budget_bytes` of them at once)."""
    n_vocab = hf_model.get_output_embeddings().weight.shape[0]
    step = max(1, budget_bytes // (4 * n_vocab))
    tops = [top_of_logits(unembed(hf_model, family, normed[first:first + step]).float(), k)
            for first in range(0, normed.shape[0], step)]
    return torch.cat([probs for probs, _ in tops]).cpu(), torch.cat([ids for _, ids in tops]).cpu()


def top_of_logits(logits: torch.Tensor, k: int) -> tuple[torch.Tensor, torch.Tensor]:
    """(probabilities [..., k], ids [..., k]) of the k largest `logits` [..., V], equal logits in
    the order of their ids: so the first k of the top 10 are the top k, whichever way they are made
    (ties are common in bfloat16 logits; torch.topk orders them as it finds them)."""
    n_vocab = logits.shape[-1]
    k = min(k, n_vocab)
    rows = logits.reshape(-1, n_vocab)
    top = rows.topk(min(k + 1, n_vocab), dim=-1)
    ids = top.indices[:, :k]
    if k < n_vocab:  # rows where the (k+1)-th logit equals the k-th: which of the equal ones get in is chosen
        ids = _smallest_ids_at_the_cut(rows, top.values, ids, k)
    ids = ids.sort(dim=-1).values  # then by logit, equal ones keeping the order of their ids
    ids = ids.gather(-1, rows.gather(-1, ids).sort(dim=-1, descending=True, stable=True).indices)
    probs = rows.softmax(-1).gather(-1, ids)  # (softmax is 2-3x faster than logsumexp on CPU)
    return probs.view(*logits.shape[:-1], k), ids.view(*logits.shape[:-1], k)


def _smallest_ids_at_the_cut(rows: torch.Tensor, values: torch.Tensor, ids: torch.Tensor, k: int) -> torch.Tensor:
    """`ids` [N, k] (the top k of `rows` [N, V], `values` [N, k+1] the top k+1 logits) where the
    k-th and (k+1)-th logits are equal replaced by the logits above them and the smallest ids of
    those equal to the k-th."""
    crowded = (values[:, k] == values[:, k - 1]).nonzero()[:, 0]
    if crowded.numel() == 0:
        return ids
    n_vocab = rows.shape[-1]
    some, cut = rows[crowded], values[crowded, k - 1:k]
    every = torch.arange(n_vocab, device=rows.device)
    equal = torch.where(some == cut, every, n_vocab).topk(k, dim=-1, largest=False).values  # n_vocab: none
    above = torch.where(values[crowded, :k] > cut, ids[crowded], n_vocab)
    candidates = torch.cat([above, equal], dim=-1).sort(dim=-1).values  # by id
    logit = torch.where(candidates < n_vocab, some.gather(-1, candidates.clamp_max(n_vocab - 1)), -torch.inf)
    chosen = candidates.gather(-1, logit.sort(dim=-1, descending=True, stable=True).indices[:, :k])
    return ids.index_copy(0, crowded, chosen)


def final_norm(hf_model, family: Family, resid: torch.Tensor) -> torch.Tensor:
    norm = family.get(hf_model, "final_norm")
    with torch.no_grad():
        return norm(resid.to(norm.weight.device, norm.weight.dtype))


@torch.no_grad()
def frozen_final_norm(hf_model, family: Family, update: torch.Tensor, final_resid: torch.Tensor) -> torch.Tensor:
    """The final norm applied to `update` [..., d] as a linear map, its scale frozen at `final_resid` [d]."""
    norm = family.get(hf_model, "final_norm")
    u = update.float()
    # on several devices the update may come from another layer's device
    scale = family.norm.scale(final_resid.to(u.device), norm_eps(norm))
    return family.norm.channel_map(u, getattr(norm, "weight", None)) * scale


@torch.no_grad()
def direct_logits(hf_model, family: Family, update: torch.Tensor, final_resid: torch.Tensor) -> torch.Tensor:
    """[..., V] float32: the update's direct effect on the logits (no unembedding bias; before any soft-cap)."""
    head = hf_model.get_output_embeddings()
    normed = frozen_final_norm(hf_model, family, update, final_resid)
    logits = normed.to(head.weight.device) @ head.weight.float().T
    scale = family.logit_scale(text_config(hf_model))
    return (logits if scale == 1.0 else logits * scale).cpu()


def direct_effect(hf_model, family: Family, update: torch.Tensor, final_resid: torch.Tensor, k: int,
                  decode: Callable[[int], str]) -> LogitEffect:
    return top_bottom(direct_logits(hf_model, family, update, final_resid), k, decode)


def top_bottom(logits: torch.Tensor, k: int, decode: Callable[[int], str]) -> LogitEffect:
    """The k tokens with the largest and the k with the smallest values of `logits` [V]."""
    k = min(k, logits.numel())
    top = logits.topk(k)
    bottom = (-logits).topk(k)
    return LogitEffect(
        promoted=[(decode(i), float(v)) for v, i in zip(top.values, top.indices)],
        suppressed=[(decode(i), -float(v)) for v, i in zip(bottom.values, bottom.indices)],
    )


def lens_logits(hf_model, family: Family, resid: torch.Tensor, normalize: bool) -> torch.Tensor:
    normed = final_norm(hf_model, family, resid) if normalize else resid
    return unembed(hf_model, family, normed).float().cpu()


def _ranks(logits: torch.Tensor, ids: torch.Tensor) -> torch.Tensor:
    """0-based rank of each of `ids` in `logits` (number of strictly larger logits)."""
    return (logits[None, :] > logits[ids][:, None]).sum(-1)


def logit_lens(hf_model, family: Family, resid: torch.Tensor, previous: torch.Tensor | None, k: int,
               normalize: bool, decode: Callable[[int], str]) -> list[LensToken]:
    both = resid[None] if previous is None else torch.stack([resid, previous.to(resid.device)])
    all_logits = lens_logits(hf_model, family, both, normalize)  # one pass over the unembedding
    logits = all_logits[0]
    probs = logits.softmax(-1)
    values, ids = probs.topk(min(k, probs.numel()))
    ranks = _ranks(logits, ids)
    if previous is None:
        changes: list[int | None] = [None] * len(ids)
    else:
        before = _ranks(all_logits[1], ids)
        changes = [int(b - r) for b, r in zip(before, ranks)]
    return [LensToken(decode(i), float(v), int(r), c) for v, i, r, c in zip(values, ids, ranks, changes)]
