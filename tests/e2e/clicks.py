"""Clicking at a point computed in the page, once the page has stopped moving."""

from __future__ import annotations

import time
from collections.abc import Callable

# (paths) => page coordinates of the middle of the heaviest attention edge between two tokens;
# for `locator.evaluate_all` on a widget's attention paths (locators also reach into shadow roots)
HEAVIEST_EDGE_MIDPOINT = """(paths) => {
  paths = paths.filter((p) => p.getAttribute('d').includes('C'));
  paths.sort((a, b) => parseFloat(b.getAttribute('stroke-width')) - parseFloat(a.getAttribute('stroke-width')));
  const p = paths[0];
  const pt = p.getPointAtLength(p.getTotalLength() / 2);
  const m = p.getScreenCTM();
  return {x: pt.x * m.a + pt.y * m.c + m.e, y: pt.x * m.b + pt.y * m.d + m.f};
}"""


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
