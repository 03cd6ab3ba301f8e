"""The L2 tier on a Redis Cluster: read strategies, and a master failover under load.

    python -m benchmarks.redis_cluster [--iterations 2000] [--warmup 200] [--failover-s 12] [--rounds 3]
                                       [--workers 4] [--out benchmarks/results/redis_cluster.json]

Starts its own throwaway cluster (testbed.redis_cluster: 3 masters + 3 replicas on free ports of
127.0.0.1, cluster-node-timeout 1000 ms), so the machine's Redis is untouched.

(a) Read strategies, each through ``RedisTier.get_many`` (breaker and timeout included), all keys hits,
    values of 1.9 KB (a packed ~480-token chunk), for batches of 5 and 20 keys:
      per_node_pipelines   today's keys ``tcrag:tok:{collection}:{fp16}:{sha256}`` (no hash tag): the
                           batch's keys fall in as many slots as keys; ``mget_nonatomic`` sends one MGET
                           per slot, pipelined per master, the masters concurrently.
      hash_tag             keys ``tcrag:tok:{<collection>:<fp16>}:{sha256}`` with a real hash tag: one
                           collection under one tokenizer is one slot, so the batch is one MGET to one
                           master (the same tier code: ``mget_nonatomic`` of a single slot).
      hash_tag_raw_mget    the same tagged keys by a bare ``client.mget``: the floor for one round trip.
    p50/p95/mean in µs, and how keys spread over the masters: per master, the share of the keys of the
    app's six sample collections (1000 chunks each) under each key layout, and the masters one batch touches.
(b) Failover under load: ``--workers`` concurrent loops of get_many (5-20 keys) + put_many (write-back) on
    a tier built as the app builds it (``redis_tier_from_config``: 200 ms budget, breaker 3 failures / 2 s
    cooldown), while one master is SIGKILLed after 2 s. Counts: calls sent, calls that raised to the caller
    (must be 0), keys missed during the outage, seconds from the kill until hits resume (first full-hit
    read after the outage) and until every live node reports cluster_state:ok. ``--rounds`` failovers in a
    row, each on a fresh tier; between them the killed node is restarted and rejoins as a replica.
"""

from __future__ import annotations

import argparse
import asyncio
import hashlib
import json
import os
import random
import statistics
import sys
import time
from collections import Counter
from collections.abc import Sequence
from pathlib import Path

from benchmarks.stats import percentile
from cache.config import TokenCacheConfig, redis_tier_from_config
from cache.keys import storage_key
from cache.redis_tier import RedisTier
from retrieval.samples import SAMPLE_COLLECTIONS
from testbed.redis_cluster import RedisClusterServer

DEFAULT_OUT = Path("benchmarks/results/redis_cluster.json")
FINGERPRINT = "a3f1c2d4e5b60718" + "0" * 48
VALUE_BYTES = 1900


def tagged_key(collection: str, fingerprint: str, content_hash: str) -> str:
    """The hash-tag alternative: ``{collection:fp16}`` is the only part CRC16 sees."""
    return f"tcrag:tok:{{{collection}:{fingerprint[:16]}}}:{content_hash}"


def content_hashes(n: int, salt: str = "") -> list[str]:
    return [hashlib.sha256(f"{salt}chunk-{i}".encode()).hexdigest() for i in range(n)]


def percentiles(samples_us: list[float]) -> dict[str, float]:
    return {"p50_us": round(percentile(samples_us, 50), 1), "p95_us": round(percentile(samples_us, 95), 1),
            "mean_us": round(statistics.fmean(samples_us), 1), "n": len(samples_us)}


def sample_text_bytes() -> dict[str, int]:
    """Bytes of text of each sample collection (data/<collection>/): how unevenly the collections weigh."""
    data = Path(__file__).resolve().parent.parent / "data"
    return {c: sum(p.stat().st_size for p in (data / c).rglob("*") if p.suffix in (".md", ".txt"))
            for c in SAMPLE_COLLECTIONS}


