"""Clicking at a point computed in the page, once the page has stopped moving."""

from __future__ import annotations

import time
from typing import Callable


def click_when_still(page, where: Callable[[], dict], timeout: float = 10.0) -> dict:
    """Click at `where()` (page coordinates {x, y}) once two readings 200 ms apart agree: a
    notebook that is still laying out outputs or scrolling would otherwise move the target
    between reading its position and the click."""
    point, deadline = where(), time.monotonic() + timeout
    while True:
        page.wait_for_timeout(200)
        again = where()
        if abs(again["x"] - point["x"]) < 0.5 and abs(again["y"] - point["y"]) < 0.5 or time.monotonic() > deadline:
            break
        point = again
    page.mouse.click(again["x"], again["y"])
    return again
