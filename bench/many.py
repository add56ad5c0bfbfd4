"""Many prompts: `analyze_many` against `analyze` one prompt at a time, and runs saved to files.

    python -m bench.many                                  # the demo model, every case below
    python -m bench.many --cases ioi --n-ioi 64 --threads 1

Cases (the demo model, SmolLM2-135M, unless --model names another):

- ioi: `--n-ioi` IOI-style prompts (T 17-23 tokens), one by one with `analyze` and with
  `analyze_many(batch_size=...)` for each `--batch-sizes`: prompts per second and the speed-up
  (the ways interleaved 32 prompts at a time in one process, so that other processes' load falls
  on each alike), and, each way in a fresh process, the peak memory (RSS above what was there
  before, the model and a warm-up loaded) while analysing and keeping every run, and what a run
  keeps (a run of `analyze` its activations; one of `analyze_many` its shares and final-normed residuals);
- long: the same for `--n-long` prompts of about 256 tokens;
- cost: what one run keeps at T=64 (shares and final-normed residuals, and the activations `analyze`
  keeps), and how many such runs fit in 24 GB;
- file: one run of T=1024: `to_file` (seconds, bytes, with and without activations) and
  `load_run` (seconds, without and with the model; the file is memory-mapped, so also the time to
  read every tensor once), and the routes of the loaded run.

Writes a markdown table to stdout and a JSON file (bench/results/, git-ignored).
"""

from __future__ import annotations

import argparse
import datetime as _dt
import gc
import json
import platform
import tempfile
import time
from pathlib import Path

import torch

from .analysis import TEXT, Memory

NAMES = ["Mary", "John", "Alice", "Bob", "Tom", "Sarah", "James", "Emma", "David", "Anna"]
TEMPLATES = [
    "When {a} and {b} went to the store on Monday morning, {b} gave a drink to",
    "Yesterday afternoon, {a} and {b} went to the grocery store together, and then {b} gave a bottle of water to",
    "Then, {a} and {b} had a long argument about the plans. Afterwards {b} said to",
    "After the meeting ended, {a} and {b} walked to the cafe near the station, where {b} handed a coffee to",
]
GIB = 2**30


def ioi_prompts(n: int) -> list[str]:
    pairs = [(a, b) for a in NAMES for b in NAMES if a != b]
    return [TEMPLATES[i % len(TEMPLATES)].format(a=pairs[i % len(pairs)][0], b=pairs[i % len(pairs)][1])
            for i in range(n)]


