"""Interventions on the forward pass, with nnsight: ablate heads, neurons, blocks and single
attention edges; test a route's faithfulness; compare and patch two prompts; export the code.

Ablations are tuples (or `Ablation`s); positions are optional and default to every position:

    ("head", layer, head[, positions])       the head's slice of the output projection's input
    ("neuron", layer, index[, positions])    the neuron's activation entering the FFN out-projection
    ("attention", layer[, positions])        the attention block's update
    ("ffn", layer[, positions])              the FFN block's update
    ("edge", layer, source, target[, head])  z^h_{target<-source} = A^h_ts v^h_s W_O^h, from the
                                             attention block's update at `target` only (all heads
                                             if no head is given)

mode "zero" removes the activation; "mean" replaces it by its mean over the positions of the
clean run (for an edge: the source's value vector by the mean value vector, so the edge's term
becomes A^h_ts * mean_j(v^h_j) W_O^h). Everything runs in the one trace of `analyze`, through
`tracing.Edit`s, so the intervened `Run` has graphs and readouts of its own. In the intervened
run's importances, an activation replaced by a constant (zero, a mean, a patched-in value) reads
no source of this prompt: the captured probabilities of what it replaced are set to 0, so the
routes show no attention edge through it. The model's weights are never changed.

    intervene(run, ablations, mode)        -> (Run, Comparison)   also run.intervene(...)
    ablated_logits(run, ablations, mode)   -> [T, V] logits only, for sweeps
    faithfulness(run, token, threshold, k) -> Faithfulness        also run.faithfulness(...)
    compare(run_a, run_b)                  -> GraphDiff           edges that appear, vanish, change
    patch(run_from, run_into, node)        -> (Run, Comparison)   a node's activation from another prompt
    code(run, ablations, mode)             -> str                 standalone nnsight code
"""

from __future__ import annotations

import random
import statistics
from dataclasses import asdict, dataclass, field
from typing import NamedTuple

import torch

from . import vocab as V
from .architectures import ffn_out_matrix
from .errors import LmttError, check_index
from .tracing import Edit, trace

KINDS = ("head", "neuron", "attention", "ffn", "edge")
MODES = ("zero", "mean")
STAGES = ("embed", "mid", "ffn", "post")


@dataclass(frozen=True)
class Ablation:
    """One ablation, indices checked and non-negative. `positions` None: every position."""

    kind: str
    layer: int
    head: int | None = None
    neuron: int | None = None
    source: int | None = None
    target: int | None = None
    positions: tuple[int, ...] | None = None
    mode: str = "zero"

    def as_tuple(self) -> tuple:
        """The tuple form that `intervene` accepts."""
        where = () if self.positions is None else (list(self.positions),)
        if self.kind == "head":
            return ("head", self.layer, self.head, *where)
        if self.kind == "neuron":
            return ("neuron", self.layer, self.neuron, *where)
        if self.kind == "edge":
            return ("edge", self.layer, self.source, self.target) + (() if self.head is None else (self.head,))
        return (self.kind, self.layer, *where)


class Readout(NamedTuple):
    """The prediction's numbers in one run: probability, logit, and logit minus the other token's."""

    probability: float
    logit: float
    logit_diff: float


@dataclass
class Comparison:
    """Before and after an intervention, at one position, for the original prediction `token`
    and (logit difference) against a second token: the runner-up unless one is given."""

    position: int
    token: str
    token_id: int
    against: str
    against_id: int
    before: Readout
    after: Readout
    top_before: list[tuple[str, float]]
    top_after: list[tuple[str, float]]

    @property
    def prob_change(self) -> float:
        return self.after.probability - self.before.probability

    @property
    def logit_change(self) -> float:
        return self.after.logit - self.before.logit

    @property
    def logit_diff_change(self) -> float:
        return self.after.logit_diff - self.before.logit_diff

    def to_dict(self) -> dict:
        out = asdict(self)
        out.update(before=self.before._asdict(), after=self.after._asdict(), prob_change=self.prob_change,
                   logit_change=self.logit_change, logit_diff_change=self.logit_diff_change)
        return out

    def __repr__(self) -> str:
        return (f"Comparison(p({self.token!r}) {self.before.probability:.3f} -> {self.after.probability:.3f}, "
                f"logit {self.before.logit:.3f} -> {self.after.logit:.3f}, logit diff vs {self.against!r} "
                f"{self.before.logit_diff:.3f} -> {self.after.logit_diff:.3f}, "
                f"top after {[t for t, _ in self.top_after[:3]]})")


# -- parsing and checking ----------------------------------------------------------------------

def _positions(run, where) -> tuple[int, ...] | None:
    if where is None:
        return None
    items = [where] if isinstance(where, int) else list(where)
    if not items:
        raise LmttError("positions is empty: give position indices, or leave them out for every position")
    return tuple(sorted({run.position(p) for p in items}))


