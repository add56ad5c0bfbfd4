"""`analyze(model, prompt)` -> `Run`: one forward pass, the importances of every block's parts,
and everything else (routes, neurons, vocabulary readouts) derived from it on demand."""

from __future__ import annotations

import copy
import dataclasses
import functools
import pathlib
from dataclasses import dataclass
from typing import NamedTuple

import torch

from . import contributions as C
from . import effects as E
from . import experts as X
from . import faithfulness as F
from . import graph as G
from . import interventions as I
from . import saved as S
from . import vocab as V
from .architectures import Shape, check_attention, family_of, ffn_out_matrix, post_norm_map, shape_of, w_o
from .attention import AttentionProbs, batch_of_one, dense, probs_window
from .contributions import head_outputs
from .errors import LmttError, _integer, check_floor, check_index, check_positive, check_threshold
from .models import check_model
from .progress import progress_steps
from .saved import SavedModel
from .tracing import Capture, attention_probs, neuron_activations, trace


class NeuronShare(NamedTuple):
    index: int  # type: ignore[assignment]  # shadows tuple.index
    share: float
    activation: float


def _top_neurons(shares: torch.Tensor, acts: torch.Tensor, k: int) -> list[NeuronShare]:
    values, ids = shares.topk(min(k, shares.numel()))
    return [NeuronShare(int(i), float(v), float(acts[i])) for v, i in zip(values, ids)]


DEFAULT_FLOOR = 1e-3  # for prompts whose shares do not fit the budget whole; the widget's lowest threshold is 0.005
TOP_K_KEPT = 10  # top predictions per position that runs without their logits keep (and files)


@dataclass
class LayerShares:
    """Shares of one layer's parts, float32 (on the CPU in a Run).

    Attention edges are kept sparse: the (target, source) pairs whose share, summed over heads,
    is above the analysis' floor, with their per-head shares z^h_{i<-j}. A dropped edge's share is
    at most the floor, so routes at any threshold >= floor are exact: thresholding (and
    renormalising, which drops the same parts) would have removed it anyway.
    """

    edges: torch.Tensor  # [n, 2] long: (target, source), sorted by target, then source
    heads: torch.Tensor  # [n, H]: the per-head shares of each kept edge
    attn_residual: torch.Tensor  # [T]: the residual's share of the attention block's whole
    ffn: torch.Tensor  # [T]: the FFN update's share of the FFN block's whole
    ffn_residual: torch.Tensor  # [T]: the residual's share of the FFN block's whole

    def dense(self) -> torch.Tensor:
        """[T_target, T_source, H]: every head's share of every edge (0 where dropped)."""
        return self._scatter(self.heads)

    def head(self, head: int) -> torch.Tensor:
        """[T_target, T_source]: head `head`'s share of every edge (0 where dropped)."""
        return self._scatter(self.heads[:, head])

    def _scatter(self, values: torch.Tensor) -> torch.Tensor:  # [n, ...] -> [T, T, ...]
        n_tokens = self.attn_residual.shape[0]
        out = values.new_zeros(n_tokens, n_tokens, *values.shape[1:])
        out[self.edges[:, 0], self.edges[:, 1]] = values
        return out

    def edge(self, target: int, source: int) -> torch.Tensor:
        """[H]: every head's share of the edge source -> target (0 where dropped)."""
        n_tokens, keys = self.attn_residual.shape[0], self.edge_keys
        at = int(torch.searchsorted(keys, target * n_tokens + source))
        if at < len(keys) and int(keys[at]) == target * n_tokens + source:
            return self.heads[at]
        return self.heads.new_zeros(self.heads.shape[1])

    @functools.cached_property
    def edge_keys(self) -> torch.Tensor:
        """[n]: target * T + source of each kept edge, ascending (edges are sorted by target, then source)."""
        return self.edges[:, 0] * self.attn_residual.shape[0] + self.edges[:, 1]

    @functools.cached_property
    def edge_targets(self) -> torch.Tensor:
        """[n]: each kept edge's target, ascending (contiguous, for searchsorted)."""
        return self.edges[:, 0].contiguous()

    @functools.cached_property
    def edge_shares(self) -> torch.Tensor:
        """[n]: each kept edge's share, summed over heads (what the graph's edges weigh)."""
        return self.heads.sum(-1)

    def tensors(self) -> dict[str, torch.Tensor]:
        return {f.name: getattr(self, f.name) for f in dataclasses.fields(self)}

    def cpu(self) -> LayerShares:
        return LayerShares(**{name: t.cpu() for name, t in self.tensors().items()})

    @property
    def nbytes(self) -> int:
        return sum(t.numel() * t.element_size() for t in self.tensors().values())


def analyze(model, prompt, *, distance: str = "l1", prepend_bos: bool | None = None,
            budget_bytes: int = C.DEFAULT_BUDGET_BYTES, floor: float | None = None,
            progress: bool | None = None) -> Run:
    """Run `model` once on `prompt` and compute the importances of every block's parts.

    `model` comes from `load_model`. `prompt` is a string or one prompt's token ids (a 1-D list,
    tuple, tensor or array, as a tokenised dataset gives them). `distance` is "l1" (the papers'
    default) or "l2". `prepend_bos`: None keeps what the tokenizer does by default (ids as
    given); True/False force a BOS token at the start or none.

    Memory beyond the model and the captured residuals ([L, T, d] each) follows `budget_bytes`:
    it bounds the importances' temporaries (but for one layer's head outputs [T, H, d] float32
    at a time, see lmtt_widget.contributions), and what grows with T^2 or d_ff is kept only if it
    fits: every layer's attention probabilities (else the queries and keys they come from,
    [L, T, (H + KV) * head_dim]; under eager attention `attention_pattern` traces again for the
    layer asked for), FFN activations (else traced again), and every attention edge's shares.
    When the shares do not fit, only edges whose share is above `floor` are kept (None: 0 when
    they fit, else 1e-3); routes at thresholds >= floor stay exact (see LayerShares).
    `progress`: None shows a progress bar once the analysis takes over a second, True always,
    False never.
    """
    check_model(model, "lw.analyze")
    input_ids, text = prompt_ids(model, prompt, prepend_bos)
    return analyze_ids(model, input_ids, prompt=text, distance=distance, budget_bytes=budget_bytes, floor=floor,
                       progress=progress)


def analyze_ids(model, input_ids: torch.Tensor, *, prompt: str | None = None, distance: str = "l1",
                budget_bytes: int = C.DEFAULT_BUDGET_BYTES, floor: float | None = None, edits=None,
                progress: bool | None = None) -> Run:
    """`analyze` on token ids [T]; `edits` (see tracing.trace) change the forward pass."""
    p = C.distance_order(distance)
    budget_bytes = check_positive("budget_bytes", budget_bytes)
    hf_model = model._module
    family = family_of(hf_model)
    shape = shape_of(hf_model, family)
    check_attention(hf_model, family)
    n_tokens = len(input_ids)
    floor = floor_for(floor, shape, n_tokens, budget_bytes)
    layers: list[LayerShares] = []
    with progress_steps(shape.n_layers, enabled=progress, desc="importances", unit="layer") as advance:

        def on_layer(layer: int, t) -> None:  # inside the trace: each layer's probabilities are used as they come
            layers.append(block_shares(t.resid_in, t.attn_out, t.ffn_out, t.resid_out, t.probs, t.values,
                                       w_o(hf_model, family, shape, layer), shape.parallel, p, budget_bytes, floor,
                                       target_scale=t.attn_scale).cpu())
            advance()

        keep = kept_whole(hf_model, family, shape, n_tokens, budget_bytes)
        capture = trace(model, family, shape, input_ids.to(hf_model.device), edits, neurons=keep.neurons,
                        probs=keep.probs, on_layer=on_layer)
    text = prompt if prompt is not None else model.tokenizer.decode(input_ids)
    return Run(model, text, input_ids, capture, layers, distance, budget_bytes, floor, edits=edits)


