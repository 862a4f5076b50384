"""Names of finished and deleted tasks, which stay reserved for a while."""

from __future__ import annotations

from collections import deque


class Tombstones:
    """Remembers names for ``window`` seconds. Not thread-safe.

    Every name gets the same window, so expiry times arrive in insertion order and pruning only
    ever looks at the oldest entries.
    """

    __slots__ = ("_expiries", "_order", "_window")

    def __init__(self, window: float) -> None:
        self._window = window
        self._expiries: dict[str, float] = {}
        self._order: deque[tuple[float, str]] = deque()

    def add(self, name: str, now: float) -> None:
        expiry = now + self._window
        self._expiries[name] = expiry
        self._order.append((expiry, name))
        self._prune(now)

    def contains(self, name: str, now: float) -> bool:
        self._prune(now)
        return name in self._expiries

    def clear(self) -> None:
        self._expiries.clear()
        self._order.clear()

    def _prune(self, now: float) -> None:
        order = self._order
        while order and order[0][0] <= now:
            expiry, name = order.popleft()
            # A name buried again later has a newer expiry, which must survive.
            if self._expiries.get(name) == expiry:
                del self._expiries[name]
