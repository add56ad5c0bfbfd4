"""Proximity importances (Ferrando & Voita, 2024) and threshold-and-renormalise.

A whole `y` is a sum of parts `p_k`; part k's importance is
`prox(p_k, y) = max(0, ||y|| - ||y - p_k||)`, and its share is prox over the sum of all prox.
Everything here works in float32, whatever the model's dtype.

Cost of the attention parts (head_source_proximity), T tokens, H heads, d = d_model: the parts
z^h_{i<-j} are never formed ([T, T, H, d] would not fit at length). L2 is exact through dot
products; L1 is exact through the same dot products plus a correction that is non-zero only for
parts with some coordinate that overshoots (a |u_k| > |y_k|), computed on the few smallest
coordinates of y that can (see head_source_proximity). Nothing is pruned or approximated: the
results equal the plain formula up to float32 rounding (the tests compare with a float64
reference to 1e-5 of the largest prox; the dot-product form is in fact better conditioned than
||y|| - ||y - p|| for small parts).

Peak extra memory: about `budget_bytes` for the chunks of targets, plus the head outputs
u [T, H, d] float32 (linear in T: 2 GiB for an 8B model's layer at T=4096; reading their
coordinates in pieces instead was 13x slower where many parts need the L1 correction: two
8B-wide layers at T=1024 on CPU, 250 s against 19 s), a few [T, d] tensors, and the [T, T, H]
result where `head_source_proximity` assembles one (run.block_shares reduces each chunk to the
edges above a floor instead).
"""

from __future__ import annotations

from collections.abc import Iterator

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


