"""A tiny marimo app for tests/e2e/test_marimo.py: the routes of a tiny random llama, shown with
`mo.ui.anywidget`, and a cell that reruns when the widget's selection changes."""

import marimo

app = marimo.App()


@app.cell
def _():
    import sys
    from pathlib import Path

    import marimo as mo

    sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # tests/, for tiny.py
    import lmtt_widget as lw
    import tiny

    w = lw.show(tiny.load("llama"), "When Mary and John went to the store", threshold=0.01)
    view = mo.ui.anywidget(w)
    view
    return mo, view, w


@app.cell
def _(mo, view, w):
    import html

    view.value  # rerun on every change of the widget's state
    mo.Html(f"<pre id='kernel-selection'>{html.escape(str(w.selection))}</pre>")
    return


if __name__ == "__main__":
    app.run()
