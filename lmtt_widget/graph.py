"""The graph of information flow (tokens x layers) and the routes to a prediction.

The graph is a `networkx.MultiDiGraph` whose edge keys are the kinds, because a token's
self-attention edge and its residual edge join the same two nodes and are different edges:
`g.edges[("post", 3, 5), ("mid", 4, 5), "attention"]`.

Nodes are `(stage, layer, position)` tuples, stage in {"embed", "mid", "ffn", "post"}
("embed" has layer -1; parallel blocks have no "mid"). Node attributes: `stage`, `layer`,
`token` (the position) and `label` (the token's text). Edges carry `kind` in
{"attention", "residual", "ffn"} and `weight`; attention edges also `heads` (per-head shares,
length H) and `source`/`target` positions.

Edge weights are shares of the whole they feed. An attention edge j -> i is the sum over heads
of the shares of z^h_{i<-j}. With `renormalize`, each whole's parts (attention edges, the FFN
update, the residual) are thresholded and renormalised first (contributions.threshold_renormalize),
and an edge's per-head shares are rescaled with it.

`heads="each"` is the LM Transparency Tool's rule instead: every (target, source, head) term is a
part of its own, thresholded and renormalised as such, and an edge's weight is the sum of its
heads' surviving shares. Summing the heads first (the default, "sum") keeps an edge whose heads
are each under the threshold but together above it; "each" drops it, and never keeps an edge
that "sum" drops.

Every edge also carries `effect`: with `effects` (lmtt_widget.effects.Effects) the change of the
effects' metric when the part is removed (attention edges: summed over heads, and `head_effects`
per head; FFN edges: the FFN update's), None otherwise and always for residual edges (removing
a residual stream is not a part's removal). `effect_routes` keeps edges by effect instead of share.
"""

from __future__ import annotations

from dataclasses import dataclass

import networkx as nx
import torch

from .contributions import threshold_renormalize, threshold_renormalize_sparse
from .errors import LmttError, check_threshold


@dataclass
class LayerEdges:
    attention: torch.Tensor  # [T_target, T_source]
    heads: torch.Tensor  # [T_target, T_source, H]
    attn_residual: torch.Tensor  # [T]: post^{l-1}_i -> mid^l_i (parallel: -> post^l_i)
    ffn: torch.Tensor  # [T]: (mid|post^{l-1})_i -> ffn^l_i -> post^l_i
    ffn_residual: torch.Tensor  # [T]: mid^l_i -> post^l_i (parallel: same as attn_residual)


def layer_edges(run, layer: int, threshold: float, renormalize: bool) -> LayerEdges:
    """One layer's edges as whole tensors (the plain form; routes use _layer_graph)."""
    shares = run.layers[layer]
    heads = shares.dense()
    attention = heads.sum(-1)
    if not renormalize:
        return LayerEdges(attention, heads, shares.attn_residual, shares.ffn, shares.ffn_residual)
    if run.shape.parallel:
        parts = torch.cat([attention, shares.ffn[:, None]], dim=1)
        parts, residual = threshold_renormalize(parts, shares.attn_residual, threshold)
        new_attention, ffn, ffn_residual = parts[:, :-1], parts[:, -1], residual
    else:
        new_attention, residual = threshold_renormalize(attention, shares.attn_residual, threshold)
        ffn, ffn_residual = threshold_renormalize(shares.ffn[:, None], shares.ffn_residual, threshold)
        ffn = ffn[:, 0]
    scale = torch.where(attention > 0, new_attention / attention.clamp_min(1e-30), torch.zeros_like(attention))
    return LayerEdges(new_attention, heads * scale[..., None], residual, ffn, ffn_residual)


def _node_names(run, layer: int):
    """(stage, layer, position) makers for the nodes that feed and leave a layer."""
    def before(i):
        return ("embed", -1, i) if layer == 0 else ("post", layer - 1, i)
    return before, (lambda i: ("mid", layer, i)), (lambda i: ("ffn", layer, i)), (lambda i: ("post", layer, i))


HEAD_RULES = ("sum", "each")


