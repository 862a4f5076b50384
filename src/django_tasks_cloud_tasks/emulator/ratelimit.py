"""The token bucket that paces a queue's dispatches."""

from __future__ import annotations

# Refills are computed in floating point; waking at next_token_at() must find a whole token.
_EPSILON = 1e-9


class TokenBucket:
    """``rate`` tokens a second, holding at most ``burst``; starts full. Not thread-safe."""

    __slots__ = ("_burst", "_rate", "_stamp", "_tokens")

    def __init__(self, rate: float, burst: int) -> None:
        self._rate = rate
        self._burst = float(burst)
        self._tokens = float(burst)
        self._stamp: float | None = None

    def take(self, now: float) -> bool:
        """Spend a token if one is available at ``now``."""
        self._refill(now)
        if self._tokens < 1 - _EPSILON:
            return False
        self._tokens = max(self._tokens - 1, 0.0)
        return True

    def next_token_at(self, now: float) -> float:
        """When the next whole token will be available."""
        self._refill(now)
        return now + max(1 - self._tokens, 0) / self._rate

    def _refill(self, now: float) -> None:
        if self._stamp is not None:
            # max() because wall-clock time may step backwards.
            elapsed = max(now - self._stamp, 0)
            self._tokens = min(self._burst, self._tokens + elapsed * self._rate)
        self._stamp = now
