"""Exact readouts of one position's prediction with parts of what it receives removed: attention
edges into it (all heads or one) and FFN updates at it, many sets at once, each measured by a
rerun. What lmtt_widget.faithfulness measures rankings with, and lmtt_widget.effects refines its
estimates with.

Parts removed at position t change nothing before t, so for a run without interventions only t
is rerun, from the clean keys and values of the positions before it: a batch of one-token
passes, one per set. An intervened run is rerun whole (ablated_logits), a set at a time.
"""

from __future__ import annotations

import inspect
from typing import NamedTuple

import torch

from ..architectures import norm_eps, text_config, w_o
from ..tracing import block_update, exclusive
from .running import Readout, ablated_logits, readout


class Part(NamedTuple):
    """A part of what the position receives: the attention edge source -> position in `layer`
    (`head`'s term, or every head's: None), or, with `source` None, the FFN update of `layer` at
    the position. A tuple (layer, source) or (layer, source, head) means the same."""

    layer: int
    source: int | None
    head: int | None = None

    @property
    def is_ffn(self) -> bool:
        return self.source is None

    def ablation(self, position: int) -> tuple:
        """Its tuple form in lmtt_widget.interventions."""
        if self.is_ffn:
            return ("ffn", self.layer, position)
        return ("edge", self.layer, self.source, position) + (() if self.head is None else (self.head,))


def _order(part: Part) -> tuple:
    """Sorts parts (None, for the FFN update or every head, first)."""
    return tuple(-1 if value is None else value for value in part)


