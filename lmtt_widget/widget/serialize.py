"""What crosses from Python to the frontend: arrays as binary buffers, never JSON lists.

An array travels as `{"dtype": "float32", "shape": [T, T], "data": <bytes>}`; ipywidgets
sends every `bytes` value nested in a trait or message as a separate binary buffer, and the
frontend views it as a typed array without parsing (js/arrays.ts). This module turns a
`Run` and its routes graph into that form and back; it computes nothing of its own.
"""

from __future__ import annotations

import base64
from typing import Any

import networkx as nx
import numpy as np
import torch

from ..aggregate import Aggregate

STAGES = ("embed", "mid", "ffn", "post")  # stage codes 0..3 in the payload
KINDS = ("attention", "residual", "ffn")  # edge kind codes 0..2
DTYPES = {"float32": np.float32, "int32": np.int32, "uint32": np.uint32, "int16": np.int16,
          "uint16": np.uint16, "uint8": np.uint8}
TOP_K = 5  # predictions shown per target


def array(values, dtype: str = "float32") -> dict[str, Any]:
    """A tensor / ndarray / list as `{dtype, shape, data}` with little-endian bytes."""
    if isinstance(values, torch.Tensor):
        values = values.detach().cpu().float().numpy() if values.is_floating_point() else values.detach().cpu().numpy()
    data = np.ascontiguousarray(
        np.asarray(values, dtype=DTYPES[dtype]).astype(np.dtype(DTYPES[dtype]).newbyteorder("<")))
    return {"dtype": dtype, "shape": list(data.shape), "data": data.tobytes()}


def to_numpy(encoded: dict[str, Any]) -> np.ndarray:
    """The inverse of `array`: accepts bytes, memoryview, or base64 text (the HTML export)."""
    data = encoded["data"]
    if isinstance(data, str):
        data = base64.b64decode(data)
    dtype = np.dtype(DTYPES[encoded["dtype"]]).newbyteorder("<")
    return np.frombuffer(bytes(data), dtype=dtype).reshape(encoded["shape"])


def _display_name(run) -> str:
    name = run.model_name.rstrip("/")
    return name.rsplit("/", 1)[-1] if name.startswith(("/", ".")) else name


def run_info(run) -> dict[str, Any]:
    """Facts about the model and the prompt, and every position's top predictions."""
    s = run.shape
    probs, ids = run.top_predictions(min(TOP_K, s.d_vocab))  # [T, k] each
    return {
        "model": _display_name(run),
        "n_layers": s.n_layers, "n_heads": s.n_heads, "n_kv_heads": s.n_kv_heads, "d_model": s.d_model,
        "d_vocab": s.d_vocab, "n_ctx": s.n_ctx, "parallel": bool(s.parallel),
        "n_params": int(run.n_params),
        "distance": run.distance,
        "prompt": run.prompt,
        "tokens": list(run.tokens),
        "predictions": {"tokens": [[run.decode(i) for i in row] for row in ids.tolist()], "probs": array(probs),
                        "ids": array(ids, "int32")},
        "generated": None if run.generated is None else [run.generated.start, run.generated.stop],
        "aggregate": len(run.runs) if isinstance(run, Aggregate) else None,
    }