def floor_for(floor: float | None, shape: Shape, n_tokens: int, budget_bytes: int) -> float:
    """The floor of a prompt of `n_tokens`: `floor` (checked), or with None 0 where every edge's shares fit
    `budget_bytes`, else DEFAULT_FLOOR."""
    if floor is None:  # every causal edge, each with H float32 shares and a (target, source) index
        every_edge = shape.n_layers * n_tokens * (n_tokens + 1) // 2 * (shape.n_heads * 4 + 16)
        return 0.0 if every_edge <= budget_bytes else DEFAULT_FLOOR
    return check_floor(floor)


class Kept(NamedTuple):
    """What a trace keeps of every layer (tracing.trace's `neurons` and `probs`)."""

    neurons: bool  # the FFN activations
    probs: bool  # the attention probabilities, float32


def kept_whole(hf_model, family, shape: Shape, n_tokens: int, budget_bytes: int) -> Kept:
    """What a trace of `n_tokens` keeps of every layer within `budget_bytes`."""
    return Kept(neurons=n_tokens * _d_ff(hf_model, family) * shape.n_layers * 4 <= budget_bytes,
                probs=shape.n_layers * shape.n_heads * n_tokens ** 2 * 4 <= budget_bytes)


def _d_ff(hf_model, family) -> int:
    """The widest dense FFN's number of neurons (0 if every FFN is a mixture of experts)."""
    n_layers = len(family.get(hf_model, "blocks"))
    out_projs = (family.modules(hf_model, layer)["ffn_out_proj"] for layer in range(n_layers))
    return max((ffn_out_matrix(m).shape[0] for m in out_projs if m is not None), default=0)


def prompt_ids(model, prompt, prepend_bos: bool | None = None) -> tuple[torch.Tensor, str]:
    """(token ids [T], the prompt's text) of a string or of one prompt's token ids, checked
    against the model's vocabulary and context."""
    hf_model = model._module
    n_ctx = shape_of(hf_model, family_of(hf_model)).n_ctx
    if isinstance(prompt, str):
        return tokenize(model.tokenizer, prompt, prepend_bos, n_ctx), prompt
    ids = _with_bos(token_ids(prompt, hf_model.get_input_embeddings().num_embeddings), model.tokenizer, prepend_bos)
    if not ids:
        raise LmttError("prompt is only a BOS token, which prepend_bos=False removes")
    _check_length(len(ids), n_ctx)
    return torch.tensor(ids, dtype=torch.long), model.tokenizer.decode(ids)


def token_ids(prompt, n_vocab: int) -> list[int]:
    """One prompt's token ids from a 1-D list, tuple, tensor or array of integers in 0..n_vocab-1;
    an LmttError that says what `prompt` is otherwise."""
    shape = getattr(prompt, "shape", None)
    if shape is not None and hasattr(prompt, "tolist"):  # a tensor or an array
        dtype = str(getattr(prompt, "dtype", ""))
        if len(shape) != 1 or "int" not in dtype:
            raise LmttError(f"token ids must be 1-D integers, got a {type(prompt).__name__} of shape {tuple(shape)} "
                            f"and dtype {dtype}" + (" (one prompt of a batch: ids[0])" if len(shape) == 2 else ""))
        ids = prompt.tolist()
    elif isinstance(prompt, (list, tuple)):
        ids = [_integer(i) for i in prompt]
        bad = next((n for n, i in enumerate(ids) if i is None), None)
        if bad is not None:
            item = prompt[bad]
            raise LmttError(f"token ids must be integers: item {bad} of the {type(prompt).__name__} is "
                            f"{type(item).__name__} {item!r:.40}" + (" (a batch? give one prompt's ids)"
                                                                     if isinstance(item, (list, tuple)) else ""))
    else:
        hint = (" (a tokenizer's output: pass its ['input_ids'])" if "input_ids" in prompt else
                f" with keys {list(prompt.keys())[:8]} (a dataset's row? pass a column of prompts, e.g. "
                "dataset['text'])") if hasattr(prompt, "keys") else ""
        raise LmttError(f"prompt must be a string or a 1-D list, tuple, tensor or array of token ids, got "
                        f"{type(prompt).__name__}{hint}")
    if not ids:
        raise LmttError("prompt has no token ids: give at least one")
    outside = [(n, i) for n, i in enumerate(ids) if not 0 <= i < n_vocab]
    if outside:
        n, i = outside[0]
        raise LmttError(f"token id {i} (at index {n}) is out of the vocabulary: valid ids are 0..{n_vocab - 1}"
                        + (f"; {len(outside)} ids are outside" if len(outside) > 1 else ""))
    return ids


def tokenize(tokenizer, prompt: str, prepend_bos: bool | None, n_ctx: int | None) -> torch.Tensor:
    if not isinstance(prompt, str):
        raise LmttError(f"prompt must be a string, got {type(prompt).__name__}")
    if not prompt.strip():
        raise LmttError("prompt is empty: give some text to analyse")
    _check_unicode(prompt)
    ids = _with_bos(list(tokenizer(prompt, add_special_tokens=True)["input_ids"]), tokenizer, prepend_bos)
    if not ids:
        raise LmttError("prompt tokenizes to no tokens")
    _check_length(len(ids), n_ctx)
    return torch.tensor(ids, dtype=torch.long)


def _with_bos(ids: list[int], tokenizer, prepend_bos: bool | None) -> list[int]:
    """`ids` with a BOS token forced at the start (True), removed (False), or as they are (None)."""
    bos = tokenizer.bos_token_id
    if prepend_bos and (not ids or ids[0] != bos):
        if bos is None:
            raise LmttError("prepend_bos=True, but this tokenizer has no BOS token")
        return [bos] + ids
    if prepend_bos is False and ids and bos is not None and ids[0] == bos:
        return ids[1:]
    return ids


def _check_length(n_tokens: int, n_ctx: int | None) -> None:
    if n_ctx is not None and n_tokens > n_ctx:
        raise LmttError(f"prompt is {n_tokens} tokens long; this model reads at most {n_ctx}")


def _check_unicode(prompt: str) -> None:
    """A lone surrogate (from bytes decoded with errors='surrogateescape', or a broken escape) is
    no text a tokenizer can read: say where it is."""
    try:
        prompt.encode("utf-8")
    except UnicodeEncodeError as error:
        raise LmttError(f"prompt contains a lone surrogate (U+{ord(prompt[error.start]):04X}) at index {error.start}: "
                        "it is not valid Unicode text; remove it, or decode the bytes it came from with "
                        "errors='replace'") from None


@torch.no_grad()
def block_shares(x: torch.Tensor, attn: torch.Tensor, ffn: torch.Tensor, post: torch.Tensor, probs: torch.Tensor,
                 values: torch.Tensor, w_o: torch.Tensor, parallel: bool, p: int, budget: int,
                 floor: float = 0.0, *, target_scale: torch.Tensor | None = None) -> LayerShares:
    """The shares of one block's parts from its tensors alone (so it can run inside a trace,
    remotely too): residual in x, updates attn and ffn, residual out `post` (all [T, d]),
    probabilities [H, T, T] (a tensor or an attention.AttentionProbs), value vectors
    [T, KV, hd] and W_O [H, hd, d] (the head dimension keeps the importances' dot products
    small; `w_o` as architectures.w_o gives it), and where a norm follows the attention block its frozen
    scale [T] (`target_scale`, multiplying every part at a target). Attention edges above
    `floor` are kept; the shares are made a chunk of targets at a time, so no [T, T, H] tensor
    is ever whole. (`batch_shares` for one prompt.)"""
    scale = None if target_scale is None else target_scale[None]
    return batch_shares(x[None], attn[None], ffn[None], post[None], batch_of_one(probs), values[None], w_o,
                        parallel, p, budget, [floor], target_scale=scale)[0]


SUB_BATCH_PAIRS = 2**15  # (target, source) pairs of the prompts whose shares are computed in one go


