"""Numbers as the page writes them (js/dom.ts fmt), for comparing the page's text with Python's."""


def fmt(x: float, digits: int = 3) -> str:
    return f"{x:.{digits}f}"


def signed(x: float) -> str:
    return ("+" if x >= 0 else "−") + fmt(abs(x))
