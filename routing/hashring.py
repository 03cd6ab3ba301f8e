"""Consistent hashing ring shared by the token-cache shard group and the prefix-affinity router.

Each node is placed on the ring at ``vnodes`` points (hash of ``"{node}#{i}"``); a key belongs to the
first node point clockwise from the key's hash. Adding or removing one node of N therefore moves about
1/N of the keys, and virtual nodes keep the spread even. ``preference_list`` walks the ring from the key
and yields each distinct node once: the owner first, then the nodes that would own the key if the ones
before them were gone. Bounded-load routing walks this list until it finds a node under its bound.
"""

from __future__ import annotations

import bisect
import hashlib
from collections.abc import Iterable, Iterator

__all__ = ["ConsistentHashRing", "stable_hash64"]


def stable_hash64(data: str | bytes) -> int:
    """A 64-bit hash that is the same in every process (Python's ``hash`` is salted per process)."""
    if isinstance(data, str):
        data = data.encode("utf-8")
    return int.from_bytes(hashlib.blake2b(data, digest_size=8).digest(), "big")


class ConsistentHashRing:
    """An immutable-by-convention ring of string node ids; rebuild or add/remove to change membership."""

    def __init__(self, nodes: Iterable[str] = (), vnodes: int = 128) -> None:
        if vnodes < 1:
            raise ValueError("vnodes must be >= 1")
        self._vnodes = vnodes
        self._points: list[int] = []
        self._owners: list[str] = []
        self._nodes: set[str] = set()
        for node in nodes:
            self.add(node)

    @property
    def nodes(self) -> frozenset[str]:
        return frozenset(self._nodes)

    def __len__(self) -> int:
        return len(self._nodes)

    def add(self, node: str) -> None:
        if node in self._nodes:
            return
        self._nodes.add(node)
        for i in range(self._vnodes):
            point = stable_hash64(f"{node}#{i}")
            idx = bisect.bisect_left(self._points, point)
            self._points.insert(idx, point)
            self._owners.insert(idx, node)

    def remove(self, node: str) -> None:
        if node not in self._nodes:
            return
        self._nodes.discard(node)
        keep = [(p, o) for p, o in zip(self._points, self._owners) if o != node]
        self._points = [p for p, _ in keep]
        self._owners = [o for _, o in keep]

    def lookup(self, key: str | bytes) -> str:
        """The node that owns ``key``. Raises ``LookupError`` on an empty ring."""
        for node in self.preference_list(key):
            return node
        raise LookupError("consistent hash ring has no nodes")

    def preference_list(self, key: str | bytes) -> Iterator[str]:
        """Distinct nodes in ring order starting at the owner of ``key``."""
        if not self._points:
            return
        start = bisect.bisect_right(self._points, stable_hash64(key)) % len(self._points)
        seen: set[str] = set()
        n = len(self._points)
        for step in range(n):
            owner = self._owners[(start + step) % n]
            if owner not in seen:
                seen.add(owner)
                yield owner
                if len(seen) == len(self._nodes):
                    return
