"""A least-recently-used map bounded by the bytes its values hold (prepared contexts)."""

from __future__ import annotations

from collections import OrderedDict
from typing import Generic, Protocol, TypeVar


class HasNbytes(Protocol):
    """A value that knows its size."""

    @property
    def nbytes(self) -> int: ...


V = TypeVar("V", bound=HasNbytes)


class ContextCache(Generic[V]):
    """LRU of values keyed by context id; evicts the oldest once `budget_bytes` is exceeded."""

    def __init__(self, budget_bytes: int) -> None:
        if budget_bytes <= 0:
            raise ValueError(f"cache budget must be positive, got {budget_bytes}")
        self.budget_bytes = budget_bytes
        self._items: OrderedDict[str, V] = OrderedDict()
        self.nbytes = 0
        self.hits = 0
        self.misses = 0
        self.evictions = 0

    def __len__(self) -> int:
        return len(self._items)

    def __contains__(self, key: object) -> bool:
        return key in self._items

    def get(self, key: str) -> V | None:
        """The value for `key` (now most recently used), or None."""
        value = self._items.get(key)
        if value is None:
            self.misses += 1
            return None
        self._items.move_to_end(key)
        self.hits += 1
        return value

    def put(self, key: str, value: V) -> bool:
        """Store `value`, evicting old entries; False (nothing stored) if it exceeds the budget."""
        self.discard(key)
        if value.nbytes > self.budget_bytes:
            return False
        while self._items and self.nbytes + value.nbytes > self.budget_bytes:
            _, evicted = self._items.popitem(last=False)
            self.nbytes -= evicted.nbytes
            self.evictions += 1
        self._items[key] = value
        self.nbytes += value.nbytes
        return True

    def discard(self, key: str) -> None:
        """Remove `key` if present."""
        value = self._items.pop(key, None)
        if value is not None:
            self.nbytes -= value.nbytes

    def clear(self) -> None:
        """Drop everything."""
        self._items.clear()
        self.nbytes = 0
