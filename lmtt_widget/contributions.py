"""Proximity importances (Ferrando & Voita, 2024) and threshold-and-renormalise.

A whole `y` is a sum of parts `p_k`; part k's importance is
`prox(p_k, y) = max(0, ||y|| - ||y - p_k||)`, and its share is prox over the sum of all prox.
Everything here works in float32, whatever the model's dtype.

Cost of the attention parts (head_source_proximity), T tokens, H heads, d = d_model: the parts
z^h_{i<-j} are never formed ([T, T, H, d] would not fit at length). L2 is exact through dot
products; L1 is exact through the same dot products plus a correction that is non-zero only for
parts with some coordinate that overshoots (a |u_k| > |y_k|), computed on the few smallest
coordinates of y that can (see head_source_proximity_chunks). Nothing is pruned or approximated: the
results equal the plain formula up to float32 rounding (the tests compare with a float64
reference to 1e-5 of the largest prox; the dot-product form is in fact better conditioned than
||y|| - ||y - p|| for small parts).

Many prompts are computed together as one padded batch [B, T, ...], so that short prompts share
each tensor operation (one prompt of T=20 is too little work per call); one prompt is a batch of one.

Peak extra memory: about `budget_bytes` for the chunks of targets, plus the head outputs
u [B, T, H, d] float32 (linear in T: 2 GiB for an 8B model's layer at T=4096; reading their
coordinates in pieces instead was 13x slower where many parts need the L1 correction: two
8B-wide layers at T=1024 on CPU, 250 s against 19 s), a few [T, d] tensors, and the [T, T, H]
result where `head_source_proximity` assembles one (run.block_shares reduces each chunk to the
edges above a floor instead).
"""

from __future__ import annotations

from collections.abc import Iterator
from typing import NamedTuple

import torch

from .attention import batch_of_one
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
    return (norm(whole, p)[..., None] - norm(whole.unsqueeze(-2) - parts, p)).clamp_min(0)


def norm(x: torch.Tensor, p: int) -> torch.Tensor:
    """||x||_p over the last axis (L1 as a plain sum: torch's vector_norm(ord=1) is 5x slower on CPU)."""
    return x.abs().sum(-1) if p == 1 else torch.linalg.vector_norm(x, ord=p, dim=-1)


def head_outputs(w_o: torch.Tensor, values: torch.Tensor, n_heads: int) -> torch.Tensor:
    """u[..., j, h] = v^h_j W_O^h: values [..., T, KV, hd], W_O [H, hd, d] -> [..., T, H, d] (float32)."""
    return head_major_outputs(w_o[:n_heads], values).movedim(0, -2)


