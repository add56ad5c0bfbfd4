"""Command line: `python -m lmtt_widget demo [PROMPT]` prints a prediction and its routes;
`python -m lmtt_widget export PROMPT -o routes.html` writes the widget as one offline HTML file.
Bad input (an LmttError, a file that cannot be written) is one line "error: ..." on stderr, exit code 2."""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

from .errors import LmttError, check_threshold
from .models import DEMO_PROMPT


def demo(args: argparse.Namespace) -> int:
    import lmtt_widget as lw

    start = time.perf_counter()
    model = lw.load_model(args.model)
    loaded = time.perf_counter()
    run = lw.analyze(model, args.prompt)
    graph = run.graph(threshold=args.threshold)
    done = time.perf_counter()
    print(f"model: {run.model_name} ({run.shape.n_layers} layers), loaded in {loaded - start:.1f} s")
    print(f"prompt: {args.prompt!r} ({run.n_tokens} tokens), analysed in {done - loaded:.2f} s")
    print("prediction:", ", ".join(f"{tok!r} {p:.3f}" for tok, p in run.top_tokens(k=5)))
    print(f"routes to it (threshold {args.threshold}): {graph.number_of_nodes()} nodes, "
          f"{graph.number_of_edges()} edges")
    attention = [(u, v, d) for u, v, d in graph.edges(data=True) if d["kind"] == "attention" and u[2] != v[2]]
    attention.sort(key=lambda e: -e[2]["weight"])
    for u, v, d in attention[:10]:
        print(f"  layer {v[1]:>2}: {run.tokens[u[2]]!r} -> {run.tokens[v[2]]!r}  weight {d['weight']:.3f}")
    return 0


def export(args: argparse.Namespace) -> int:
    import lmtt_widget as lw

    check_writable(Path(args.output))  # before the model loads and the analysis runs
    model = lw.load_model(args.model)
    widget = lw.Widget(lw.analyze(model, args.prompt), target=args.target, threshold=args.threshold)
    path = widget.save_html(args.output)
    print(f"wrote {path} ({path.stat().st_size / 1e6:.2f} MB): {widget.run.n_tokens} tokens, "
          f"{widget.graph.number_of_edges()} edges in the routes to token {widget.target}")
    return 0


def check_writable(path: Path) -> None:
    """An LmttError unless a file can be written at `path` (tried: no file is left behind)."""
    if path.is_dir():
        raise LmttError(f"cannot write {path}: it is a directory; give a file name, such as {path / 'routes.html'}")
    if not path.parent.is_dir():
        raise LmttError(f"cannot write {path}: the directory {path.parent} does not exist")
    existed = path.exists()
    try:
        with open(path, "ab"):
            pass
    except OSError as error:
        raise LmttError(f"cannot write {path}: {error.strerror or error}") from None
    if not existed:
        path.unlink()


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m lmtt_widget")
    commands = parser.add_subparsers(dest="command", required=True)
    demo_parser = commands.add_parser("demo", help="analyse a prompt on the demo model and print its routes")
    demo_parser.add_argument("prompt", nargs="?", default=DEMO_PROMPT)
    demo_parser.add_argument("--model", default=None, help="hub id, directory or .gguf (default: the demo model)")
    demo_parser.add_argument("--threshold", type=float, default=0.04)
    export_parser = commands.add_parser("export", help="write the widget for a prompt as one offline HTML file")
    export_parser.add_argument("prompt")
    export_parser.add_argument("-o", "--output", default="routes.html", help="the HTML file to write")
    export_parser.add_argument("--model", default=None, help="hub id, directory or .gguf (default: the demo model)")
    export_parser.add_argument("--threshold", type=float, default=0.04)
    export_parser.add_argument("--target", type=int, default=-1,
                               help="whose prediction's routes (default: the last token)")
    args = parser.parse_args(argv)
    try:
        check_threshold(args.threshold)  # before the model loads
        return {"demo": demo, "export": export}[args.command](args)
    except (LmttError, OSError) as error:  # the message is the answer; a traceback would bury it
        print(f"error: {error}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