def _layer_graph(g: nx.MultiDiGraph, run, layer: int, threshold: float, renormalize: bool,
                 active: torch.Tensor | None, heads: str = "sum", effects=None) -> torch.Tensor:
    """Add one layer's edges above `threshold` that reach an `active` node leaving the layer
    (every node if None) and return which nodes feeding the layer they make active.

    The same edges and weights as `layer_edges` thresholded, computed on the kept (sparse) edges
    into the targets that can keep one: re-routing (another token or threshold) costs little at
    length.
    """
    shares = run.layers[layer]
    parallel = run.shape.parallel
    n_tokens = shares.ffn.shape[0]
    everything = torch.ones(n_tokens, dtype=torch.bool)
    active_out = everything if active is None else active
    ffn_share, ffn_residual = shares.ffn, shares.ffn_residual
    if not parallel:
        if renormalize:
            ffn_share, ffn_residual = threshold_renormalize(shares.ffn[:, None], shares.ffn_residual, threshold)
            ffn_share = ffn_share[:, 0]
        keep_ffn = active_out & (ffn_share > threshold)
        keep_ffn_residual = active_out & (ffn_residual > threshold)
        active_in = everything if active is None else (keep_ffn | keep_ffn_residual)
    else:
        active_in = active_out
    # the attention edges into targets that can keep one (all of them without `active`)
    chosen = None if active is None else active_in[shares.edges[:, 0]].nonzero()[:, 0]
    edges = shares.edges if chosen is None else shares.edges[chosen]  # [n, 2]
    targets, sources = edges[:, 0], edges[:, 1]
    head_shares = shares.heads if chosen is None else shares.heads[chosen]  # [n, H]
    per_row: tuple[torch.Tensor, ...] = (shares.ffn,) if parallel else ()  # a parallel FFN: a part of the same whole
    if heads == "each":  # every head's term a part of its own; the edge sums what survives
        n_heads = head_shares.shape[1]
        (head_shares, *rows), residual = _renormalized(head_shares.flatten(), targets.repeat_interleave(n_heads),
                                                       per_row, shares.attn_residual, threshold, renormalize)
        head_shares = torch.where(head_shares > threshold, head_shares, 0.0).view(-1, n_heads)
        attention = head_shares.sum(-1)
    else:
        edge_shares = shares.edge_shares if chosen is None else shares.edge_shares[chosen]  # [n]
        (attention, *rows), residual = _renormalized(edge_shares, targets, per_row, shares.attn_residual,
                                                     threshold, renormalize)
    if parallel:
        (ffn_share,) = rows
    kept = (attention > threshold).nonzero()[:, 0]
    weights = attention[kept]
    kept_heads = head_shares[kept]  # [k, H]
    if renormalize and heads == "sum":  # per-head shares are rescaled with their edge
        kept_heads = kept_heads * (weights / kept_heads.sum(-1))[:, None]
    kept_targets, kept_sources = targets[kept], sources[kept]
    keep_residual = active_in & (residual > threshold)
    feeding = keep_residual.clone()
    feeding[kept_sources] = True

    if parallel:
        keep_ffn = active_in & (ffn_share > threshold)
        feeding |= keep_ffn
    _add_edges(g, run, layer, (kept_targets, kept_sources, weights, kept_heads), keep_residual, residual,
               None if parallel else (keep_ffn_residual, ffn_residual), (keep_ffn, ffn_share), effects)
    return feeding


