"""A least-recently-used store of byte strings, bounded by count and by total size."""

from __future__ import annotations

from collections import OrderedDict
from collections.abc import Hashable
from typing import Generic, TypeVar

__all__ = ["BytesLRU"]

K = TypeVar("K", bound=Hashable)


class BytesLRU(Generic[K]):
    """Keeps at most ``max_entries`` values and ``max_bytes`` bytes; evicts the oldest used.

    A single value larger than ``max_bytes`` is still kept (alone), so the
    newest item can always be read back at least once.
    """

    def __init__(self, *, max_entries: int, max_bytes: int) -> None:
        self.max_entries = max_entries
        self.max_bytes = max_bytes
        self._items: OrderedDict[K, bytes] = OrderedDict()
        self._size = 0

    def __len__(self) -> int:
        return len(self._items)

    def __contains__(self, key: object) -> bool:
        return key in self._items

    @property
    def size(self) -> int:
        """Total bytes held."""
        return self._size

    def get(self, key: K) -> bytes | None:
        """The value for ``key`` (marking it recently used), or None."""
        value = self._items.get(key)
        if value is not None:
            self._items.move_to_end(key)
        return value

    def put(self, key: K, value: bytes) -> None:
        """Store ``value`` under ``key``, evicting the least recently used as needed."""
        old = self._items.pop(key, None)
        if old is not None:
            self._size -= len(old)
        self._items[key] = value
        self._size += len(value)
        while len(self._items) > 1 and (
            len(self._items) > self.max_entries or self._size > self.max_bytes
        ):
            _, evicted = self._items.popitem(last=False)
            self._size -= len(evicted)

    def clear(self) -> None:
        """Drop everything."""
        self._items.clear()
        self._size = 0