def _n_neurons(run, layer: int) -> int:
    return ffn_out_matrix(run.family.modules(run.hf_model, layer)["ffn_out_proj"]).shape[0]


def parse(run, spec, mode: str = "zero") -> Ablation:
    """An `Ablation` from its tuple form (or an `Ablation`), checked against `run`'s model."""
    if isinstance(spec, Ablation):
        spec, mode = spec.as_tuple(), spec.mode
    if mode not in MODES:
        raise LmttError(f"mode must be one of {MODES}, got {mode!r}")
    if not isinstance(spec, (tuple, list)) or not spec or spec[0] not in KINDS:
        raise LmttError(f"an ablation is a tuple starting with one of {KINDS}, got {spec!r}; e.g. ('head', 3, 1), "
                        "('neuron', 3, 42), ('attention', 3), ('ffn', 3), ('edge', 3, source, target[, head])")
    kind, args = spec[0], list(spec[1:])
    arity = {"head": (2, 3), "neuron": (2, 3), "attention": (1, 2), "ffn": (1, 2), "edge": (3, 4)}[kind]
    if not arity[0] <= len(args) <= arity[1]:
        raise LmttError(f"a {kind!r} ablation takes {arity[0]} or {arity[1]} values after the kind, got {spec!r}")
    layer = run.layer(args[0])
    if kind == "head":
        return Ablation("head", layer, head=run.head(args[1]), positions=_positions(run, (args + [None])[2]), mode=mode)
    if kind == "neuron":
        neuron = check_index("neuron", args[1], _n_neurons(run, layer))
        return Ablation("neuron", layer, neuron=neuron, positions=_positions(run, (args + [None])[2]), mode=mode)
    if kind in ("attention", "ffn"):
        return Ablation(kind, layer, positions=_positions(run, (args + [None])[1]), mode=mode)
    source, target = check_index("source", args[1], run.n_tokens), check_index("target", args[2], run.n_tokens)
    if source > target:
        raise LmttError(f"edge source {source} is after its target {target}: a token reads only itself and "
                        "earlier tokens (source <= target)")
    head = None if len(args) < 4 else run.head(args[3])
    return Ablation("edge", layer, head=head, source=source, target=target, mode=mode)


def _parse_all(run, ablations, mode: str) -> list[Ablation]:
    """A list of checked ablations from one ablation or a list of them."""
    one = isinstance(ablations, Ablation) or (isinstance(ablations, tuple) and ablations and isinstance(ablations[0], str))
    parsed = [parse(run, spec, mode) for spec in ([ablations] if one else ablations)]
    if not parsed:
        raise LmttError("no ablations given")
    return parsed


# -- edits of the forward pass -----------------------------------------------------------------

def _rows(positions):
    return slice(None) if positions is None else list(positions)


def _head_slice(run, head: int) -> slice:
    return slice(head * run.shape.head_dim, (head + 1) * run.shape.head_dim)


def _kv(run, head: int) -> int:
    return head // (run.shape.n_heads // run.shape.n_kv_heads)


def _mean_head_mix(clean, layer: int, head: int) -> torch.Tensor:
    """[head_dim]: the head's slice of the output projection's input, mean over the clean positions."""
    values = clean.capture.values[layer][:, _kv(clean, head)].float()  # [T, hd]
    return (clean.attention_pattern(layer)[head].float() @ values).mean(0)


def _covered(ablation: Ablation, layer: int, head: int, target: int) -> bool:
    """Whether `ablation` already removes head `head`'s whole output at `target` in `layer`."""
    hits = ablation.layer == layer and (ablation.positions is None or target in ablation.positions)
    return hits and (ablation.kind == "attention" or (ablation.kind == "head" and ablation.head == head))


def edits_for(clean, ablations: list[Ablation], alongside: list[Ablation] = ()) -> list[Edit]:
    """The `tracing.Edit`s that carry out `ablations` (applied `alongside` others); means come
    from the `clean` run. An edge term that a head or attention ablation already removes is
    not removed twice."""
    everything = list(alongside) + list(ablations)
    edits: list[Edit] = []
    for ab in ablations:
        edits += _edits_one(clean, ab, everything)
    return edits


