"""Cost of an analysis against the plain forward pass of the same model.

    python -m bench.analysis --model demo --lengths 32,128,512,2048 --device cpu
    python -m bench.analysis --shape llama3-8b --dtype bf16 --lengths 1024,4096 --device cuda

Per prompt length T (prompts of exactly T tokens, made by repeating a text's token ids), all
in one process, after a warm-up, medians of `--repeats`:

- forward: the plain forward pass of the same transformers model, no hooks, no nnsight, with
  eager attention and with sdpa (transformers' default);
- `--attention`: the analysis' attention: lmtt_sdpa (the default: sdpa, probabilities computed
  when read, see lmtt_widget.attention) or eager (which writes them);
- analyze: `analyze_ids` (the one nnsight trace + every layer's importances), split into the
  trace and the importances;
- routes: `run.graph()` (the last token's routes), and re-routing: `run.graph(token=T//2)` and
  `run.graph(threshold=0.1)` on the same run, which reuse the kept shares;
- total = analyze + routes, ratio total / forward (eager and sdpa);
- peak memory: on CPU the peak RSS (VmHWM) of a fresh process per length (model loaded, a short
  warm-up, then that length; `--in-process` measures all lengths in one process, resetting the
  peak through /proc/self/clear_refs), and that minus the RSS before the length ("extra"); on GPU
  max_memory_allocated minus what was allocated before; and the bytes of what a Run keeps (the
  sparse shares and any kept probabilities).

Writes a markdown table to stdout and a JSON file (bench/results/, git-ignored).
`--shape` builds a random-initialised model with a real model's shapes (no download): the
8B shape needs a GPU.
"""

from __future__ import annotations

import argparse
import datetime as _dt
import gc
import json
import os
import platform
import re
import statistics
import sys
import time
from pathlib import Path

import torch

TEXT = (
    "When Mary and John went to the store, John gave a drink to Mary. The capital of France is "
    "Paris, and the capital of Italy is Rome. Information flows from the input tokens through the "
    "attention heads and the feed-forward blocks of every layer to the prediction at the end. "
)

# Shapes of real models, for random-initialised stand-ins: (model class, config class, config) in transformers.
SHAPES = {
    "llama3-8b": ("LlamaForCausalLM", "LlamaConfig",
                  dict(hidden_size=4096, intermediate_size=14336, num_hidden_layers=32, num_attention_heads=32,
                       num_key_value_heads=8, vocab_size=128256, max_position_embeddings=8192, rope_theta=500000.0)),
    "smollm2-135m": ("LlamaForCausalLM", "LlamaConfig",
                     dict(hidden_size=576, intermediate_size=1536, num_hidden_layers=30, num_attention_heads=9,
                          num_key_value_heads=3, vocab_size=49152, max_position_embeddings=8192,
                          tie_word_embeddings=True)),
    "gpt2-small": ("GPT2LMHeadModel", "GPT2Config", dict(n_embd=768, n_layer=12, n_head=12, vocab_size=50257,
                                                         n_positions=1024)),
    # sandwich norms, soft-capped attention (eager) and logits, sliding windows on every other layer
    "gemma2-2b": ("Gemma2ForCausalLM", "Gemma2Config",
                  dict(hidden_size=2304, intermediate_size=9216, num_hidden_layers=26, num_attention_heads=8,
                       num_key_value_heads=4, head_dim=256, query_pre_attn_scalar=256, vocab_size=256000,
                       max_position_embeddings=8192, sliding_window=4096, attn_logit_softcapping=50.0,
                       final_logit_softcapping=30.0)),
    # 8 experts of 14336 neurons, 2 per token
    "mixtral-8x7b": ("MixtralForCausalLM", "MixtralConfig",
                     dict(hidden_size=4096, intermediate_size=14336, num_hidden_layers=32, num_attention_heads=32,
                          num_key_value_heads=8, num_local_experts=8, num_experts_per_tok=2, vocab_size=32000,
                          max_position_embeddings=32768)),
}


# -- measuring ------------------------------------------------------------------------------


