"""Frame rates as exact rationals and the frame count of a stretch of audio (the package's one of each).

NTSC rates are written as decimals by people (29.97, 59.94, 23.976) but are really
``N * 1000 / 1001``. ``as_fps`` turns such decimals into the exact fraction, so that a
video at "29.97" has the same frame timing as one written by any other tool.
"""

from __future__ import annotations

import math
from fractions import Fraction
from numbers import Integral, Real

__all__ = ["as_fps", "frame_count"]

# Integer rates whose 1000/1001 NTSC version is commonly given as a decimal.
_NTSC_BASES = (24, 30, 48, 60, 120)


def as_fps(fps) -> Fraction:
    """Return ``fps`` as an exact positive ``Fraction``.

    Accepts an int, a float, a ``Fraction``, or a string such as ``"25"``, ``"29.97"``
    or ``"30000/1001"``. Decimals within 0.005 of an NTSC rate (23.976, 29.97, 59.94, ...)
    become the exact ``N*1000/1001`` fraction.
    """
    if isinstance(fps, bool):
        raise TypeError(f"fps must be a number or a string like '30000/1001', got the bool {fps!r}")
    if isinstance(fps, Fraction):
        value = fps
    elif isinstance(fps, str):
        text = fps.strip()
        try:
            value = Fraction(text)
        except ValueError:
            raise ValueError(
                f"fps {fps!r} is not a number; use e.g. 25, 29.97 or '30000/1001'"
            ) from None
        if "/" not in text:
            value = _snap_ntsc(float(value))
    elif isinstance(fps, Real):
        if not math.isfinite(float(fps)):
            raise ValueError(f"fps must be finite and positive, got {fps!r}")
        value = Fraction(int(fps)) if float(fps).is_integer() else _snap_ntsc(float(fps))
    else:
        raise TypeError(
            f"fps must be an int, float, Fraction or a string like '30000/1001', got {type(fps).__name__}"
        )
    if value <= 0:
        raise ValueError(f"fps must be positive, got {fps!r}")
    if value > 1000:
        raise ValueError(f"fps {fps!r} is above 1000 frames per second; accepted are rates in (0, 1000]")
    return value


def _snap_ntsc(value: float) -> Fraction:
    if value.is_integer():
        return Fraction(int(value))
    for base in _NTSC_BASES:
        ntsc = Fraction(base * 1000, 1001)
        if abs(value - float(ntsc)) < 0.005:
            return ntsc
    return Fraction(value).limit_denominator(1001)


def frame_count(num_samples: int, sample_rate: int, fps) -> int:
    """Number of video frames covering ``num_samples`` of audio at ``sample_rate``:
    ``ceil(num_samples / sample_rate * fps)``, in exact fractions (4.0 s at 25 fps is 100 frames, not
    101 from float round-off; NTSC rates count exactly). The package's one frame count."""
    if isinstance(num_samples, bool) or not isinstance(num_samples, Integral) or num_samples < 0:
        raise ValueError(f"num_samples must be an integer >= 0, got {num_samples!r}")
    if isinstance(sample_rate, bool) or not isinstance(sample_rate, Integral) or sample_rate <= 0:
        raise ValueError(f"sample_rate must be a positive integer, got {sample_rate!r}")
    return math.ceil(Fraction(int(num_samples), int(sample_rate)) * as_fps(fps))