def _edits_one(clean, ab: Ablation, everything: list[Ablation]) -> list[Edit]:
    rows, mean = _rows(ab.positions), ab.mode == "mean"
    if ab.kind == "head":
        cols = _head_slice(clean, ab.head)
        value = _mean_head_mix(clean, ab.layer, ab.head) if mean else 0.0

        def heads(x, state, rows=rows, cols=cols, value=value):
            x[rows, cols] = value.to(x) if mean else 0.0

        def probs(p, state, rows=rows, head=ab.head):
            p[head, rows] = 0.0
        return [Edit("out_proj_input", ab.layer, heads), Edit("probs", ab.layer, probs)]
    if ab.kind == "neuron":
        value = clean.neuron_activations(ab.layer)[:, ab.neuron].float().mean() if mean else 0.0

        def neuron(x, state, rows=rows, n=ab.neuron, value=value):
            x[rows, n] = value.to(x) if mean else 0.0
        return [Edit("ffn_out_proj_input", ab.layer, neuron)]
    if ab.kind in ("attention", "ffn"):
        updates = clean.capture.attn_out if ab.kind == "attention" else clean.capture.ffn_out
        value = updates[ab.layer].float().mean(0) if mean else 0.0

        def block(x, state, rows=rows, value=value):
            x[rows] = value.to(x) if mean else 0.0
        site = "attention_output" if ab.kind == "attention" else "ffn_output"
        if ab.kind == "ffn":
            return [Edit(site, ab.layer, block)]

        def probs(p, state, rows=rows):
            p[:, rows] = 0.0
        return [Edit(site, ab.layer, block), Edit("probs", ab.layer, probs)]
    return _edge_edits(clean, ab, everything)


def _edge_edits(clean, ab: Ablation, everything: list[Ablation]) -> list[Edit]:
    from .run import w_o

    heads = range(clean.shape.n_heads) if ab.head is None else [ab.head]
    heads = [h for h in heads if not any(_covered(other, ab.layer, h, ab.target) for other in everything)]
    if not heads:
        return []
    w = w_o(clean.hf_model, clean.family, clean.shape, ab.layer).float()[heads]  # [h, hd, d]
    kvs = [_kv(clean, h) for h in heads]
    mean_values = clean.capture.values[ab.layer].float().mean(0)[kvs] if ab.mode == "mean" else 0.0  # [h, hd]
    s, t = ab.source, ab.target

    def edge(x, state):  # x [T, d]: remove sum_h A^h_ts (v^h_s - mean) W_O^h at the target
        values = state.values[s, kvs].float() - mean_values  # [h, hd]
        weights = state.probs[heads, t, s].float()  # [h]
        term = torch.einsum("h,hk,hkd->d", weights, values, w.to(values.device))
        x[t] -= term.to(x)

    def probs(p, state):
        p[heads, t, s] = 0.0
    return [Edit("attention_output", ab.layer, edge), Edit("probs", ab.layer, probs)]


# -- running -----------------------------------------------------------------------------------

def _base(run):
    """(the clean run, the ablations already applied to `run`)."""
    return getattr(run, "clean", None) or run, list(getattr(run, "interventions", ()))


def _rerun(clean, edits: list[Edit]):
    from .run import analyze_ids

    return analyze_ids(clean.model, clean.input_ids, prompt=clean.prompt, distance=clean.distance,
                       budget_bytes=clean.budget_bytes, floor=clean.floor, edits=edits)


@torch.no_grad()
def _logits(clean, edits: list[Edit]) -> torch.Tensor:
    """[T, V] float32 logits of the edited forward pass, without the importances (cheaper)."""
    capture = trace(clean.model, clean.family, clean.shape, clean.input_ids.to(clean.hf_model.device), edits)
    return V.unembed(clean.hf_model, clean.family, capture.final_normed).float().cpu()


def token_id(run, token) -> int:
    """A token id from an id or a string that is exactly one token (e.g. " John")."""
    if isinstance(token, int) and not isinstance(token, bool):
        return check_index("token id", token, run.shape.d_vocab)
    if isinstance(token, str):
        ids = run.model.tokenizer(token, add_special_tokens=False)["input_ids"]
        if len(ids) != 1:
            raise LmttError(f"{token!r} is {len(ids)} tokens, not one; give a single token (mind the leading space) "
                            "or its id")
        return int(ids[0])
    raise LmttError(f"a token is an id or a one-token string, got {token!r}")


def _targets(run, logits: torch.Tensor, position: int, against) -> tuple[int, int]:
    """(the prediction at `position`, the token to compare it with: `against` or the runner-up)."""
    top2 = logits[position].topk(2).indices.tolist()
    return top2[0], (top2[1] if against is None else token_id(run, against))


def _readout(logits: torch.Tensor, position: int, token: int, other: int) -> Readout:
    row = logits[position]
    return Readout(float(row.softmax(-1)[token]), float(row[token]), float(row[token] - row[other]))


def _top(run, logits: torch.Tensor, position: int, k: int = 10) -> list[tuple[str, float]]:
    probs = logits[position].softmax(-1)
    values, ids = probs.topk(min(k, probs.numel()))
    return [(run.decode(i), float(v)) for v, i in zip(values, ids)]


