"""Faithfulness of edge rankings on the demo model, per task (bench/tasks.py: IOI, factual recall,
induction, agreement; only prompts the model gets right).

For each prompt, the attention edges into the last token are ranked by
- share: the L1 proximity share (summed over heads), as the routes weigh them;
- share L2: the same from an L2 analysis;
- effect: attribution patching (run.effects(), method "gradient");
- effect+exact(10), effect+exact(20): the same with refine=10 / 20 (the 10 / 20 largest edge terms
  into the last token, and as many FFN updates, measured exactly by one-token reruns);
- effect IG: run.effects(method="integrated", steps=8);
- routes sum / routes each: the edges into the last token that the routes graph at threshold 0.04
  keeps, by their weight, with the heads summed first (this package) or each head thresholded and
  renormalised first (the LM Transparency Tool); fewer than k edges when the routes keep fewer.
The table gives the fraction of the best possible (lmtt_widget.faithfulness; the best k found
among *all* edges into the last token by their exact drop alone) at k = 5, 10, 20, the Spearman
rank correlation of each score with the exact single-edge drops of m = logit(answer) -
logit(contrast), and each method's cost as a multiple of one plain forward pass. Then, at T=256,
the cost of the gradient effects against a forward pass.

    .venv/bin/python -m bench.faithfulness [--per-task 8] [--threads 1] [--rankings share,effect,...]

Results go to bench/results/faithfulness.json. The machine is shared: times vary; ratios less so.
"""

from __future__ import annotations

import argparse
import json
import statistics
import time
from collections import defaultdict
from pathlib import Path

import torch

import lmtt_widget as lw
from lmtt_widget.effects import metric_tokens
from lmtt_widget.faithfulness import edge_scores
from lmtt_widget.interventions.removals import EdgeRemovals
from lmtt_widget.run import analyze_ids
from lmtt_widget.tracing import exclusive

from .tasks import candidates, correct

KS = (5, 10, 20)
RANKINGS = ("share", "share L2", "effect", "effect+exact(10)", "effect+exact(20)", "effect IG", "routes sum",
            "routes each")
SCORED = RANKINGS[:6]  # scores of every edge (a Spearman with the exact drops); the routes keep a few edges


def timed(call):
    start = time.perf_counter()
    value = call()
    return value, time.perf_counter() - start


def forward_seconds(model, ids: torch.Tensor, repeats: int = 3) -> float:
    def forward():
        with torch.no_grad(), exclusive(model):
            model._module(ids[None])
    return min(timed(forward)[1] for _ in range(repeats))  # the fastest: other processes' load only adds time


def ranks(values: list[float]) -> torch.Tensor:
    """Ranks, ties given their mean rank."""
    x = torch.tensor(values, dtype=torch.float64)
    order = x.argsort()
    out = torch.empty_like(x)
    out[order] = torch.arange(len(x), dtype=torch.float64)
    for value in x.unique():
        tied = x == value
        out[tied] = out[tied].mean()
    return out


def spearman(a: list[float], b: list[float]) -> float:
    ra, rb = ranks(a), ranks(b)
    ra, rb = ra - ra.mean(), rb - rb.mean()
    return float((ra * rb).sum() / (ra.norm() * rb.norm()))


def route_scores(run, heads: str) -> dict[tuple[int, int], float]:
    """{(layer, source): weight} of the attention edges into the last token on the routes."""
    last = run.n_tokens - 1
    g = run.graph(threshold=0.04, heads=heads)
    return {(v[1], d["source"]): d["weight"] for u, v, key, d in g.edges(keys=True, data=True)
            if key == "attention" and d["target"] == last}


def scorers(model, ids: torch.Tensor, prompt, run) -> dict:
    """{ranking: a call giving {(layer, source): score} of the edges into the last token}; what each
    call costs beyond the analysis is that ranking's cost."""
    last = run.n_tokens - 1

    def effect(**options):
        return lambda: edge_scores(run, last, "effect", run.effects(prompt.answer, prompt.contrast, **options))

    def share_l2():
        return edge_scores(analyze_ids(model, ids, prompt=prompt.text, distance="l2", progress=False), last, "share")
    return {"share": lambda: edge_scores(run, last, "share"), "share L2": share_l2, "effect": effect(),
            "effect+exact(10)": effect(refine=10), "effect+exact(20)": effect(refine=20),
            "effect IG": effect(method="integrated", steps=8),
            "routes sum": lambda: route_scores(run, "sum"), "routes each": lambda: route_scores(run, "each")}


def measure(model, prompt, names: list[str]) -> dict:
    ids = lw.run.tokenize(model.tokenizer, prompt.text, None, None)
    record = {"task": prompt.task, "prompt": prompt.text, "answer": prompt.answer, "contrast": prompt.contrast,
              "forward_s": forward_seconds(model, ids)}
    run, record["analyze_s"] = timed(lambda: analyze_ids(model, ids, prompt=prompt.text, progress=False))
    calls = scorers(model, ids, prompt, run)
    scores = {}
    for name in names:
        scores[name], record[f"{name}_s"] = timed(calls[name])
    last = run.n_tokens - 1
    every = sorted(edge_scores(run, last, "share"))
    removals = EdgeRemovals(run, last, *metric_tokens(run, last, prompt.answer, prompt.contrast))
    alone, record["exact singles_s"] = timed(lambda: [d.logit_diff for d in removals.drops([[e] for e in every])])
    record["spearman"] = {name: spearman([scores[name][e] for e in every], alone) for name in names if name in SCORED}
    table = run.faithfulness(k=KS, by=names, answer=prompt.answer, contrast=prompt.contrast, draws=5,
                             candidates=len(every), scores=scores)
    record["value"] = table.clean.logit_diff
    record["fraction"] = {f"{row.by}@{row.k}": row.fraction for row in table.rows}
    record["drop"] = {f"{row.by}@{row.k}": row.drop.logit_diff for row in table.rows}
    record["random"] = {f"{row.by}@{row.k}": row.random_mean.logit_diff for row in table.rows}
    record["route_edges"] = {name: len(scores[name]) for name in names if name.startswith("routes")}
    record["n_tokens"] = run.n_tokens
    return record


