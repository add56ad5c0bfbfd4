"""The difference of two runs' graphs: which edges appear, vanish or change."""

from __future__ import annotations

from dataclasses import dataclass
from typing import NamedTuple

from ..errors import LmttError
from .running import check_pair


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
    check_pair(run_a, run_b, "compare")
    if isinstance(tolerance, bool) or not isinstance(tolerance, (int, float)) or not tolerance >= 0:
        raise LmttError(f"tolerance must be a number >= 0 (how far an edge's weight may move and count as "
                        f"unchanged), got {tolerance!r}")

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
