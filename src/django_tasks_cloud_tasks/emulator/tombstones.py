"""Names of finished and deleted tasks, and of deleted queues, which stay reserved for a while."""

from __future__ import annotations

import heapq


class Tombstones:
    """Remembers names for ``window`` seconds of wall-clock time. Not thread-safe.

    Wall-clock rather than monotonic time, so that the expiries can be saved to a file and mean
    the same after a restart.
    """

    __slots__ = ("_expiries", "_order", "_window")

    def __init__(self, window: float) -> None:
        self._window = window
        self._expiries: dict[str, float] = {}
        self._order: list[tuple[float, str]] = []

    def add(self, name: str, now: float) -> float:
        """Reserve ``name`` from ``now``; returns when the reservation ends."""
        expiry = now + self._window
        self.restore(name, expiry)
        self._prune(now)
        return expiry

    def restore(self, name: str, expiry: float) -> None:
        """Reserve ``name`` until ``expiry`` (a reservation saved earlier)."""
        self._expiries[name] = expiry
        # A heap, because restored reservations need not arrive in expiry order.
        heapq.heappush(self._order, (expiry, name))

    def contains(self, name: str, now: float) -> bool:
        self._prune(now)
        return name in self._expiries

    def items(self) -> list[tuple[str, float]]:
        return list(self._expiries.items())

    def clear(self) -> None:
        self._expiries.clear()
        self._order.clear()

    def _prune(self, now: float) -> None:
        order = self._order
        while order and order[0][0] <= now:
            expiry, name = heapq.heappop(order)
            # A name buried again later has a newer expiry, which must survive.
            if self._expiries.get(name) == expiry:
                del self._expiries[name]