def long_prompt_costs(model, length: int = 256, repeats: int = 5) -> dict:
    """Seconds of a forward pass, the analysis and the gradient effects (plain, and refined by 10 and
    20 exact reruns) at `length` tokens (the fastest of `repeats` interleaved rounds: other
    processes' load only ever adds time)."""
    text = "When Mary and John went to the store, John gave a drink to Mary. " * 64
    ids = torch.tensor(model.tokenizer(text)["input_ids"][:length])
    times = defaultdict(list)
    for _ in range(repeats):  # interleaved, so that load from other processes hits each step alike
        times["forward"].append(forward_seconds(model, ids, 1))
        run, seconds = timed(lambda: analyze_ids(model, ids, progress=False))
        times["analyze"].append(seconds)
        times["effects"].append(timed(lambda: run.effects())[1])
        for k in (10, 20):
            times[f"effects+exact({k})"].append(timed(lambda: run.effects(refine=k))[1])
    return {name: min(values) for name, values in times.items()} | {"n_tokens": length}


def mean(values) -> float | None:
    values = [v for v in values if v is not None]
    return statistics.fmean(values) if values else None


def tables(records: list[dict], costs: dict, names: list[str]) -> str:
    tasks = sorted({r["task"] for r in records}) + ["all"]
    of = {task: [r for r in records if task in ("all", r["task"])] for task in tasks}
    lines = ["### Fraction of the best possible drop of m (edges into the last token; mean over prompts)", "",
             "| ranking | k | " + " | ".join(f"{t} (n={len(of[t])})" for t in tasks) + " |",
             "|---|---|" + "---|" * len(tasks)]
    for name in names:
        for k in KS:
            cells = [mean(r["fraction"][f"{name}@{k}"] for r in of[t]) for t in tasks]
            lines.append(f"| {name} | {k} | " + " | ".join("—" if c is None else f"{c:.2f}" for c in cells) + " |")
    lines += ["", "### Spearman with the exact single-edge drops (all edges into the last token)", "",
              "| ranking | " + " | ".join(tasks) + " |", "|---|" + "---|" * len(tasks)]
    for name in [n for n in names if n in SCORED]:
        cells = (f"{mean(r['spearman'][name] for r in of[t]):.2f}" for t in tasks)
        lines.append(f"| {name} | " + " | ".join(cells) + " |")
    lines += ["", "### Cost, as a multiple of one plain forward pass (mean over prompts)", "",
              "| step | × forward |", "|---|---|"]
    for step in ["analyze"] + [n for n in names if n != "share" and not n.startswith("routes")] + ["exact singles"]:
        lines.append(f"| {step} | {mean(r[f'{step}_s'] / r['forward_s'] for r in records):.1f} |")
    lines += ["", f"At T={costs['n_tokens']} (fastest of 5 rounds): forward {costs['forward']:.2f} s, analyze "
              f"{costs['analyze']:.2f} s ({costs['analyze'] / costs['forward']:.1f}×), effects (gradient) "
              f"{costs['effects']:.2f} s ({costs['effects'] / costs['forward']:.1f}×), refined by 10 "
              f"{costs['effects+exact(10)']:.2f} s ({costs['effects+exact(10)'] / costs['forward']:.1f}×), by 20 "
              f"{costs['effects+exact(20)']:.2f} s ({costs['effects+exact(20)'] / costs['forward']:.1f}×)."]
    routes = [name for name in names if name.startswith("routes")]
    if routes:
        lines += ["", "Route edges into the last token at threshold 0.04 (mean): "
                  + ", ".join(f"{name}: {mean(r['route_edges'][name] for r in records):.1f}" for name in routes)]
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--per-task", type=int, default=8)
    parser.add_argument("--threads", type=int, default=1, help="1: steadier times on a shared machine")
    parser.add_argument("--out", default="bench/results/faithfulness.json")
    parser.add_argument("--rankings", default=",".join(RANKINGS), help=f"some of {', '.join(RANKINGS)}")
    args = parser.parse_args()
    names = args.rankings.split(",")
    unknown = sorted(set(names) - set(RANKINGS))
    if unknown:
        parser.error(f"unknown rankings {unknown}: choose from {RANKINGS}")
    if args.threads:
        torch.set_num_threads(args.threads)
    start = time.perf_counter()
    model = lw.load_model()
    prompts = correct(model, candidates())
    chosen = [p for task in ("ioi", "facts", "induction", "agreement")
              for p in [q for q in prompts if q.task == task][:args.per_task]]
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    records = []
    for i, prompt in enumerate(chosen):
        records.append(measure(model, prompt, names))
        r = records[-1]
        at_10 = " ".join(f"{name}@10 {r['fraction'][f'{name}@10']}" for name in names)
        print(f"[{i + 1}/{len(chosen)}] {prompt.task}: {prompt.text!r} m={r['value']:.2f} {at_10}", flush=True)
        out.write_text(json.dumps({"records": records, "rankings": names}, indent=1))  # so far, if stopped
    costs = long_prompt_costs(model)
    report = tables(records, costs, names)
    print(report)
    print(f"\n{len(chosen)} prompts, {time.perf_counter() - start:.0f} s in all")
    out.write_text(json.dumps({"records": records, "rankings": names, "long_prompt": costs, "table": report}, indent=1))


if __name__ == "__main__":
    main()
