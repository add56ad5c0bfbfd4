"""Routes over a dataset: `aggregate(runs, positions)` lines up the prompts' tokens and averages
their shares, so that `agg.graph(threshold)` gives the routes of the mean share, each edge with
the spread of its share over the prompts and how many prompts' own routes hold it.

Tokens line up from the end by default (last with last), or by named positions given per prompt,
e.g. {"IO": 2, "S1": 4, "S2": 10, "END": -1} for IOI templates, so that a role lines up whatever
its position. Only the positions lined up are in the aggregate: a part from another position
(an attention edge from an unnamed token) is left out, so with names a whole's mean shares may
sum to less than 1 (`renormalize` rescales what is kept, as for a run).

Names line up by name, in whatever order the prompts have them (templates where S1 comes before
IO mixed with templates where it comes after): an aggregate position is a name, and an attention
edge between two names is the edge from the one to the other in every prompt. A prompt holds an
edge only where its source is at or before its target there (a token reads only itself and
earlier tokens); where the two names come in the other order, the edge cannot exist and counts
as absent: share 0 in the mean and the spread, not in the prompt's support. So an edge whose
direction reverses across prompts is averaged over all prompts with zeros for the reversed
ones, and the edge the other way (from the later name to the earlier) is a separate edge, with
the other prompts behind it.

An `Aggregate` is a `Shares` (tokens: the position names; layers: the mean shares), so routes,
the graph's tables and the widget read it as they read a run.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any, NamedTuple

import torch

from .errors import LmttError, check_index
from .run import TOP_K_KEPT, LayerShares, Shares, top_predictions_at
from .saved import identity

AGGREGATE_TOP_K = 5  # the mean-probability predictions an aggregate keeps per position


class PromptRow(NamedTuple):
    """One prompt behind a selection in an aggregate (protocol.PromptRow)."""

    index: int  # type: ignore[assignment]  # shadows tuple.index
    prompt: str
    token: str  # its token(s) at the selection: "source → target" for an edge
    share: float | None  # its own share of what is selected (None: the embedding has none)
    in_routes: bool  # whether its own routes hold what is selected


@dataclass
class LayerSpread:
    """The standard deviation over the prompts of each of a layer's mean shares (LayerShares')."""

    edges: torch.Tensor  # [n]: of each kept edge's share (summed over heads), in LayerShares.edges' order
    attn_residual: torch.Tensor  # [T]
    ffn: torch.Tensor  # [T]
    ffn_residual: torch.Tensor  # [T]


class Aggregate(Shares):
    """The mean shares of several prompts' runs, positions lined up (see `aggregate`)."""

    def __init__(self, runs: list[Shares], names: list[str], index: torch.Tensor, layers: list[LayerShares],
                 spread: list[LayerSpread], top: tuple[torch.Tensor, torch.Tensor]):
        first = runs[0]
        super().__init__(names, torch.zeros(0, dtype=torch.long), first.shape, layers, first.distance,
                         max(run.floor for run in runs), top=top, decode=_decoder(runs))
        self.runs = runs
        self.index = index  # [prompts, T]: each prompt's position of each aggregate position
        self.spread = spread
        self.model = getattr(first, "model", None)
        self.model_name = getattr(first, "model_name", "")
        self.prompt = f"mean of {len(runs)} prompts"
        self.generated = None
        self.clean, self.interventions, self.patches = None, (), ()  # what a Run that is not intervened has
        self._routes: dict[tuple, dict] = {}  # (token, threshold, renormalize) -> each edge's prompts

    def __repr__(self) -> str:
        return f"Aggregate({len(self.runs)} prompts, positions {self.tokens})"

    @property
    def n_params(self) -> int:
        return getattr(self.runs[0], "n_params", 0)

    def graph(self, token: int = -1, threshold: float = 0.04, renormalize: bool = True, *, by: str = "share",
              effects=None, heads: str = "sum"):
        """The routes of the mean shares to `token`: a networkx.MultiDiGraph as a run's (see
        lmtt_widget.graph), each edge with `weight` (its mean share, renormalised as a run's),
        `share` (the mean share before renormalising), `std` (of the share over the prompts),
        `support` (the fraction of prompts whose own routes to that position hold the edge) and
        `prompts` (their indices). An aggregate has no effects: `by`, `effects` and `heads` take
        their defaults only (the signature is a run's)."""
        if by != "share" or effects is not None or heads != "sum":
            raise LmttError("an aggregate's routes are by the mean share, heads summed: it has no effects, and "
                            "heads='each' applies to one run's shares (open one of its prompts)")
        g = super().graph(token, threshold, renormalize)
        token, threshold = self.position(token), self.valid_threshold(threshold)
        behind = self.prompts_behind(token, threshold, renormalize)
        for u, v, kind, data in g.edges(keys=True, data=True):
            share, std = self._share(kind, u, v)
            prompts = behind.get((u, v, kind), [])
            data.update(share=share, std=std, support=len(prompts) / len(self.runs), prompts=prompts)
        return g

    def prompts_behind(self, token: int, threshold: float, renormalize: bool) -> dict[tuple, list[int]]:
        """{(u, v, kind) in aggregate nodes: the indices of the prompts whose own routes to `token`'s
        position hold that edge}; each prompt's routes computed once per token and threshold."""
        key = (token, threshold, renormalize)
        if key not in self._routes:
            behind: dict[tuple, list[int]] = {}
            for r, run in enumerate(self.runs):
                here = self._lookup(r)
                for u, v, kind in run.graph(int(self.index[r, token]), threshold, renormalize).edges(keys=True):
                    if here.get(u[2], -1) >= 0 and here.get(v[2], -1) >= 0:
                        mapped = ((u[0], u[1], here[u[2]]), (v[0], v[1], here[v[2]]), kind)
                        behind.setdefault(mapped, []).append(r)
            self._routes[key] = behind
        return self._routes[key]

    def _lookup(self, r: int) -> dict[int, int]:
        return {int(position): k for k, position in enumerate(self.index[r])}

    def _share(self, kind: str, u: tuple, v: tuple) -> tuple[float, float]:
        """(mean share, its std over the prompts) of the part an edge of the graph stands for."""
        layer = v[1]
        shares, spread = self.layers[layer], self.spread[layer]
        if kind == "attention":
            at = _edge_at(shares, v[2], u[2])
            return (0.0, 0.0) if at is None else (float(shares.edge_shares[at]), float(spread.edges[at]))
        if kind == "ffn":
            return float(shares.ffn[v[2]]), float(spread.ffn[v[2]])
        into_post = v[0] == "post" and u[0] == "mid"  # mid -> post: the FFN block's residual
        part = "ffn_residual" if into_post else "attn_residual"
        return float(getattr(shares, part)[v[2]]), float(getattr(spread, part)[v[2]])

    # -- what the widget lists behind a selection --------------------------------------------------

    def rows(self, selection: dict, token: int, threshold: float, renormalize: bool) -> list[dict[str, Any]]:
        """Each prompt behind a selection (protocol.PromptRow): its own share of what is selected,
        its token(s) there, and whether its own routes to `token`'s position hold it; prompts whose
        routes hold it first, then by share."""
        behind = self.prompts_behind(token, threshold, renormalize)
        kind, layer = selection["kind"], selection["layer"]
        rows = []
        for r, run in enumerate(self.runs):
            index = self.index[r]
            share: float | None
            if kind == "attention":
                source, target = int(index[selection["source"]]), int(index[selection["target"]])
                share = float(run.edge_contributions(layer, target, source).sum())
                text = f"{run.tokens[source]} → {run.tokens[target]}"
                into = "post" if run.shape.parallel else "mid"
                keys = [(_before(layer, selection["source"]), (into, layer, selection["target"]), "attention")]
            else:
                position = int(index[selection["token"]])
                share, stage = _node_share(run, selection, position)
                text = run.tokens[position]
                node = (stage, layer, selection["token"])
                keys = [edge for edge in behind if node in edge[:2]]
            rows.append(PromptRow(r, getattr(run, "prompt", "".join(run.tokens)), text, share,
                                  any(r in behind.get(edge, ()) for edge in keys)))
        rows.sort(key=lambda row: (not row.in_routes, -(row.share or 0.0)))
        return [row._asdict() for row in rows]


