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

from .contributions import threshold_renormalize, threshold_renormalize_sparse
from .errors import check_threshold


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


def _layer_graph(g: nx.MultiDiGraph, run, layer: int, threshold: float, renormalize: bool,
                 active: torch.Tensor | None) -> torch.Tensor:
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
    attention = shares.edge_shares if chosen is None else shares.edge_shares[chosen]  # [n]
    residual = shares.attn_residual
    if parallel:  # the FFN update is a part of the same whole
        (attention, ffn_share), residual = _renormalized(attention, targets, (shares.ffn,), residual, threshold,
                                                         renormalize)
    else:
        (attention,), residual = _renormalized(attention, targets, (), residual, threshold, renormalize)
    kept = (attention > threshold).nonzero()[:, 0]
    weights = attention[kept]
    kept_heads = shares.heads[kept if chosen is None else chosen[kept]]  # [k, H]
    if renormalize:  # per-head shares are rescaled with their edge
        kept_heads = kept_heads * (weights / kept_heads.sum(-1))[:, None]
    kept_targets, kept_sources = targets[kept], sources[kept]
    keep_residual = active_in & (residual > threshold)
    feeding = keep_residual.clone()
    feeding[kept_sources] = True

    before, mid, ffn, post = _node_names(run, layer)
    attn_into = post if parallel else mid
    ffn_from = before if parallel else mid
    for i, j, w, h in zip(kept_targets.tolist(), kept_sources.tolist(), weights.tolist(), kept_heads.tolist()):
        g.add_edge(before(j), attn_into(i), "attention", kind="attention", weight=w, heads=h, source=j, target=i)
    for i in keep_residual.nonzero()[:, 0].tolist():
        g.add_edge(before(i), attn_into(i), "residual", kind="residual", weight=float(residual[i]))
    if parallel:
        keep_ffn = active_in & (ffn_share > threshold)
        feeding |= keep_ffn
    else:
        for i in keep_ffn_residual.nonzero()[:, 0].tolist():
            g.add_edge(mid(i), post(i), "residual", kind="residual", weight=float(ffn_residual[i]))
    for i in keep_ffn.nonzero()[:, 0].tolist():
        w = float(ffn_share[i])
        g.add_edge(ffn_from(i), ffn(i), "ffn", kind="ffn", weight=w)
        g.add_edge(ffn(i), post(i), "ffn", kind="ffn", weight=w)
    return feeding


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


def edge_table(g: nx.MultiDiGraph, n_heads: int):
    """A graph's edges as a pandas DataFrame (one row each, strongest first): kind, layer (of the
    block the edge enters), source_stage, source, target_stage, target (positions), weight, any
    other number the edges carry (an aggregate's std and support), and head_0 .. head_{H-1}
    (attention edges' per-head shares; NaN for the other kinds)."""
    import pandas as pd

    rows = []
    for (u_stage, _, u_pos), (v_stage, v_layer, v_pos), data in g.edges(data=True):
        heads = data.get("heads") or [float("nan")] * n_heads
        extra = {k: v for k, v in data.items() if isinstance(v, float) and k != "weight"}
        rows.append({"kind": data["kind"], "layer": v_layer, "source_stage": u_stage, "source": u_pos,
                     "target_stage": v_stage, "target": v_pos, "weight": data["weight"], **extra,
                     **{f"head_{h}": float(s) for h, s in enumerate(heads)}})
    columns = ["kind", "layer", "source_stage", "source", "target_stage", "target", "weight"]
    table = pd.DataFrame(rows, columns=None if rows else columns + [f"head_{h}" for h in range(n_heads)])
    return table.sort_values("weight", ascending=False, ignore_index=True) if rows else table
