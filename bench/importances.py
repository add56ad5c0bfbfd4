"""Per-layer cost of the attention importances alone, on random tensors of a model's shape.

    python -m bench.importances --shape llama3-8b --lengths 256,1024,4096 --device cuda --dtype bf16
    python -m bench.importances --shape smollm2-135m --lengths 256,1024 --device cpu --naive

For one layer: head_source_proximity (L1 and L2) from `whole` [T, d], probabilities [H, T, T],
values [T, KV, hd] and W_O [H, hd, d], medians of `--repeats` after a warm-up; `--naive` adds the
plain chunked formula (it forms [chunk, T, H, d] differences: slow, for small T). Random inputs
overshoot less often than a real model's (whose residuals have many small coordinates), so the
L1 correction costs more on real captures: bench/analysis.py measures those.
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import time

import torch

from lmtt_widget import contributions as C

SHAPES = {  # heads, kv heads, head dim, d_model
    "llama3-8b": (32, 8, 128, 4096),
    "smollm2-135m": (9, 3, 64, 576),
    "gpt2-small": (12, 12, 64, 768),
}


def inputs(n_tokens, shape, device, dtype, seed=0):
    n_heads, n_kv, head_dim, d = shape
    g = torch.Generator(device="cpu").manual_seed(seed)
    whole = torch.randn(n_tokens, d, generator=g)
    scores = torch.randn(n_heads, n_tokens, n_tokens, generator=g) * 4
    scores = scores.masked_fill(torch.ones(n_tokens, n_tokens, dtype=torch.bool).triu(1), float("-inf"))
    probs = scores.softmax(-1)
    values = torch.randn(n_tokens, n_kv, head_dim, generator=g)
    w_o = torch.randn(n_heads, head_dim, d, generator=g) / head_dim**0.5
    return [t.to(device=device, dtype=dtype) for t in (whole, probs, values, w_o)]


def timed(fn, device, repeats):
    def once():
        if device.type == "cuda":
            torch.cuda.synchronize()
        start = time.perf_counter()
        fn()
        if device.type == "cuda":
            torch.cuda.synchronize()
        return time.perf_counter() - start

    once()
    return statistics.median(once() for _ in range(repeats))


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--shape", default="smollm2-135m", choices=sorted(SHAPES))
    parser.add_argument("--lengths", default="256,1024")
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    parser.add_argument("--dtype", default=None, choices=["fp32", "bf16", "fp16"])
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--threads", type=int, default=None)
    parser.add_argument("--budget", type=int, default=C.DEFAULT_BUDGET_BYTES)
    parser.add_argument("--naive", action="store_true", help="also time the plain chunked formula")
    args = parser.parse_args(argv)
    if args.threads:
        torch.set_num_threads(args.threads)
    device = torch.device(args.device)
    dtype_name = args.dtype or ("fp32" if device.type == "cpu" else "bf16")
    dtype = {"fp32": torch.float32, "bf16": torch.bfloat16, "fp16": torch.float16}[dtype_name]
    shape = SHAPES[args.shape]
    rows = []
    print(f"{args.shape} (H, KV, hd, d = {shape}), {device}, {dtype_name}, one layer, medians of {args.repeats}")
    print("| T | L1 | L2 |" + (" L1 naive | L2 naive |" if args.naive else ""))
    print("|---|---|---|" + ("---|---|" if args.naive else ""))
    for n_tokens in [int(x) for x in args.lengths.split(",") if x]:
        whole, probs, values, w_o = inputs(n_tokens, shape, device, dtype)
        head_out = torch.einsum("thk,hkd->thd", values.float().repeat_interleave(shape[0] // shape[1], 1), w_o.float())
        row = dict(tokens=n_tokens)
        for p in (1, 2):
            row[f"l{p}_s"] = timed(lambda: C.head_source_proximity(whole, probs, head_out, p, args.budget,
                                                                   values=values, w_o=w_o), device, args.repeats)
            if args.naive:
                row[f"l{p}_naive_s"] = timed(lambda: C.head_source_proximity_reference(
                    whole, probs, head_out, p, args.budget), device, 1)
        rows.append(row)
        cells = [row["l1_s"], row["l2_s"]] + ([row["l1_naive_s"], row["l2_naive_s"]] if args.naive else [])
        print(f"| {n_tokens} | " + " | ".join(f"{c * 1000:.1f} ms" for c in cells) + " |", flush=True)
    print(json.dumps(dict(shape=args.shape, device=str(device), dtype=dtype_name, rows=rows)), file=sys.stderr)
    return 0


if __name__ == "__main__":
    sys.exit(main())
