"""The key store's caches: a refused key costs one lookup, and a flood evicts only the oldest."""

from __future__ import annotations

from typing import cast

from sqlalchemy.ext.asyncio import AsyncEngine

from shared.apikeys import KeyKind, KeyStore, Principal, hash_key

GOOD = "cxs_" + "g" * 40


class CountingStore(KeyStore):
    """A store whose database holds only GOOD, counting the lookups it would run."""

    def __init__(self, max_entries: int = 10_000) -> None:
        super().__init__([], ttl=60.0, max_entries=max_entries)
        self.engine = cast(AsyncEngine, object())  # never used: _lookup is replaced
        self.lookups: list[bytes] = []

    async def _lookup(self, digest: bytes) -> Principal | None:
        self.lookups.append(digest)
        if digest == hash_key(GOOD):
            return Principal("site", KeyKind.SECRET, frozenset())
        return None


async def test_the_same_refused_key_costs_one_lookup() -> None:
    store = CountingStore()
    for _ in range(50):
        assert await store.authenticate("cxs_" + "x" * 40) is None
        assert await store.authenticate("cxp_" + "y" * 40) is None
    assert len(store.lookups) == 2


async def test_a_flood_of_refused_keys_keeps_the_good_one_cached() -> None:
    store = CountingStore(max_entries=100)
    assert await store.authenticate(GOOD) is not None
    for n in range(1_000):
        assert await store.authenticate(f"cxs_{n:040d}") is None
    before = len(store.lookups)
    assert await store.authenticate(GOOD) is not None
    assert len(store.lookups) == before


async def test_past_the_bound_only_the_least_recently_used_is_forgotten() -> None:
    store = CountingStore(max_entries=3)
    keys = [f"cxs_{n:040d}" for n in range(4)]
    for key in keys[:3]:
        await store.authenticate(key)
    await store.authenticate(keys[0])  # used again: now the most recent
    await store.authenticate(keys[3])  # evicts keys[1], the least recently used
    before = len(store.lookups)
    await store.authenticate(keys[0])
    await store.authenticate(keys[2])
    assert len(store.lookups) == before
    await store.authenticate(keys[1])
    assert len(store.lookups) == before + 1
