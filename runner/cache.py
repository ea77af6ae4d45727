"""A bounded least-recently-used cache of node outputs, keyed as ComfyUI keys them."""

from __future__ import annotations

import hashlib
import json
import threading
from collections import OrderedDict
from typing import Any


def cache_key(
    class_type: str, literals: dict[str, Any], links: dict[str, tuple[str, int]], extra: Any
) -> str:
    """The key of a node: its class, its literal inputs and its ancestors' keys.

    ``links`` maps an input name to ``(ancestor_key, output_index)``; ``extra`` is what
    the node's ``is_changed`` returned (None for most nodes).
    """
    payload = json.dumps(
        [class_type, literals, {k: list(v) for k, v in links.items()}, extra],
        sort_keys=True,
        default=repr,
    )
    return hashlib.sha256(payload.encode()).hexdigest()


class NodeCache:
    """Node outputs by key, at most ``capacity`` entries, least recently used evicted."""

    def __init__(self, capacity: int):
        self.capacity = capacity
        self._items: OrderedDict[str, tuple] = OrderedDict()
        self._lock = threading.Lock()

    def get(self, key: str) -> tuple | None:
        with self._lock:
            value = self._items.get(key)
            if value is not None:
                self._items.move_to_end(key)
            return value

    def put(self, key: str, value: tuple) -> None:
        with self._lock:
            self._items[key] = value
            self._items.move_to_end(key)
            while len(self._items) > self.capacity:
                self._items.popitem(last=False)

    def clear(self) -> None:
        with self._lock:
            self._items.clear()

    def __len__(self) -> int:
        return len(self._items)

    def __contains__(self, key: str) -> bool:
        return key in self._items