def _edge_at(shares: LayerShares, target: int, source: int) -> int | None:
    hits = ((shares.edges[:, 0] == target) & (shares.edges[:, 1] == source)).nonzero()
    return int(hits[0, 0]) if len(hits) else None


def _before(layer: int, position: int) -> tuple:
    return ("embed", -1, position) if layer == 0 else ("post", layer - 1, position)


def _node_share(run: Shares, selection: dict, position: int) -> tuple[float | None, str]:
    """(the share a node selection names in one prompt, the node's stage): an FFN block's update
    share, or a residual node's residual share of the whole it is (None for the embedding)."""
    layer = selection["layer"]
    if selection["kind"] == "ffn":
        return float(run.ffn_contributions(layer)[0][position]), "ffn"
    stage = selection["stage"]
    if stage == "embed":
        return None, "embed"
    shares = run.layers[layer]
    part = shares.ffn_residual if stage == "post" and not run.shape.parallel else shares.attn_residual
    return float(part[position]), stage


# -- making one -------------------------------------------------------------------------------------

def aggregate(runs: Sequence[Shares], positions: Sequence[dict[str, int]] | None = None) -> Aggregate:
    """The mean shares of `runs` (of one model: lw.analyze, lw.analyze_many, lw.analyze_compact),
    tokens lined up from the end, or by `positions`: one dict per run of the same names, e.g.
    {"IO": 2, "S1": 4, "S2": 10, "END": -1}, each name at its own position. The names may come in
    any order in a prompt ({"S1": 2, "IO": 4, ...} in another template); the aggregate's positions
    are the names in positions[0]'s order. An attention edge between two names is absent (share 0)
    in a prompt where its source comes after its target: see the module's docstring."""
    runs = list(runs) if isinstance(runs, (list, tuple)) else _refuse_runs(runs)
    if not runs:
        raise LmttError("aggregate needs at least one run")
    for r, run in enumerate(runs):
        if not isinstance(run, Shares) or isinstance(run, Aggregate):
            raise LmttError(f"aggregate takes runs (lw.analyze, lw.analyze_many); item {r} is {type(run).__name__}")
        if (run.shape, run.distance) != (runs[0].shape, runs[0].distance):
            raise LmttError(f"run {r} is of another model or distance than run 0 ({run.shape.n_layers} layers, "
                            f"{run.shape.n_heads} heads, {run.distance!r} vs {runs[0].shape.n_layers}, "
                            f"{runs[0].shape.n_heads}, {runs[0].distance!r}): aggregate runs of one model")
    _check_one_model(runs)
    names, index = _from_end(runs) if positions is None else _named(runs, positions)
    layers, spread = zip(*(_mean_layer(runs, index, layer) for layer in range(runs[0].shape.n_layers)))
    return Aggregate(runs, names, index, list(layers), list(spread), _mean_top(runs, index))


