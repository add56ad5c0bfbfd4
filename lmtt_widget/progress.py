"""Progress bars for steps that may take a while: tqdm.auto (a widget in Jupyter, text in a
terminal), shown only once a step has run for `delay` seconds, so quick analyses stay silent.
A bar ends complete and goes away; one that an error stopped stays where it stopped (in Jupyter:
red), so that a finished analysis never leaves a red, one-step-short bar behind."""

from __future__ import annotations

import contextlib
from collections.abc import Callable, Iterator

DELAY_S = 1.0


@contextlib.contextmanager
def progress_steps(total: int, *, enabled: bool | None = None, desc: str | None = None, unit: str = "it",
                   delay: float = DELAY_S) -> Iterator[Callable[[], None]]:
    """A bar of `total` steps: yields `advance()`, to call once each step is done.

    `enabled`: None (the default) shows the bar only if the steps take longer than `delay`
    seconds; True shows it at once; False never (and tqdm is not even imported).
    """
    bar = None
    if enabled is not False:
        try:
            from tqdm.auto import tqdm
        except ImportError:  # tqdm is a dependency, but never fail an analysis for a progress bar
            tqdm = None
        if tqdm is not None:
            bar = tqdm(total=total, desc=desc, unit=unit, leave=False, delay=0.0 if enabled else delay)
    try:
        yield (lambda: None) if bar is None else (lambda: bar.update(1))
    finally:
        if bar is not None:
            bar.close()