class EdgeRemovals:
    """Exact readouts of the prediction at `position` with sets of `Part`s removed (`mode` as in
    interventions: "zero", or "mean" over the clean run's positions), cached by set.

    A run without interventions reruns only `position` (module docstring), as many sets in one
    batch as fit the run's memory budget (each holds a copy of the cache). An intervened run is
    rerun whole, its ablations kept; so is a run of a family whose attention gives no
    probabilities in a pass with a cache (Falcon under sdpa: they are computed from the pass'
    own keys)."""

    def __init__(self, run, position: int, answer: int, contrast: int, mode: str = "zero"):
        self.run, self.position, self.answer, self.contrast, self.mode = run, position, answer, contrast, mode
        self.clean = readout(run.logits, position, answer, contrast)
        self._cache: dict[frozenset, Readout] = {frozenset(): self.clean}

    def drops(self, sets: list[list]) -> list[Readout]:
        """Clean minus removed (p(answer), logit(answer), m) for each set of parts (`Part`s or
        their tuples)."""
        keys = [frozenset(Part(*part) for part in parts) for parts in sets]
        missing = list(dict.fromkeys(key for key in keys if key not in self._cache))
        for key, row in zip(missing, self._logits([sorted(key, key=_order) for key in missing])):
            self._cache[key] = Readout(float(row.softmax(-1)[self.answer]), float(row[self.answer]),
                                       float(row[self.answer] - row[self.contrast]))
        return [Readout(*(c - a for c, a in zip(self.clean, self._cache[key]))) for key in keys]

    def _logits(self, sets: list[list[Part]]) -> list[torch.Tensor]:
        run, t = self.run, self.position
        if run.edits or run.family.probs_from_inputs is not None:  # rerun whole (see the class docstring)
            return [ablated_logits(run, [part.ablation(t) for part in parts], self.mode)[t] for parts in sets]
        shape = run.shape
        per_set = 2 * shape.n_layers * shape.n_kv_heads * shape.head_dim * (t + 1) * 4 + 4 * shape.d_vocab
        batch = max(1, run.budget_bytes // per_set)
        return [row for i in range(0, len(sets), batch) for row in self._batch(sets[i:i + batch])]

    @torch.no_grad()
    def _batch(self, sets: list[list[Part]]) -> torch.Tensor:
        """[len(sets), V]: the logits at the position, one one-token pass per set, batched."""
        run, t, shape, model = self.run, self.position, self.run.shape, self.run.model
        device = run.hf_model.device
        clamp = run.family.value_clamp(text_config(run.hf_model))
        n = len(sets)
        edges = torch.zeros(shape.n_layers, n, shape.n_heads, t + 1)  # which heads' sources each set removes
        ffn = torch.zeros(shape.n_layers, n, dtype=torch.bool)  # which FFN updates each set removes
        for row, parts in enumerate(sets):
            for part in parts:
                if part.is_ffn:
                    ffn[part.layer, row] = True
                else:
                    edges[part.layer, row, slice(None) if part.head is None else part.head, part.source] = 1.0
        ids = run.input_ids[t].repeat(n, 1).to(device)  # [n, 1]
        kwargs = {"attention_mask": torch.ones(n, t + 1, dtype=torch.long, device=device)}
        layers = sorted(set(edges.sum((1, 2, 3)).nonzero()[:, 0].tolist()) | set(ffn.any(1).nonzero()[:, 0].tolist()))
        with exclusive(model):
            if t > 0:
                past = _past(run, t)
                past.batch_repeat_interleave(n)
                kwargs[_cache_argument(run.hf_model)] = past
            with model.trace(ids, **kwargs):
                for layer in layers:  # in the order the forward pass runs them (nnsight needs it)
                    modules = run.family.modules(model, layer)
                    if edges[layer].any():
                        self._remove_edges(layer, modules, edges[layer].to(device), n, clamp)
                    if ffn[layer].any():
                        self._remove_ffn(layer, modules, ffn[layer].to(device))
                logits = model.output.logits[:, -1].save()
        return logits.float().cpu()

    def _remove_edges(self, layer: int, modules: dict, removed: torch.Tensor, n: int, clamp) -> None:
        """Inside the trace: take the removed edges' terms (removed [n, H, t + 1]) out of each set's
        attention update."""
        run, t = self.run, self.position
        own = run.family.value_vectors(modules["value_proj"].output.reshape(n, -1), run.shape,
                                       clamp)  # [n, KV, hd]: position t's
        attention = modules["attention"].output
        probs = _all_sources(attention[1][:, :, 0], t + 1)
        terms = self._terms(layer, removed, probs, own)
        post_norm = modules["attn_post_norm"]
        if post_norm is None:
            attention[0][:, 0] -= terms.to(attention[0].dtype)
        else:  # taken out of the norm's output, at the norm's real scale (architectures' notes)
            scale = run.family.norm.scale(attention[0][:, 0], norm_eps(post_norm))  # [n]
            post_norm.output[:, 0] -= (terms * scale[:, None]).to(attention[0].dtype)

    def _remove_ffn(self, layer: int, modules: dict, removed: torch.Tensor) -> None:
        """Inside the trace: the FFN update (as the residual receives it) of the sets `removed` [n]
        set to 0, or to its mean over the clean run's positions."""
        update, _ = block_update(self.run.family, modules, "ffn", modules["ffn"].output)  # [n, 1, d]
        fill = (self.run.capture.ffn_out[layer].float().mean(0) if self.mode == "mean"
                else torch.zeros(update.shape[-1]))
        update[:, 0] = torch.where(removed[:, None], fill.to(update), update[:, 0])

    def _terms(self, layer: int, removed: torch.Tensor, probs, own: torch.Tensor) -> torch.Tensor:
        """[n, d]: sum over removed sources s and heads h of A^h[t,s] (v^h_s - mean) W_O^h, for each
        set (removed [n, H, t + 1]; probs [n, H, t + 1]; own [n, KV, hd]: the values at t)."""
        run, t, shape = self.run, self.position, self.run.shape
        clean = run.capture.values[layer].float().to(own.device)  # [T, KV, hd]
        mean = clean.mean(0) if self.mode == "mean" else torch.zeros_like(clean[0])
        group = shape.n_heads // shape.n_kv_heads
        w = w_o(run.hf_model, run.family, shape, layer).float().to(own.device)  # [H, hd, d]
        weights = probs.float() * removed  # [n, H, t + 1]
        earlier = (clean[:t] - mean).repeat_interleave(group, dim=1)  # [t, H, hd]
        at_t = (own.float() - mean).repeat_interleave(group, dim=1)  # [n, H, hd]
        mixed = torch.einsum("nhs,shk->nhk", weights[:, :, :t], earlier) + weights[:, :, t, None] * at_t
        return torch.einsum("nhk,hkd->nd", mixed, w)


def _all_sources(probs: torch.Tensor, n_sources: int) -> torch.Tensor:
    """[n, H, n_sources]: a one-token pass' probabilities [n, H, S] over all the positions up to it.
    A sliding-window layer's cache keeps only the last S keys: the earlier sources get 0."""
    missing = n_sources - probs.shape[-1]
    return probs if missing == 0 else torch.nn.functional.pad(probs, (missing, 0))


def _past(run, position: int):
    """The cache of the keys and values of the positions before `position`."""
    output = run.hf_model(run.input_ids[None, :position].to(run.hf_model.device), use_cache=True)
    return output["cache"] if "cache" in output else output["past_key_values"]  # named cache since transformers 5


def _cache_argument(hf_model) -> str:
    """The forward pass' keyword for a cache: `cache` since transformers 5, `past_key_values` before."""
    return "cache" if "cache" in inspect.signature(hf_model.forward).parameters else "past_key_values"
