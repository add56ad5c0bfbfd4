"""Progress bars end complete and go away (tqdm.auto: a widget in Jupyter, text elsewhere): an
analysis leaves no red "importances: 97% 29/30" bar behind. Tested with tqdm's own notebook bar,
the one Jupyter shows."""

from __future__ import annotations

import pytest

import lmtt_widget as lw
import tiny
from lmtt_widget.progress import progress_steps


@pytest.fixture()
def notebook_bars(monkeypatch):
    """tqdm.auto's bar replaced by tqdm's notebook bar, each one's state kept when it is closed."""
    pytest.importorskip("ipywidgets")
    import tqdm.auto
    from tqdm.notebook import tqdm as notebook_tqdm

    closed = []

    class Kept(notebook_tqdm):
        def close(self):
            super().close()
            closed.append({"desc": self.desc, "n": self.n, "total": self.total,
                           "style": self.container.children[1].bar_style})

    monkeypatch.setattr(tqdm.auto, "tqdm", Kept)
    return closed


def test_an_analysis_completes_its_bar_and_removes_it(notebook_bars, capsys):
    model = tiny.load("llama")
    lw.analyze(model, "When Mary and John went to the store", progress=True)
    [bar] = notebook_bars
    assert bar["n"] == bar["total"] == model._module.config.num_hidden_layers
    assert bar["style"] != "danger"


def test_analyze_many_completes_its_bar_of_prompts(notebook_bars, capsys):
    model = tiny.load("llama")
    lw.analyze_many(model, ["When Mary and John went", "The cat sat on the", "One two three"], batch_size=2,
                    progress=True)
    [bar] = [b for b in notebook_bars if b["desc"] == "prompts"]
    assert bar["n"] == bar["total"] == 3 and bar["style"] != "danger"


def test_steps_count_what_was_done_and_a_failure_shows_where_it_stopped(notebook_bars, capsys):
    with progress_steps(3, enabled=True, desc="x") as advance:
        for _ in range(3):
            advance()
    with pytest.raises(RuntimeError), progress_steps(3, enabled=True, desc="y") as advance:
        advance()
        raise RuntimeError("stop")
    done, failed = notebook_bars
    assert (done["n"], done["total"]) == (3, 3) and done["style"] != "danger"
    assert (failed["n"], failed["style"]) == (1, "danger")  # an error stays visible where it stopped


def test_steps_off_show_no_bar(notebook_bars):
    with progress_steps(2, enabled=False) as advance:
        advance()
        advance()
    assert notebook_bars == []
