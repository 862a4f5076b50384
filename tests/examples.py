"""How many examples a property-based test generates: its full count in CI, a sample every day.

The full runs take most of a minute; the everyday ``scripts/test`` stays short with a twentieth of
them (at least 50), and ``.ci/run`` sets ``HYPOTHESIS_PROFILE=ci`` for the full counts.
"""

from __future__ import annotations

import os

_SAMPLE_DIVISOR = 20
_MIN_SAMPLE = 50


def full(count: int) -> int:
    """``count`` under the ``ci`` profile, else a sample of it."""
    if os.environ.get("HYPOTHESIS_PROFILE") == "ci":
        return count
    return max(_MIN_SAMPLE, count // _SAMPLE_DIVISOR)