def compare_logits(run, before: torch.Tensor, after: torch.Tensor, position: int = -1, against=None) -> Comparison:
    """The `Comparison` of two logit tensors [T, V] of `run`'s prompt."""
    position = run.position(position)
    token, other = _targets(run, before, position, against)
    return Comparison(position, run.decode(token), token, run.decode(other), other,
                      _readout(before, position, token, other), _readout(after, position, token, other),
                      _top(run, before, position), _top(run, after, position))


def ablated_logits(run, ablations, mode: str = "zero") -> torch.Tensor:
    """[T, V] float32: the logits of `run` with `ablations` added, from the forward pass only
    (no importances, no Run): for sweeps over many ablations."""
    clean, earlier = _base(run)
    added = _parse_all(clean, ablations, mode)
    return _logits(clean, list(getattr(run, "edits", None) or []) + edits_for(clean, added, earlier))


def intervene(run, ablations, mode: str = "zero", *, position: int = -1, against=None):
    """Rerun `run`'s prompt with `ablations` (see the module docstring) in `mode` "zero" or "mean".

    Returns (the intervened Run, a Comparison at `position` of the original prediction, and of
    its logit difference to `against` or the runner-up). Intervening on an intervened run adds to
    its ablations; means always come from the clean run.
    """
    clean, earlier = _base(run)
    added = _parse_all(clean, ablations, mode)
    new = _rerun(clean, list(getattr(run, "edits", None) or []) + edits_for(clean, added, earlier))
    new.clean, new.interventions, new.patches = clean, tuple(earlier + added), getattr(run, "patches", ())
    new.patch_ids = getattr(run, "patch_ids", ())
    return new, compare_logits(run, run.logits, new.logits, position, against)


# -- faithfulness ------------------------------------------------------------------------------

class RouteEdge(NamedTuple):
    layer: int
    source: int
    target: int
    weight: float | None  # its share in the route graph; None for a random edge


@dataclass
class Faithfulness:
    """How much the prediction depends on the route's strongest attention edges, vs random ones.

    Drops are clean minus ablated (positive: the ablation hurt the prediction)."""

    position: int
    token: str
    against: str
    threshold: float
    k: int
    mode: str
    clean: Readout
    route_edges: list[RouteEdge]
    route: Readout
    random_edges: list[list[RouteEdge]]
    random: list[Readout]
    sampling: str = field(default=(
        "each draw matches the route's edges one for one: for a route edge source -> target in layer l, "
        "a random source s <= target into the same target in the same layer, not a route edge, "
        "without repeats within the draw"))

    def drop(self, readout: Readout) -> Readout:
        return Readout(*(c - a for c, a in zip(self.clean, readout)))

    @property
    def route_drop(self) -> Readout:
        return self.drop(self.route)

    @property
    def random_drop(self) -> Readout:
        """Mean over the draws."""
        drops = [self.drop(r) for r in self.random]
        return Readout(*(statistics.fmean(values) for values in zip(*drops))) if drops else Readout(0.0, 0.0, 0.0)

    def to_dict(self) -> dict:
        out = asdict(self)
        out.update(clean=self.clean._asdict(), route=self.route._asdict(),
                   random=[r._asdict() for r in self.random], route_drop=self.route_drop._asdict(),
                   random_drop=self.random_drop._asdict(),
                   route_edges=[e._asdict() for e in self.route_edges],
                   random_edges=[[e._asdict() for e in draw] for draw in self.random_edges])
        return out

    def __repr__(self) -> str:
        r, m = self.route_drop, self.random_drop
        return (f"Faithfulness(p({self.token!r}) {self.clean.probability:.3f}: {len(self.route_edges)} route edges "
                f"drop it by {r.probability:.3f} (logit {r.logit:.3f}, logit diff vs {self.against!r} "
                f"{r.logit_diff:.3f}); random edges by {m.probability:.3f} (logit {m.logit:.3f}, "
                f"logit diff {m.logit_diff:.3f}), mean of {len(self.random)} draws)")


def strongest_edges(run, token: int = -1, threshold: float = 0.04, k: int = 5) -> list[RouteEdge]:
    """The k attention edges of the routes to `token` with the largest weights."""
    graph = run.graph(token, threshold)
    edges = [RouteEdge(v[1], d["source"], d["target"], d["weight"])
             for u, v, d in graph.edges(data=True) if d["kind"] == "attention"]
    return sorted(edges, key=lambda e: -e.weight)[:k]


