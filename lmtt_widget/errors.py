"""The one error type users see: a clear message that names the problem and the valid range."""


class LmttError(ValueError):
    """Bad input to lmtt-widget (prompt, model, index, option)."""


def check_index(name: str, value: int, size: int) -> int:
    """Return `value` as a non-negative index into `size` items (negative counts from the end)."""
    if isinstance(value, bool) or not isinstance(value, int):
        raise LmttError(f"{name} must be an integer, got {value!r}")
    if not -size <= value < size:
        raise LmttError(f"{name} {value} is out of range: valid are 0..{size - 1} (or -{size}..-1)")
    return value % size


def check_floor(floor: float) -> float:
    if isinstance(floor, bool) or not isinstance(floor, (int, float)) or not 0 <= floor < 1:
        raise LmttError(f"floor must be a number in [0, 1), got {floor!r}")
    return float(floor)


def check_threshold(threshold: float) -> float:
    if not isinstance(threshold, (int, float)) or isinstance(threshold, bool) or not 0 < threshold < 1:
        raise LmttError(f"threshold must be a number in (0, 1), got {threshold!r}")
    return float(threshold)