def _proc_status(field: str) -> int:
    """A /proc/self/status field in bytes (Linux), or 0."""
    try:
        match = re.search(rf"^{field}:\s+(\d+) kB", Path("/proc/self/status").read_text(), re.M)
    except OSError:
        return 0
    return int(match.group(1)) * 1024 if match else 0


class Memory:
    """Peak memory of a section: RSS on CPU (VmHWM), allocated bytes on CUDA."""

    def __init__(self, device: torch.device):
        self.cuda = device.type == "cuda"

    def start(self) -> None:
        gc.collect()
        if self.cuda:
            torch.cuda.synchronize()
            torch.cuda.empty_cache()
            torch.cuda.reset_peak_memory_stats()
            self.base = torch.cuda.memory_allocated()
        else:
            try:  # "5" resets the peak RSS (VmHWM) to the current RSS
                Path("/proc/self/clear_refs").write_text("5")
            except OSError:
                pass
            self.base = _proc_status("VmRSS")

    def peak(self) -> dict:
        if self.cuda:
            torch.cuda.synchronize()
            return dict(peak_bytes=torch.cuda.max_memory_allocated(), base_bytes=self.base,
                        peak_extra_bytes=torch.cuda.max_memory_allocated() - self.base, kind="cuda max allocated")
        peak = _proc_status("VmHWM")
        return dict(peak_bytes=peak, base_bytes=self.base, peak_extra_bytes=peak - self.base, kind="RSS (VmHWM)")


def _timed(fn, device: torch.device):
    if device.type == "cuda":
        torch.cuda.synchronize()
    start = time.perf_counter()
    out = fn()
    if device.type == "cuda":
        torch.cuda.synchronize()
    return out, time.perf_counter() - start


def _median(fn, device, repeats: int, slow_s: float) -> tuple[float, int, object]:
    """Median seconds of `fn` over `repeats` runs after one warm-up run; a warm-up that takes
    longer than `slow_s` counts as the only measurement."""
    out, first = _timed(fn, device)
    if first > slow_s:
        return first, 1, out
    times = []
    for _ in range(repeats):
        del out
        out, seconds = _timed(fn, device)
        times.append(seconds)
    return statistics.median(times), len(times), out


# -- models and prompts ---------------------------------------------------------------------


def build_model(args):
    import lmtt_widget as lw

    device = torch.device(args.device)
    dtype = {"fp32": torch.float32, "bf16": torch.bfloat16, "fp16": torch.float16}[args.dtype]
    if args.shape is None:
        return lw.load_model(device=device, dtype=dtype), "demo (SmolLM2-135M-Instruct)"
    import transformers

    model_class, config_class, config_kwargs = SHAPES[args.shape]
    if args.layers:  # a real model's width with fewer layers: per-layer costs where the whole would not fit
        key = "n_layer" if "n_layer" in config_kwargs else "num_hidden_layers"
        config_kwargs = {**config_kwargs, key: args.layers}
    config = getattr(transformers, config_class)(**config_kwargs)
    cls = getattr(transformers, model_class)
    torch.manual_seed(0)
    previous = torch.get_default_dtype()
    torch.set_default_dtype(dtype)
    try:
        with torch.device(device):
            hf_model = cls(config)
    finally:
        torch.set_default_dtype(previous)
    hf_model.eval()
    from tests.tiny import tokenizer  # an in-memory tokenizer: ids < its small vocabulary

    layers = f", {args.layers} layers" if args.layers else ""
    return lw.load_model(hf_model, tokenizer=tokenizer()), f"random-init {args.shape}{layers}"