def head_outputs(w_o: torch.Tensor, values: torch.Tensor, n_heads: int) -> torch.Tensor:
    """u[j, h] = v^h_j W_O^h: values [T, KV, hd], W_O [H, hd, d] -> [T, H, d] (float32)."""
    per_query_head = values.float().repeat_interleave(n_heads // values.shape[1], dim=1)  # [T, H, hd]
    return torch.einsum("thk,hkd->thd", per_query_head, w_o.float().to(values.device))


def head_source_proximity(whole: torch.Tensor, probs: torch.Tensor, head_out: torch.Tensor | None, p: int,
                          budget_bytes: int = DEFAULT_BUDGET_BYTES, *, values: torch.Tensor | None = None,
                          w_o: torch.Tensor | None = None, target_scale: torch.Tensor | None = None) -> torch.Tensor:
    """prox of every part z^h_{i<-j} = A^h_ij * head_out[j, h] (times target_scale[i]) for the whole at i:
    [T_target, T_source, H] (the chunks of `head_source_proximity_chunks`, put together)."""
    n_tokens, n_heads = probs.shape[1], probs.shape[0]
    prox = torch.zeros(n_tokens, n_tokens, n_heads, device=whole.device)
    for start, stop, block in head_source_proximity_chunks(whole, probs, head_out, p, budget_bytes,
                                                           values=values, w_o=w_o, target_scale=target_scale):
        prox[start:stop, :stop] = block
    return prox


def head_source_proximity_chunks(
    whole: torch.Tensor,  # [T, d]: the whole at each target position
    probs: torch.Tensor,  # [H, T, T]: attention probabilities, target x source
    head_out: torch.Tensor | None,  # [T, H, d]: v_j^h W_O^h, each head's write for a unit weight on source j
    p: int,
    budget_bytes: int = DEFAULT_BUDGET_BYTES,
    *,
    values: torch.Tensor | None = None,  # [T, KV, hd]: value vectors, with `w_o` for cheaper dot products
    w_o: torch.Tensor | None = None,  # [H, hd, d]: head h's slice of the output projection
    target_scale: torch.Tensor | None = None,  # [T]: a factor of every part at target i (a frozen post-norm's scale)
) -> Iterator[tuple[int, int, torch.Tensor]]:
    """prox of every part z^h_{i<-j} = A^h_ij * head_out[j, h] for the whole at i, a chunk of
    targets at a time: (start, stop, prox [stop - start, stop, H]) for targets start..stop-1 and
    sources 0..stop-1 (later sources are exactly 0). A caller that reduces each chunk (to shares
    above a floor, say) never holds the whole [T, T, H].

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
    cheap to take from the whole [T, H, d] and costly to recompute). Targets are taken in
    chunks so that the temporaries stay under `budget_bytes` (at most about sixteen [chunk, T, H]
    float32 tensors, the L1 correction's candidates included); only causal sources (j <= i) are
    computed.
    """
    whole = whole.float()
    factored = values is not None and w_o is not None
    if head_out is None:
        head_out = head_outputs(w_o, values, probs.shape[0])  # type: ignore[arg-type]  # given without head_out
    head_out = head_out.float().contiguous()
    n_tokens, n_heads, d = head_out.shape
    if factored:
        values = values.float()  # type: ignore[union-attr]  # factored: both given
        w_o = w_o.float().to(whole.device)  # type: ignore[union-attr]
        n_kv = values.shape[1]
        group = n_heads // n_kv
        values_t = values.permute(1, 2, 0)  # [KV, hd, T]
    if p == 1:
        sign = torch.where(whole >= 0, 1.0, -1.0)
        sorted_abs, order = whole.abs().sort(dim=-1)  # [T, d]
        sorted_whole = whole.gather(1, order)
        # per level m: the m smallest coordinates of every target, contiguous for cheap gathers
        sorted_whole = {m: sorted_whole[:, :m].contiguous() for m in _levels(d)}  # type: ignore[assignment]
        order = {m: order[:, :m].contiguous() for m in _levels(d)}  # type: ignore[assignment]
        u_max = head_out.abs().amax(-1).T.contiguous()  # [H, T]
        direction = sign
    else:
        whole_norm = torch.linalg.vector_norm(whole, ord=2, dim=-1)  # [T]
        u_sq = (head_out * head_out).sum(-1).T.contiguous()  # [H, T]
        direction = whole
    chunk = max(1, budget_bytes // (16 * n_tokens * n_heads * 4))
    for start in range(0, n_tokens, chunk):
        stop = min(start + chunk, n_tokens)
        a = probs[:, start:stop, :stop].float()  # [H, c, S] (a copy only if probs are not float32)
        if target_scale is not None:
            a = a * target_scale[start:stop].float().to(a.device).view(1, -1, 1)
        if factored:  # q[h, i] = W_O^h direction_i: [H, c, hd]; dot[h, i, j] = q[h, i] . v_j^{kv(h)}
            q = torch.einsum("hkd,td->htk", w_o, direction[start:stop])
            q = q.reshape(n_kv, group * (stop - start), -1)
            dot = torch.bmm(q, values_t[:, :, :stop]).reshape(n_heads, stop - start, stop)
        else:
            dot = torch.einsum("td,shd->hts", direction[start:stop], head_out[:stop])
        if p == 1:
            block = _l1_block(a, dot, start, sorted_abs, sorted_whole, order, head_out, u_max[:, :stop], budget_bytes)
        else:
            norm = whole_norm[start:stop].view(1, -1, 1)
            delta = a * (2 * dot - a * u_sq[:, None, :stop])
            del dot
            rest = (norm * norm - delta).clamp_min(0).sqrt_()
            block = (delta / (norm + rest).clamp_min(torch.finfo(torch.float32).tiny)).clamp_min_(0)
            del delta, rest
        sources = torch.arange(stop, device=block.device)
        future = sources[None, :] > torch.arange(start, stop, device=block.device)[:, None]
        yield start, stop, block.masked_fill_(future, 0).permute(1, 2, 0)
        del block


L1_LEVELS = (8, 32, 128)  # the smallest coordinates of y on which a part's correction is computed


def _levels(d: int) -> list[int]:
    return [m for m in L1_LEVELS if m < d] + [d]


def _l1_block(a, dot, start, sorted_abs, sorted_whole, order, head_out, u_max, budget_bytes):
    """Exact L1 prox of one chunk of targets: [H, c, S] (see head_source_proximity)."""
    n_heads, n_targets, n_sources = a.shape
    d = head_out.shape[-1]
    rows = slice(start, start + n_targets)
    block = a * dot  # a s.u, then minus the correction where some coordinate overshoots
    del dot
    reach = a * u_max[:, None, :]  # a ||u||_inf: only coordinates with |y_k| below it can overshoot
    flat = ((reach > sorted_abs[rows, 0].view(1, -1, 1)) & (block > 0)).view(-1).nonzero()[:, 0]
    if flat.numel() == 0:
        return block.clamp_min_(0)
    reach = reach.view(-1)[flat]
    h, rest = flat // (n_targets * n_sources), flat % (n_targets * n_sources)
    i, j = rest // n_sources, rest % n_sources
    del rest
    target = i + start
    # level of a part: the fewest smallest coordinates of y that hold every overshooting one
    levels = _levels(d)
    level = torch.zeros_like(flat, dtype=torch.uint8)
    for m in levels[:-1]:
        level += reach > sorted_abs[:, m].index_select(0, target)
    weights = a[h, i, j]
    correction = torch.empty_like(weights)
    for index, m in enumerate(levels):
        at = (level == index).nonzero()[:, 0]
        step = max(1, budget_bytes // (8 * m * 8))
        for lo in range(0, at.numel(), step):
            part = at[lo:lo + step]
            tgt = target[part]
            y = sorted_whole[m].index_select(0, tgt)  # [n, m]: y's coordinates, smallest |y_k| first
            coords = order[m].index_select(0, tgt) + ((j[part] * n_heads + h[part]) * d)[:, None]
            u = head_out.view(-1).take(coords)
            # relu(s_k (a u_k - y_k)), s_k = sign(y_k) (sign(0) = +1, as for the linear term)
            x = weights[part, None] * u - y
            correction[part] = torch.where(y >= 0, x, -x).clamp_min_(0).sum(-1)
    values = (block.view(-1)[flat] - 2 * correction).clamp_min_(0)
    block = block.clamp_min_(0)
    block.view(-1)[flat] = values
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
