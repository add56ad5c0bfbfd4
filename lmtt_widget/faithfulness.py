"""Faithfulness of a ranking of attention edges, as a fraction of the best possible.

Remove the top k attention edges (all heads) into the prediction's position by a ranking (share,
effect, ...) and measure how much the metric m = logit(answer) - logit(contrast) drops. Random
edges barely move m, so a ratio to random edges swings wildly; the headline is instead

    fraction of the best possible = drop(top k by the ranking) / drop(the best k edges)

where the best k are the candidates (the union of every ranking's top `candidates`) with the
largest exact drops when removed alone, removed together. 1 means the ranking finds edges as
important as the best found; it can exceed 1 (removing edges together is not the sum of removing
each), and it is negative when the ranking's edges together oppose the answer. Random edges
matched to the ranking's (same layer, same target) are shown as a baseline.

Every number is exact, measured by rerunning the model (lmtt_widget.interventions.removals: for a
run without interventions only that position is rerun, from the clean keys and values of the
earlier ones; an intervened run is rerun whole).
"""

from __future__ import annotations

import random
import statistics
from dataclasses import asdict, dataclass, field
from typing import NamedTuple

from . import effects as E
from . import interventions as I
from .errors import LmttError, check_count, check_positive
from .interventions.kinds import check_mode
from .interventions.removals import EdgeRemovals
from .interventions.running import Readout

RANKINGS = ("share", "effect")
READING = ("Fraction of the best possible: the drop of {metric} when a ranking's top k edges are removed together, "
           "over the drop when the best k edges found are removed together (1: as good as the best found; above 1: "
           "better, as edges removed together can do more than each alone; random edges are a baseline).")


class RouteEdge(NamedTuple):
    layer: int
    source: int
    target: int
    score: float | None  # the ranking's score (share, effect, or the exact drop alone); None for a random edge


@dataclass
class FaithfulnessRow:
    """One ranking at one k. Drops are clean minus ablated (positive: the removal hurt the answer)."""

    by: str
    k: int
    edges: list[RouteEdge]
    drop: Readout  # of p(answer), logit(answer) and m (logit_diff), the edges removed together
    random_edges: list[list[RouteEdge]]  # each draw of matched random edges
    random: list[Readout]  # the drops of each draw
    best: float  # the drop of m when the best k edges are removed together
    fraction: float | None  # drop.logit_diff / best; None when no edge lowers m

    @property
    def random_mean(self) -> Readout:
        return Readout(*(statistics.fmean(v) for v in zip(*self.random))) if self.random else Readout(0.0, 0.0, 0.0)

    @property
    def random_sd(self) -> Readout:
        spread = [statistics.pstdev(v) for v in zip(*self.random)] if len(self.random) > 1 else [0.0] * 3
        return Readout(*spread)


