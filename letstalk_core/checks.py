"""Checks of plain inputs that several layers take (integers), one function per rule, so that a rule
and its message are written once. A check names the input and what is accepted."""

from __future__ import annotations

import numpy as np


def check_int(name: str, value, minimum: int | None = None, maximum: int | None = None, *,
              accepted: str | None = None) -> int:
    """``value`` as an ``int``; raises ValueError naming ``name`` unless it is an integer (Python or numpy,
    not a bool) from ``minimum`` to ``maximum`` (None: no bound). ``accepted`` replaces the message's
    description of what is accepted ("an integer >= 1" and so on) where the input has more to say."""
    if isinstance(value, bool) or not isinstance(value, (int, np.integer)) \
            or (minimum is not None and value < minimum) or (maximum is not None and value > maximum):
        raise ValueError(f"{name} must be {accepted or _integer_range(minimum, maximum)}, got {value!r}")
    return int(value)


def _integer_range(minimum: int | None, maximum: int | None) -> str:
    if minimum is not None and maximum is not None:
        return f"an integer from {minimum} to {maximum}"
    if minimum is not None:
        return f"an integer >= {minimum}"
    if maximum is not None:
        return f"an integer <= {maximum}"
    return "an integer"