def master_of(client, key: str) -> str:
    return client.nodes_manager.get_node_from_slot(client.keyslot(key)).name


async def read_strategies(cluster: RedisClusterServer, iterations: int, warmup: int) -> dict:
    tier = RedisTier.from_url(cluster.url, ttl_s=3600, timeout_s=1.0)
    client = tier.client
    await client.initialize()
    masters = sorted(n.name for n in client.get_primaries())
    rng = random.Random(0)
    value = rng.randbytes(VALUE_BYTES)
    collection = "support_kb"
    hashes = content_hashes(2000)
    layouts = {
        "plain": [storage_key(collection, FINGERPRINT, h) for h in hashes],
        "tagged": [tagged_key(collection, FINGERPRINT, h) for h in hashes],
    }
    for keys in layouts.values():
        for i in range(0, len(keys), 200):
            assert await tier.put_many({k: value for k in keys[i:i + 200]})

    strategies = {
        "per_node_pipelines": ("plain", tier.get_many),
        "hash_tag": ("tagged", tier.get_many),
        "hash_tag_raw_mget": ("tagged", lambda keys: client.mget(keys)),
    }
    out: dict = {"masters": len(masters), "value_bytes": VALUE_BYTES, "iterations": iterations, "batches": {}}
    for batch in (5, 20):
        rows = {}
        # Interleave the strategies round by round, so drift on a shared machine hits them alike.
        samples: dict[str, list[float]] = {name: [] for name in strategies}
        touched: dict[str, list[int]] = {name: [] for name in strategies}
        for i in range(warmup + iterations):
            start = rng.randrange(0, len(hashes) - batch)
            for name, (layout, fn) in strategies.items():
                keys = layouts[layout][start:start + batch]
                t0 = time.perf_counter()
                got = await fn(keys)
                dt = (time.perf_counter() - t0) * 1e6
                found = len(got) if isinstance(got, dict) else sum(v is not None for v in got)
                assert found == batch, (name, found, batch)
                if i >= warmup:
                    samples[name].append(dt)
                    if i - warmup < 200:
                        touched[name].append(len({master_of(client, k) for k in keys}))
        for name in strategies:
            rows[name] = {**percentiles(samples[name]),
                          "masters_touched_per_batch_mean": round(statistics.fmean(touched[name]), 2)}
        base = rows["per_node_pipelines"]["p50_us"]
        for name in strategies:
            rows[name]["p50_vs_per_node_pipelines"] = round(rows[name]["p50_us"] / base, 3)
        out["batches"][str(batch)] = rows
        print(f"[redis-cluster] batch {batch}: " + ", ".join(f"{n} p50 {r['p50_us']} µs p95 {r['p95_us']} µs"
                                                             for n, r in rows.items()), file=sys.stderr, flush=True)

    # Spread: where the keys of the app's collections would live, under each layout.
    spread = {}
    weights = sample_text_bytes()
    for layout, make in (("plain", storage_key), ("tagged", tagged_key)):
        per_master = Counter({m: 0 for m in masters})
        weighted = Counter({m: 0.0 for m in masters})
        per_collection = {}
        for collection in SAMPLE_COLLECTIONS:
            c = Counter(master_of(client, make(collection, FINGERPRINT, h)) for h in content_hashes(1000, collection))
            per_master.update(c)
            for m, n in c.items():
                weighted[m] += weights[collection] * n / 1000
            per_collection[collection] = {m: c.get(m, 0) for m in masters}
        total = sum(per_master.values())
        spread[layout] = {
            "share_per_master": {m: round(per_master[m] / total, 3) for m in masters},
            "max_share": round(max(per_master.values()) / total, 3),
            # Collections are not the same size: weighted by the sample collections' text bytes.
            "share_per_master_by_sample_bytes": {m: round(weighted[m] / sum(weights.values()), 3) for m in masters},
            "max_share_by_sample_bytes": round(max(weighted.values()) / sum(weights.values()), 3),
            "keys_per_collection_per_master": per_collection,
        }
    out["spread_of_6_sample_collections_x_1000_chunks"] = spread
    out["sample_collection_text_bytes"] = weights
    await tier.invalidate_all()
    await tier.close()
    return out


