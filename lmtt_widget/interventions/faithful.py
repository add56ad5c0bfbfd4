"""Faithfulness of the routes: ablate their strongest attention edges, and as many random ones."""

from __future__ import annotations

import random
import statistics
from dataclasses import asdict, dataclass, field
from typing import NamedTuple

from ..errors import LmttError
from .kinds import EdgeAblation, check_mode
from .running import Readout, ablated_logits, check_run, readout, targets


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
        "without repeats within the draw, and none that the run already ablates"))

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


def strongest_edges(run, token: int = -1, threshold: float = 0.04, k: int = 5,
                    leave_out: frozenset = frozenset()) -> list[RouteEdge]:
    """The k attention edges of the routes to `token` with the largest weights, but those
    (layer, source, target) in `leave_out`."""
    graph = run.graph(token, threshold)
    edges = [RouteEdge(v[1], d["source"], d["target"], d["weight"])
             for u, v, d in graph.edges(data=True)
             if d["kind"] == "attention" and (v[1], d["source"], d["target"]) not in leave_out]
    return sorted(edges, key=lambda e: -e.weight)[:k]  # type: ignore[operator]  # route edges have weights


def random_edges(run, route: list[RouteEdge], rng: random.Random,
                 leave_out: frozenset = frozenset()) -> list[RouteEdge]:
    """One draw matched to `route` (see Faithfulness.sampling), never an edge (layer, source,
    target) in `leave_out`; a route edge whose target has no other source left gets no partner."""
    taken = {(e.layer, e.source, e.target) for e in route} | set(leave_out)
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
    check_run(run, "run", "faithfulness")
    check_mode(mode)
    if isinstance(k, bool) or not isinstance(k, int) or k < 1:
        raise LmttError(f"k must be a positive integer, got {k!r}")
    if isinstance(draws, bool) or not isinstance(draws, int) or draws < 0:
        raise LmttError(f"draws must be a non-negative integer, got {draws!r}")
    position = run.position(token)
    predicted, other = targets(run, run.logits, position, against)
    # an edge the run already ablates (an intervened run) is neither a route edge nor a random one
    already = frozenset((ab.layer, ab.source, ab.target) for ab in run.interventions if isinstance(ab, EdgeAblation))
    route = strongest_edges(run, position, threshold, k, already)

    def ablated(edges: list[RouteEdge]) -> Readout:  # no edges (no route above threshold): the clean run
        specs = [("edge", e.layer, e.source, e.target) for e in edges]
        logits = ablated_logits(run, specs, mode) if specs else run.logits
        return readout(logits, position, predicted, other)

    rng = random.Random(seed)
    random_sets = [random_edges(run, route, rng, already) for _ in range(draws)]
    return Faithfulness(position, run.decode(predicted), run.decode(other), threshold, k, mode,
                        readout(run.logits, position, predicted, other), route, ablated(route),
                        random_sets, [ablated(edges) for edges in random_sets])
