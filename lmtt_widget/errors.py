"""The one error type users see: a clear message that names the problem and the valid range."""

import numbers
import operator


class LmttError(ValueError):
    """Bad input to lmtt-widget (prompt, model, index, option)."""


def _integer(value) -> int | None:
    """`value` as an int if it is one: a Python or numpy integer, or a 0-d integer tensor (what
    indexing a tensor gives). None for anything else: bools, floats, arrays of several values."""
    if isinstance(value, bool) or getattr(value, "ndim", 0) != 0 or "bool" in str(getattr(value, "dtype", "")):
        return None
    try:
        return operator.index(value)
    except TypeError:
        return None


def _real(value) -> float | None:
    """`value` as a float if it is a real number (Python or numpy, not a bool), else None."""
    if isinstance(value, bool) or not isinstance(value, numbers.Real) or "bool" in str(getattr(value, "dtype", "")):
        return None
    return float(value)


def check_index(name: str, value: int, size: int) -> int:
    """Return `value` as a non-negative index into `size` items (negative counts from the end)."""
    index = _integer(value)
    if index is None:
        raise LmttError(f"{name} must be an integer, got {value!r}")
    if not -size <= index < size:
        raise LmttError(f"{name} {index} is out of range: valid are 0..{size - 1} (or -{size}..-1)")
    return index % size


def check_positive(name: str, value: int) -> int:
    """Return `value` as an int >= 1 (a number of tokens to show, a memory budget in bytes)."""
    count = _integer(value)
    if count is None or count < 1:
        raise LmttError(f"{name} must be a positive integer, got {value!r}")
    return count


def check_count(name: str, value: int) -> int:
    """Return `value` as an int >= 0 (a number of draws, of parts to measure)."""
    count = _integer(value)
    if count is None or count < 0:
        raise LmttError(f"{name} must be a non-negative integer, got {value!r}")
    return count


def check_floor(floor: float) -> float:
    value = _real(floor)
    if value is None or not 0 <= value < 1:
        raise LmttError(f"floor must be a number in [0, 1), got {floor!r}")
    return value


def check_threshold(threshold: float) -> float:
    value = _real(threshold)
    if value is None or not 0 < value < 1:
        raise LmttError(f"threshold must be a number in (0, 1), got {threshold!r}")
    return value
