"""A bounded least-recently-used cache of node outputs, keyed as ComfyUI keys them.

The cache is bounded by bytes, as ComfyUI's RAM-pressure cache is: the sum of the tensor
and array bytes in the cached outputs (:func:`output_nbytes`), at most
``node_cache_mb`` (a setting), and also by entry count (``node_cache_size``), which keeps
the bookkeeping small when outputs are tiny. Loaded models are not counted: a MODEL / CLIP
/ VAE handle points into the model manager's cache, which has its own memory budget.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import threading
from collections import OrderedDict
from collections.abc import Mapping
from typing import Any

from runner.handles import Conditioning


def output_nbytes(value: Any) -> int:
    """The bytes of the tensors and arrays in a node's outputs, walking tuples, lists,
    dicts and dataclass instances (handles). A loaded checkpoint (and any
    ``torch.nn.Module``) counts 0: the model manager owns it. A tensor reached twice
    counts once."""
    seen: set[int] = set()

    def walk(item: Any) -> int:
        if item is None or isinstance(item, (str, bytes, int, float, bool)):
            return 0
        if id(item) in seen:
            return 0
        seen.add(id(item))
        nbytes = getattr(item, "nbytes", None)
        if isinstance(nbytes, int) and hasattr(item, "shape"):  # torch.Tensor, numpy array
            return nbytes
        if _is_model(item):
            return 0
        if isinstance(item, Mapping):
            return sum(walk(v) for v in item.values())
        if isinstance(item, Conditioning):
            return sum(walk(e) for e in item.entries)
        if isinstance(item, (tuple, list, set, frozenset)):
            return sum(walk(v) for v in item)
        if dataclasses.is_dataclass(item) and not isinstance(item, type):
            return sum(walk(getattr(item, f.name, None)) for f in dataclasses.fields(item))
        return 0

    return walk(value)


def _is_model(item: Any) -> bool:
    from runner.models.checkpoint import Checkpoint

    if isinstance(item, Checkpoint):
        return True
    try:
        import torch
    except ImportError:  # pragma: no cover - torch is a dependency
        return False
    return isinstance(item, torch.nn.Module)


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
    """Node outputs by key, least recently used evicted first, within two bounds: at most
    ``capacity`` entries and at most ``max_bytes`` bytes of outputs (:func:`output_nbytes`;
    None: no byte bound). Over the byte bound, only entries that hold bytes are evicted (a
    loader's handle costs nothing to keep); an output larger than ``max_bytes`` on its own
    is not kept, and evicts nothing."""

    def __init__(self, capacity: int, max_bytes: int | None = None):
        self.capacity = capacity
        self.max_bytes = max_bytes
        self._items: OrderedDict[str, tuple[tuple, int]] = OrderedDict()
        self._bytes = 0
        self._lock = threading.Lock()

    @property
    def nbytes(self) -> int:
        """Bytes of outputs held now."""
        return self._bytes

    def get(self, key: str) -> tuple | None:
        """The outputs cached under ``key`` (now the most recently used), or None."""
        with self._lock:
            item = self._items.get(key)
            if item is None:
                return None
            self._items.move_to_end(key)
            return item[0]

    def put(self, key: str, value: tuple) -> None:
        """Keep ``value`` under ``key``, evicting least recently used entries to fit."""
        size = output_nbytes(value)
        with self._lock:
            old = self._items.pop(key, None)
            if old is not None:
                self._bytes -= old[1]
            if self.max_bytes is not None and size > self.max_bytes:
                return
            self._items[key] = (value, size)
            self._bytes += size
            while len(self._items) > self.capacity:
                self._evict(next(iter(self._items)))
            if self.max_bytes is not None and self._bytes > self.max_bytes:
                # Oldest first, skipping entries that hold no bytes: dropping them frees nothing.
                older = [k for k, (_v, n) in self._items.items() if n > 0 and k != key]
                for old_key in older:
                    if self._bytes <= self.max_bytes:
                        break
                    self._evict(old_key)

    def _evict(self, key: str) -> None:
        _value, size = self._items.pop(key)
        self._bytes -= size

    def clear(self) -> None:
        """Drop every entry."""
        with self._lock:
            self._items.clear()
            self._bytes = 0

    def __len__(self) -> int:
        return len(self._items)

    def __contains__(self, key: str) -> bool:
        return key in self._items