def random_edges(run, route: list[RouteEdge], rng: random.Random) -> list[RouteEdge]:
    """One draw matched to `route` (see Faithfulness.sampling); a route edge whose target has no
    other source left gets no partner."""
    taken = {(e.layer, e.source, e.target) for e in route}
    drawn = []
    for edge in route:
        free = [s for s in range(edge.target + 1) if (edge.layer, s, edge.target) not in taken]
        if free:
            source = rng.choice(free)
            taken.add((edge.layer, source, edge.target))
            drawn.append(RouteEdge(edge.layer, source, edge.target, None))
    return drawn


def faithfulness(run, token: int = -1, threshold: float = 0.04, k: int = 5, draws: int = 10, seed: int = 0,
                 *, against=None, mode: str = "zero") -> Faithfulness:
    """Ablate the k strongest attention edges (all heads) of the routes to the prediction at
    `token`, and `draws` sets of k random edges (seeded; see Faithfulness.sampling); report the
    prediction's probability, logit and logit difference (to `against` or the runner-up)."""
    if isinstance(k, bool) or not isinstance(k, int) or k < 1:
        raise LmttError(f"k must be a positive integer, got {k!r}")
    if isinstance(draws, bool) or not isinstance(draws, int) or draws < 0:
        raise LmttError(f"draws must be a non-negative integer, got {draws!r}")
    position = run.position(token)
    predicted, other = _targets(run, run.logits, position, against)
    route = strongest_edges(run, position, threshold, k)

    def ablated(edges: list[RouteEdge]) -> Readout:  # no edges (no route above threshold): the clean run
        specs = [("edge", e.layer, e.source, e.target) for e in edges]
        logits = ablated_logits(run, specs, mode) if specs else run.logits
        return _readout(logits, position, predicted, other)

    rng = random.Random(seed)
    random_sets = [random_edges(run, route, rng) for _ in range(draws)]
    return Faithfulness(position, run.decode(predicted), run.decode(other), threshold, k, mode,
                        _readout(run.logits, position, predicted, other), route, ablated(route),
                        random_sets, [ablated(edges) for edges in random_sets])


# -- two prompts -------------------------------------------------------------------------------

def _check_pair(run_a, run_b, what: str) -> None:
    if run_a.hf_model is not run_b.hf_model:
        raise LmttError(f"{what} needs two runs of the same loaded model")
    if run_a.n_tokens != run_b.n_tokens:
        raise LmttError(f"{what}: the prompts are {run_a.n_tokens} and {run_b.n_tokens} tokens long, so their "
                        "positions do not align; use prompts of the same length in tokens (e.g. swap one-token names)")


class EdgeChange(NamedTuple):
    source: tuple  # graph node (stage, layer, position)
    target: tuple
    kind: str  # "attention", "residual" or "ffn"
    weight_a: float | None  # None: not in run_a's graph
    weight_b: float | None


@dataclass
class GraphDiff:
    """Edges of run_b's graph against run_a's: appeared (only in b), vanished (only in a), and
    changed (in both, weight moved by more than `tolerance`), largest changes first."""

    appeared: list[EdgeChange]
    vanished: list[EdgeChange]
    changed: list[EdgeChange]
    unchanged: int
    tolerance: float

    def to_dict(self) -> dict:
        def rows(changes):
            return [dict(c._asdict(), source=list(c.source), target=list(c.target)) for c in changes]
        return dict(appeared=rows(self.appeared), vanished=rows(self.vanished), changed=rows(self.changed),
                    unchanged=self.unchanged, tolerance=self.tolerance)

    def __repr__(self) -> str:
        return (f"GraphDiff({len(self.appeared)} appeared, {len(self.vanished)} vanished, "
                f"{len(self.changed)} changed by > {self.tolerance}, {self.unchanged} unchanged)")


def compare(run_a, run_b, token: int = -1, threshold: float = 0.04, tolerance: float = 0.02,
            full: bool = False, renormalize: bool = True) -> GraphDiff:
    """The difference of two runs' graphs (the routes to `token`, or every edge if `full`, built
    with `threshold` and `renormalize` as in Run.graph): e.g. a clean and a corrupted prompt, or
    a run and an intervened run."""
    _check_pair(run_a, run_b, "compare")

    def edges(run):
        g = run.full_graph(threshold, renormalize) if full else run.graph(token, threshold, renormalize)
        return {(u, v, key): d["weight"] for u, v, key, d in g.edges(keys=True, data=True)}

    a, b = edges(run_a), edges(run_b)

    def change(key):
        return EdgeChange(key[0], key[1], key[2], a.get(key), b.get(key))

    def size(c):
        return -abs((c.weight_b or 0.0) - (c.weight_a or 0.0))

    both = [change(k) for k in a.keys() & b.keys()]
    changed = sorted((c for c in both if abs(c.weight_b - c.weight_a) > tolerance), key=size)
    return GraphDiff(sorted((change(k) for k in b.keys() - a.keys()), key=size),
                     sorted((change(k) for k in a.keys() - b.keys()), key=size), changed,
                     len(both) - len(changed), tolerance)