@dataclass
class FaithfulnessTable:
    """`run.faithfulness(...)`: each ranking's top k edges into `position` removed, against the best k."""

    position: int
    token: str  # the answer
    token_id: int
    contrast: str
    contrast_id: int
    metric: str
    mode: str
    clean: Readout  # p(answer), logit(answer), m in the clean run
    candidates: int  # how many edges were measured alone to find the best
    best_edges: list[RouteEdge]  # the best edges, by their drop alone (score), for the largest k
    rows: list[FaithfulnessRow]
    sampling: str = field(default=(
        "each draw matches the ranking's edges one for one: for an edge source -> target in layer l, a random "
        "source s <= target in the same layer, not one of the ranking's edges, without repeats within the "
        "draw, and none that the run already ablates"))

    @property
    def reading(self) -> str:
        return READING.format(metric=self.metric)

    def row(self, by: str, k: int) -> FaithfulnessRow:
        for row in self.rows:
            if (row.by, row.k) == (by, k):
                return row
        raise LmttError(f"no row for by={by!r}, k={k}; rows: {[(r.by, r.k) for r in self.rows]}")

    def notes(self) -> list[str]:
        """Sentences for what needs words: negative drops, fractions above 1, no best drop."""
        out = []
        if any(row.best <= 0 for row in self.rows):
            out.append(f"No candidate edge lowers {self.metric} when removed: there is no best drop to compare "
                       "with (the fraction is left out).")
        for row in self.rows:
            if row.drop.logit_diff < 0:
                out.append(f"Removing the top {row.k} edges by {row.by} raises {self.metric} by "
                           f"{-row.drop.logit_diff:.3g}: together these edges oppose {self.token!r} over "
                           f"{self.contrast!r}, so taking them out helps it.")
            elif row.fraction is not None and row.fraction > 1:
                out.append(f"The top {row.k} edges by {row.by} drop it more than the best {row.k} found "
                           f"({row.fraction:.2f}x): edges removed together do more than each alone suggests.")
        return out

    def to_dict(self) -> dict:
        out = asdict(self)
        out["rows"] = [asdict(row) | {"drop": row.drop._asdict(), "random": [r._asdict() for r in row.random],
                                      "random_mean": row.random_mean._asdict(), "random_sd": row.random_sd._asdict(),
                                      "edges": [e._asdict() for e in row.edges],
                                      "random_edges": [[e._asdict() for e in draw] for draw in row.random_edges]}
                       for row in self.rows]
        out.update(clean=self.clean._asdict(), best_edges=[e._asdict() for e in self.best_edges],
                   reading=self.reading, notes=self.notes())
        return out

    def __repr__(self) -> str:
        lines = [f"Faithfulness of the edges into token {self.position}: {self.metric} = {self.clean.logit_diff:.3f}, "
                 f"p({self.token!r}) = {self.clean.probability:.3f} ({self.mode} ablation, best of {self.candidates} "
                 "candidates)",
                 f"  {'k':>3}  {'by':<10} {'of best':>8} {'drop m':>8} {'best m':>8} {'drop p':>8}"
                 "  random drop m (mean ± sd)"]
        for row in self.rows:
            fraction = "—" if row.fraction is None else f"{row.fraction:.2f}"
            mean, sd = row.random_mean.logit_diff, row.random_sd.logit_diff
            lines.append(f"  {row.k:>3}  {row.by:<10} {fraction:>8} {row.drop.logit_diff:>8.3f} {row.best:>8.3f} "
                         f"{row.drop.probability:>8.3f}  {mean:.3f} ± {sd:.3f}")
        return "\n".join(lines + [f"  {note}" for note in self.notes()])


# -- the table -------------------------------------------------------------------------------------

def edge_scores(run, position: int, by: str, effects=None) -> dict[tuple[int, int], float]:
    """{(layer, source): score} of every attention edge into `position`: its share summed over
    heads ("share"), or its effect summed over heads ("effect", from `effects`)."""
    scores = {}
    for layer in range(run.shape.n_layers):
        if by == "share":
            values = run.layers[layer].dense()[position].sum(-1)  # [T]
        else:
            values = effects.attention(layer)[position].sum(-1)
        scores.update({(layer, s): float(values[s]) for s in range(position + 1)})
    return scores