@torch.no_grad()
def batch_shares(x: torch.Tensor, attn: torch.Tensor, ffn: torch.Tensor, post: torch.Tensor, probs,
                 values: torch.Tensor, w_o: torch.Tensor, parallel: bool, p: int, budget: int, floors: list[float], *,
                 target_scale: torch.Tensor | None = None,
                 spans: list[tuple[int, int, int]] | None = None) -> list[LayerShares]:
    """`block_shares` of every prompt of a padded batch: the same tensors with a batch axis first
    ([B, T, d], probabilities [B, H, T, T], values [B, T, KV, hd], scale [B, T]), `spans` (row,
    start, length) of the prompt in each row, rows in order (None: each row is all prompt), and
    each prompt's floor; the shares of each prompt, in row order. Padding changes no prompt's
    shares (contributions.head_source_proximity_chunks).

    Short prompts are computed together, a sub-batch of consecutive rows at a time, their common
    padding cut off, in one set of tensor operations (one prompt's work is too small to keep the
    CPU busy between Python's calls); long ones one by one (a bigger batch's tensors fall out of
    the cache, and a short prompt padded to a long one's length would cost as much): sub-batches
    hold up to SUB_BATCH_PAIRS (target, source) pairs."""
    n_batch, n_tokens = post.shape[:2]
    spans = spans or [(row, 0, n_tokens) for row in range(n_batch)]
    out: list[LayerShares] = []
    for first, stop, lo, hi in _sub_batches(spans):
        rows, positions = slice(first, stop), slice(lo, hi)
        scale = None if target_scale is None else target_scale[rows, positions]
        own = [(row - first, start - lo, length) for row, start, length in spans[rows]]
        out += _sub_batch_shares(x[rows, positions], attn[rows, positions], ffn[rows, positions],
                                 post[rows, positions], probs_window(probs, rows, positions), values[rows, positions],
                                 w_o, parallel, p, budget, floors[rows], scale, own)
    return out


def _sub_batches(spans: list[tuple[int, int, int]]) -> list[tuple[int, int, int, int]]:
    """(first row, stop row, first position, stop position) of consecutive rows whose prompts span
    at most SUB_BATCH_PAIRS (target, source) pairs together (a longer prompt alone)."""
    out: list[tuple[int, int, int, int]] = []
    for row, start, length in spans:
        if out:
            first, _, lo, hi = out[-1]
            lo, hi = min(lo, start), max(hi, start + length)
            if (row + 1 - first) * (hi - lo) ** 2 <= SUB_BATCH_PAIRS:
                out[-1] = (first, row + 1, lo, hi)
                continue
        out.append((row, row + 1, start, start + length))
    return out


def _sub_batch_shares(x: torch.Tensor, attn: torch.Tensor, ffn: torch.Tensor, post: torch.Tensor, probs,
                      values: torch.Tensor, w_o: torch.Tensor, parallel: bool, p: int, budget: int,
                      floors: list[float], target_scale: torch.Tensor | None,
                      spans: list[tuple[int, int, int]]) -> list[LayerShares]:
    """`batch_shares` of rows that are computed together."""
    n_batch, n_tokens = post.shape[:2]
    valid = None
    if any(length < n_tokens for _, _, length in spans):  # [B, T]: where each row's prompt lies
        starts, lengths = (torch.tensor(column, device=post.device) for column in list(zip(*spans))[1:])
        position = torch.arange(n_tokens, device=post.device)
        valid = (position >= starts[:, None]) & (position < (starts + lengths)[:, None])
    # on several devices a block's input x is still on the previous block's device
    x, attn, ffn, post = (t.float().to(post.device) for t in (x, attn, ffn, post))
    whole = post if parallel else x + attn
    res_prox = C.proximity(x[..., None, :], whole, p)[..., 0]  # [B, T]
    others = (C.proximity(ffn[..., None, :], post, p),) if parallel else ()  # a parallel block's FFN shares its whole
    floor = torch.tensor(floors, device=post.device).view(-1, 1, 1)
    edge_chunks, head_chunks, residual, ffn_parts = [], [], [], []
    scaled = {} if target_scale is None else {"target_scale": target_scale}  # the plain call where nothing scales
    for start, stop, prox in C.head_source_proximity_chunks(whole, probs, None, p, budget, values=values, w_o=w_o,
                                                            valid=valid, **scaled):
        rows = n_batch * (stop - start)  # the shares' rows: batch x target
        (prox, *other), res = C.shares(prox.reshape(rows, stop, -1),
                                       *(o[:, start:stop].reshape(rows, 1) for o in others),
                                       residual=res_prox[:, start:stop].reshape(rows))
        prox = prox.view(n_batch, stop - start, stop, -1)
        kept = prox.sum(-1) > floor  # [B, c, stop]: graph edges sum their heads, so whole edges are kept or dropped
        index = kept.nonzero()  # (row, target, source), by row, target, source
        index[:, 1] += start
        edge_chunks.append(index)
        head_chunks.append(prox[kept])
        residual.append(res.view(n_batch, -1))
        ffn_parts += [part.view(n_batch, -1) for part in other]
    edges, heads, attn_res = torch.cat(edge_chunks), torch.cat(head_chunks), torch.cat(residual, dim=1)
    if len(residual) > 1:  # chunk by chunk: each row's edges together, still by target, then source
        order = torch.sort(edges[:, 0], stable=True).indices
        edges, heads = edges[order], heads[order]
    if parallel:
        ffn_share, ffn_res = torch.cat(ffn_parts, dim=1), attn_res
    else:
        prox = C.proximity(torch.stack([whole, ffn], dim=-2), post, p).reshape(-1, 2)  # mid and the FFN update in post
        (ffn_share,), ffn_res = C.shares(prox[:, 1:], residual=prox[:, 0])
        ffn_share, ffn_res = ffn_share.view(n_batch, -1), ffn_res.view(n_batch, -1)
    counts = torch.bincount(edges[:, 0], minlength=n_batch).tolist()
    out = []
    for (row, start, length), own, own_heads in zip(spans, edges.split(counts), heads.split(counts)):
        window = slice(start, start + length)  # each prompt's own copies: a run keeps only its shares
        out.append(LayerShares(own[:, 1:] - start, own_heads.clone(), attn_res[row, window].clone(),
                               ffn_share[row, window].clone(), ffn_res[row, window].clone()))
    return out


def top_predictions_at(runs: list, index: torch.Tensor, k: int) -> list[tuple[torch.Tensor, torch.Tensor]]:
    """Each run's top-k next tokens (probabilities [n, k], ids [n, k]) at its positions index[r]
    [n]. Runs that have not made them yet (lw.analyze_many's, say) share one unembedding of just
    those rows per model: 256 runs one by one would read the unembedding matrix 256 times for all
    their positions."""
    by_model: dict[int, list[int]] = {}
    for r, run in enumerate(runs):
        if isinstance(run, Run) and run._makes_top():
            by_model.setdefault(id(run.model), []).append(r)
    made: dict[int, tuple[torch.Tensor, torch.Tensor]] = {}
    for group in by_model.values():
        first = runs[group[0]]
        rows = torch.cat([runs[r]._normed()[index[r]] for r in group])
        probs, ids = V.top_predictions(first.hf_model, first.family, rows, k, first.budget_bytes)
        made |= dict(zip(group, zip(probs.split(index.shape[1]), ids.split(index.shape[1]))))
    return [made[r] if r in made else tuple(t[index[r]] for t in run.top_predictions(k))  # type: ignore[misc]
            for r, run in enumerate(runs)]