async def failover(cluster: RedisClusterServer, duration_s: float, workers: int, kill_at_s: float = 2.0,
                   cooldown_s: float | None = None) -> dict:
    config = TokenCacheConfig(redis_url=cluster.url)
    if cooldown_s is None:
        tier = redis_tier_from_config(config)  # exactly as the app builds it
    else:
        tier = RedisTier.from_url(cluster.url, ttl_s=config.redis_ttl_s, timeout_s=config.redis_timeout_s,
                                  cooldown_s=cooldown_s)
    assert tier is not None and tier.is_cluster
    rng = random.Random(1)
    value = rng.randbytes(VALUE_BYTES)
    keys = [storage_key("support_kb", FINGERPRINT, h) for h in content_hashes(600, "fo")]
    for i in range(0, len(keys), 100):
        assert await tier.put_many({k: value for k in keys[i:i + 100]})

    events: list[tuple[float, str, int, int, bool]] = []  # (t, op, keys, hits, raised)
    marks: dict[str, float] = {}
    t_start = time.monotonic()

    def kill_and_watch() -> None:
        marks["kill"] = time.monotonic() - t_start
        marks["killed_port"] = cluster.kill_master(0)
        cluster.wait_ok(timeout_s=30)
        marks["cluster_ok"] = time.monotonic() - t_start

    async def worker(seed: int) -> None:
        r = random.Random(seed)
        while time.monotonic() - t_start < duration_s:
            batch = r.sample(keys, r.randint(5, 20))
            t = time.monotonic() - t_start
            try:
                got = await tier.get_many(batch)
                events.append((t, "get", len(batch), len(got), False))
            except Exception:  # noqa: BLE001 - exactly what must never happen
                events.append((t, "get", len(batch), 0, True))
                got = {}
            missing = {k: value for k in batch if k not in got}
            if missing:
                t = time.monotonic() - t_start
                try:
                    ok = await tier.put_many(missing)
                    events.append((t, "put", len(missing), int(ok), False))
                except Exception:  # noqa: BLE001
                    events.append((t, "put", len(missing), 0, True))
            await asyncio.sleep(0.005)

    async def killer() -> None:
        await asyncio.sleep(kill_at_s)
        await asyncio.to_thread(kill_and_watch)

    await asyncio.gather(killer(), *(worker(s) for s in range(workers)))
    stats = tier.stats_dict()
    await tier.close()

    kill = marks["kill"]
    gets = [e for e in events if e[1] == "get"]
    before = [e for e in gets if e[0] < kill]
    after = [e for e in gets if e[0] >= kill]
    first_miss = next((e[0] for e in after if e[3] < e[2]), None)
    resumed = None
    if first_miss is not None:
        resumed = next((e[0] for e in after if e[0] > first_miss and e[3] == e[2]), None)
    outage = [e for e in after if resumed is None or e[0] < resumed]
    return {
        "workers": workers, "duration_s": duration_s, "kill_at_s": round(kill, 3),
        "killed_master_port": marks["killed_port"],
        "tier": {"timeout_s": tier.timeout_s, "failure_threshold": tier.breaker.failure_threshold,
                 "cooldown_s": tier.breaker.cooldown_s},
        "sent": {"get_many": len(gets), "put_many": len(events) - len(gets), "total": len(events)},
        "raised_to_caller": sum(e[4] for e in events),
        "keys_read": sum(e[2] for e in gets),
        "hit_rate_before_kill": round(sum(e[3] for e in before) / max(1, sum(e[2] for e in before)), 4),
        "misses_during_outage": sum(e[2] - e[3] for e in outage),
        "reads_during_outage": len(outage),
        "first_miss_after_kill_s": None if first_miss is None else round(first_miss - kill, 3),
        "hits_resumed_after_kill_s": None if resumed is None else round(resumed - kill, 3),
        "cluster_ok_after_kill_s": round(marks["cluster_ok"] - kill, 3) if "cluster_ok" in marks else None,
        "hit_rate_after_resume": (round(sum(e[3] for e in after if resumed and e[0] >= resumed)
                                        / max(1, sum(e[2] for e in after if resumed and e[0] >= resumed)), 4)),
        "tier_stats": {k: stats[k] for k in ("hits", "misses", "errors", "timeouts", "breaker_opened",
                                             "skipped_calls")},
    }