def _add_edges(g: nx.MultiDiGraph, run, layer: int, attention, keep_residual: torch.Tensor, residual: torch.Tensor,
               ffn_residual, ffn, effects) -> None:
    """Add one layer's kept edges to `g`: attention (targets, sources, weights, per-head shares),
    the residual edges into the attention whole, those into the FFN whole (None for parallel
    blocks: they have one whole) and the FFN edges (kept [T], shares [T]), each with its effect."""
    targets, sources, weights, head_shares = attention
    before, mid, ffn_node, post = _node_names(run, layer)
    parallel = ffn_residual is None
    attn_into = post if parallel else mid
    ffn_from = before if parallel else mid
    head_effects = None if effects is None else effects.layers[layer].at(targets, sources)  # [k, H]
    for n, (i, j, w, h) in enumerate(zip(targets.tolist(), sources.tolist(), weights.tolist(), head_shares.tolist())):
        per_head = None if head_effects is None else head_effects[n].tolist()
        g.add_edge(before(j), attn_into(i), "attention", kind="attention", weight=w, heads=h, source=j, target=i,
                   effect=None if per_head is None else sum(per_head), head_effects=per_head)
    for i in keep_residual.nonzero()[:, 0].tolist():
        g.add_edge(before(i), attn_into(i), "residual", kind="residual", weight=float(residual[i]), effect=None)
    if not parallel:
        keep, shares = ffn_residual
        for i in keep.nonzero()[:, 0].tolist():
            g.add_edge(mid(i), post(i), "residual", kind="residual", weight=float(shares[i]), effect=None)
    keep, shares = ffn
    for i in keep.nonzero()[:, 0].tolist():
        effect = None if effects is None else float(effects.layers[layer].ffn[i])
        g.add_edge(ffn_from(i), ffn_node(i), "ffn", kind="ffn", weight=float(shares[i]), effect=effect)
        g.add_edge(ffn_node(i), post(i), "ffn", kind="ffn", weight=float(shares[i]), effect=effect)


def _renormalized(values: torch.Tensor, rows: torch.Tensor, per_row: tuple[torch.Tensor, ...], residual: torch.Tensor,
                  threshold: float, renormalize: bool) -> tuple[tuple[torch.Tensor, ...], torch.Tensor]:
    """Shares of parts given sparsely (values[k] is a part of whole rows[k]) and per whole ([T]
    each), thresholded and renormalised as contributions.threshold_renormalize does."""
    if not renormalize:
        return (values, *per_row), residual
    return threshold_renormalize_sparse(values, rows, per_row, residual, threshold)


def _new_graph(run) -> nx.MultiDiGraph:
    return nx.MultiDiGraph(tokens=list(run.tokens), n_layers=run.shape.n_layers, parallel=run.shape.parallel)


def _label_nodes(g: nx.MultiDiGraph, run) -> nx.MultiDiGraph:
    for node in g.nodes:
        stage, layer, position = node
        g.nodes[node].update(stage=stage, layer=layer, token=position, label=run.tokens[position])
    return g


def check_heads(heads) -> str:
    if heads not in HEAD_RULES:
        raise LmttError(f"heads must be 'sum' (add the heads' shares, then threshold the edge) or 'each' "
                        f"(threshold each head's share, then add them: the LM Transparency Tool's rule), got {heads!r}")
    return heads


def routes(run, token: int, threshold: float = 0.04, renormalize: bool = True, heads: str = "sum",
           effects=None) -> nx.MultiDiGraph:
    """Edges above `threshold` reachable backwards from post^{L-1}_token; `heads` and `effects`
    as in the module docstring."""
    threshold, heads = check_threshold(threshold), check_heads(heads)
    g, active = _start(run, token)
    for layer in range(run.shape.n_layers - 1, -1, -1):
        active = _layer_graph(g, run, layer, threshold, renormalize, active, heads, effects)
    g.graph.update(target=token, threshold=threshold, renormalize=renormalize, by="share", heads=heads)
    return _label_nodes(g, run)


def full_graph(run, threshold: float = 0.04, renormalize: bool = True, heads: str = "sum",
               effects=None) -> nx.MultiDiGraph:
    """Every edge above `threshold`, for all tokens."""
    threshold, heads = check_threshold(threshold), check_heads(heads)
    g = _new_graph(run)
    for layer in range(run.shape.n_layers):
        _layer_graph(g, run, layer, threshold, renormalize, None, heads, effects)
    g.graph.update(threshold=threshold, renormalize=renormalize, by="share", heads=heads)
    return _label_nodes(g, run)


