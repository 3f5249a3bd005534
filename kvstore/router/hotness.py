"""Prefix hotness tree: how many blocks of a prompt form its routing key.

A key that is too short sends every prompt that shares it to the same two workers; in the Mooncake
conversation trace every request starts with the same system-prompt block, so a one-block key would
put the whole cluster's traffic on one pair. The tree counts traffic per prefix (exponentially
decayed, half-life ``half_life_s``) and *expands* a prefix whose share of the traffic exceeds
``expand_factor / n`` (n = workers): requests under it then use one more block as their key, which
spreads them over more pairs. A prefix whose share falls below ``prune_factor / n`` collapses back
(hysteresis between the two thresholds keeps keys from flapping). A prefix must also have been seen
``min_expand_count`` times (decayed) before it expands, so the first few requests after a start
do not each get a full-length key from shares computed over a handful of requests.

Nodes are created only for prefixes one block below an expanded node (plus the first block), so
the tree stays about as large as the number of distinct key prefixes seen in a few half-lives;
``sweep`` drops cold leaves.
"""

from __future__ import annotations

from collections.abc import Sequence


class _Node:
    __slots__ = ("count", "stamp_s", "expanded", "children")

    def __init__(self, now_s: float) -> None:
        self.count = 0.0
        self.stamp_s = now_s
        self.expanded = False
        self.children: dict[int, _Node] = {}

    def bump(self, now_s: float, decay_per_s: float) -> float:
        if now_s > self.stamp_s:
            self.count *= decay_per_s ** (now_s - self.stamp_s)
            self.stamp_s = now_s
        self.count += 1.0
        return self.count


class HotnessTree:
    """Adaptive key length per prompt, from decayed prefix counts."""

    def __init__(
        self,
        half_life_s: float = 60.0,
        expand_factor: float = 2.0,
        prune_factor: float = 1.0,
        min_expand_count: float = 8.0,
        sweep_every: int = 4096,
    ) -> None:
        self._min_expand = min_expand_count
        self._decay_per_s = 0.5 ** (1.0 / half_life_s)
        self._expand = expand_factor
        self._prune = prune_factor
        self._sweep_every = sweep_every
        self._root = _Node(0.0)
        self._root.expanded = True
        self._seen = 0

    def observe(self, blocks: Sequence[int], now_s: float, workers: int) -> int:
        """Count one request and return its key length in blocks (>= 1 for a non-empty prompt)."""
        if not blocks:
            return 0
        total = self._root.bump(now_s, self._decay_per_s)
        expand_at = max(self._expand / max(workers, 1) * total, self._min_expand)
        prune_at = self._prune / max(workers, 1) * total
        node, depth = self._root, 0
        while depth < len(blocks):
            child = node.children.get(blocks[depth])
            if child is None:
                child = node.children[blocks[depth]] = _Node(now_s)
            count = child.bump(now_s, self._decay_per_s)
            depth += 1
            if not child.expanded and count > expand_at and workers > 1:
                child.expanded = True
            elif child.expanded and count < prune_at:
                child.expanded = False
                child.children.clear()
            if not child.expanded:
                break
            node = child
        self._seen += 1
        if self._seen % self._sweep_every == 0:
            self.sweep(now_s)
        return depth

    def key_length(self, blocks: Sequence[int]) -> int:
        """Key length without counting (for lookups that must not change the statistics)."""
        node, depth = self._root, 0
        while depth < len(blocks):
            child = node.children.get(blocks[depth])
            depth += 1
            if child is None or not child.expanded:
                break
            node = child
        return depth

    def sweep(self, now_s: float, min_count: float = 0.01) -> int:
        """Drop non-expanded nodes whose decayed count is below ``min_count``; returns how many."""
        dropped = 0
        stack = [self._root]
        while stack:
            node = stack.pop()
            for block, child in list(node.children.items()):
                decayed = child.count * self._decay_per_s ** max(now_s - child.stamp_s, 0.0)
                if not child.expanded and decayed < min_count:
                    del node.children[block]
                    dropped += 1
                else:
                    stack.append(child)
        return dropped

    def expanded_prefixes(self) -> list[tuple[int, ...]]:
        """Every expanded prefix as a tuple of block hashes (for stats and tests)."""
        out: list[tuple[int, ...]] = []
        stack: list[tuple[_Node, tuple[int, ...]]] = [(self._root, ())]
        while stack:
            node, path = stack.pop()
            for block, child in node.children.items():
                if child.expanded:
                    out.append(path + (block,))
                    stack.append((child, path + (block,)))
        return out

    def size(self) -> int:
        count, stack = 0, [self._root]
        while stack:
            node = stack.pop()
            count += len(node.children)
            stack.extend(node.children.values())
        return count