def summarize(rounds: list[dict]) -> dict:
    def spread(name: str) -> dict:
        values = [r[name] for r in rounds if r[name] is not None]
        return {"min": min(values), "median": statistics.median(values), "max": max(values)} if values else {}

    return {
        "rounds": len(rounds),
        "calls_sent": sum(r["sent"]["total"] for r in rounds),
        "raised_to_caller": sum(r["raised_to_caller"] for r in rounds),
        "misses_during_outage": sum(r["misses_during_outage"] for r in rounds),
        "hits_resumed_after_kill_s": spread("hits_resumed_after_kill_s"),
        "cluster_ok_after_kill_s": spread("cluster_ok_after_kill_s"),
    }


def main(argv: Sequence[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--iterations", type=int, default=2000)
    p.add_argument("--warmup", type=int, default=200)
    p.add_argument("--failover-s", type=float, default=12.0, help="length of the failover run")
    p.add_argument("--workers", type=int, default=4)
    p.add_argument("--breaker-cooldown-s", type=float, default=None,
                   help="the failover tier's breaker cooldown (default: the app's, RedisTier.from_url's 2 s)")
    p.add_argument("--skip-reads", action="store_true", help="only the failover part")
    p.add_argument("--rounds", type=int, default=3,
                   help="failovers, one after another (the killed node rejoins as a replica between them)")
    p.add_argument("--out", type=Path, default=DEFAULT_OUT)
    args = p.parse_args(argv)
    from benchmarks.run import machine_info

    cluster = RedisClusterServer(masters=3, replicas_per_master=1, node_timeout_ms=1000)
    cluster.start()
    try:
        load_before = os.getloadavg()[0]
        reads = None if args.skip_reads else asyncio.run(read_strategies(cluster, args.iterations, args.warmup))
        rounds = []
        for i in range(args.rounds):
            fo = asyncio.run(failover(cluster, args.failover_s, args.workers, cooldown_s=args.breaker_cooldown_s))
            print(f"[redis-cluster] failover {i + 1}/{args.rounds}: {json.dumps(fo)}", file=sys.stderr, flush=True)
            fo["killed_node_rejoined_as_replica_s"] = round(cluster.restart(fo["killed_master_port"]), 3)
            rounds.append(fo)
        load_after = os.getloadavg()[0]
    finally:
        cluster.stop()
    result = {
        "schema": "token-cached-rag/redis-cluster/v1",
        "command": " ".join(["python -m benchmarks.redis_cluster", *(argv if argv is not None else sys.argv[1:])]),
        "machine": machine_info(""),
        "loadavg_1m": {"before": round(load_before, 2), "after": round(load_after, 2)},
        "cluster": {"masters": 3, "replicas_per_master": 1, "cluster_node_timeout_ms": 1000,
                    "redis_server": _redis_version()},
        "read_strategies": reads,
        "failover": {"summary": summarize(rounds), "rounds": rounds},
    }
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(result, indent=2) + "\n")
    print(f"[redis-cluster] wrote {args.out}", file=sys.stderr, flush=True)
    return 0 if all(r["raised_to_caller"] == 0 and r["hits_resumed_after_kill_s"] is not None for r in rounds) else 1


def _redis_version() -> str:
    import subprocess

    try:
        return subprocess.run(["redis-server", "--version"], capture_output=True, text=True).stdout.strip()
    except OSError:
        return "unknown"


if __name__ == "__main__":
    sys.exit(main())