def faithfulness(run, k=(5, 10, 20), by=RANKINGS, *, token: int = -1, answer=None, contrast=None, effects=None,
                 draws: int = 10, seed: int = 0, mode: str = "zero", candidates: int = 50,
                 scores: dict | None = None) -> FaithfulnessTable:
    """Each ranking's top k edges into position `token` removed together, against the best k
    (module docstring), for m = logit(answer) - logit(contrast) (as in run.effects: default the
    top prediction against the runner-up). `by` names rankings: "share", "effect", or a name in
    `scores` ({name: {(layer, source): score}}, a ranking of one's own). `effects`, if given,
    rank by effect and set the metric (token, answer and contrast are then theirs); else they are
    computed when `by` asks for them. `draws` sets of matched random edges per row, seeded by
    `seed`; `mode` "zero" or "mean" as in interventions."""
    I.check_run(run, "run", "faithfulness")
    check_mode(mode)
    ks = _ks(k)
    draws = check_count("draws", draws)
    candidates = check_positive("candidates", candidates)
    names = [by] if isinstance(by, str) else list(by)
    if not names:
        raise LmttError("by names no ranking: give 'share', 'effect', or both")
    if effects is None and "effect" in names and not (scores and "effect" in scores):
        effects = E.effects(run, answer, contrast, token=token)
    if effects is not None:
        position = effects.position
        given = E.metric_tokens(run, run.position(token), answer, contrast)
        if (answer is not None or contrast is not None or run.position(token) != position) and (
                given != (effects.answer, effects.contrast) or run.position(token) != position):
            raise LmttError(f"the effects given are of {effects.metric}; leave token, answer and contrast out, "
                            "or compute the effects for them")
        answer, contrast = effects.answer, effects.contrast
    else:
        position = run.position(token)
        answer, contrast = E.metric_tokens(run, position, answer, contrast)
    already = {(ab.layer, ab.source) for ab in run.interventions if ab.kind == "edge" and ab.target == position}
    rankings = {name: _ranked(_scores(run, position, effects, name, scores), already) for name in names}
    removals = EdgeRemovals(run, position, answer, contrast, mode)
    pool = sorted({edge for ranked in rankings.values() for edge, _ in ranked[:candidates]})
    alone = sorted(zip(pool, (d.logit_diff for d in removals.drops([[edge] for edge in pool]))),
                   key=lambda e: (-e[1], e[0]))
    rng = random.Random(seed)
    plans = []  # (name, k, the top k edges, draws of random edges), measured in one batch below
    for name, ranked in rankings.items():
        for n in ks:
            top = [RouteEdge(layer, source, position, score) for (layer, source), score in ranked[:n]]
            plans.append((name, n, top, [_random_edges(run, top, rng, already) for _ in range(draws)]))
    sets = [[edge for edge, _ in alone[:n]] for n in ks]
    sets += [[(e.layer, e.source) for e in edges] for *_, top, draws_of in plans for edges in [top, *draws_of]]
    drops = iter(removals.drops(sets))
    best = {n: next(drops).logit_diff for n in ks}
    rows = []
    for name, n, top, draws_of in plans:
        drop, random_drops = next(drops), [next(drops) for _ in draws_of]
        rows.append(FaithfulnessRow(name, n, top, drop, draws_of, random_drops, best[n],
                                    drop.logit_diff / best[n] if best[n] > 0 else None))
    best_edges = [RouteEdge(layer, source, position, drop) for (layer, source), drop in alone[:max(ks)]]
    said, other = run.decode(answer), run.decode(contrast)
    return FaithfulnessTable(position, said, answer, other, contrast, f"logit({said!r}) - logit({other!r})", mode,
                             removals.clean, len(pool), best_edges, rows)


def _scores(run, position: int, effects, name: str, given: dict | None) -> dict[tuple[int, int], float]:
    if given and name in given:
        return given[name]
    if name not in RANKINGS:
        raise LmttError(f"by: {name!r} is no ranking; rankings are 'share', 'effect' and the names in scores")
    return edge_scores(run, position, name, effects)


def _ranked(scores: dict[tuple[int, int], float], leave_out: set) -> list[tuple[tuple[int, int], float]]:
    """Edges by score, largest first (ties: earlier layer, then source), but those in `leave_out`."""
    return sorted(((e, s) for e, s in scores.items() if e not in leave_out), key=lambda item: (-item[1], item[0]))


def _ks(k) -> list[int]:
    values = [k] if not isinstance(k, (list, tuple)) else list(k)
    if not values:
        raise LmttError("k is empty: give a number of edges, or several, e.g. k=(5, 10, 20)")
    return [check_positive("k", n) for n in values]


def _random_edges(run, edges: list[RouteEdge], rng: random.Random, leave_out: set) -> list[RouteEdge]:
    """One draw matched to `edges` (see FaithfulnessTable.sampling); an edge whose target has no
    other source left gets no partner."""
    taken = {(e.layer, e.source) for e in edges} | set(leave_out)
    drawn = []
    for edge in edges:
        free = [s for s in range(edge.target + 1) if (edge.layer, s) not in taken]
        if free:
            source = rng.choice(free)
            taken.add((edge.layer, source))
            drawn.append(RouteEdge(edge.layer, source, edge.target, None))
    return drawn