def _patch_node(run, node) -> tuple:
    """A checked node: (stage, layer, position) of the graph, or ("head", layer, head, position)."""
    if isinstance(node, (tuple, list)) and len(node) == 4 and node[0] == "head":
        return ("head", run.layer(node[1]), run.head(node[2]), run.position(node[3]))
    if not isinstance(node, (tuple, list)) or len(node) != 3 or node[0] not in STAGES:
        raise LmttError(f"a node to patch is (stage, layer, position) with stage in {STAGES}, or "
                        f"('head', layer, head, position); got {node!r}")
    stage, layer, position = node
    if stage == "embed":
        if layer != -1:
            raise LmttError(f"the embedding node's layer is -1, got {layer!r}")
        return ("embed", -1, run.position(position))
    if stage == "mid" and run.shape.parallel:
        raise LmttError("parallel blocks (GPT-NeoX/Pythia) have no 'mid' residual; patch 'post' or a head")
    return (stage, run.layer(layer), run.position(position))


def _patch_edits(source, node: tuple) -> list[Edit]:
    """Edits that set `node` to its value in the `source` run."""
    cap = source.capture
    if node[0] == "head":
        _, layer, head, pos = node
        weights = source.attention_pattern(layer)[head, pos].float()  # [T]
        mix = weights @ cap.values[layer][:, _kv(source, head)].float()  # [hd]
        cols = _head_slice(source, head)

        def head_in(x, state):
            x[pos, cols] = mix.to(x)

        def probs(p, state):
            p[head, pos] = 0.0
        return [Edit("out_proj_input", layer, head_in), Edit("probs", layer, probs)]
    stage, layer, pos = node
    if stage == "mid":
        # on several devices a block's input is still on the previous block's device
        mid = cap.resid[layer][pos].to(cap.attn_out[layer].device) + cap.attn_out[layer][pos]

        def attention(x, state):  # the update that makes x + update equal the source's mid
            x[pos] = (mid - state.resid_in[pos].to(mid.device)).to(x)

        def probs(p, state):
            p[:, pos] = 0.0
        return [Edit("attention_output", layer, attention), Edit("probs", layer, probs)]
    value = {"embed": cap.resid[0], "post": cap.resid[layer + 1], "ffn": cap.ffn_out[layer]}[stage][pos]

    def put(x, state):
        x[pos] = value.to(x)
    site = {"embed": "embed", "post": "block_output", "ffn": "ffn_output"}[stage]
    return [Edit(site, max(layer, 0), put)]


def patch(run_from, run_into, node, *, position: int = -1, against=None):
    """Rerun `run_into`'s prompt with `node`'s activation (or each of a list of nodes) taken from
    `run_from`: a residual node (stage, layer, position) of the graph ("embed", "mid", "post"),
    an FFN node (its update), or ("head", layer, head, position) (the head's output there).

    Returns (the patched Run, a Comparison with `run_into` at `position`). The two runs must be
    of the same model and prompts of the same length in tokens.
    """
    _check_pair(run_from, run_into, "patch")
    nodes = list(node) if isinstance(node, list) else [node]
    nodes = [_patch_node(run_into, n) for n in nodes]
    clean, earlier = _base(run_into)
    edits = list(getattr(run_into, "edits", None) or [])
    for n in nodes:
        edits += _patch_edits(run_from, n)
    new = _rerun(clean, edits)
    new.clean, new.interventions = clean, tuple(earlier)
    new.patches = tuple(getattr(run_into, "patches", ())) + tuple((n, run_from.prompt) for n in nodes)
    new.patch_ids = tuple(getattr(run_into, "patch_ids", ())) + tuple(run_from.input_ids for _ in nodes)
    return new, compare_logits(run_into, run_into.logits, new.logits, position, against)


# -- code export -------------------------------------------------------------------------------

_VALUES_CODE = {  # the value projection's output [T, .] -> value vectors [T, KV, head_dim]
    "_values_separate": "{out}.reshape(T, {kv}, {hd})",
    "_values_gpt2": "{out}[:, {two_d}:].reshape(T, {h}, {hd})",
    "_values_neox": "{out}.reshape(T, {h}, 3 * {hd})[..., {two_hd}:]",
}
_SITE_ORDER = ("block_input", "values", "out_proj_input", "attention_output", "ffn_out_proj_input", "ffn_output",
               "block_output")


def _rows_code(positions) -> str:
    return ":" if positions is None else repr(list(positions))