def graph_payload(graph: nx.MultiDiGraph, n_heads: int) -> dict[str, Any]:
    """The routes graph as flat arrays: nodes (stage, layer, token), edges (source and target
    node indices, kind, weight, effect: NaN where None) and the per-head shares and effects of
    attention edges [E_attention, H]."""
    nodes = list(graph.nodes)
    index = {node: i for i, node in enumerate(nodes)}
    edges = list(graph.edges(keys=True, data=True))
    heads = [d["heads"] for _, _, _, d in edges if d["kind"] == "attention"]
    nan = [float("nan")] * n_heads
    head_effects = [d.get("head_effects") or nan for _, _, _, d in edges if d["kind"] == "attention"]
    head_row = np.full(len(edges), -1, dtype=np.int32)
    head_row[[i for i, e in enumerate(edges) if e[3]["kind"] == "attention"]] = np.arange(len(heads), dtype=np.int32)
    return {
        "target": int(graph.graph["target"]),
        "threshold": float(graph.graph["threshold"]),
        "renormalize": bool(graph.graph["renormalize"]),
        "by": graph.graph.get("by", "share"),
        "nodes": {
            "stage": array([STAGES.index(n[0]) for n in nodes], "uint8"),
            "layer": array([n[1] for n in nodes], "int16"),
            "token": array([n[2] for n in nodes], "int32"),
        },
        "edges": {
            "source": array([index[u] for u, _, _, _ in edges], "uint32"),
            "target": array([index[v] for _, v, _, _ in edges], "uint32"),
            "kind": array([KINDS.index(d["kind"]) for _, _, _, d in edges], "uint8"),
            "weight": array([d["weight"] for _, _, _, d in edges], "float32"),
            "effect": array([_number(d.get("effect")) for _, _, _, d in edges], "float32"),
            "head_row": array(head_row, "int32"),
        },
        "heads": array(np.asarray(heads, dtype=np.float32).reshape(len(heads), n_heads)),
        "head_effects": array(np.asarray(head_effects, dtype=np.float32).reshape(len(heads), n_heads)),
    }


def _number(value) -> float:
    return float("nan") if value is None else float(value)


def payload_graph(payload: dict[str, Any]) -> nx.MultiDiGraph:
    """Rebuild the graph from a payload (for round-trip checks; weights come back as float32)."""
    stage, layer, token = (to_numpy(payload["nodes"][k]) for k in ("stage", "layer", "token"))
    nodes = [(STAGES[s], int(n), int(t)) for s, n, t in zip(stage, layer, token)]
    e = {k: to_numpy(v) for k, v in payload["edges"].items()}
    heads, head_effects = to_numpy(payload["heads"]), to_numpy(payload["head_effects"])
    g = nx.MultiDiGraph(target=payload["target"], threshold=payload["threshold"], renormalize=payload["renormalize"],
                        by=payload["by"])
    g.add_nodes_from(nodes)
    for s, t, k, w, f, h in zip(e["source"], e["target"], e["kind"], e["weight"], e["effect"], e["head_row"]):
        attrs = {"kind": KINDS[k], "weight": float(w), "effect": None if np.isnan(f) else float(f)}
        if h >= 0:
            per_head = None if np.isnan(head_effects[h]).all() else head_effects[h].tolist()
            attrs.update(heads=heads[h].tolist(), source=nodes[s][2], target=nodes[t][2], head_effects=per_head)
        g.add_edge(nodes[s], nodes[t], KINDS[k], **attrs)
    return g


def split_buffers(message: dict) -> tuple[dict, list[list], list[bytes]]:
    """(the message with every nested bytes value set to None, the paths of those values, the
    bytes): how a custom message carries binary buffers (the page puts them back, js/arrays.ts)."""
    paths: list[list] = []
    buffers: list[bytes] = []

    def walk(value, path):
        if isinstance(value, (bytes, bytearray, memoryview)):
            paths.append(path)
            buffers.append(bytes(value))
            return None
        if isinstance(value, dict):
            return {k: walk(v, [*path, k]) for k, v in value.items()}
        if isinstance(value, (list, tuple)):
            return [walk(v, [*path, i]) for i, v in enumerate(value)]
        return value

    return walk(message, []), paths, buffers


def effect(logit_effect) -> dict[str, list]:
    """A LogitEffect as JSON-ready lists of [token, value], without the tokens whose value is 0
    (an update that is all zeros, e.g. ablated, promotes and suppresses nothing)."""
    return {"promoted": [[t, float(v)] for t, v in logit_effect.promoted if v != 0],
            "suppressed": [[t, float(v)] for t, v in logit_effect.suppressed if v != 0]}


def lens(tokens) -> list[dict[str, Any]]:
    return [{"token": t.token, "probability": t.probability, "rank": t.rank, "rank_change": t.rank_change}
            for t in tokens]


def encode_text(value: Any) -> Any:
    """Nested state with bytes turned into base64 text, for the standalone HTML export."""
    if isinstance(value, (bytes, bytearray, memoryview)):
        return {"__b64__": base64.b64encode(bytes(value)).decode("ascii")}
    if isinstance(value, dict):
        return {k: encode_text(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [encode_text(v) for v in value]
    return value