class Shares:
    """Tokens and the shares of every block's parts: all that routes, at any target token and
    threshold, need. `Run` adds the captured activations; `lmtt_widget.remote.analyze_compact`
    returns a bare `Shares` computed where the model runs."""

    def __init__(self, tokens: list[str], input_ids: torch.Tensor, shape: Shape, layers: list[LayerShares],
                 distance: str, floor: float = 0.0, top: tuple[torch.Tensor, torch.Tensor] | None = None, decode=None):
        self.tokens = tokens
        self.input_ids = input_ids
        self.shape = shape
        self.layers = layers
        self.distance = distance
        self.floor = floor  # attention edges with shares at or below it were not kept (see LayerShares)
        self._top = top  # (probabilities [T, k], token ids [T, k]) where no logits are kept
        self._decode = decode

    @property
    def n_tokens(self) -> int:
        return len(self.tokens)

    def position(self, position: int) -> int:
        return check_index("position", position, self.n_tokens)

    def layer(self, layer: int) -> int:
        return check_index("layer", layer, self.shape.n_layers)

    def head(self, head: int) -> int:
        return check_index("head", head, self.shape.n_heads)

    def decode(self, token_id) -> str:
        return self._decode([int(token_id)])

    def top_predictions(self, k: int = 10) -> tuple[torch.Tensor, torch.Tensor]:
        """(probabilities [T, k], token ids [T, k]): the model's top-k next tokens at every position."""
        probs, ids = self._top  # type: ignore[misc]  # set where no logits are kept
        k = check_positive("k", k)
        if k > probs.shape[1]:
            raise LmttError(f"only the top {probs.shape[1]} tokens were kept; k={k} is too large")
        return probs[:, :k], ids[:, :k]

    def top_tokens(self, position: int = -1, k: int = 10) -> list[tuple[str, float]]:
        """The model's top-k next tokens after `position`, with probabilities."""
        position = self.position(position)
        probs, ids = self.top_predictions(k)
        return [(self.decode(i), float(v)) for v, i in zip(probs[position], ids[position])]

    def attention_contributions(self, layer: int) -> tuple[torch.Tensor, torch.Tensor]:
        """(shares [T_target, T_source, H] of each head reading each source, residual's share [T]);
        edges at or below the run's `floor` read 0."""
        shares = self.layers[self.layer(layer)]
        return shares.dense(), shares.attn_residual

    def head_contributions(self, layer: int, head: int) -> torch.Tensor:
        """[T_target, T_source]: one head's shares, `attention_contributions(layer)[0][..., head]`
        without the other heads."""
        return self.layers[self.layer(layer)].head(self.head(head))

    def head_contribution_rows(self, layer: int, head: int, targets) -> torch.Tensor:
        """[len(targets), T_source]: `head_contributions(layer, head)[targets]`, read from the kept
        edges of those targets alone (they are sorted by target) without forming the [T, T] map."""
        shares, head = self.layers[self.layer(layer)], self.head(head)
        rows = torch.tensor([self.position(t) for t in targets], dtype=torch.long)
        starts = torch.searchsorted(shares.edge_targets, rows).tolist()
        stops = torch.searchsorted(shares.edge_targets, rows, right=True).tolist()
        out = shares.heads.new_zeros(len(rows), self.n_tokens)
        for i, (start, stop) in enumerate(zip(starts, stops)):
            out[i, shares.edges[start:stop, 1]] = shares.heads[start:stop, head]
        return out

    def edge_contributions(self, layer: int, target: int, source: int) -> torch.Tensor:
        """[H]: every head's share of one edge, `attention_contributions(layer)[0][target, source]`."""
        return self.layers[self.layer(layer)].edge(self.position(target), self.position(source))

    def ffn_contributions(self, layer: int) -> tuple[torch.Tensor, torch.Tensor]:
        """(the FFN update's share [T], the residual's share [T]). For parallel blocks these are
        shares of the block's one whole, as are the attention shares."""
        shares = self.layers[self.layer(layer)]
        return shares.ffn, shares.ffn_residual

    def graph(self, token: int = -1, threshold: float = 0.04, renormalize: bool = True, *, by: str = "share",
              effects=None, heads: str = "sum"):
        """The routes to the prediction at `token`: a networkx.MultiDiGraph keyed by edge kind (see
        lmtt_widget.graph). Every edge has `weight` (its share) and `effect` (None without `effects`).

        `by="share"` keeps the edges whose share is above `threshold` (the method of the papers);
        `heads="sum"` (default) adds the heads' shares of an edge and thresholds the sum, `"each"`
        thresholds and renormalises each head's share and then adds them, as the LM Transparency
        Tool does (a subset of the edges of "sum": an edge fed by several heads each under the
        threshold is dropped). `effects` (from `run.effects(...)`, for the same token) are put on
        the edges. `by="effect"` keeps the attention edges and FFN updates whose |effect| is above
        `threshold` times |m| (the effects' metric), supporting and opposing (graph.effect_routes)."""
        token = self.position(token)
        if effects is not None and effects.position != token:
            raise LmttError(f"these effects are of the prediction after token {effects.position}, not {token}: "
                            f"give token={effects.position}, or compute run.effects(token={token})")
        if by == "effect":
            if effects is None:
                raise LmttError("routes by effect need effects: run.graph(by='effect', effects=run.effects())")
            if heads != "sum" or not renormalize:
                raise LmttError("routes by effect keep edges by |effect|: heads and renormalize apply to shares only")
            return G.effect_routes(self, effects, threshold)
        if by != "share":
            raise LmttError(f"by must be 'share' or 'effect', got {by!r}")
        return G.routes(self, token, self.valid_threshold(threshold), renormalize, heads, effects)

    def edges(self, token: int = -1, threshold: float = 0.04, renormalize: bool = True):
        """The routes' edges (`graph(token, threshold, renormalize)`) as a pandas DataFrame, one row
        per edge: kind, layer, source and target (source_stage, source: its position, source_token:
        its text as `tokens` gives it; an aggregate's position name), weight, and each head's share
        of attention edges (head_0 ... ; empty for the other kinds)."""
        return G.edge_table(self.graph(token, threshold, renormalize), self.shape.n_heads, self.tokens)

    def full_graph(self, threshold: float = 0.04, renormalize: bool = True, *, heads: str = "sum"):
        """Every edge above `threshold`, for all tokens (`heads` as in `graph`)."""
        return G.full_graph(self, self.valid_threshold(threshold), renormalize, heads)

    def valid_threshold(self, threshold: float) -> float:
        """`threshold` if routes can be drawn at it from these shares; else an LmttError that says why."""
        threshold = check_threshold(threshold)
        if threshold < self.floor:
            raise LmttError(f"threshold {threshold:g} is below this analysis' floor {self.floor:g}: attention edges "
                            f"with smaller shares were not kept; analyse with floor={threshold:g} (or lower) to "
                            "route at this threshold")
        return threshold


