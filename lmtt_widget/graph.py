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
"""

from __future__ import annotations

from dataclasses import dataclass

import networkx as nx
import torch

from .contributions import threshold_renormalize
from .errors import check_threshold


@dataclass
class LayerEdges:
    attention: torch.Tensor  # [T_target, T_source]
    heads: torch.Tensor  # [T_target, T_source, H]
    attn_residual: torch.Tensor  # [T]: post^{l-1}_i -> mid^l_i (parallel: -> post^l_i)
    ffn: torch.Tensor  # [T]: (mid|post^{l-1})_i -> ffn^l_i -> post^l_i
    ffn_residual: torch.Tensor  # [T]: mid^l_i -> post^l_i (parallel: same as attn_residual)


def layer_edges(run, layer: int, threshold: float, renormalize: bool) -> LayerEdges:
    shares = run.layers[layer]
    heads = shares.heads
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


def _layer_graph(g: nx.MultiDiGraph, run, layer: int, threshold: float, renormalize: bool,
                 active: torch.Tensor | None) -> torch.Tensor:
    """Add one layer's edges above `threshold` that reach an `active` node leaving the layer
    (every node if None) and return which nodes feeding the layer they make active.

    The same edges and weights as `layer_edges` thresholded, but the attention shares are summed,
    renormalised and rescaled only for the targets that can keep an edge, and per-head shares
    only for the kept edges: re-routing (another token or threshold) costs little at length.
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
    rows = active_in.nonzero()[:, 0]  # targets whose attention block can keep an edge
    heads = shares.heads if len(rows) == n_tokens else shares.heads.index_select(0, rows)  # [n, T, H]
    attention = heads.sum(-1)  # [n, T]
    residual = shares.attn_residual.index_select(0, rows)
    if renormalize:
        if parallel:
            parts = torch.cat([attention, shares.ffn.index_select(0, rows)[:, None]], dim=1)
            parts, residual = threshold_renormalize(parts, residual, threshold)
            new_attention, ffn_rows = parts[:, :-1], parts[:, -1]
        else:
            new_attention, residual = threshold_renormalize(attention, residual, threshold)
    else:
        new_attention = attention
        if parallel:
            ffn_rows = shares.ffn.index_select(0, rows)
    kept = (new_attention > threshold).nonzero()  # [k, 2]: (row, source)
    kept_rows, kept_sources = kept[:, 0], kept[:, 1]
    weights = new_attention[kept_rows, kept_sources]
    kept_heads = heads[kept_rows, kept_sources]  # [k, H]
    if renormalize:
        old = attention[kept_rows, kept_sources]
        kept_heads = kept_heads * torch.where(old > 0, weights / old.clamp_min(1e-30), torch.zeros_like(old))[:, None]
    keep_residual = residual > threshold
    feeding = torch.zeros(n_tokens, dtype=torch.bool)
    feeding[kept_sources] = True
    feeding[rows[keep_residual]] = True

    before, mid, ffn, post = _node_names(run, layer)
    attn_into = post if parallel else mid
    ffn_from = before if parallel else mid
    targets = rows[kept_rows].tolist()
    for i, j, w, h in zip(targets, kept_sources.tolist(), weights.tolist(), kept_heads.tolist()):
        g.add_edge(before(j), attn_into(i), "attention", kind="attention", weight=w, heads=h, source=j, target=i)
    for i, w in zip(rows[keep_residual].tolist(), residual[keep_residual].tolist()):
        g.add_edge(before(i), attn_into(i), "residual", kind="residual", weight=w)
    if parallel:
        keep_ffn_rows = ffn_rows > threshold
        feeding[rows[keep_ffn_rows]] = True
        ffn_edges = zip(rows[keep_ffn_rows].tolist(), ffn_rows[keep_ffn_rows].tolist())
    else:
        ffn_edges = zip(keep_ffn.nonzero()[:, 0].tolist(), ffn_share[keep_ffn].tolist())
        for i, w in zip(keep_ffn_residual.nonzero()[:, 0].tolist(), ffn_residual[keep_ffn_residual].tolist()):
            g.add_edge(mid(i), post(i), "residual", kind="residual", weight=w)
    for i, w in ffn_edges:
        g.add_edge(ffn_from(i), ffn(i), "ffn", kind="ffn", weight=w)
        g.add_edge(ffn(i), post(i), "ffn", kind="ffn", weight=w)
    return feeding


def _new_graph(run) -> nx.MultiDiGraph:
    return nx.MultiDiGraph(tokens=list(run.tokens), n_layers=run.shape.n_layers, parallel=run.shape.parallel)


def _label_nodes(g: nx.MultiDiGraph, run) -> nx.MultiDiGraph:
    for node in g.nodes:
        stage, layer, position = node
        g.nodes[node].update(stage=stage, layer=layer, token=position, label=run.tokens[position])
    return g


def routes(run, token: int, threshold: float = 0.04, renormalize: bool = True) -> nx.MultiDiGraph:
    """Edges above `threshold` reachable backwards from post^{L-1}_token."""
    threshold = check_threshold(threshold)
    g = _new_graph(run)
    last = run.shape.n_layers - 1
    g.add_node(("post", last, token))
    active = torch.zeros(run.n_tokens, dtype=torch.bool)
    active[token] = True
    for layer in range(last, -1, -1):
        active = _layer_graph(g, run, layer, threshold, renormalize, active)
    g.graph.update(target=token, threshold=threshold, renormalize=renormalize)
    return _label_nodes(g, run)


def full_graph(run, threshold: float = 0.04, renormalize: bool = True) -> nx.MultiDiGraph:
    """Every edge above `threshold`, for all tokens."""
    threshold = check_threshold(threshold)
    g = _new_graph(run)
    for layer in range(run.shape.n_layers):
        _layer_graph(g, run, layer, threshold, renormalize, None)
    g.graph.update(threshold=threshold, renormalize=renormalize)
    return _label_nodes(g, run)