def _refuse_runs(runs) -> list:
    raise LmttError(f"aggregate takes a list of runs, got {type(runs).__name__}")


def _check_one_model(runs: list[Shares]) -> None:
    """Refuse runs of a model with the same shape but other weights (a fine-tune, another seed): by
    the weights' fingerprint of a file (saved.identity), the same for a run made here and its file.
    Compact shares name no model and are not compared."""
    fingerprints: dict[int, str] = {}  # id(model) -> its fingerprint: each model's weights read once
    first = None
    for r, run in enumerate(runs):
        weights = _weights_of(run, fingerprints)
        if weights is None:
            continue
        if first is None:
            first = r, weights
        elif weights != first[1]:
            raise LmttError(f"run {r} is of another model than run {first[0]}: the same architecture with other "
                            f"weights ({getattr(run, 'model_name', '')!r} vs "
                            f"{getattr(runs[first[0]], 'model_name', '')!r}): aggregate runs of one model")


def _weights_of(run: Shares, fingerprints: dict[int, str]) -> str | None:
    model, saved = getattr(run, "model", None), getattr(run, "saved", None)
    if model is not None:
        if id(model) not in fingerprints:
            fingerprints[id(model)] = identity(model._module)["weights"]
        return fingerprints[id(model)]
    return None if saved is None else saved.identity["weights"]


def _decoder(runs: list[Shares]):
    """The text of token ids: by the first run's tokenizer or, where it does not know one (runs loaded
    from files without their model: each file keeps the text of its own tokens only), by any run's."""
    def decode(ids) -> str:
        ids = [int(i) for i in ids]
        try:
            return runs[0]._decode(ids)
        except LmttError:
            return "".join(_decode_one(runs, i) for i in ids)
    return decode


def _decode_one(runs: list[Shares], token_id: int) -> str:
    for run in runs:
        try:
            return run._decode([token_id])
        except LmttError:
            pass
    raise LmttError(f"token id {token_id} is not among the tokens these runs' files kept: load them with their model")


def _from_end(runs: list[Shares]) -> tuple[list[str], torch.Tensor]:
    """Names and positions of the last n tokens of every prompt (n: the shortest prompt's length);
    a position is named by its token where every prompt has the same there, else by [-k]."""
    n = min(run.n_tokens for run in runs)
    index = torch.stack([torch.arange(run.n_tokens - n, run.n_tokens) for run in runs])
    names = []
    for k in range(n):
        texts = {run.tokens[int(position)] for run, position in zip(runs, index[:, k])}
        names.append(texts.pop() if len(texts) == 1 else f"[{k - n}]")
    return names, index