class Run(Shares):
    """One analysed prompt: tokens, the importances of every block's parts, and readouts.

    Shares are computed once by `analyze`; graphs for other tokens or thresholds, neurons and
    vocabulary readouts are derived from them (and from the captured activations) on demand.
    """

    def __init__(self, model, prompt: str, input_ids: torch.Tensor, capture: Capture | None,
                 layers: list[LayerShares], distance: str, budget_bytes: int, floor: float = 0.0, edits=None, *,
                 top: tuple[torch.Tensor, torch.Tensor] | None = None, saved: SavedModel | None = None,
                 final_normed: torch.Tensor | None = None):
        """`capture` None: the activations were not kept (lw.analyze_many), and the first readout
        that needs them traces the prompt again. `top`: the top predictions at every position
        (probabilities [T, k], ids [T, k]), read instead of the logits while the capture is not
        held; or `final_normed` [T, d], the last residuals after the final norm, from which the
        model makes them (and the logits) when first asked. `saved`: what a file (lw.load_run)
        says of the model, for a run loaded without it."""
        if model is not None:
            family = family_of(model._module)
            shape, decode = shape_of(model._module, family), model.tokenizer.decode
            tokens = [decode([int(i)]) for i in input_ids]
        elif saved is not None:
            family, shape, tokens, decode = saved.family, saved.shape, saved.tokens, saved.decode
        else:
            raise LmttError("a Run needs its model (or, loaded from a file, what the file says of it)")
        super().__init__(tokens, input_ids, shape, layers, distance, floor, top=top, decode=decode)
        self.family = family
        self.model = model
        self.prompt = prompt
        self._capture = capture
        self._final_normed = final_normed
        self.saved = saved
        self.budget_bytes = budget_bytes
        self.edits = edits  # how the forward pass was changed; later traces of this run repeat them
        self.generated: range | None = None  # the positions the model generated itself (lw.generate)
        self.clean: Run | None = None  # for an intervened run: the run it was made from
        self.interventions: tuple = ()  # the ablations (lmtt_widget.interventions.Ablation) applied
        self.patches: tuple = ()  # the activations patched in from other prompts: (interventions.PatchNode, prompt)
        self.patch_ids: tuple = ()  # the token ids of each patch's source prompt
        self.patch_values: tuple = ()  # the activation each patch puts in place (PatchNode.value of its source)
        self.patch_edits: tuple = ()  # the edits that put the patches in place (after the ablations')
        self._neuron_cache: dict[int, torch.Tensor] = {}  # traced again for a layer the capture lacks
        self._probs_traced: dict[int, torch.Tensor] = {}  # traced again (eager attention), least recent first

    def __copy__(self) -> Run:
        """The same run (shares, settings, model) with caches of its own, its clean run's too: what
        the copy traces again is kept on the copy alone."""
        shown = object.__new__(type(self))
        shown.__dict__ = self.__dict__ | {"_neuron_cache": dict(self._neuron_cache),
                                          "_probs_traced": dict(self._probs_traced),
                                          "clean": None if self.clean is None else copy.copy(self.clean)}
        return shown

    def __repr__(self) -> str:
        changed = f", {len(self.interventions)} ablations, {len(self.patches)} patches" if self.clean else ""
        return (f"Run({self.model_name!r}, {len(self.tokens)} tokens, {self.shape.n_layers} layers, "
                f"distance={self.distance!r}, prediction={self.top_tokens(k=1)[0][0]!r}{changed})")

    # -- basics ---------------------------------------------------------------------------

    @property
    def hf_model(self):
        return self.needs_model()._module

    def needs_model(self):
        """The run's model, or (a run loaded from a file without it) an LmttError saying how to load it."""
        if self.model is None:
            raise LmttError(f"this run was loaded from a file without its model, and this needs the model's weights: "
                            f"lw.load_run(path, model=lw.load_model(...)) with {self._saved().name!r}")
        return self.model

    def _saved(self) -> SavedModel:
        """What the file said of the model, for a run loaded without it."""
        assert self.saved is not None, "a Run has its model or was loaded from a file"
        return self.saved

    @property
    def model_name(self) -> str:
        if self.model is None:
            return self._saved().name
        name = getattr(self.hf_model.config, "name_or_path", "") or type(self.hf_model).__name__
        return name.rstrip("/").rsplit("/", 1)[-1] if name.startswith(("/", ".", "~")) else name

    @property
    def n_params(self) -> int:
        return self._saved().n_params if self.model is None else sum(p.numel() for p in self.hf_model.parameters())

    @property
    def capture(self) -> Capture:
        """The activations of the forward pass; a run that did not keep them traces its prompt again
        (as `analyze` did, edits included) the first time they are read."""
        if self._capture is None:
            hf_model = self.hf_model
            keep = kept_whole(hf_model, self.family, self.shape, self.n_tokens, self.budget_bytes)
            self._capture = trace(self.model, self.family, self.shape, self.input_ids.to(hf_model.device), self.edits,
                                  neurons=keep.neurons, probs=keep.probs)
        return self._capture

    @property
    def holds_activations(self) -> bool:
        return self._capture is not None

    @functools.cached_property
    def logits(self) -> torch.Tensor:
        """[T, V] float32: the model's output logits."""
        return V.unembed(self.hf_model, self.family, self._normed()).float().cpu()

    def _normed(self) -> torch.Tensor:
        """[T, d]: the last residuals after the final norm (what the unembedding reads)."""
        if self._capture is None and self._final_normed is not None:
            return self._final_normed
        return self.capture.final_normed  # type: ignore[return-value]  # a capture of a whole pass has it

    def top_predictions(self, k: int = 10) -> tuple[torch.Tensor, torch.Tensor]:
        """(probabilities [T, k], token ids [T, k]): the model's top-k next tokens at every position."""
        if self._reads_top(k):
            return super().top_predictions(k)
        return V.top_of_logits(self.logits, check_positive("k", k))

    def top_tokens(self, position: int = -1, k: int = 10) -> list[tuple[str, float]]:
        """The model's top-k next tokens after `position`, with probabilities."""
        if self._reads_top(k):
            return super().top_tokens(position, k)
        values, ids = V.top_of_logits(self.logits[self.position(position)], check_positive("k", k))
        return [(self.decode(i), float(v)) for v, i in zip(values, ids)]

    def _reads_top(self, k) -> bool:
        """Whether the kept top predictions answer for the top k (k <= 10, and the logits are not
        held). A run with its model makes them first from its final-normed residuals (kept with
        its activations, or alone by lw.analyze_many): [T, 10] kept, never the [T, V] logits
        (805 MB at T=4096 for a 49k vocabulary) just to show predictions."""
        count = _integer(k)
        if count is None or count <= 0 or "logits" in self.__dict__:
            return False
        if self._makes_top() and count <= min(TOP_K_KEPT, self.shape.d_vocab):
            self._top = V.top_predictions(self.hf_model, self.family, self._normed(), TOP_K_KEPT, self.budget_bytes)
        return self._top is not None and count <= self._top[0].shape[1]

    def _makes_top(self) -> bool:
        """Whether the top predictions are still to be made from the final-normed residuals."""
        return self._top is None and self.model is not None and (
            self._capture is not None or self._final_normed is not None)

    # -- importances ----------------------------------------------------------------------

    def attention_pattern(self, layer: int) -> torch.Tensor:
        """[H, T_target, T_source]: the attention probabilities of `layer`, on the layer's device
        (float32; the model's dtype under eager attention). `analyze` keeps every layer's when
        they fit the run's memory budget, and otherwise (sdpa, see lmtt_widget.attention) the
        queries and keys they are computed from. Under eager attention, a run that did not keep
        them traces the model once more, up to this layer; the layers most recently asked for
        stay cached, as many as fit the budget (the last one always)."""
        return dense(self._probs(layer))

    def attention_rows(self, layer: int, targets, head: int | None = None) -> torch.Tensor:
        """`attention_pattern(layer)[:, targets]` ([H, len(targets), T_source]), or of one head
        ([len(targets), T_source]), float32 on the CPU, computing only those rows (and that head)
        where the run kept queries and keys (long prompts)."""
        probs = self._probs(layer)
        if head is not None:
            probs = probs[self.head(head)]
        rows = torch.tensor([self.position(t) for t in targets], dtype=torch.long)
        if isinstance(probs, AttentionProbs):
            return probs.at(rows).float().cpu()
        return probs[..., rows.to(probs.device), :].float().cpu()

    def _probs(self, layer: int) -> torch.Tensor | AttentionProbs:
        """A layer's probabilities as kept (indexing an AttentionProbs computes only the rows read)."""
        layer = self.layer(layer)
        if layer in self.capture.probs:
            return self.capture.probs[layer]
        traced = self._probs_traced
        if layer in traced:
            traced[layer] = traced.pop(layer)  # now the most recent
            return traced[layer]
        probs = attention_probs(self.model, self.family, self.shape, self.input_ids.to(self.hf_model.device),
                                [layer], self.edits)[layer]
        cached = sum(p.numel() * p.element_size() for p in traced.values())
        while traced and cached + probs.numel() * probs.element_size() > self.budget_bytes:
            oldest = traced.pop(next(iter(traced)))
            cached -= oldest.numel() * oldest.element_size()
        traced[layer] = probs
        return probs

    def neuron_activations(self, layer: int) -> torch.Tensor:
        """[T, d_ff]: the activations entering the FFN's output projection. `analyze` keeps every
        layer's when they fit the run's memory budget; otherwise the first request traces the
        model once more for this layer; later ones are cached. A mixture-of-experts layer has no
        layer-wide neurons: see `expert_neuron_contributions`."""
        layer = self.layer(layer)
        if layer in self.capture.neurons:  # kept (or loaded from a file, maybe without the model)
            return self.capture.neurons[layer]
        if self._ffn_module(layer, "ffn_out_proj") is None:
            raise LmttError(f"layer {layer}'s FFN is a mixture of experts: its neurons belong to its experts; read "
                            f"them with run.expert_contributions({layer}, position) and "
                            f"run.expert_neuron_contributions({layer}, position, expert)")
        if layer not in self._neuron_cache:
            self._neuron_cache.update(neuron_activations(
                self.model, self.family, self.shape, self.input_ids.to(self.hf_model.device), [layer], self.edits))
        return self._neuron_cache[layer]

    def _ffn_module(self, layer: int, name: str):
        return self.family.modules(self.hf_model, layer)[name]

    def _ffn_writes(self, layer: int, position: int, writes: torch.Tensor) -> torch.Tensor:
        """Writes [..., d] into the FFN's output, as the residual receives them (through a norm
        after the FFN, frozen at its real scale at `position`)."""
        scale = self.capture.ffn_scale[layer][position] if self.capture.ffn_scale else None
        return post_norm_map(self.family, self._ffn_module(layer, "ffn_post_norm"), writes, scale)

    @torch.no_grad()
    def neuron_writes(self, layer: int, position: int) -> torch.Tensor:
        """[d_ff, d] float32: a_n * W_out[n], what each neuron writes at `position` (through a norm
        after the FFN, frozen at its real scale, where the family has one)."""
        layer, position = self.layer(layer), self.position(position)
        acts = self.neuron_activations(layer)[position].float()
        w_out = ffn_out_matrix(self._ffn_module(layer, "ffn_out_proj")).float()
        return self._ffn_writes(layer, position, acts[:, None] * w_out.to(acts.device))

    def neuron_shares(self, layer: int, position: int) -> tuple[torch.Tensor, torch.Tensor]:
        """(shares [d_ff] of each neuron's write, the residual's share) in the whole after the block."""
        layer, position = self.layer(layer), self.position(position)
        return self._ffn_part_shares(layer, position, self.neuron_writes(layer, position))

    def _ffn_part_shares(self, layer: int, position: int, parts: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """(shares [n] of parts [n, d] of the FFN update, the residual's share) in the whole after the block."""
        whole = self.capture.resid[layer + 1][position].float()
        residual = whole - self.capture.ffn_out[layer][position].float()
        p = C.distance_order(self.distance)
        parts = parts.to(whole.device)
        chunk = max(1, self.budget_bytes // (2 * whole.numel() * 4))
        prox = torch.cat([C.proximity(parts[i:i + chunk], whole, p) for i in range(0, len(parts), chunk)])
        res_prox = C.proximity(residual[None], whole, p)
        (shares,), res = C.shares(prox[None].cpu(), residual=res_prox.cpu())
        return shares[0], res[0]

    def neuron_contributions(self, layer: int, position: int, k: int = 20) -> list[NeuronShare]:
        """The k neurons with the largest share at (layer, position), with their activations."""
        k = check_positive("k", k)
        shares, _ = self.neuron_shares(layer, position)
        acts = self.neuron_activations(layer)[self.position(position)]
        return _top_neurons(shares, acts, k)

    # -- mixtures of experts (lmtt_widget.experts) ----------------------------------------

    def has_experts(self, layer: int) -> bool:
        """Whether `layer`'s FFN is a mixture of experts (read its experts, not layer-wide neurons)."""
        return self.family.is_moe(self._ffn_module(self.layer(layer), "block"))

    def n_experts(self, layer: int) -> int:
        """How many experts `layer`'s mixture of experts has (an LmttError for a dense FFN)."""
        return X.n_experts(self.family, self._moe_block(self.layer(layer)))

    def _moe_block(self, layer: int):
        block = self._ffn_module(layer, "block")
        if not self.family.is_moe(block):
            raise LmttError(f"layer {layer}'s FFN is dense, not a mixture of experts: read its neurons with "
                            f"run.neuron_contributions({layer}, position)")
        return block

    def _ffn_input(self, layer: int, position: int) -> torch.Tensor:
        """[1, d]: the FFN block's input at `position` (its norm of the residual it reads)."""
        cap = self.capture
        read = cap.resid[layer][position].to(cap.attn_out[layer].device)
        if not self.shape.parallel:
            read = read + cap.attn_out[layer][position]  # the residual after attention, as the model adds it
        return X.ffn_input(self.family, self._moe_block(layer), read[None])

    @torch.no_grad()
    def expert_writes(self, layer: int, position: int) -> X.ExpertWrites:
        """What each expert adds to the FFN update at `position`: the selected experts (largest
        routing weight first) and the shared expert (last, where the model has one). The writes
        sum to the FFN update."""
        layer, position = self.layer(layer), self.position(position)
        block, x = self._moe_block(layer), self._ffn_input(layer, position)
        selected, weights = X.routing(self.family, block, x)
        routed: list[int] = selected[0].tolist()
        gates = list(weights[0])
        outputs = [X.expert_activations(self.family, block, x[0], e) @ X.expert_out_matrix(self.family, block, e) * w
                   for e, w in zip(routed, gates)]  # in the model's dtype, as its experts compute them
        experts: list[int | None] = list(routed)
        shared = X.shared_expert(self.family, block, x)
        if shared is not None:
            gate, output, _ = shared
            experts, gates, outputs = experts + [None], gates + [gate[0]], outputs + [output[0] * gate[0]]
        writes = torch.stack([self._ffn_writes(layer, position, out.float()) for out in outputs])
        return X.ExpertWrites(experts, torch.stack(gates).float().cpu(), writes)

    def expert_contributions(self, layer: int, position: int) -> list[X.ExpertShare]:
        """Each selected expert's routing weight and its write's share of the FFN block's whole
        (the residual after the block; the other parts are the residual and the other experts'
        writes), the shared expert's (expert None, weight its gate) last."""
        writes = self.expert_writes(layer, position)
        shares, _ = self._ffn_part_shares(self.layer(layer), self.position(position), writes.writes)
        return [X.ExpertShare(e, float(w), float(s)) for e, w, s in zip(writes.experts, writes.weights, shares)]

    @torch.no_grad()
    def expert_neuron_activations(self, layer: int, position: int, expert: int | None) -> torch.Tensor:
        """[d_ff]: the neuron activations of `expert` (None: the shared expert) at `position`, as
        the expert computes them from this position's FFN input (defined whether or not the
        router selected it)."""
        layer, position = self.layer(layer), self.position(position)
        block, x = self._moe_block(layer), self._ffn_input(layer, position)
        if expert is None:
            shared = X.shared_expert(self.family, block, x)
            if shared is None:
                raise LmttError(f"layer {layer}'s mixture of experts has no shared expert")
            return shared[2][0].float()
        expert = check_index("expert", expert, X.n_experts(self.family, block))
        return X.expert_activations(self.family, block, x[0], expert).float()

    @torch.no_grad()
    def expert_neuron_contributions(self, layer: int, position: int, expert: int | None,
                                    k: int = 20) -> list[NeuronShare]:
        """The k neurons of a selected `expert` (None: the shared expert) with the largest share
        at (layer, position), with their activations: the expert's write, drilled into its
        neurons' writes a_n w W_down[:, n] (w its routing weight, or the shared expert's gate),
        beside the residual and the other experts' writes in the whole after the block."""
        layer, position = self.layer(layer), self.position(position)
        writes = self.expert_writes(layer, position)
        at = self._writing(writes, layer, position, expert)
        acts = self.expert_neuron_activations(layer, position, expert)
        neuron_writes = self.expert_neuron_writes(layer, position, expert)
        others = torch.cat([writes.writes[:at], writes.writes[at + 1:]])
        shares, _ = self._ffn_part_shares(layer, position, torch.cat([neuron_writes, others.to(neuron_writes.device)]))
        return _top_neurons(shares[:len(acts)], acts, k)

    @torch.no_grad()
    def expert_neuron_writes(self, layer: int, position: int, expert: int | None) -> torch.Tensor:
        """[d_ff, d] float32: a_n w W_down[:, n], what each neuron of a selected `expert` (None: the
        shared expert) writes at `position` (w its routing weight, or the shared expert's gate;
        through a norm after the FFN, frozen at its real scale, where the family has one)."""
        layer, position = self.layer(layer), self.position(position)
        writes = self.expert_writes(layer, position)
        at = self._writing(writes, layer, position, expert)
        acts = self.expert_neuron_activations(layer, position, expert)
        block = self._moe_block(layer)
        if expert is None:
            out = X.shared_out_matrix(self.family, block)
        else:
            out = X.expert_out_matrix(self.family, block, expert)
        per_neuron = acts[:, None] * out.float().to(acts.device) * writes.weights[at].to(acts.device)
        return self._ffn_writes(layer, position, per_neuron)

    def _writing(self, writes: X.ExpertWrites, layer: int, position: int, expert: int | None) -> int:
        """Where `expert` (None: the shared expert) is among the experts writing at a position, or an LmttError."""
        if expert is not None:
            expert = check_index("expert", expert, X.n_experts(self.family, self._moe_block(layer)))
        if expert not in writes.experts:
            chosen = [e for e in writes.experts if e is not None]
            shared = "" if None in writes.experts else " (and this model has no shared expert)"
            raise LmttError(f"expert {expert} does not write at position {position} of layer {layer}: the router "
                            f"selected experts {chosen} there{shared}")
        return writes.experts.index(expert)

    # -- vocabulary -----------------------------------------------------------------------

    def residual(self, layer: int, position: int, stage: str = "post") -> torch.Tensor:
        """[d]: the residual stream at a node: stage "embed" (layer -1), "mid" or "post"."""
        position = self.position(position)
        if stage == "embed":
            return self.capture.resid[0][position]
        layer = self.layer(layer)
        if stage == "post":
            return self.capture.resid[layer + 1][position]
        if stage == "mid":
            if self.shape.parallel:
                raise LmttError("parallel blocks (GPT-NeoX/Pythia) have no 'mid' residual")
            attn = self.capture.attn_out[layer][position]
            return self.capture.resid[layer][position].to(attn.device) + attn
        raise LmttError(f"stage must be 'embed', 'mid' or 'post', got {stage!r}")

    def logit_lens(self, layer: int, position: int, stage: str = "post", k: int = 10,
                   normalize: bool = True) -> list[V.LensToken]:
        """Top-k tokens of a residual node read through the unembedding (after the final norm if
        `normalize`), each with its rank change since the previous node on the stream."""
        current = self.residual(layer, position, stage)
        previous = self._previous_node(layer, stage)
        before = None if previous is None else self.residual(previous[1], position, previous[0])
        return V.logit_lens(self.hf_model, self.family, current, before, check_positive("k", k), normalize, self.decode)

    def _previous_node(self, layer: int, stage: str) -> tuple[str, int] | None:
        if stage == "embed":
            return None
        layer = self.layer(layer)
        if stage == "post" and not self.shape.parallel:
            return ("mid", layer)
        return ("embed", -1) if layer == 0 else ("post", layer - 1)

    def direct_logits(self, updates: torch.Tensor, position: int) -> torch.Tensor:
        """[..., V] float32: the direct effect on the logits at `position` of updates [..., d]
        written into its residual stream, through the final norm linearised at its real scale."""
        final = self.capture.resid[-1][self.position(position)]
        return V.direct_logits(self.hf_model, self.family, updates, final)

    def _direct(self, update: torch.Tensor, position: int, k: int) -> V.LogitEffect:
        final = self.capture.resid[-1][self.position(position)]
        return V.direct_effect(self.hf_model, self.family, update, final, check_positive("k", k), self.decode)

    def block_logits(self, layer: int, position: int, block: str = "ffn", k: int = 10) -> V.LogitEffect:
        """Promoted and suppressed tokens of a block's update ("attention" or "ffn") at `position`."""
        updates = {"attention": self.capture.attn_out, "ffn": self.capture.ffn_out}
        if block not in updates:
            raise LmttError(f"block must be 'attention' or 'ffn', got {block!r}")
        return self._direct(updates[block][self.layer(layer)][self.position(position)], position, k)

    @torch.no_grad()
    def head_output(self, layer: int, head: int, target: int, source: int | None = None) -> torch.Tensor:
        """[d]: head `head`'s write at `target`, from one `source` or summed over all sources (as
        the residual receives it: through a norm after the attention block, frozen at its real
        scale, where the family has one)."""
        layer, head, target = self.layer(layer), self.head(head), self.position(target)
        values = self._head_values(layer, head).float()  # [T, 1, hd]
        weights = self._probs(layer)[head, target].float()  # type: ignore[union-attr]  # [T]: rows are tensors
        if self.capture.attn_scale:  # a norm after the attention block, frozen at its real scale
            weights = weights * self.capture.attn_scale[layer][target].to(weights.device)
        # the output projection is linear: mix the values first, project one vector
        if source is None:
            mixed = (weights.to(values.device) @ values[:, 0])[None, None]  # [1, 1, hd]
        else:
            source = self.position(source)
            mixed = weights[source].to(values.device) * values[source:source + 1]
        return head_outputs(w_o(self.hf_model, self.family, self.shape, layer)[head:head + 1], mixed, 1)[0, 0]

    def head_logits(self, layer: int, head: int, target: int, source: int | None = None,
                    k: int = 10) -> V.LogitEffect:
        """Promoted and suppressed tokens of a head's output at `target` (from `source`, or all)."""
        return self._direct(self.head_output(layer, head, target, source), target, k)

    def expert_logits(self, layer: int, position: int, expert: int | None, k: int = 10) -> V.LogitEffect:
        """Promoted and suppressed tokens of a writing expert's write at `position` (None: the shared expert)."""
        layer, position = self.layer(layer), self.position(position)
        writes = self.expert_writes(layer, position)
        return self._direct(writes.writes[self._writing(writes, layer, position, expert)], position, k)

    def neuron_logits(self, layer: int, neuron: int, position: int, k: int = 10) -> V.LogitEffect:
        """Promoted and suppressed tokens of neuron `neuron`'s write, scaled by its activation."""
        acts = self.neuron_activations(layer)
        neuron = check_index("neuron", neuron, acts.shape[1])
        return self._direct(self.neuron_writes(layer, position)[neuron], position, k)


    def _head_values(self, layer: int, head: int) -> torch.Tensor:
        kv = head // (self.shape.n_heads // self.shape.n_kv_heads)
        return self.capture.values[layer][:, kv:kv + 1]

    # -- effects (lmtt_widget.effects) ----------------------------------------------------

    def effects(self, answer=None, contrast=None, *, token: int = -1, method: str = "gradient", steps: int = 8,
                refine: int = 0):
        """What removing each attention edge, FFN update or neuron does to logit(answer) -
        logit(contrast) at position `token` (default: the top prediction against the runner-up);
        see lmtt_widget.effects. "gradient" costs one forward and one backward pass; "integrated"
        averages the gradients over `steps` points of a path from every edge removed to clean
        (EAP-IG), about `steps` times that, and ranks single parts less faithfully on every
        benchmarked task: use it for large joint removals, "gradient" to rank parts. `refine` k:
        the k largest edge terms into `token` and FFN updates at it measured exactly instead (up
        to 2k one-token reruns; `eff.refined` lists them)."""
        return E.effects(self, answer, contrast, token=token, method=method, steps=steps, refine=refine)

    # -- interventions (lmtt_widget.interventions) ----------------------------------------

    def intervene(self, ablations, mode: str = "zero", *, position: int = -1, against=None):
        """Rerun with components ablated; returns (the intervened Run, a comparison of the
        prediction at `position`, and its logit difference to `against` or the runner-up). See
        lmtt_widget.interventions.intervene."""
        return I.intervene(self, ablations, mode=mode, position=position, against=against)

    def faithfulness(self, k=(5, 10, 20), by=("share", "effect"), *, token: int = -1, answer=None, contrast=None,
                     effects=None, draws: int = 10, seed: int = 0, mode: str = "zero", candidates: int = 50,
                     scores: dict | None = None):
        """Remove the top k attention edges into `token` by each ranking (share, effect) and
        report the drop of logit(answer) - logit(contrast) as a fraction of the best k edges'
        drop, with matched random edges as a baseline: a FaithfulnessTable (see
        lmtt_widget.faithfulness)."""
        return F.faithfulness(self, k, by, token=token, answer=answer, contrast=contrast, effects=effects,
                              draws=draws, seed=seed, mode=mode, candidates=candidates, scores=scores)

    def reanalyze(self, edits) -> Run:
        """This prompt analysed again as this run was (distance, memory budget, floor), with
        `edits` (tracing.Edit) changing the forward pass: how lmtt_widget.interventions reruns."""
        return analyze_ids(self.needs_model(), self.input_ids, prompt=self.prompt, distance=self.distance,
                           budget_bytes=self.budget_bytes, floor=self.floor, edits=edits)

    # -- files (lmtt_widget.saved) ----------------------------------------------------------

    def to_file(self, path, *, activations: bool = True) -> pathlib.Path:
        """Write this run to one file (safetensors, its metadata as JSON in the header; no pickle)
        that `lw.load_run` restores without recomputing: shares, top predictions and, with
        `activations`, what the readouts read (without them: routes and predictions only). An
        intervened run keeps its clean run beside it (the same parts), its ablations and its
        patches, each patch with the activation it puts in place (see lmtt_widget.saved)."""
        tensors, meta = self._file_parts(activations)
        known = set(meta.pop("known"))
        if self.clean is not None:
            clean_tensors, clean_meta = self.clean._file_parts(activations)
            known |= set(clean_meta.pop("known"))
            patch_tensors, patches = S.patches_parts(self.patches, self.patch_ids, self.patch_values)
            tensors |= {f"clean.{name}": t for name, t in clean_tensors.items()} | patch_tensors
            meta |= {"clean": clean_meta, "interventions": S.ablations_meta(self.interventions), "patches": patches}
        meta |= {"family": self.family.name, "shape": dataclasses.asdict(self.shape),
                 "model": self._saved().identity if self.model is None else S.identity(self.hf_model),
                 "name": self.model_name, "n_params": self.n_params,
                 "vocab": {str(i): self.decode(i) for i in sorted(known)}}
        return S.write(path, tensors, meta)

    def _file_parts(self, activations: bool) -> tuple[dict[str, torch.Tensor], dict]:
        """(tensors, meta) of what this run holds itself (not its model's identity, nor what an
        intervened run adds); meta["known"] lists the token ids whose text the file must keep."""
        probs, ids = self.top_predictions(min(TOP_K_KEPT, self.shape.d_vocab))
        tensors = {"input_ids": self.input_ids, "top.probs": probs, "top.ids": ids}
        for layer, shares in enumerate(self.layers):
            tensors |= {f"layers.{layer}.{name}": t for name, t in shares.tensors().items()}
            tensors[f"layers.{layer}.edges"] = shares.edges.to(torch.int32)  # half the bytes; long again when read
        capture_meta = None
        if activations:
            capture_tensors, capture_meta = S.capture_tensors(self.capture)
            tensors |= capture_tensors
        meta = {"prompt": self.prompt, "tokens": list(self.tokens), "distance": self.distance,
                "budget_bytes": self.budget_bytes, "floor": self.floor,
                "generated": None if self.generated is None else [self.generated.start, self.generated.stop],
                "capture": capture_meta,
                "known": sorted({int(i) for i in ids.reshape(-1)} | {int(i) for i in self.input_ids})}
        return tensors, meta


def load_run(path, model=None) -> Run:
    """The run `Run.to_file` wrote, as it was: routes, predictions and (if the file has them) the
    activations' readouts, nothing recomputed; an intervened run with its clean run, ablations
    and patches. Readouts through the vocabulary and interventions need the model's weights: pass
    `model` (from `load_model`), which must be the model the run was made with (same architecture
    and weights; anything else is refused); an intervened run then reruns and takes more
    interventions as it did before it was saved."""
    if model is not None:
        check_model(model, "lw.load_run")
    tensors, meta = S.read(path)
    saved = S.saved_model(path, meta)
    if model is not None:
        S.check_same_model(meta["model"], model._module, path, meta["name"])
    _check_file_parts(path, tensors, meta, saved.shape)
    run = _run_from_file(tensors, meta, model, saved)
    if "clean" in meta:  # an intervened run (format 2)
        S.check_keys(path, meta, ["interventions", "patches"])
        _check_file_parts(path, tensors, meta["clean"], saved.shape, "clean.")
        S.check_patches(path, tensors, meta["patches"])
        clean = _run_from_file({name[len("clean."):]: t for name, t in tensors.items() if name.startswith("clean.")},
                               meta["clean"], model, saved)
        I.mark_intervened(run, clean, S.ablations_from(meta["interventions"]),
                          *S.patches_from(tensors, meta["patches"]))
    return run


def _check_file_parts(path, tensors: dict[str, torch.Tensor], meta: dict, shape: Shape, prefix: str = "") -> None:
    """Refuse, naming what, a file whose run (its tensors named `prefix`...) lacks a part that
    `Run._file_parts` writes or holds one of another shape than its metadata says."""
    where = "its metadata" + (f" of the {prefix.rstrip('.')} run" if prefix else "")
    S.check_keys(path, meta, ["prompt", "tokens", "distance", "budget_bytes", "floor", "generated", "capture"], where)
    n_tokens = len(meta["tokens"])
    S.check_layout(path, tensors, {f"{prefix}input_ids": (n_tokens,), f"{prefix}top.probs": (n_tokens, "k"),
                                   f"{prefix}top.ids": (n_tokens, "k")})
    for layer in range(shape.n_layers):
        name = f"{prefix}layers.{layer}."
        S.check_layout(path, tensors, {f"{name}edges": ("n", 2), f"{name}heads": ("n", shape.n_heads),
                                       **{f"{name}{part}": (n_tokens,) for part in ("attn_residual", "ffn",
                                                                                   "ffn_residual")}})
        S.check_edges(path, f"{name}edges", tensors[f"{name}edges"], n_tokens)
    if meta["capture"] is not None:
        S.check_layout(path, tensors, S.capture_layout(path, meta["capture"], shape, n_tokens, prefix))


def _run_from_file(tensors: dict[str, torch.Tensor], meta: dict, model, saved: SavedModel) -> Run:
    """One run from the parts `Run._file_parts` wrote (names without a prefix)."""
    fields = [f.name for f in dataclasses.fields(LayerShares)]
    layers = [LayerShares(**{name: tensors[f"layers.{layer}.{name}"] for name in fields})
              for layer in range(saved.shape.n_layers)]
    for shares in layers:
        shares.edges = shares.edges.long()
    capture = None if meta["capture"] is None else S.capture_from(tensors, meta["capture"])
    run = Run(model, meta["prompt"], tensors["input_ids"], capture, layers, meta["distance"], meta["budget_bytes"],
              meta["floor"], top=(tensors["top.probs"], tensors["top.ids"]), saved=saved)
    run.generated = None if meta["generated"] is None else range(*meta["generated"])
    return run