def code(run, ablations=None, mode: str = "zero", model_expr: str = "lmtt_widget.load_model()") -> str:
    """Standalone nnsight code that reproduces the interventions: `ablations` added to those of
    `run` (None: just those of `run`), and the patches of `run` (each source prompt is traced
    first for the activations it gives). `model_expr` is the Python expression that loads the model."""
    clean, earlier = _base(run)
    ablations = earlier + ([] if ablations is None else _parse_all(clean, ablations, mode))
    shape, family = clean.shape, clean.family
    blocks = "model." + family.blocks
    module_names = {m: n for n, m in clean.hf_model.named_modules()}
    lm_head = module_names[clean.hf_model.get_output_embeddings()]
    lines = [
        f'"""nnsight code reproducing lmtt-widget interventions (generated) on {clean.prompt!r}:',
        *(f"    {ab.as_tuple()!r}, mode {ab.mode!r}" for ab in ablations),
        *(f"    patch {node!r} from {prompt!r}" for node, prompt in getattr(run, "patches", ())),
        '"""',
        "import nnsight",
        "import torch",
        "",
        "import lmtt_widget",
        "",
        f"model = {model_expr}",
        "hf = model._module  # the transformers model: weights are read, never changed",
        f"input_ids = torch.tensor([{clean.input_ids.tolist()!r}]).to(hf.device)",
        "T = input_ids.shape[1]",
    ]
    means, edit_lines, w_o_lines = {}, {}, []
    for i, ab in enumerate(ablations):
        _code_one(clean, ab, i, ablations, means, edit_lines, w_o_lines)
    lines += w_o_lines
    if means:
        lines += ["", "# means over the positions of the clean run, for mean ablations",
                  "with torch.no_grad(), model.trace(input_ids):"]
        lines += _trace_body(blocks, family, shape, means)
    lines += _patch_code(clean, run, blocks, edit_lines)
    lines += ["", "with torch.no_grad(), model.trace(input_ids):"]
    lines += _trace_body(blocks, family, shape, edit_lines)
    lines += [f"    logits = nnsight.save(model.{lm_head}.output.view(T, -1))  # [T, vocabulary]",
              "", "probs = logits[-1].softmax(-1)",
              "print([(model.tokenizer.decode([int(i)]), round(float(p), 4)) for p, i in zip(*probs.topk(5))])", ""]
    return "\n".join(lines)


def _site_expr(blocks: str, family, shape, layer: int, site: str) -> str:
    block = f"{blocks}[{layer}]"
    return {
        "values": _VALUES_CODE[family.values.__name__].format(
            out=f"{block}.{family.value_proj}.output.view(T, -1)", kv=shape.n_kv_heads, hd=shape.head_dim,
            h=shape.n_heads, two_d=2 * shape.n_heads * shape.head_dim, two_hd=2 * shape.head_dim),
        "out_proj_input": f"{block}.{family.out_proj}.input.view(T, -1)  # [T, heads x head_dim]",
        "attention_output": f"{block}.{family.attention}.output  # (update [1, T, d], probabilities [1, H, T, T])",
        "ffn_out_proj_input": f"{block}.{family.ffn_out_proj}.input.view(T, -1)  # [T, neurons]",
        "ffn_output": f"{block}.{family.ffn}.output.view(T, -1)  # [T, d]",
        "block_input": f"{block}.input.view(T, -1)  # the residual entering the block [T, d]",
        "block_output": f"{block}.output.view(T, -1)  # the residual after the block [T, d]",
    }[site]


_SITE_VARIABLE = {"values": "values", "out_proj_input": "heads_in", "attention_output": "attn",
                  "ffn_out_proj_input": "neurons", "ffn_output": "ffn_out", "block_input": "x_in",
                  "block_output": "block_out"}


def _patch_code(clean, run, blocks: str, edits: dict) -> list[str]:
    """Lines of one trace per source prompt that save the patched activations, and (into `edits`)
    the lines of the main trace that put them in place, as interventions.patch does."""
    sources: dict[tuple, dict] = {}  # source ids -> {(layer, site): lines}
    for i, ((node, prompt), ids) in enumerate(zip(getattr(run, "patches", ()), getattr(run, "patch_ids", ()))):
        saves = sources.setdefault(tuple(ids.tolist()), {})
        name = f"patch_{i}"
        if node[0] == "head":
            _, layer, head, pos = node
            cols = _head_slice(clean, head)
            saves.setdefault((layer, "out_proj_input"), []).append(
                f"{name} = nnsight.save(heads_in[{pos}, {cols.start}:{cols.stop}].clone())  # head {head}'s output")
            edits.setdefault((layer, "out_proj_input"), []).append(
                f"heads_in[{pos}, {cols.start}:{cols.stop}] = {name}  # patch {node!r}")
            continue
        stage, layer, pos = node
        if stage == "mid":
            saves.setdefault((layer, "block_input"), [])
            saves.setdefault((layer, "attention_output"), []).append(
                f"{name} = nnsight.save(x_in[{pos}] + attn[0].view(T, -1)[{pos}])  # the residual after attention")
            edits.setdefault((layer, "block_input"), [])
            edits.setdefault((layer, "attention_output"), []).append(
                f"attn[0].view(T, -1)[{pos}] = {name} - x_in[{pos}]  # patch {node!r}")
            continue
        site, variable = {"embed": ("block_input", "x_in"), "post": ("block_output", "block_out"),
                          "ffn": ("ffn_output", "ffn_out")}[stage]
        layer = max(layer, 0)
        saves.setdefault((layer, site), []).append(f"{name} = nnsight.save({variable}[{pos}].clone())")
        edits.setdefault((layer, site), []).append(f"{variable}[{pos}] = {name}  # patch {node!r}")
    lines = []
    for ids, saves in sources.items():
        lines += ["", "# the activations to patch in, from the other prompt",
                  f"source_ids = torch.tensor([{list(ids)!r}]).to(hf.device)",
                  "with torch.no_grad(), model.trace(source_ids):"]
        lines += _trace_body(blocks, clean.family, clean.shape, saves)
    return lines


