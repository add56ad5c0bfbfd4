"""Progress bars for steps that may take a while: tqdm.auto (a widget in Jupyter, text in a
terminal), shown only once a step has run for `delay` seconds, so quick analyses stay silent."""

from __future__ import annotations

from collections.abc import Iterable
from typing import TypeVar

T = TypeVar("T")
DELAY_S = 1.0


def progress_bar(iterable: Iterable[T], *, enabled: bool | None = None, desc: str | None = None,
                 total: int | None = None, delay: float = DELAY_S, unit: str = "it") -> Iterable[T]:
    """`iterable`, wrapped in a tqdm.auto bar.

    `enabled`: None (the default) shows the bar only if iterating takes longer than `delay`
    seconds; True shows it at once; False never (and tqdm is not even imported).
    """
    if enabled is False:
        return iterable
    try:
        from tqdm.auto import tqdm
    except ImportError:  # tqdm is a dependency, but never fail an analysis for a progress bar
        return iterable
    return tqdm(iterable, desc=desc, total=total, unit=unit, leave=False, delay=0.0 if enabled else delay)


class _Silent:
    """What `progress_counter` gives when no bar is shown."""

    def update(self, n: int = 1) -> None:
        pass

    def close(self) -> None:
        pass


def progress_counter(*, enabled: bool | None = None, desc: str | None = None, total: int | None = None,
                     delay: float = DELAY_S, unit: str = "it"):
    """A bar advanced by hand (`.update(n)`, `.close()`), for work done in batches of items;
    `enabled` as for `progress_bar`."""
    if enabled is False:
        return _Silent()
    try:
        from tqdm.auto import tqdm
    except ImportError:
        return _Silent()
    # each update is a whole batch: draw every one (tqdm would skip those within 0.1 s of the last)
    return tqdm(desc=desc, total=total, unit=unit, leave=False, delay=0.0 if enabled else delay,
                mininterval=0, miniters=1)