def long_prompts(tokenizer, n: int, n_tokens: int = 256) -> list[list[int]]:
    """`n` different prompts of n_tokens - 8 .. n_tokens + 8 tokens: the text's ids, rotated."""
    ids = tokenizer(TEXT * (n_tokens // 40 + 2))["input_ids"]
    return [ids[i:][: n_tokens - 8 + i % 17] for i in range(n)]


def _kept_bytes(run) -> int:
    """What a run keeps: its shares, top predictions or final-normed residuals, and (if held) its
    activations."""
    total = sum(shares.nbytes for shares in run.layers)
    total += sum(t.numel() * t.element_size() for t in (run._top or ()))
    total += 0 if run._final_normed is None else run._final_normed.nbytes
    if run.holds_activations:
        capture = run.capture
        tensors = capture.resid + capture.attn_out + capture.ffn_out + capture.values + [capture.final_normed]
        tensors += list(capture.neurons.values())
        total += sum(t.numel() * t.element_size() for t in tensors)
        for probs in capture.probs.values():
            total += probs.nbytes if hasattr(probs, "query") else probs.numel() * probs.element_size()
    return total


def _measured(fn) -> tuple[object, float, int]:
    """(result, seconds, peak extra RSS bytes) of `fn`."""
    memory = Memory(torch.device("cpu"))
    memory.start()
    start = time.perf_counter()
    out = fn()
    seconds = time.perf_counter() - start
    return out, seconds, memory.peak()["peak_extra_bytes"]


def prompts_of(model, case: str, args) -> list:
    return ioi_prompts(args.n_ioi) if case == "ioi" else long_prompts(model.tokenizer, args.n_long)


def _ways(batch_sizes: list[int]) -> list[str]:
    return ["one-by-one", *(f"batch={b}" for b in batch_sizes)]


def _analyse(model, prompts, how: str) -> list:
    import lmtt_widget as lw

    if how == "one-by-one":
        return [lw.analyze(model, p, progress=False) for p in prompts]
    return lw.analyze_many(model, prompts, batch_size=int(how.split("=")[1]), progress=False)


def speed(model, prompts, ways: list[str], chunk: int = 32) -> dict[str, float]:
    """Seconds of each way over all `prompts`, the ways interleaved chunk by chunk, so that the
    load of other processes falls on each alike."""
    for how in ways:
        _analyse(model, prompts[:2], how)  # warm-up
    seconds = dict.fromkeys(ways, 0.0)
    for start in range(0, len(prompts), chunk):
        for how in ways:
            gc.collect()
            _, took, _ = _measured(lambda: _analyse(model, prompts[start:start + chunk], how))
            seconds[how] += took
    return seconds


def memory(model, prompts, how: str) -> dict:
    """Peak RSS above what was there before (the model loaded, a warm-up done) while analysing
    every prompt and keeping every run, and what a run keeps."""
    _analyse(model, prompts[:2], how)
    gc.collect()
    runs, _, peak = _measured(lambda: _analyse(model, prompts, how))
    return dict(peak_extra_bytes=peak, kept_bytes_per_run=sum(_kept_bytes(r) for r in runs) / len(runs),
                mean_tokens=sum(r.n_tokens for r in runs) / len(runs))


def compare(case: str, batch_sizes: list[int], argv: list[str], n: int) -> list[dict]:
    """The speed of each way (in one process, interleaved), and its memory in a fresh process of its own."""
    ways = _ways(batch_sizes)
    seconds = _in_subprocess(argv, case, "speed")
    rows = []
    for how in ways:
        rows.append(dict(case=case, n=n, seconds=seconds[how], prompts_per_s=n / seconds[how],
                         speedup=seconds["one-by-one"] / seconds[how], **_in_subprocess(argv, case, how),
                         how="analyze, one by one" if how == "one-by-one"
                         else f"analyze_many, batch_size={how.split('=')[1]}"))
    return rows


def _in_subprocess(argv: list[str], case: str, how: str) -> dict:
    import subprocess
    import sys

    done = subprocess.run([sys.executable, "-m", "bench.many", *argv, "--child", f"{case}:{how}"],
                          capture_output=True, text=True, cwd=Path(__file__).parent.parent)
    for line in done.stdout.splitlines():
        if line.startswith("ROW "):
            return json.loads(line[4:])
    raise RuntimeError(f"{case} {how}: exit {done.returncode}: {done.stderr.strip()[-400:]}")


def cost(model) -> dict:
    import lmtt_widget as lw

    ids = model.tokenizer(TEXT * 4)["input_ids"][:64]
    compact = lw.analyze_many(model, [ids], progress=False)[0]
    full = lw.analyze(model, ids, progress=False)
    per_run = _kept_bytes(compact)
    return dict(n_tokens=64, compact_bytes=per_run, full_bytes=_kept_bytes(full), fit_in_24gb=int(24 * GIB // per_run),
                full_fit_in_24gb=int(24 * GIB // _kept_bytes(full)))


def file_case(model, n_tokens: int = 1024) -> dict:
    import lmtt_widget as lw

    ids = model.tokenizer(TEXT * (n_tokens // 40 + 2))["input_ids"][:n_tokens]
    run, analyze_s, _ = _measured(lambda: lw.analyze(model, ids, progress=False))

    def read_all(loaded):  # the file is memory-mapped: reading every tensor is what loading costs
        tensors = [t for shares in loaded.layers for t in shares.tensors().values()]
        if loaded.holds_activations:
            tensors += loaded.capture.resid + loaded.capture.attn_out + loaded.capture.ffn_out + loaded.capture.values
        return sum(float(t.float().sum()) for t in tensors)

    with tempfile.TemporaryDirectory() as folder:
        path, write_s, _ = _measured(lambda: run.to_file(Path(folder) / "run.lmtt"))
        light, light_s, _ = _measured(lambda: run.to_file(Path(folder) / "light.lmtt", activations=False))
        loaded, load_s, _ = _measured(lambda: lw.load_run(path))
        _, read_s, _ = _measured(lambda: read_all(loaded))
        _, load_model_s, _ = _measured(lambda: lw.load_run(path, model=model))
        _, load_light_s, _ = _measured(lambda: lw.load_run(light))
        _, graph_s, _ = _measured(lambda: loaded.graph())
        same = set(loaded.graph().edges(keys=True)) == set(run.graph().edges(keys=True))
        return dict(n_tokens=n_tokens, analyze_s=analyze_s, to_file_s=write_s, file_bytes=path.stat().st_size,
                    to_file_light_s=light_s, light_bytes=light.stat().st_size, load_s=load_s, read_all_s=read_s,
                    load_with_model_s=load_model_s, load_light_s=load_light_s, routes_s=graph_s,
                    same_routes=bool(same))


def _mib(n: float) -> str:
    return f"{n / 2**20:.1f} MiB" if n >= 2**20 else f"{n / 1024:.0f} KiB"


def report(results: dict) -> str:
    lines = []
    for case in ("ioi", "long"):
        rows = results.get(case)
        if not rows:
            continue
        lines += [f"### {case}: {rows[0]['n']} prompts, mean {rows[0]['mean_tokens']:.0f} tokens", "",
                  "| how | seconds | prompts/s | speed-up | peak extra RSS | kept per run |",
                  "|---|---|---|---|---|---|"]
        lines += [f"| {r['how']} | {r['seconds']:.1f} | {r['prompts_per_s']:.2f} | {r['speedup']:.1f}× | "
                  f"{_mib(r['peak_extra_bytes'])} | {_mib(r['kept_bytes_per_run'])} |" for r in rows]
        lines.append("")
    if "cost" in results:
        c = results["cost"]
        lines += [f"A run at T=64 keeps {_mib(c['compact_bytes'])} from analyze_many ({c['fit_in_24gb']:,} fit in "
                  f"24 GB), {_mib(c['full_bytes'])} from analyze with its activations ({c['full_fit_in_24gb']:,}).", ""]
    if "file" in results:
        f = results["file"]
        lines += [f"T={f['n_tokens']}: analyze {f['analyze_s']:.1f} s; to_file {f['to_file_s']:.2f} s, "
                  f"{_mib(f['file_bytes'])} (without activations {f['to_file_light_s']:.2f} s, "
                  f"{_mib(f['light_bytes'])}); load_run {f['load_s']:.2f} s (memory-mapped; reading every tensor "
                  f"{f['read_all_s']:.2f} s more; with the model {f['load_with_model_s']:.2f} s; without "
                  f"activations {f['load_light_s']:.2f} s); the routes from the loaded run {f['routes_s']:.2f} s, "
                  f"the same as the original's: {f['same_routes']}.", ""]
    return "\n".join(lines)


def main(argv=None) -> int:
    import sys

    argv = list(sys.argv[1:] if argv is None else argv)
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--model", default=None, help="what lw.load_model takes (default: the demo model)")
    parser.add_argument("--cases", default="ioi,long,cost,file")
    parser.add_argument("--n-ioi", type=int, default=256)
    parser.add_argument("--n-long", type=int, default=32)
    parser.add_argument("--batch-sizes", default="8,16")
    parser.add_argument("--threads", type=int, default=None)
    parser.add_argument("--child", default=None, help=argparse.SUPPRESS)  # case:how, measured in this process
    args = parser.parse_args(argv)
    if args.threads:
        torch.set_num_threads(args.threads)
    import lmtt_widget as lw

    batch_sizes = [int(b) for b in args.batch_sizes.split(",")]
    if args.child:
        case, how = args.child.split(":")
        model = lw.load_model(args.model)
        prompts = prompts_of(model, case, args)
        row = speed(model, prompts, _ways(batch_sizes)) if how == "speed" else memory(model, prompts, how)
        print("ROW " + json.dumps(row))
        return 0
    cases = args.cases.split(",")
    results: dict = {"machine": platform.platform(), "threads": args.threads or torch.get_num_threads(),
                     "date": _dt.datetime.now().isoformat(timespec="seconds")}
    for case in ("ioi", "long"):
        if case in cases:
            results[case] = compare(case, batch_sizes, argv, args.n_ioi if case == "ioi" else args.n_long)
    if "cost" in cases or "file" in cases:
        model = lw.load_model(args.model)
        if "cost" in cases:
            results["cost"] = cost(model)
        if "file" in cases:
            results["file"] = file_case(model)
    print(report(results))
    out = Path(__file__).parent / "results" / f"many-{_dt.datetime.now():%Y%m%d-%H%M%S}.json"
    out.parent.mkdir(exist_ok=True)
    out.write_text(json.dumps(results, indent=1))
    print(f"({out})")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