def _trace_body(blocks: str, family, shape, by_site: dict) -> list[str]:
    """Lines inside a trace: for each layer in order, each site read once, in forward order."""
    body = []
    for layer, site in sorted(by_site, key=lambda ls: (ls[0], _SITE_ORDER.index(ls[1]))):
        body.append(f"    {_SITE_VARIABLE[site]} = {_site_expr(blocks, family, shape, layer, site)}")
        body += [f"    {line}" for line in by_site[(layer, site)]]
    return body


def _code_one(clean, ab: Ablation, i: int, everything, means: dict, edits: dict, w_o_lines: list) -> None:
    rows, mean = _rows_code(ab.positions), ab.mode == "mean"
    name = f"mean_{i}"

    def add(store, layer, site, *new_lines):
        store.setdefault((layer, site), []).extend(new_lines)

    if ab.kind == "head":
        cols = _head_slice(clean, ab.head)
        if mean:
            add(means, ab.layer, "out_proj_input", f"{name} = nnsight.save(heads_in[:, {cols.start}:{cols.stop}].mean(0))")
        add(edits, ab.layer, "out_proj_input",
            f"heads_in[{rows}, {cols.start}:{cols.stop}] = {name if mean else 0}  # {ab.as_tuple()!r}: head {ab.head}")
    elif ab.kind == "neuron":
        if mean:
            add(means, ab.layer, "ffn_out_proj_input", f"{name} = nnsight.save(neurons[:, {ab.neuron}].mean())")
        add(edits, ab.layer, "ffn_out_proj_input", f"neurons[{rows}, {ab.neuron}] = {name if mean else 0}  # {ab.as_tuple()!r}")
    elif ab.kind in ("attention", "ffn"):
        site, target = ("attention_output", "attn[0].view(T, -1)") if ab.kind == "attention" else ("ffn_output", "ffn_out")
        if mean:
            add(means, ab.layer, site, f"{name} = nnsight.save({target}.mean(0))")
        add(edits, ab.layer, site, f"{target}[{rows}] = {name if mean else 0}  # {ab.as_tuple()!r}")
    else:
        heads = range(clean.shape.n_heads) if ab.head is None else [ab.head]
        heads = [h for h in heads if not any(_covered(o, ab.layer, h, ab.target) for o in everything)]
        if not heads:
            return
        w_o = f"w_o_{ab.layer}"
        if not any(line.startswith(f"{w_o} =") for line in w_o_lines):
            module = f"hf.{clean.family.blocks}[{ab.layer}].{clean.family.out_proj}"
            weight = f"{module}.weight" if type(clean.family.modules(clean.hf_model, ab.layer)["out_proj"]).__name__ == "Conv1D" else f"{module}.weight.T"
            w_o_lines.append(f"{w_o} = {weight}.reshape({clean.shape.n_heads}, {clean.shape.head_dim}, -1)  "
                             "# W_O per head [H, head_dim, d]")
        value = f"values[{ab.source}, {{kv}}]"
        if mean:
            add(means, ab.layer, "values", f"{name} = nnsight.save(values.mean(0))")
            value = f"(values[{ab.source}, {{kv}}] - {name}[{{kv}}])"
        edits.setdefault((ab.layer, "values"), [])
        term = " + ".join(f"attn[1][0, {h}, {ab.target}, {ab.source}] * ({value.format(kv=_kv(clean, h))} @ {w_o}[{h}])"
                          for h in heads)
        add(edits, ab.layer, "attention_output", f"attn[0].view(T, -1)[{ab.target}] -= {term}  # {ab.as_tuple()!r}")