def edge_table(g: nx.MultiDiGraph, n_heads: int, tokens: list[str]):
    """A graph's edges as a pandas DataFrame (one row each, strongest first): kind, layer (of the
    block the edge enters), source_stage, source (position), source_token (its text in `tokens`),
    target_stage, target, target_token, weight, any other number the edges carry (an aggregate's
    std and support), and head_0 .. head_{H-1} (attention edges' per-head shares; NaN for the
    other kinds)."""
    import pandas as pd

    rows = []
    for (u_stage, _, u_pos), (v_stage, v_layer, v_pos), data in g.edges(data=True):
        heads = data.get("heads") or [float("nan")] * n_heads
        extra = {k: v for k, v in data.items() if isinstance(v, float) and k != "weight"}
        rows.append({"kind": data["kind"], "layer": v_layer, "source_stage": u_stage, "source": u_pos,
                     "source_token": tokens[u_pos], "target_stage": v_stage, "target": v_pos,
                     "target_token": tokens[v_pos], "weight": data["weight"], **extra,
                     **{f"head_{h}": float(s) for h, s in enumerate(heads)}})
    columns = ["kind", "layer", "source_stage", "source", "source_token", "target_stage", "target", "target_token",
               "weight"]
    table = pd.DataFrame(rows, columns=None if rows else columns + [f"head_{h}" for h in range(n_heads)])
    return table.sort_values("weight", ascending=False, ignore_index=True) if rows else table

def _start(run, token: int) -> tuple[nx.MultiDiGraph, torch.Tensor]:
    """A graph holding the prediction's node post^{L-1}_token, and the positions active at the top."""
    g = _new_graph(run)
    g.add_node(("post", run.shape.n_layers - 1, token))
    active = torch.zeros(run.n_tokens, dtype=torch.bool)
    active[token] = True
    return g, active


# -- routes by effect ----------------------------------------------------------------------------

def effect_routes(run, effects, threshold: float = 0.04) -> nx.MultiDiGraph:
    """The routes by effect to the prediction at `effects.position`: walking backwards from
    post^{L-1} of that position, every attention edge and FFN update whose |effect| exceeds
    `threshold` times |m| (effects.scale(): |m|, at least 1e-3), supporting (effect > 0) and
    opposing (< 0) alike, into a position already on the routes; a position on the routes keeps its
    residual edges, which carry the kept parts on. Edge weights are the plain shares (summed over
    heads, not thresholded nor renormalised; 0 for an edge whose share is under the run's floor);
    an effect is an estimate of the whole change of m through every later path, so an edge is kept
    for its own effect, whatever the effects of the edges after it."""
    threshold = check_threshold(threshold)
    cut = threshold * effects.scale()
    g, active = _start(run, effects.position)
    for layer in range(run.shape.n_layers - 1, -1, -1):
        active = _effect_layer_graph(g, run, effects, layer, cut, active)
    g.graph.update(target=effects.position, threshold=threshold, renormalize=False, by="effect", heads="sum",
                   metric=effects.metric, value=effects.value)
    return _label_nodes(g, run)


def _effect_layer_graph(g: nx.MultiDiGraph, run, effects, layer: int, cut: float, active: torch.Tensor) -> torch.Tensor:
    shares, layer_effects = run.layers[layer], effects.layers[layer]
    targets, sources = layer_effects.edges[:, 0], layer_effects.edges[:, 1]
    kept = (active[targets] & (layer_effects.heads.sum(-1).abs() > cut)).nonzero()[:, 0]
    targets, sources = targets[kept], sources[kept]
    head_shares = lookup(shares.edges, shares.heads, targets, sources, run.n_tokens)  # [k, H]
    keep_ffn = active & (layer_effects.ffn.abs() > cut)
    ffn_residual = None if run.shape.parallel else (active, shares.ffn_residual)
    _add_edges(g, run, layer, (targets, sources, head_shares.sum(-1), head_shares), active, shares.attn_residual,
               ffn_residual, (keep_ffn, shares.ffn), effects)
    feeding = active.clone()
    feeding[sources] = True
    return feeding


def lookup(edges: torch.Tensor, values: torch.Tensor, targets: torch.Tensor, sources: torch.Tensor,
           n_tokens: int) -> torch.Tensor:
    """values [n, ...] of sparse edges [n, 2] (sorted by target, then source) at the pairs
    (targets[k], sources[k]): [k, ...], 0 where an edge was not kept."""
    keys = edges[:, 0] * n_tokens + edges[:, 1]
    wanted = targets * n_tokens + sources
    at = torch.searchsorted(keys, wanted).clamp_max(max(len(keys) - 1, 0))
    found = keys[at] == wanted if len(keys) else torch.zeros_like(wanted, dtype=torch.bool)
    out = values.new_zeros(len(wanted), *values.shape[1:])
    out[found] = values[at[found]]
    return out
