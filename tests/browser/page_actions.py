"""What the browser tests do in the page through its commands (the page's `lmttInvoke`)."""

from __future__ import annotations

import json


def ablate(page, spec: list, mode: str = "zero") -> None:
    """Send the page's `ablate` command, as its Ablate button does."""
    request = json.dumps({"spec": spec, "mode": mode})
    page.evaluate(f"() => document.getElementById('lmtt-root').lmttInvoke('ablate', {request})")
