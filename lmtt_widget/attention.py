"""Attention probabilities without eager attention.

Eager attention is the only transformers implementation that returns its probabilities, and it
writes a [B, H, T, T] tensor per layer, slower than the fused sdpa kernel at length. The
implementation registered here as `NAME` runs sdpa for the block's output and returns, where eager
attention returns its probabilities, an `AttentionProbs`: softmax(q k^T * scaling + mask) from the
same queries and keys, computed when read and only for the target rows read (the importances
read a chunk of rows at a time, so no layer's [H, T, T] is ever whole unless asked for).

A model the user hands to `load_model` stays theirs: it keeps its own attention, and runs `NAME`
only inside the package's traces (`probabilities_inside`), so that in the user's own code it
returns what transformers promises.
"""

from __future__ import annotations

import contextlib
import weakref

import torch

NAME = "lmtt_sdpa"
_in_traces: weakref.WeakKeyDictionary[torch.nn.Module, str | None] = weakref.WeakKeyDictionary()  # use_in_traces'


class AttentionProbs:
    """Attention probabilities [B, H, T, S] (or [H, T, S] once a batch is picked), float32,
    computed from queries and keys when indexed. Indexing the batch or head axes only gives
    another AttentionProbs; any index that reaches the target axis gives a tensor, computed for
    the target rows it selects."""

    def __init__(self, query: torch.Tensor, key: torch.Tensor, mask: torch.Tensor | None, scaling: float,
                 groups: int = 1):
        self.query = query  # [..., H, T, hd] (or [..., T, hd] once a head is picked)
        self.key = key  # [..., H / groups, S, hd]: key head h // groups serves query head h
        self.mask = mask  # None (causal), bool (True: attend) or additive, with as many axes as query
        self.scaling = scaling
        self.groups = groups

    @property
    def shape(self) -> torch.Size:
        return torch.Size((*self.query.shape[:-1], self.key.shape[-2]))

    @property
    def nbytes(self) -> int:
        """What it holds: queries, keys and mask (not the [..., H, T, S] it stands for)."""
        held = [self.query, self.key] + ([] if self.mask is None else [self.mask])
        return sum(t.numel() * t.element_size() for t in held)

    def rows(self, start: int, stop: int, sources: int | None = None) -> torch.Tensor:
        """[..., H, stop - start, sources]: the probabilities of targets start..stop-1 for the
        first `sources` sources (None: all; fewer only where the rest are surely masked)."""
        n_targets, n_sources = self.query.shape[-2], self.key.shape[-2]
        offset = n_sources - n_targets  # target i sits at position i + offset
        if sources is None or self.mask is not None:
            sources = n_sources
        sources = min(n_sources, max(sources, stop + offset))  # causal: later sources of these rows get 0
        # float32 per read (a no-op for float32 models): a cached copy would outlive the read in every kept layer
        keys = self.key[..., :sources, :].float().transpose(-1, -2)  # [..., KV, hd, sources]
        query = self.query[..., start:stop, :].float() * self.scaling  # [..., H, c, hd]
        if self.groups == 1:
            scores = query @ keys
        else:  # the query heads of a key head side by side: one product per key head, no copied keys
            *lead, n_heads, n_rows, head_dim = query.shape
            grouped = query.reshape(*lead, n_heads // self.groups, self.groups * n_rows, head_dim)
            scores = (grouped @ keys).reshape(*lead, n_heads, n_rows, sources)
        if self.mask is None:  # causal: target i reads sources up to its own position
            target = torch.arange(start, stop, device=scores.device)[:, None] + offset
            scores.masked_fill_(torch.arange(sources, device=scores.device) > target, float("-inf"))
        elif self.mask.dtype == torch.bool:
            scores.masked_fill_(~self.mask[..., start:stop, :], float("-inf"))
        else:
            scores += self.mask[..., start:stop, :].float()
        return scores.softmax(-1)

    def at(self, targets: torch.Tensor) -> torch.Tensor:
        """[..., H, len(targets), S]: the probabilities of the target rows `targets` (positions
        among the targets, any order), in one product whatever their spread."""
        n_targets, n_sources = self.query.shape[-2], self.key.shape[-2]
        targets = targets.to(self.query.device)
        keys = self.key.float().transpose(-1, -2)  # [..., KV, hd, S]
        query = self.query[..., targets, :].float() * self.scaling  # [..., H, n, hd]
        if self.groups == 1:
            scores = query @ keys
        else:
            *lead, n_heads, n_rows, head_dim = query.shape
            grouped = query.reshape(*lead, n_heads // self.groups, self.groups * n_rows, head_dim)
            scores = (grouped @ keys).reshape(*lead, n_heads, n_rows, n_sources)
        if self.mask is None:  # causal
            position = targets[:, None] + (n_sources - n_targets)
            scores.masked_fill_(torch.arange(n_sources, device=scores.device) > position, float("-inf"))
        elif self.mask.dtype == torch.bool:
            scores.masked_fill_(~self.mask[..., targets, :], float("-inf"))
        else:
            scores += self.mask[..., targets, :].float()
        return scores.softmax(-1)

    def dense(self) -> torch.Tensor:
        return self.rows(0, self.query.shape[-2])

    def clone(self) -> torch.Tensor:  # a tensor that edits may change in place
        return self.dense()

    def __getitem__(self, index) -> AttentionProbs | torch.Tensor:
        index = index if isinstance(index, tuple) else (index,)
        target_axis = self.query.dim() - 2
        if Ellipsis in index or any(i is None for i in index):
            return self.dense()[index]
        if len(index) <= target_axis and all(isinstance(i, (int, slice)) for i in index):
            return self._narrow(index)
        lead, target, rest = index[:target_axis], slice(None), ()
        if len(index) > target_axis:
            target, rest = index[target_axis], index[target_axis + 1:]
        n_targets = self.query.shape[-2]
        if isinstance(target, int) and not isinstance(target, bool):
            if not -n_targets <= target < n_targets:
                raise IndexError(f"index {target} is out of bounds for the {n_targets} targets")
            position = target % n_targets
            return self.rows(position, position + 1)[(*lead, 0, *rest)]
        if isinstance(target, slice) and target.step in (None, 1):
            start, stop, _ = target.indices(n_targets)
            source = rest[0] if rest else slice(None)
            first = isinstance(source, slice) and source.start in (None, 0) and source.step in (None, 1)
            sources = source.stop if first and isinstance(source.stop, int) and source.stop >= 0 else None
            return self.rows(start, max(start, stop), sources)[(*lead, slice(None), *rest)]
        return self.dense()[index]

    def _narrow(self, index: tuple) -> AttentionProbs:
        """Batch or head axes picked or sliced; keys and mask follow (the mask where it is not broadcast)."""
        query, key, mask, groups = self.query, self.key, self.mask, self.groups
        head_axis = query.dim() - 3
        for axis in reversed(range(len(index))):  # from the last, so that dropped axes move nothing
            i, before = index[axis], (slice(None),) * axis
            n = query.shape[axis]
            query = query[(*before, i)]  # raises IndexError as a tensor would
            if axis == head_axis and groups > 1:
                if isinstance(i, int):  # one query head: its key head
                    key, groups = key[(*before, (i % n) // groups)], 1  # type: ignore[index]
                else:
                    key, groups = key.repeat_interleave(groups, dim=axis)[(*before, i)], 1
            else:
                key = key[(*before, i)]
            if mask is not None:
                broadcast = mask.shape[axis] == 1
                mask = mask[(*before, (0 if isinstance(i, int) else slice(None)) if broadcast else i)]
        return AttentionProbs(query, key, mask, self.scaling, groups)

    def __repr__(self) -> str:
        return f"AttentionProbs(shape={tuple(self.shape)}, computed when read)"


def probs_window(probs: AttentionProbs | torch.Tensor, rows: int | slice, positions: slice):
    """The probabilities of a batch's `rows` (one row: its batch axis dropped) among the targets and
    sources at `positions`: from [B, H, T, T], a tensor or an AttentionProbs (which stays one)."""
    if not isinstance(probs, AttentionProbs):
        return probs[rows, :, positions, positions]
    mask = probs.mask  # bool (True: attend) or additive (which may carry ALiBi's biases): kept as it is
    if mask is not None:
        broadcast = 0 if isinstance(rows, int) else slice(None)
        mask = mask[rows if mask.shape[0] > 1 else broadcast, :, positions, positions]
    return AttentionProbs(probs.query[rows, :, positions], probs.key[rows, :, positions], mask, probs.scaling,
                          probs.groups)


def batch_of_one(probs: AttentionProbs | torch.Tensor):
    """One prompt's probabilities [H, T, T] (a tensor or an AttentionProbs) as a batch [1, H, T, T]."""
    if isinstance(probs, AttentionProbs):
        mask = None if probs.mask is None else probs.mask[None]
        return AttentionProbs(probs.query[None], probs.key[None], mask, probs.scaling, probs.groups)
    return probs[None]


def dense(probs: AttentionProbs | torch.Tensor) -> torch.Tensor:
    """A tensor of the probabilities, whichever attention produced them."""
    return probs.dense() if isinstance(probs, AttentionProbs) else probs


def sdpa_with_probs(module, query, key, value, attention_mask, scaling=None, dropout=0.0, **kwargs):
    """transformers' sdpa attention, returning AttentionProbs where eager attention returns its probabilities."""
    from transformers.integrations.sdpa_attention import sdpa_attention_forward

    output, _ = sdpa_attention_forward(module, query, key, value, attention_mask, dropout=dropout, scaling=scaling,
                                       **kwargs)
    mask = attention_mask
    if mask is not None:
        mask = mask.reshape(*[1] * (query.dim() - mask.dim()), *mask.shape)
    scaling = query.shape[-1] ** -0.5 if scaling is None else scaling
    return output, AttentionProbs(query, key, mask, scaling, groups=query.shape[-3] // key.shape[-3])


def output_probs(attention_output) -> AttentionProbs | torch.Tensor:
    """[H, T, S]: the probabilities in an attention module's output (batch 0), or an LmttError."""
    probs = attention_output[1]
    if probs is None:
        from .errors import LmttError

        raise LmttError("the model's attention returned no probabilities: it must run eager attention "
                        "(attn_implementation='eager') or be loaded with lw.load_model")
    return probs[0]


def use_in_traces(hf_model, implementation: str | None = NAME) -> None:
    """Make the package's traces of `hf_model` run `implementation` where its own attention does
    not give the probabilities: `NAME` (the default) if it gives none (sdpa, flash attention),
    "eager" for a family whose real probabilities only eager attention gives (soft-capped Gemma),
    None to keep its own (architectures.Family.trace_attention). The model itself is not changed."""
    if implementation == NAME:
        register()
    _in_traces[hf_model] = implementation


def in_traces(hf_model) -> str:
    """The attention implementation that the package's traces of `hf_model` run."""
    own = getattr(hf_model.config, "_attn_implementation", "eager")
    wanted = _in_traces.get(hf_model)
    if wanted is None or own == wanted or (wanted == NAME and own == "eager"):  # eager gives probabilities too
        return own
    return wanted


@contextlib.contextmanager
def probabilities_inside(hf_model):
    """Within the block, a model marked by `use_in_traces` runs the attention chosen there (unless
    its own gives the probabilities); after it, also on an error, every config has its own again."""
    implementation = in_traces(hf_model)
    if implementation == getattr(hf_model.config, "_attn_implementation", "eager"):
        yield
        return
    configs = _configs(hf_model)
    own = [config._attn_implementation for config in configs]
    try:
        for config in configs:
            config._attn_implementation_internal = implementation
        yield
    finally:
        for config, previous in zip(configs, own):
            config._attn_implementation_internal = previous


def _configs(hf_model) -> list:
    """Every config whose `_attn_implementation` a module of `hf_model` reads, each once: the
    model's, those of pretrained models nested in it, and their sub-configs (multimodal models)."""
    from transformers import PretrainedConfig

    found: dict[int, PretrainedConfig] = {}
    pending = [getattr(module, "config", None) for module in hf_model.modules()]
    while pending:
        config = pending.pop()
        if isinstance(config, PretrainedConfig) and id(config) not in found:
            found[id(config)] = config
            pending += [getattr(config, key, None) for key in getattr(config, "sub_configs", {})]
    return list(found.values())


def check_gives_probs(hf_model) -> None:
    """An LmttError, with the fix, for a model whose attention returns no probabilities in the package's traces."""
    from .errors import LmttError

    implementation = in_traces(hf_model)
    if implementation not in ("eager", NAME):
        raise LmttError(f"{implementation!r} attention gives no attention probabilities: load the model with "
                        "lw.load_model, or create it with attn_implementation='eager' (a remote model must: "
                        "nnsight.TransformersModel(repo_id, attn_implementation='eager'))")


def register() -> str:
    """Make `NAME` an attention implementation transformers models can be set to; returns NAME."""
    from transformers import AttentionInterface
    from transformers.masking_utils import AttentionMaskInterface, sdpa_mask

    AttentionInterface.register(NAME, sdpa_with_probs)
    AttentionMaskInterface.register(NAME, sdpa_mask)
    return NAME