def head_major_outputs(w_o: torch.Tensor, values: torch.Tensor) -> torch.Tensor:
    """`head_outputs` laid out head first, [H, ..., T, d], as one product per head makes them."""
    n_heads, n_kv = w_o.shape[0], values.shape[-2]
    per_query_head = values.float().movedim(-2, 0).repeat_interleave(n_heads // n_kv, dim=0)  # [H, ..., T, hd]
    out = torch.bmm(per_query_head.reshape(n_heads, -1, values.shape[-1]), w_o.float().to(values.device))
    return out.view(*per_query_head.shape[:-1], -1)


def head_source_proximity(whole: torch.Tensor, probs: torch.Tensor, head_out: torch.Tensor | None, p: int,
                          budget_bytes: int = DEFAULT_BUDGET_BYTES, *, values: torch.Tensor | None = None,
                          w_o: torch.Tensor | None = None, target_scale: torch.Tensor | None = None) -> torch.Tensor:
    """prox of every part z^h_{i<-j} = A^h_ij * head_out[j, h] (times target_scale[i]) for the whole at i,
    of one prompt: whole [T, d], probs [H, T, T], head_out [T, H, d], values [T, KV, hd], target_scale [T]
    -> [T_target, T_source, H] (the chunks of `head_source_proximity_chunks`, put together)."""
    n_tokens, n_heads = probs.shape[1], probs.shape[0]
    prox = torch.zeros(n_tokens, n_tokens, n_heads, device=whole.device)
    one = {name: None if t is None else t[None] for name, t in
           dict(head_out=head_out, values=values, target_scale=target_scale).items()}
    for start, stop, block in head_source_proximity_chunks(whole[None], batch_of_one(probs), one.pop("head_out"), p,
                                                           budget_bytes, w_o=w_o, **one):
        prox[start:stop, :stop] = block[0]
    return prox


def head_source_proximity_chunks(
    whole: torch.Tensor,  # [B, T, d]: the whole at each target position of each prompt
    probs: torch.Tensor,  # [B, H, T, T]: attention probabilities, target x source (or an AttentionProbs)
    head_out: torch.Tensor | None,  # [B, T, H, d]: v_j^h W_O^h, each head's write for a unit weight on source j
    p: int,
    budget_bytes: int = DEFAULT_BUDGET_BYTES,
    *,
    values: torch.Tensor | None = None,  # [B, T, KV, hd]: value vectors, with `w_o` for cheaper dot products
    w_o: torch.Tensor | None = None,  # [H, hd, d]: head h's slice of the output projection
    target_scale: torch.Tensor | None = None,  # [B, T]: a factor of every part at target i (a frozen post-norm's scale)
    valid: torch.Tensor | None = None,  # [B, T] bool: the prompts' own positions (None: all; padding is not)
) -> Iterator[tuple[int, int, torch.Tensor]]:
    """prox of every part z^h_{i<-j} = A^h_ij * head_out[j, h] for the whole at i, for a batch of
    prompts (padded to T positions; one prompt is a batch of one), a chunk of targets at a time:
    (start, stop, prox [B, stop - start, stop, H]) for targets start..stop-1 and sources 0..stop-1
    (later sources are exactly 0). A caller that reduces each chunk (to shares above a floor, say)
    never holds the whole [B, T, T, H]. Where `valid` is given, parts whose target or source is
    padding are exactly 0, and what the padding holds (NaN probabilities included) changes no
    other value: each prompt's prox are those of the prompt alone.

    Exact (up to float32 rounding), without ever forming the [T, T, H, d] parts. With a = A^h_ij,
    u = head_out[j, h], y = whole[i] and s = sign(y) (sign(0) taken as +1):

    - L2: ||y - a u||^2 = ||y||^2 - 2a y.u + a^2 ||u||^2, so prox = delta / (||y|| + ||y - a u||)
      with delta = 2a y.u - a^2 ||u||^2 (the stable form of ||y|| - ||y - a u||): one matrix product.
    - L1: per coordinate |y_k - x_k| = |y_k| - s_k x_k + 2 relu(s_k x_k - |y_k|), so
      prox = max(0, a s.u - 2 sum_k relu(a s_k u_k - |y_k|)). The first term is a matrix product;
      the correction is non-zero only where some coordinate overshoots (a |u_k| > |y_k|), which
      needs a ||u||_inf > min_k |y_k|, and then only for the coordinates of y below a ||u||_inf.
      It is computed exactly for those parts, on just the smallest coordinates of y that can
      overshoot (8, 32, 128 or all of them). Parts with a s.u <= 0 have prox 0 (the correction is
      never negative).

    With `target_scale` (s_i >= 0, a norm after the attention block frozen at its real scale,
    which multiplies every part at target i), a stands for s_i A^h_ij throughout.

    With `values` and `w_o` given, the dot products are taken in the head dimension:
    s.u = (W_O^h s) . v_j, which costs T^2 * d instead of T^2 * H * d, and `head_out` may be None
    (it is then made from them: the L1 correction reads scattered coordinates of it, which are
    cheap to take from the whole [B, T, H, d] and costly to recompute). Targets are taken in
    chunks so that the temporaries stay under `budget_bytes` (at most about sixteen [B, chunk, T, H]
    float32 tensors, the L1 correction's candidates included); only causal sources (j <= i) are
    computed.
    """
    whole = whole.float()
    if valid is not None:  # the padding's vectors may be anything: zero them, so that no NaN reaches a prompt
        whole = whole.masked_fill(~valid[..., None], 0)
        values = None if values is None else values.float().masked_fill(~valid[..., None, None], 0)
        head_out = None if head_out is None else head_out.float().masked_fill(~valid[..., None, None], 0)
    factored = values is not None and w_o is not None
    if head_out is None:  # head first, [H, B, T, d]: as the products make them, and any head's rows contiguous
        head_out = head_major_outputs(w_o, values)  # type: ignore[arg-type]  # given without head_out
    else:
        head_out = head_out.float().permute(2, 0, 1, 3).contiguous()
    n_heads, n_batch, n_tokens, d = head_out.shape
    if factored:
        w_o = w_o.float().to(whole.device)  # type: ignore[union-attr]  # factored: both given
        n_kv = values.shape[-2]  # type: ignore[union-attr]
        values_t = values.float().permute(0, 2, 3, 1)  # type: ignore[union-attr]  # [B, KV, hd, T]
    if p == 1:
        sign = (whole >= 0).float().mul_(2).sub_(1)  # +1 or -1
        smallest = _Smallest.of(whole, sign)
        u_max = torch.maximum(head_out.amax(-1), head_out.amin(-1).neg_()).transpose(0, 1)  # [B, H, T]
        direction = sign
    else:
        whole_norm = torch.linalg.vector_norm(whole, ord=2, dim=-1)  # [B, T]
        u_sq = (head_out * head_out).sum(-1).transpose(0, 1)  # [B, H, T]
        direction = whole
    chunk = max(1, budget_bytes // (16 * n_batch * n_tokens * n_heads * 4))
    for start in range(0, n_tokens, chunk):
        stop = min(start + chunk, n_tokens)
        a = probs[:, :, start:stop, :stop].float()  # [B, H, c, S] (a copy only if probs are not float32)
        if target_scale is not None:
            a = a * target_scale[:, start:stop].float().to(a.device)[:, None, :, None]
        if valid is not None:  # padding reads and is read by nothing (its rows may be NaN)
            a = a.masked_fill(~(valid[:, None, start:stop, None] & valid[:, None, None, :stop]), 0)
        if factored:  # q[b, h, i] = W_O^h direction_bi: [B, H, c, hd]; dot[b, h, i, j] = q[b, h, i] . v_bj^{kv(h)}
            q = torch.einsum("hkd,btd->bhtk", w_o, direction[:, start:stop])
            q = q.reshape(n_batch, n_kv, -1, q.shape[-1])  # the query heads of a KV head side by side
            dot = (q @ values_t[..., :stop]).view(n_batch, n_heads, stop - start, stop)
        else:
            dot = torch.einsum("btd,hbsd->bhts", direction[:, start:stop], head_out[:, :, :stop])
        if p == 1:
            block = _l1_block(a, dot, start, smallest, head_out, u_max[..., :stop], budget_bytes)
        else:
            norm = whole_norm[:, None, start:stop, None]
            delta = a * (2 * dot - a * u_sq[:, :, None, :stop])
            del dot
            rest = (norm * norm - delta).clamp_min(0).sqrt_()
            block = (delta / (norm + rest).clamp_min(torch.finfo(torch.float32).tiny)).clamp_min_(0)
            del delta, rest
        sources = torch.arange(stop, device=block.device)
        future = sources[None, :] > torch.arange(start, stop, device=block.device)[:, None]
        yield start, stop, block.masked_fill_(future, 0).permute(0, 2, 3, 1)
        del block


L1_LEVELS = (8, 32, 128)  # the smallest coordinates of y on which a part's correction is computed
# coordinates of parts corrected at a time: a piece's temporaries (1 MiB each) stay in the cache and in the
# allocator's heap (whole levels at once were 30% slower, much of it the kernel zeroing fresh pages)
L1_PIECE = 2**18


def _levels(d: int) -> list[int]:
    return [m for m in L1_LEVELS if m < d] + [d]


class _Smallest(NamedTuple):
    """Every whole's smallest coordinates, by |y_k| (rows: batch x target), for the L1 correction."""

    levels: list[int]  # _levels(d)
    bounds: torch.Tensor  # [B * T, n_levels]: the smallest |y_k|, then the (m+1)-th smallest for each level m < d
    negative: list[torch.Tensor]  # per level m: [B * T, m] -y_k at the m smallest |y_k| (at level d: -y, all of it)
    sign: list[torch.Tensor]  # per level m: [B * T, m] their signs s_k (+1 or -1)
    order: list[torch.Tensor | None]  # per level m < d: [B * T, m] their coordinates (at level d: None, all)

    @staticmethod
    def of(whole: torch.Tensor, sign: torch.Tensor) -> _Smallest:
        d = whole.shape[-1]
        levels = _levels(d)
        negative, sign = whole.neg().reshape(-1, d), sign.reshape(-1, d)
        # the smallest coordinates that the levels below d read (a partial sort: far cheaper than sorting all d)
        lowest, order = whole.abs().reshape(-1, d).topk(levels[-2] + 1 if len(levels) > 1 else 1, dim=-1,
                                                       largest=False)
        orders = [order[:, :m].contiguous() for m in levels[:-1]]
        return _Smallest(levels, lowest[:, [0] + levels[:-1]].contiguous(),
                         [negative.gather(1, o) for o in orders] + [negative],
                         [sign.gather(1, o) for o in orders] + [sign], orders + [None])


def _l1_block(a, dot, start, smallest: _Smallest, head_out, u_max, budget_bytes):
    """Exact L1 prox of one chunk of targets: [B, H, c, S] (see head_source_proximity_chunks)."""
    n_batch, n_heads, n_targets, n_sources = a.shape
    n_tokens, d = head_out.shape[2], head_out.shape[-1]
    block = a * dot  # a s.u, then minus the correction where some coordinate overshoots
    reach = a * u_max[:, :, None, :]  # a ||u||_inf: only coordinates with |y_k| below it can overshoot
    lowest = smallest.bounds[:, 0].view(n_batch, 1, n_tokens, 1)[:, :, start:start + n_targets]
    b, h, i, j = ((reach > lowest) & (block > 0)).nonzero().unbind(1)
    block.clamp_min_(0)  # the parts without a correction; the others are positive, so this changes none of them
    if b.numel() == 0:
        return block
    flat = ((b * n_heads + h) * n_targets + i) * n_sources + j
    reach = reach.view(-1)[flat]
    target = b * n_tokens + start + i  # the whole's row in smallest's tensors
    source = (h * n_batch + b) * n_tokens + j  # the part's row in head_out [H * B * T, d]
    # level of a part: the fewest smallest coordinates of y that hold every overshooting one
    level = (reach[:, None] > smallest.bounds.index_select(0, target)[:, 1:]).sum(1)
    by_level = torch.sort(level, stable=True).indices  # within a level, by prompt and head: gathers stay local
    flat, target, source = flat[by_level], target[by_level], source[by_level]
    weights = a.reshape(-1)[flat, None]
    corrections = []
    end = 0
    for index, count in enumerate(torch.bincount(level, minlength=len(smallest.levels)).tolist()):
        m, order = smallest.levels[index], smallest.order[index]
        step = max(1, min(budget_bytes // 64, L1_PIECE) // m)  # parts
        for lo in range(end, end + count, step):
            part = slice(lo, min(lo + step, end + count))
            tgt, src = target[part], source[part]
            if order is None:  # every coordinate: whole rows
                u = head_out.view(-1, d).index_select(0, src)
            else:  # [n, m]: the part's coordinates at y's m smallest |y_k|
                coords = order.index_select(0, tgt)
                coords += (src * d)[:, None]
                u = head_out.view(-1).index_select(0, coords.view(-1)).view(-1, m)
            # relu(s_k (a u_k - y_k)) = relu(s_k a u_k - |y_k|), s_k = sign(y_k) as for the linear term
            x = torch.addcmul(smallest.negative[index].index_select(0, tgt), u, weights[part])
            corrections.append(x.mul_(smallest.sign[index].index_select(0, tgt)).clamp_min_(0).sum(-1))
        end += count
    values = block.view(-1)[flat]
    block.view(-1)[flat] = values.sub_(torch.cat(corrections), alpha=2).clamp_min_(0)
    return block


def head_source_proximity_reference(
    whole: torch.Tensor, probs: torch.Tensor, head_out: torch.Tensor, p: int,
    budget_bytes: int = DEFAULT_BUDGET_BYTES,
) -> torch.Tensor:
    """The plain formula, for tests: forms the parts' differences [chunk, T, H, d] chunk by chunk."""
    n_tokens, n_heads, d = head_out.shape
    dtype = torch.float64 if whole.dtype == torch.float64 else torch.float32
    whole = whole.to(dtype)
    head_out = head_out.to(dtype)
    probs_ts = probs.to(dtype).permute(1, 2, 0)  # [T, T, H]
    whole_norm = torch.linalg.vector_norm(whole, ord=p, dim=-1)  # [T]
    prox = torch.zeros(n_tokens, n_tokens, n_heads, dtype=dtype)
    chunk = max(1, budget_bytes // (2 * n_tokens * n_heads * d * whole.element_size()))
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
    scaled = tuple(part / safe.view(-1, *[1] * (part.dim() - 1)) for part in prox)  # one new tensor each
    if degenerate.any():
        for s in scaled:
            s[degenerate] = 0
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


def threshold_renormalize_sparse(
    values: torch.Tensor, rows: torch.Tensor, per_row: tuple[torch.Tensor, ...], residual: torch.Tensor,
    threshold: float,
) -> tuple[tuple[torch.Tensor, ...], torch.Tensor]:
    """`threshold_renormalize` for parts given sparsely: values [n] are shares of the wholes
    `rows` [n]; `per_row` are parts with one share per whole ([T] each), as is `residual`.
    Returns (values [n], *per_row), residual, thresholded and renormalised."""
    kept = torch.where(values > threshold, values, torch.zeros_like(values))
    kept_per_row = [torch.where(part > threshold, part, torch.zeros_like(part)) for part in per_row]
    kept_residual = torch.where(residual > threshold, residual, torch.zeros_like(residual))
    total = (kept_residual + sum(kept_per_row, torch.zeros_like(residual))).index_add(0, rows, kept)
    degenerate = total <= 0  # nothing survives: the residual gets all of the weight
    safe = torch.where(degenerate, torch.ones_like(total), total)
    res = torch.where(degenerate, torch.ones_like(residual), kept_residual / safe)
    return (kept / safe[rows], *(part / safe for part in kept_per_row)), res