def _named(runs: list[Shares], positions) -> tuple[list[str], torch.Tensor]:
    if isinstance(positions, dict) or not isinstance(positions, (list, tuple)) or len(positions) != len(runs):
        given = f"a list of {len(positions)}" if isinstance(positions, (list, tuple)) else type(positions).__name__
        raise LmttError(f"positions must be a list of one dict per run ({len(runs)}), got {given}")
    names = list(positions[0]) if isinstance(positions[0], dict) else []
    if not names:
        raise LmttError("positions[0] must be a dict of names and positions, e.g. {'IO': 2, 'S1': 4, 'END': -1}")
    not_text = next((name for name in names if not isinstance(name, str)), None)
    if not_text is not None:  # they name the aggregate's positions, as a run's tokens do
        raise LmttError(f"position names must be strings, got {not_text!r} in positions[0]")
    index = []
    for r, (run, named) in enumerate(zip(runs, positions)):
        if not isinstance(named, dict) or set(named) != set(names):
            got = list(named) if isinstance(named, dict) else type(named).__name__
            differ = "" if not isinstance(named, dict) else (
                f" (missing {[n for n in names if n not in named]}, not in positions[0] "
                f"{[n for n in named if n not in names]})")
            raise LmttError(f"positions[{r}] must name {names}, in any order (as positions[0] does), got {got}{differ}")
        at = [check_index(f"positions[{r}][{name!r}]", named[name], run.n_tokens) for name in names]
        first_at: dict[int, str] = {}
        for name, position in zip(names, at):
            if position in first_at:
                raise LmttError(f"in prompt {r}, {first_at[position]!r} and {name!r} are both at position {position}: "
                                "give each name a position of its own")
            first_at[position] = name
        index.append(at)
    return names, torch.tensor(index, dtype=torch.long)


def _mean_layer(runs: list[Shares], index: torch.Tensor, layer: int) -> tuple[LayerShares, LayerSpread]:
    """One layer's mean shares over the prompts (and their spread), on the lined-up positions."""
    n, n_heads, count = index.shape[1], runs[0].shape.n_heads, len(runs)
    heads = torch.zeros(n, n, n_heads)
    edge_sq = torch.zeros(n, n)
    per_token = {name: torch.zeros(count, n) for name in ("attn_residual", "ffn", "ffn_residual")}
    for r, run in enumerate(runs):
        shares = run.layers[layer]
        where = torch.full((run.n_tokens,), -1, dtype=torch.long)
        where[index[r]] = torch.arange(n)
        target, source = where[shares.edges[:, 0]], where[shares.edges[:, 1]]
        kept = (target >= 0) & (source >= 0)
        heads[target[kept], source[kept]] += shares.heads[kept].float()
        edge_sq[target[kept], source[kept]] += shares.edge_shares[kept].float() ** 2
        for name, values in per_token.items():
            values[r] = getattr(shares, name)[index[r]].float()
    heads /= count
    edges = (heads.sum(-1) > 0).nonzero()  # sorted by target, then source
    mean_heads = heads[edges[:, 0], edges[:, 1]]
    mean_edge = mean_heads.sum(-1)
    edge_std = (edge_sq[edges[:, 0], edges[:, 1]] / count - mean_edge ** 2).clamp_min(0).sqrt()
    means = {name: values.mean(0) for name, values in per_token.items()}
    stds = {name: values.std(0, correction=0) for name, values in per_token.items()}
    return LayerShares(edges, mean_heads, **means), LayerSpread(edge_std, **stds)


def _mean_top(runs: list[Shares], index: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """(probabilities [n, k], ids [n, k]): at each lined-up position, the tokens of largest mean
    probability over the prompts, from each prompt's kept top predictions (a token outside a
    prompt's top ones counts 0 there)."""
    n = index.shape[1]
    mass: list[dict[int, float]] = [{} for _ in range(n)]
    for probs, ids in top_predictions_at(runs, index, min(TOP_K_KEPT, runs[0].shape.d_vocab)):
        for k in range(n):
            for p, i in zip(probs[k].tolist(), ids[k].tolist()):
                mass[k][i] = mass[k].get(i, 0.0) + p / len(runs)
    k = min(AGGREGATE_TOP_K, min(len(m) for m in mass))
    best = [sorted(m.items(), key=lambda item: -item[1])[:k] for m in mass]
    return (torch.tensor([[p for _, p in row] for row in best]), torch.tensor([[i for i, _ in row] for row in best]))