def prompt_ids(tokenizer, n_tokens: int) -> torch.Tensor:
    """Exactly `n_tokens` token ids: a text's ids repeated (and a BOS first, if any)."""
    ids = list(tokenizer(TEXT, add_special_tokens=False)["input_ids"])
    bos = [tokenizer.bos_token_id] if tokenizer.bos_token_id is not None else []
    out = bos + ids * (n_tokens // max(1, len(ids)) + 1)
    return torch.tensor(out[:n_tokens], dtype=torch.long)


def _set_attention(hf_model, implementation: str) -> bool:
    try:
        if hasattr(hf_model, "set_attn_implementation"):
            hf_model.set_attn_implementation(implementation)
        else:
            hf_model.config._attn_implementation = implementation
        return True
    except (ValueError, ImportError):
        return False


def _nbytes(tensors) -> int:  # tensors, or AttentionProbs (what they hold)
    return sum(getattr(t, "nbytes", None) or t.numel() * t.element_size() for t in tensors)


# -- one length -----------------------------------------------------------------------------


def measure(model, n_tokens: int, args) -> dict:
    """One length. The steps are interleaved (forward, trace, analyze, routes, then again), so
    that load from other processes on a shared machine hits them alike; medians and minima."""
    from lmtt_widget.architectures import family_of, shape_of
    from lmtt_widget.run import analyze_ids
    from lmtt_widget.tracing import trace

    device = torch.device(args.device)
    hf_model = model._module
    ids = prompt_ids(model.tokenizer, n_tokens).to(hf_model.device)
    family = family_of(hf_model)
    shape = shape_of(hf_model, family)
    kwargs = dict(distance=args.distance, budget_bytes=args.budget, progress=False)

    def forward_with(implementation: str):  # the plain forward pass with this attention; then the analysis' again
        @torch.no_grad()
        def forward():
            if not _set_attention(hf_model, implementation):
                return None
            try:
                return hf_model(ids[None], use_cache=False).logits
            finally:
                _set_attention(hf_model, args.attention)
        return forward

    forward, forward_sdpa = forward_with("eager"), forward_with("sdpa")
    _set_attention(hf_model, args.attention)

    memory = Memory(device)
    times: dict[str, list[float]] = {}
    peaks = {}
    run = graph = None
    memory.start()  # peaks over every round, from what was in use before this length
    for repeat in range(args.repeats + 1):  # the first round is the warm-up
        record = {}
        del run, graph  # the previous round's run must not count in this round's peak
        gc.collect()
        run = graph = None
        _, record["forward_eager_s"] = _timed(forward, device)
        if repeat == 0:
            peaks["forward"] = memory.peak()
        _, record["forward_sdpa_s"] = _timed(forward_sdpa, device)
        _ = None
        capture, record["trace_s"] = _timed(lambda: trace(model, family, shape, ids, None, probs=False), device)
        del capture
        gc.collect()
        run, record["analyze_s"] = _timed(lambda: analyze_ids(model, ids, **kwargs), device)
        graph, record["routes_s"] = _timed(lambda: run.graph(threshold=args.threshold), device)
        _, record["reroute_token_s"] = _timed(lambda: run.graph(token=n_tokens // 2, threshold=args.threshold), device)
        _, record["reroute_threshold_s"] = _timed(lambda: run.graph(threshold=0.1), device)
        for key, value in record.items():
            times.setdefault(key, []).append(value)
        slow = record["analyze_s"] > args.slow_s
        if slow and repeat == 0:  # too slow to repeat: the warm-up round is the measurement
            break
        if repeat == 0:
            for key in times:
                times[key].clear()
    peaks["analysis"] = memory.peak()
    row: dict = dict(tokens=n_tokens, repeats=len(times["analyze_s"]))
    for key, values in times.items():
        row[key] = statistics.median(values)
        row[key.replace("_s", "_min_s")] = min(values)
    if not _set_attention(hf_model, "sdpa") or not _set_attention(hf_model, args.attention):
        row["forward_sdpa_s"] = row["forward_sdpa_min_s"] = None
    row["shares_s"] = max(0.0, row["analyze_s"] - row["trace_s"])
    row["routes_edges"] = graph.number_of_edges()
    row["total_s"] = row["analyze_s"] + row["routes_s"]
    row["ratio_eager"] = row["total_s"] / row["forward_eager_s"]
    row["ratio_sdpa"] = row["total_s"] / row["forward_sdpa_s"] if row["forward_sdpa_s"] else None
    row["ratio_min_eager"] = (row["analyze_min_s"] + row["routes_min_s"]) / row["forward_eager_min_s"]
    row["forward_peak_extra_bytes"] = peaks["forward"]["peak_extra_bytes"]
    row["peak_extra_bytes"] = peaks["analysis"]["peak_extra_bytes"]
    row["peak_bytes"] = peaks["analysis"]["peak_bytes"]
    row["memory_kind"] = peaks["analysis"]["kind"]
    row["floor"] = run.floor
    row["shares_bytes"] = sum(layer.nbytes for layer in run.layers)
    row["probs_bytes"] = _nbytes(run.capture.probs.values())
    row["capture_bytes"] = _nbytes([*run.capture.resid, *run.capture.attn_out, *run.capture.ffn_out,
                                    *run.capture.probs.values(), *run.capture.values])
    run = graph = None
    gc.collect()
    return row


# -- output ---------------------------------------------------------------------------------


def _gib(n: int | None) -> str:
    return "" if n is None else f"{n / 2**30:.2f}"


def _sec(s: float | None) -> str:
    if s is None:
        return ""
    return f"{s * 1000:.1f} ms" if s < 1 else f"{s:.2f} s"


def table(rows: list[dict]) -> str:
    head = ("| T | forward (eager) | forward (sdpa) | trace | importances | analyze | routes | re-route token "
            "| re-route threshold | total | × fwd eager | × fwd sdpa | × (minima) | peak GiB | peak extra GiB "
            "| shares GiB | probs GiB |")
    lines = [head, "|" + "---|" * (head.count("|") - 1)]
    for r in rows:
        if "error" in r:
            lines.append(f"| {r['tokens']} | failed: {r['error']} |")
            continue
        ratio_sdpa = f"{r['ratio_sdpa']:.1f}×" if r["ratio_sdpa"] else ""
        lines.append(
            f"| {r['tokens']} | {_sec(r['forward_eager_s'])} | {_sec(r['forward_sdpa_s'])} | {_sec(r['trace_s'])} "
            f"| {_sec(r['shares_s'])} | {_sec(r['analyze_s'])}{'' if r['repeats'] > 1 else ' (n=1)'} "
            f"| {_sec(r['routes_s'])} | {_sec(r['reroute_token_s'])} | {_sec(r['reroute_threshold_s'])} "
            f"| {_sec(r['total_s'])} | {r['ratio_eager']:.1f}× | {ratio_sdpa} | {r['ratio_min_eager']:.1f}× "
            f"| {_gib(r['peak_bytes'])} | {_gib(r['peak_extra_bytes'])} "
            f"| {_gib(r['shares_bytes'])} | {_gib(r['probs_bytes'])} |")
    return "\n".join(lines)


def _in_subprocess(argv, n_tokens: int) -> dict:
    import subprocess

    argv = list(sys.argv[1:] if argv is None else argv)
    if "--lengths" in argv:
        at = argv.index("--lengths")
        del argv[at:at + 2]
    argv = [a for a in argv if not a.startswith("--lengths=") and a != "--child"]
    done = subprocess.run([sys.executable, "-m", "bench.analysis", *argv, "--lengths", str(n_tokens), "--child",
                           "--out", os.devnull], capture_output=True, text=True, cwd=Path(__file__).parent.parent)
    for line in done.stdout.splitlines():
        if line.startswith("ROW "):
            return json.loads(line[4:])
    tail = (done.stderr.strip().splitlines() or ["no output"])[-1]
    return dict(tokens=n_tokens, error=f"exit {done.returncode}: {tail[:200]}")


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--model", default="demo", help="demo (the offline demo model)")
    parser.add_argument("--shape", choices=sorted(SHAPES), help="a random-initialised model of this shape")
    parser.add_argument("--lengths", default="32,128,512,2048", help="comma-separated prompt lengths")
    parser.add_argument("--layers", type=int, default=None, help="with --shape: only this many layers")
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    parser.add_argument("--dtype", default=None, choices=["fp32", "bf16", "fp16"],
                        help="model dtype (default: fp32 on CPU, bf16 on GPU)")
    parser.add_argument("--distance", default="l1", choices=["l1", "l2"])
    parser.add_argument("--threshold", type=float, default=0.04)
    parser.add_argument("--budget", type=int, default=None, help="budget_bytes for the importances")
    parser.add_argument("--attention", default=None, choices=["lmtt_sdpa", "eager"],
                        help="the analysis' attention (default lmtt_sdpa: sdpa, probabilities computed when read)")
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--slow-s", type=float, default=30.0,
                        help="a warm-up slower than this is the only measurement of that step")
    parser.add_argument("--threads", type=int, default=None, help="torch.set_num_threads (default: torch's)")
    parser.add_argument("--in-process", action="store_true",
                        help="on CPU, measure every length in this process (default: one process per length)")
    parser.add_argument("--child", action="store_true", help=argparse.SUPPRESS)
    parser.add_argument("--label", default="", help="a note stored in the JSON (e.g. which optimisation)")
    parser.add_argument("--out", default=None, help="JSON path (default bench/results/analysis-<...>.json)")
    args = parser.parse_args(argv)
    if args.model != "demo" and args.shape is None:
        parser.error("--model: only 'demo' (use --shape for random-initialised big models)")
    if args.threads:
        torch.set_num_threads(args.threads)
    if args.dtype is None:
        args.dtype = "fp32" if args.device == "cpu" else "bf16"
    from lmtt_widget import contributions as C

    if args.budget is None:
        args.budget = C.DEFAULT_BUDGET_BYTES
    from lmtt_widget import attention

    args.attention = args.attention or attention.register()
    lengths = [int(x) for x in args.lengths.split(",") if x]

    # on CPU each length runs in a fresh process, so that its peak RSS is its own
    isolate = args.device == "cpu" and not args.in_process
    layers = f", {args.layers} layers" if args.layers else ""
    model, model_name = (None, "demo (SmolLM2-135M-Instruct)" if args.shape is None
                         else f"random-init {args.shape}{layers}")
    if not isolate or args.child:
        model, model_name = build_model(args)
        # warm-up of every step on a short prompt (kernels, lazy imports, caches)
        measure_args = argparse.Namespace(**{**vars(args), "repeats": 1})
        measure(model, 16, measure_args)

    rows = []
    for n_tokens in lengths:
        if isolate and not args.child:
            row = _in_subprocess(argv, n_tokens)
        else:
            try:
                row = measure(model, n_tokens, args)
            except (RuntimeError, MemoryError) as error:  # out of memory and the like: report, go on
                row = dict(tokens=n_tokens, error=f"{type(error).__name__}: {str(error).splitlines()[0][:200]}")
        rows.append(row)
        print(json.dumps(row), file=sys.stderr, flush=True)
    if args.child:
        print("ROW " + json.dumps(rows[0]), flush=True)
        return 0

    device_name = torch.cuda.get_device_name() if args.device.startswith("cuda") else platform.processor() or "cpu"
    meta = dict(model=model_name, device=args.device, device_name=device_name, dtype=args.dtype,
                attention=args.attention,
                distance=args.distance, threshold=args.threshold, budget_bytes=args.budget, repeats=args.repeats,
                torch=torch.__version__, threads=torch.get_num_threads(), cpus=os.cpu_count(), label=args.label,
                when=_dt.datetime.now(_dt.UTC).isoformat(timespec="seconds"))
    print(f"\n{model_name}, {args.device} ({device_name}), {args.dtype}, {args.distance}, {args.attention} attention, "
          f"threads={meta['threads']}, medians of {args.repeats} interleaved rounds after a warm-up round"
          + (f", {args.label}" if args.label else ""))
    print(table(rows))
    out = Path(args.out) if args.out else Path(__file__).parent / "results" / (
        f"analysis-{args.shape or args.model}-{args.device}-{args.distance}-{_dt.datetime.now():%Y%m%d-%H%M%S}.json")
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(dict(meta=meta, rows=rows), indent=1))
    print(f"\nwritten: {out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
