"""Page tokens for the List methods: the name of the last item already returned, encoded."""

from __future__ import annotations

import base64
import binascii
import bisect
from collections.abc import Callable, Sequence

from google.api_core.exceptions import InvalidArgument


def page[T](
    items: Sequence[T],
    name: Callable[[T], str],
    *,
    page_size: int,
    page_token: str,
    max_page_size: int,
) -> tuple[Sequence[T], str]:
    """One page of ``items`` (sorted by ``name``) and the token for the next one ("" at the end).

    Resuming after a name rather than an offset keeps paging stable while tasks come and go.
    """
    if page_size < 0:
        raise InvalidArgument("page_size must not be negative.")
    size = min(page_size or max_page_size, max_page_size)
    start = bisect.bisect_right(items, _decode(page_token), key=name) if page_token else 0
    chunk = items[start : start + size]
    more = start + size < len(items)
    return chunk, _encode(name(chunk[-1])) if more else ""


def _encode(name: str) -> str:
    return base64.urlsafe_b64encode(name.encode()).decode()


def _decode(token: str) -> str:
    try:
        return base64.urlsafe_b64decode(token.encode()).decode()
    except (binascii.Error, UnicodeDecodeError):
        raise InvalidArgument("Invalid page_token.") from None
