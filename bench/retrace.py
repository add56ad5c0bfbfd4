"""What reading one layer's FFN activations costs when the run did not keep them.

    python -m bench.retrace --tokens 2048 --layers 0,15,29 --threads 1

The demo model on `--tokens` random token ids, analysed under the default memory budget (at
T=2048 its FFN activations do not fit: none kept). For each layer, the best of `--repeats` of
`run.neuron_activations(layer)`, a forward pass stopped after that layer, against the whole
forward pass that would give the same activations.
"""

from __future__ import annotations

import argparse
import time

import torch

import lmtt_widget as lw
from lmtt_widget import tracing
from lmtt_widget.run import analyze_ids


def best_of(repeats: int, read) -> tuple[float, torch.Tensor]:
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        value = read()
        times.append(time.perf_counter() - start)
    return min(times), value


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--tokens", type=int, default=2048)
    parser.add_argument("--layers", default="0,15,29", help="comma-separated")
    parser.add_argument("--repeats", type=int, default=2)
    parser.add_argument("--threads", type=int, default=None)
    args = parser.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    model = lw.load_model()
    ids = torch.randint(100, 40000, (args.tokens,), generator=torch.Generator().manual_seed(0))
    start = time.perf_counter()
    run = analyze_ids(model, ids, progress=False)
    print(f"T={args.tokens}: analysed in {time.perf_counter() - start:.1f} s, "
          f"{len(run.capture.neurons)} of {run.shape.n_layers} layers' FFN activations kept")
    for layer in map(int, args.layers.split(",")):

        def stopped():
            run._neuron_cache.clear()  # a first read each time
            return run.neuron_activations(layer)

        def whole():
            return tracing._forward(model, run.family, run.shape, ids, neurons_of={layer}).neurons[layer]

        (t_stopped, a), (t_whole, b) = best_of(args.repeats, stopped), best_of(args.repeats, whole)
        print(f"layer {layer}: run.neuron_activations {t_stopped:.2f} s; the whole forward pass {t_whole:.2f} s; "
              f"equal: {torch.equal(a, b)}")


if __name__ == "__main__":
    main()
