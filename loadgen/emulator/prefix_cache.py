"""Automatic prefix caching for the emulated engine: KV blocks named by a chained hash of the tokens they hold.

Real engines (vLLM's automatic prefix caching, TensorRT-LLM's KV-cache reuse, SGLang's radix cache) keep the KV
blocks of finished or running sequences and hand them to a later request whose prompt starts with the same
tokens, so that request skips the prefill of that prefix. This module is the bookkeeping of that, pure (no clock,
no threads) so the scheduler (scheduler.py) can use it in real time and in virtual time alike:

* A full block of ``block_tokens`` tokens is named by ``hash((parent, *tokens))``, where ``parent`` is the name
  of the block before it (0 for the first). Equal names mean equal prefixes, so one dictionary lookup per block
  finds the longest cached prefix of a prompt. Only full blocks are cached, as in vLLM.
* A cached block is *pinned* while a running sequence uses it (reference count > 0) and *evictable* otherwise.
  Evictable blocks still hold their KV and can be hit; the scheduler evicts them, least recently released
  first, only when it needs the memory for new blocks. The cache never owns memory of its own: it lives in the
  same KV pool that bounds the batch, and the scheduler keeps ``private blocks + cache size <= pool``.
* The engine sees token counts; the Triton model sees the prompt text. ``tokenize`` splits text the way the load
  generator counts tokens (``loadgen.core.prompts.approx_token_count``: runs of word characters and single
  punctuation characters), so ``len(tokenize(t)) == approx_token_count(t)`` and two prompts that share a prefix
  of words share blocks.
"""

from __future__ import annotations

import re
from collections import OrderedDict
from collections.abc import Hashable, Iterable, Sequence

# Same definition as loadgen.core.prompts._TOKEN_RE (tests/test_prefix_cache.py checks that the counts agree).
_TOKEN_RE = re.compile(r"\w+|[^\w\s]")


def tokenize(text: str) -> list[str]:
    """The prompt's tokens as the load generator counts them."""
    return _TOKEN_RE.findall(text)


def block_hashes(tokens: Sequence[Hashable], block_tokens: int, parent: int = 0) -> list[int]:
    """Chained names of the full blocks of ``tokens`` (a trailing partial block gets none)."""
    if block_tokens < 1:
        raise ValueError(f"block_tokens={block_tokens} is invalid: use 1 or more")
    out: list[int] = []
    h = parent
    for start in range(0, len(tokens) - block_tokens + 1, block_tokens):
        h = hash((h, *tokens[start:start + block_tokens]))
        out.append(h)
    return out


class PrefixCache:
    """Cached KV blocks by name: reference counts for pinned ones, an LRU order for evictable ones.

    Counters (cumulative, for the server's metrics page): ``queries`` and ``hits`` in tokens, as vLLM counts
    them (hit rate = hits / queries); ``reused_blocks``, blocks handed to a request instead of computed, as
    TensorRT-LLM counts them; ``evictions``.
    """

    __slots__ = ("block_tokens", "_refs", "_lru", "queries", "hits", "reused_blocks", "evictions")

    def __init__(self, block_tokens: int) -> None:
        if block_tokens < 1:
            raise ValueError(f"block_tokens={block_tokens} is invalid: use 1 or more")
        self.block_tokens = int(block_tokens)
        self._refs: dict[int, int] = {}  # every cached block -> running sequences using it (0 = evictable)
        self._lru: OrderedDict[int, None] = OrderedDict()  # evictable blocks, least recently released first
        self.queries = 0
        self.hits = 0
        self.reused_blocks = 0
        self.evictions = 0

    # ------------------------------------------------------------------ sizes
    @property
    def size(self) -> int:
        """Blocks the cache holds (pinned + evictable): pool memory the scheduler must count as used."""
        return len(self._refs)

    @property
    def evictable(self) -> int:
        return len(self._lru)

    @property
    def pinned(self) -> int:
        return len(self._refs) - len(self._lru)

    def __contains__(self, h: int) -> bool:
        return h in self._refs

    # ------------------------------------------------------------------ lookups
    def match(self, hashes: Sequence[int], limit: int) -> tuple[int, int]:
        """(blocks of the longest cached prefix of ``hashes``, at most ``limit``; how many of them are evictable).

        Read-only: the scheduler asks before it decides to admit, and pins with ``acquire`` once it does.
        """
        n = ev = 0
        refs = self._refs
        for h in hashes[:max(0, limit)]:
            r = refs.get(h)
            if r is None:
                break
            n += 1
            ev += r == 0
        return n, ev

    def acquire(self, hashes: Sequence[int], prompt_tokens: int) -> None:
        """Pin the cached prefix ``hashes`` (from ``match``) for a sequence admitted with ``prompt_tokens``."""
        for h in hashes:
            self._pin(h)
        self.queries += int(prompt_tokens)
        self.hits += len(hashes) * self.block_tokens
        self.reused_blocks += len(hashes)

    def register(self, h: int) -> None:
        """A running sequence has filled block ``h``: it becomes cached, pinned by that sequence.

        If the block is already cached (another sequence computed the same prefix at the same time) the
        sequence pins the cached copy and the scheduler frees its own: the pool holds one copy either way.
        """
        self._pin(h)

    def release(self, hashes: Iterable[int]) -> None:
        """A sequence stops using these blocks; give them in reverse order so its tail is evicted first."""
        refs, lru = self._refs, self._lru
        for h in hashes:
            r = refs[h] - 1
            refs[h] = r
            if r == 0:
                lru[h] = None

    def offer(self, h: int) -> bool:
        """Keep a block a finishing sequence filled but never registered (its output) as evictable.

        True when the cache took the block; False when the name was already cached (the scheduler frees the
        block, and a cached evictable copy counts as used again).
        """
        r = self._refs.get(h)
        if r is None:
            self._refs[h] = 0
            self._lru[h] = None
            return True
        if r == 0:
            self._lru.move_to_end(h)
        return False

    def evict(self, n: int) -> int:
        """Drop up to ``n`` evictable blocks, least recently released first; how many were dropped."""
        done = 0
        lru, refs = self._lru, self._refs
        while done < n and lru:
            h, _ = lru.popitem(last=False)
            del refs[h]
            done += 1
        self.evictions += done
        return done

    def clear(self) -> None:
        """Forget every evictable block (pinned ones stay: running sequences use them)."""
        self.evict(len(self._lru))

    # ------------------------------------------------------------------ internals
    def _pin(self, h: int) -> None:
        r = self._refs.get(h)
        if r is None:
            self._refs[h] = 1
            return
        if r == 0:
            del self._lru[h]
        self._refs[h] = r + 1
