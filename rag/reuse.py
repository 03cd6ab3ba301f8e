"""Context order chosen for KV reuse: what vLLM can skip is an exact token prefix, so the order of the
retrieved chunks decides how much of a prompt is already cached.

Two rules, tried in this order for each retrieved set (chunk ids of one agent's collection):

1. Reuse a recent context whole. When a context sent recently shares enough chunks with the new set,
   send that context again, in its order, as the prefix (its KV is cached where it ran), then append
   only the newly retrieved chunks it lacks. No retrieved chunk is dropped; the price is a few extra
   chunks the model reads, bounded by ``max_extra_chunks``.
2. Otherwise follow the ordering tree: a bounded trie of recently sent chunk sequences (RAGCache's
   knowledge tree). Walk from the root through children the new set contains, preferring the path sent
   most often (then most recently), so the longest already-cached chunk sequence comes first; the rest
   follow in the canonical (document, position) order.

The planner only reorders and extends ids; the pipeline fetches the extra chunks' token IDs from the
token cache like any other chunk.
"""

from __future__ import annotations

from collections import OrderedDict
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Generic, Literal, TypeVar

from pydantic import BaseModel, ConfigDict, Field

__all__ = ["ContextPlan", "ReuseConfig", "ReusePlanner"]

T = TypeVar("T")  # the chunk object carried along (the pipeline's SearchHit)
PlanKind = Literal["reused_context", "tree", "canonical"]


class ReuseConfig(BaseModel):
    """How the context order is chosen (``reuse:`` in serve_config.yaml)."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    enabled: bool = Field(default=True, description="false: always the canonical (document, position) order.")
    min_shared: int = Field(default=2, ge=1, description="Chunks a recent context must share with the new set.")
    min_shared_fraction: float = Field(
        default=0.4, ge=0.0, le=1.0, description="... and the share of the new set it must cover."
    )
    max_extra_chunks: int = Field(
        default=2, ge=0, description="Most chunks a reused context may add that this request did not retrieve."
    )
    recent_contexts: int = Field(default=256, ge=1, description="Contexts remembered per agent replica.")
    tree_max_nodes: int = Field(default=4096, ge=16, description="Bound of the ordering tree (nodes).")
    max_namespaces: int = Field(
        default=64, ge=1, description="Cache salts (KV namespaces) with a planner of their own, per replica."
    )


@dataclass(frozen=True, slots=True)
class ContextPlan(Generic[T]):
    """The context to send, in order: retrieved chunks plus ``extra`` ones from a reused context."""

    order: list[T]
    extra: list[T]
    kind: PlanKind
    shared: int = 0  # chunks of the reused context (or tree path) that this request retrieved


@dataclass(slots=True)
class _Node:
    children: dict[str, _Node] = field(default_factory=dict)
    count: int = 0
    last_used: int = 0


class ReusePlanner(Generic[T]):
    """Per-agent memory of the contexts sent; deterministic for the same sequence of calls."""

    def __init__(self, config: ReuseConfig, key: Callable[[T], str]) -> None:
        self.config = config
        self._key = key
        self._recent: OrderedDict[tuple[str, ...], list[T]] = OrderedDict()
        self._root = _Node()
        self._nodes = 0
        self._tick = 0

    @property
    def nodes(self) -> int:
        return self._nodes

    def plan(self, canonical: Sequence[T]) -> ContextPlan[T]:
        """The order to send ``canonical`` (the retrieved set in canonical order) in."""
        if not self.config.enabled or not canonical:
            return ContextPlan(list(canonical), [], "canonical")
        reused = self._best_recent(canonical)
        if reused is not None:
            return reused
        return self._tree_order(canonical)

    def record(self, sent: Sequence[T]) -> None:
        """Remember a context as sent (its order), for the next requests' plans."""
        if not self.config.enabled or not sent:
            return
        self._tick += 1
        ids = tuple(self._key(c) for c in sent)
        self._recent[ids] = list(sent)
        self._recent.move_to_end(ids)
        while len(self._recent) > self.config.recent_contexts:
            self._recent.popitem(last=False)
        self._insert(ids, self._tick)
        if self._nodes > self.config.tree_max_nodes:
            self._prune()

    def forget(self, doc_id: str, doc_of: Callable[[T], str]) -> None:
        """Drop every remembered context holding a chunk of ``doc_id`` (the document changed or went away)."""
        for ids in [ids for ids, chunks in self._recent.items() if any(doc_of(c) == doc_id for c in chunks)]:
            del self._recent[ids]
        self._root, self._nodes = _Node(), 0
        for chunks in self._recent.values():
            self._insert([self._key(c) for c in chunks], last_used=0)

    # -- rule 1: a recent context, whole

    def _best_recent(self, canonical: Sequence[T]) -> ContextPlan[T] | None:
        wanted = {self._key(c): c for c in canonical}
        need = max(self.config.min_shared, self.config.min_shared_fraction * len(wanted))
        best: tuple[int, int, int] | None = None
        best_chunks: list[T] = []
        for age, (ids, chunks) in enumerate(reversed(self._recent.items())):
            shared = sum(1 for i in ids if i in wanted)
            extra = len(ids) - shared
            if shared < need or extra > self.config.max_extra_chunks:
                continue
            score = (shared, -extra, -age)  # most shared, then fewest extras, then most recent
            if best is None or score > best:
                best, best_chunks = score, chunks
        if best is None:
            return None
        prefix_ids = {self._key(c) for c in best_chunks}
        order = [wanted.get(self._key(c), c) for c in best_chunks]
        order += [c for c in canonical if self._key(c) not in prefix_ids]
        extra = [c for c in best_chunks if self._key(c) not in wanted]
        return ContextPlan(order, extra, "reused_context", shared=best[0])

    # -- rule 2: the ordering tree

    def _tree_order(self, canonical: Sequence[T]) -> ContextPlan[T]:
        remaining = {self._key(c): c for c in canonical}
        order: list[T] = []
        node = self._root
        while True:
            options = [(child.count, child.last_used, chunk_id) for chunk_id, child in node.children.items()
                       if chunk_id in remaining]
            if not options:
                break
            _, _, chunk_id = max(options)
            order.append(remaining.pop(chunk_id))
            node = node.children[chunk_id]
        path = len(order)
        order += [c for c in canonical if self._key(c) in remaining]
        return ContextPlan(order, [], "tree" if path else "canonical", shared=path)

    def _insert(self, ids: Sequence[str], last_used: int) -> None:
        """Count one more sending of the path ``ids``; ``last_used`` 0 leaves rebuilt paths' recency as new."""
        node = self._root
        for chunk_id in ids:
            child = node.children.get(chunk_id)
            if child is None:
                child = node.children[chunk_id] = _Node()
                self._nodes += 1
            child.count += 1
            child.last_used = max(child.last_used, last_used)
            node = child

    def _prune(self) -> None:
        """Evict the least used leaves (then least recent) until the tree is at three quarters of its bound."""
        target = self.config.tree_max_nodes * 3 // 4
        while self._nodes > target:
            leaves: list[tuple[int, int, _Node, str]] = []
            stack = [self._root]
            while stack:
                parent = stack.pop()
                for chunk_id, child in parent.children.items():
                    if child.children:
                        stack.append(child)
                    else:
                        leaves.append((child.count, child.last_used, parent, chunk_id))
            leaves.sort(key=lambda leaf: (leaf[0], leaf[1]))
            for _, _, parent, chunk_id in leaves[: max(1, self._nodes - target)]:
                del parent.children[chunk_id]
                self._nodes -= 1
