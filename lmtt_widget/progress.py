"""Progress bars for steps that may take a while: tqdm.auto (a widget in Jupyter, text in a
terminal), shown only once a step has run for `delay` seconds, so quick analyses stay silent.
A bar ends complete and goes away; one that an error stopped stays where it stopped (in Jupyter:
red), so that a finished analysis never leaves a red, one-step-short bar behind."""

from __future__ import annotations

import contextlib
from collections.abc import Callable, Iterator
from typing import Any

DELAY_S = 1.0


def _bar(enabled: bool | None, delay: float, **options: Any):
    """A tqdm.auto bar, or None: `enabled` None shows it only once the work takes longer than
    `delay` seconds, True at once, False never (and tqdm is not even imported)."""
    if enabled is False:
        return None
    try:
        from tqdm.auto import tqdm
    except ImportError:  # tqdm is a dependency, but never fail an analysis for a progress bar
        return None
    return tqdm(leave=False, delay=0.0 if enabled else delay, **options)


@contextlib.contextmanager
def progress_steps(total: int, *, enabled: bool | None = None, desc: str | None = None, unit: str = "it",
                   delay: float = DELAY_S) -> Iterator[Callable[[], None]]:
    """A bar of `total` steps: yields `advance()`, to call once each step is done; `enabled` as
    for `_bar`."""
    bar = _bar(enabled, delay, total=total, desc=desc, unit=unit)
    try:
        yield (lambda: None) if bar is None else (lambda: bar.update(1))
    finally:
        if bar is not None:
            bar.close()


class _Silent:
    """What `progress_counter` gives when no bar is shown."""

    def update(self, n: int = 1) -> None:
        pass

    def close(self) -> None:
        pass


def progress_counter(*, enabled: bool | None = None, desc: str | None = None, total: int | None = None,
                     delay: float = DELAY_S, unit: str = "it"):
    """A bar advanced by hand (`.update(n)`, `.close()`), for work done in batches of items;
    `enabled` as for `_bar`."""
    # each update is a whole batch: draw every one (tqdm would skip those within 0.1 s of the last)
    bar = _bar(enabled, delay, desc=desc, total=total, unit=unit, mininterval=0, miniters=1)
    return _Silent() if bar is None else bar
