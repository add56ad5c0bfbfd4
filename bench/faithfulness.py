"""Faithfulness of the routes on the demo model (IOI prompt): what ablating the route's strongest
attention edges does to the prediction, against random edges; and the layer-23 ' Mary' heads.

    .venv/bin/python -m bench.faithfulness
"""

from __future__ import annotations

import itertools
import statistics

import lmtt_widget as lw
from lmtt_widget import interventions as I

IOI = "When Mary and John went to the store, John gave a drink to"


def readout(run, logits, token, other):
    row = logits[-1]
    return float(row.softmax(-1)[token]), float(row[token] - row[other])


def heads_of_layer(run, layer: int, source: int, target: int, against: str) -> None:
    """The two heads of `layer` with the largest share on source -> target, against every pair of
    heads of that layer: ablating the edge for them, and ablating the heads entirely."""
    token, other = int(run.logits[-1].argmax()), I.token_id(run, against)
    p0, d0 = readout(run, run.logits, token, other)
    shares = run.edge_contributions(layer, target, source)
    top = tuple(shares.topk(2).indices.tolist())
    print(f"layer {layer} heads by share on {run.tokens[source]!r} -> {run.tokens[target]!r}: "
          + ", ".join(f"{h}: {float(shares[h]):.3f}" for h in shares.argsort(descending=True).tolist()))
    print(f"clean: p({run.decode(token)!r}) = {p0:.3f}, logit({run.decode(token)!r}) - logit({against!r}) = {d0:.3f}")
    pairs = list(itertools.combinations(range(run.shape.n_heads), 2))
    for what, spec in (("the edge, for these heads", lambda hs: [("edge", layer, source, target, h) for h in hs]),
                       ("the heads, everywhere", lambda hs: [("head", layer, h) for h in hs])):
        results = {pair: readout(run, I.ablated_logits(run, spec(pair)), token, other) for pair in pairs}
        p_top, d_top = results[top]
        others = [results[pair] for pair in pairs if pair != top]
        print(f"ablating {what}: top-2 heads {top}: p {p0:.3f} -> {p_top:.3f} (drop {p0 - p_top:.3f}), "
              f"logit diff {d0:.3f} -> {d_top:.3f}; other pairs ({len(others)}): mean drop of p "
              f"{statistics.fmean(p0 - p for p, _ in others):.3f}, "
              f"mean logit diff {statistics.fmean(d for _, d in others):.3f}")


def main() -> None:
    model = lw.load_model()
    run = lw.analyze(model, IOI)
    print(run)
    for k in (1, 2, 5, 10):
        print(f"k={k}:", run.faithfulness(k=k, draws=10, seed=0, against=" John"))
    result = run.faithfulness(k=5, draws=10, seed=0, against=" John")
    print("route edges (layer, source, target, weight):",
          [(e.layer, run.tokens[e.source], run.tokens[e.target], round(e.weight, 3)) for e in result.route_edges])
    print("random drops of p:", [round(result.clean.probability - r.probability, 3) for r in result.random])
    mary, last = run.tokens.index(" Mary"), run.n_tokens - 1
    heads_of_layer(run, 23, mary, last, " John")


if __name__ == "__main__":
    main()
