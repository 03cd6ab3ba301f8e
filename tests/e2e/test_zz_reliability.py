"""Faults under load, against the real app: every test breaks something real while worker threads send
agent requests, and fails if a single request fails.

Named ``zz`` so it runs after the other e2e modules: it kills replicas, stops Redis and empties caches.
Replicas are killed as processes (SIGKILL of the ``ray::ServeReplica:tcrag:<deployment>`` process and
its children, e.g. a vLLM replica's engine processes; the one-LLM-replica test kills the replica alone and
checks that its engine processes end themselves), found below the ``serve run`` process of the tests'
own app, so a developer's app on the same machine is never touched.

Each test prints, and appends to ``reliability.json`` beside the app's log, the requests sent and failed
and the time to recover; run with ``-s`` to see the lines.
"""

from __future__ import annotations

import json
import re
import sys
import time
import urllib.error
from collections.abc import Callable
from pathlib import Path
from typing import Any

import psutil
import pytest

from benchmarks.soak import MixedLoad
from testbed.app_process import http_json

pytestmark = pytest.mark.e2e

WORKERS = 4
MAX_TOKENS = 8
REQUEST_TIMEOUT_S = 300.0  # above the app's own 120 s: a lost request must show as an answer, not our timeout
RECOVERY_TIMEOUT_S = 900.0
SUPPORT = "/v1/agents/support/answer"


# ----------------------------------------------------------------------------- helpers


def _serve_pid(app: Any) -> int:
    pid = getattr(app, "pid", None)
    return pid if pid is not None else app._proc.pid


def replica_processes(root_pid: int, deployment: str) -> list[psutil.Process]:
    """Live replica processes of one deployment of the tests' app (descendants of its ``serve run``)."""
    pattern = re.compile(rf"ServeReplica:tcrag:{re.escape(deployment)}(?:[.\s]|$)")
    found = []
    for proc in psutil.Process(root_pid).children(recursive=True):
        try:
            if pattern.search(" ".join(proc.cmdline())) and proc.status() != psutil.STATUS_ZOMBIE:
                found.append(proc)
        except psutil.Error:
            continue
    return found


def kill_tree(proc: psutil.Process) -> list[int]:
    """SIGKILL a replica process and everything it started, as a crash of its container would."""
    try:
        procs = [proc, *proc.children(recursive=True)]
    except psutil.NoSuchProcess:
        return []
    for p in procs:
        try:
            p.kill()
        except psutil.NoSuchProcess:
            pass
    psutil.wait_procs(procs, timeout=10)
    return [p.pid for p in procs]


def healthz(base_url: str) -> int:
    try:
        status, _ = http_json("GET", f"{base_url}/healthz", timeout_s=30)
        return status
    except (urllib.error.URLError, OSError):
        return 0


def wait_replaced(base_url: str, root_pid: int, deployment: str, killed: set[int], count: int,
                  since: float) -> float:
    """Seconds from ``since`` until ``count`` replicas run, none of them killed, and /healthz is 200."""
    deadline = time.monotonic() + RECOVERY_TIMEOUT_S
    while time.monotonic() < deadline:
        live = [p.pid for p in replica_processes(root_pid, deployment)]
        if len(live) >= count and not set(live) & killed and healthz(base_url) == 200:
            return time.monotonic() - since
        time.sleep(1)
    raise AssertionError(f"{deployment} not replaced within {RECOVERY_TIMEOUT_S:.0f} s")


def cache_stats(base_url: str) -> dict[str, Any]:
    status, body = http_json("GET", f"{base_url}/v1/cache/stats", timeout_s=60)
    assert status == 200, body
    return body


def redis_totals(base_url: str) -> dict[str, int]:
    """The Redis tier's counters summed over every agent replica (the agents' view of L2)."""
    totals = {"hits": 0, "misses": 0, "errors": 0, "corruptions": 0, "timeouts": 0, "skipped_calls": 0}
    for agent in cache_stats(base_url)["agents"].values():
        for tiers in agent["tiers"]:
            for key in totals:
                totals[key] += int((tiers.get("redis") or {}).get(key, 0))
    return totals


def redis_client(redis_server: Any):
    import redis

    return redis.Redis.from_url(redis_server.url, socket_timeout=5)


def record(app: Any, fault: str, load: MixedLoad | None, **numbers: Any) -> dict[str, Any]:
    """Print the fault's numbers and append them to reliability.json beside the app's log."""
    entry = {"fault": fault, **(load.report.summary() if load else {}), **numbers}
    entry = {k: (round(v, 1) if isinstance(v, float) else v) for k, v in entry.items()}
    line = "[reliability] " + " ".join(f"{k}={v}" for k, v in entry.items() if k != "failures")
    print(line, file=sys.stderr, flush=True)
    print(line)
    path = Path(app.log_path).parent / "reliability.json"
    results = json.loads(path.read_text()) if path.exists() else []
    results.append(entry)
    path.write_text(json.dumps(results, indent=2))
    return entry


def log_count(app: Any, needle: str) -> int:
    """Lines of the app's serve log containing ``needle`` (e.g. the pool client's retry warning)."""
    try:
        return Path(app.log_path).read_text(errors="replace").count(needle)
    except OSError:
        return -1


def start_load(base_url: str, workers: int = WORKERS, min_ok: int = 3) -> MixedLoad:
    """Start the load and wait until it is flowing (a few requests answered)."""
    load = MixedLoad(base_url, workers=workers, extra={"max_tokens": MAX_TOKENS}, timeout_s=REQUEST_TIMEOUT_S).start()
    deadline = time.monotonic() + 300
    while load.report.ok < min_ok and time.monotonic() < deadline and not load.report.failures:
        time.sleep(0.5)
    assert load.report.ok >= min_ok, f"load did not get going: {load.report.summary()}"
    return load


def assert_no_failures(load: MixedLoad) -> None:
    report = load.report
    assert report.failed == 0, f"{report.failed} of {report.sent} requests failed: {report.summary()['failures']}"
    assert report.ok > 0


@pytest.fixture(scope="module")
def serve_pid(app) -> int:
    return _serve_pid(app)


@pytest.fixture(autouse=True)
def _healthy_before_and_after(base_url):
    """Each fault starts from a healthy app and leaves one behind (the next test relies on it)."""
    deadline = time.monotonic() + RECOVERY_TIMEOUT_S
    while healthz(base_url) != 200:
        assert time.monotonic() < deadline, "app not healthy before the fault"
        time.sleep(2)
    yield


# ----------------------------------------------------------------------------- 1. Redis down and back


def test_redis_stopped_and_restarted_mid_load(app, base_url, redis_server):
    load = start_load(base_url)
    try:
        before = redis_totals(base_url)
        # Ask for chunks no tier holds, so requests reach L2 while it is down: the write route
        # empties every tier of the support collection (it is answered even with Redis down).
        status, body = http_json("POST", f"{base_url}/v1/cache/invalidate", {"collection": "support_kb"})
        assert status == 200, body
        redis_server.stop()
        down_at = time.monotonic()
        http_json("POST", f"{base_url}/v1/cache/invalidate", {"collection": "support_kb"})
        load.wait_for_ok(8)
        down_s = time.monotonic() - down_at
        during = redis_totals(base_url)
        assert during["errors"] > before["errors"], "Redis was down but no agent saw an error or a skipped call"

        redis_server.start()
        up_at = time.monotonic()
        client = redis_client(redis_server)
        # Back: entries missing from every tier are written through to Redis again.
        deadline = time.monotonic() + 120
        found: list[bytes] = []
        while not found and time.monotonic() < deadline:
            http_json("POST", f"{base_url}/v1/cache/invalidate", {"collection": "support_kb"})
            load.wait_for_ok(2, timeout_s=60)
            found = list(client.scan_iter(match="tcrag:tok:support_kb:*", count=1000))
        l2_back_s = time.monotonic() - up_at
        assert found, "no token entries written to Redis after it came back"
        # And read again: lookups reach Redis (counted as hits or misses) with no new errors.
        back = redis_totals(base_url)
        http_json("POST", f"{base_url}/v1/cache/invalidate", {"collection": "support_kb"})
        # Only a support request sent after the invalidation reads L2 (the other agents' chunks are in their
        # L0); with requests round robin over six agents and several in flight, wait until one has.
        deadline = time.monotonic() + 180
        after = back
        while time.monotonic() < deadline:
            load.wait_for_ok(2, timeout_s=60)
            after = redis_totals(base_url)
            if after["hits"] + after["misses"] > back["hits"] + back["misses"]:
                break
        # Calls may still time out on a CPU-starved machine (slowness, counted apart), and a timed-out probe
        # keeps that agent's breaker open for a cooldown (calls skipped, counted apart); none may fail.
        def failures(totals: dict[str, int]) -> int:
            return totals["errors"] - totals["timeouts"] - totals["skipped_calls"]

        assert failures(after) == failures(back), f"Redis still failing after restart: {back} -> {after}"
        assert after["hits"] + after["misses"] > back["hits"] + back["misses"], "L2 not looked up after restart"
    finally:
        if not redis_server.running:
            redis_server.start()
        load.stop()
    record(app, "redis_stopped_restarted", load, redis_down_s=down_s, l2_used_again_after_s=l2_back_s,
           redis_errors_while_down=during["errors"] - before["errors"], redis_keys_after=len(found))
    assert_no_failures(load)


# ----------------------------------------------------------------------------- 2. one vLLM replica killed


ORPHAN_TIMEOUT_S = 30.0  # the engine's guard polls its parent every 1 s and gives vLLM 5 s to shut down


def engine_processes(replica: psutil.Process) -> list[psutil.Process]:
    """The vLLM processes a replica started (``VLLM::EngineCore`` and its workers): all its descendants."""
    return replica.children(recursive=True)


def wait_orphans_gone(procs: list[psutil.Process], timeout_s: float = ORPHAN_TIMEOUT_S) -> tuple[list[str], float]:
    """Wait until none of ``procs`` runs; returns (the ones still running, seconds waited)."""
    started = time.monotonic()
    while True:
        alive = []
        for proc in procs:
            try:
                if proc.is_running() and proc.status() != psutil.STATUS_ZOMBIE:  # is_running checks the pid's start time
                    alive.append(f"{proc.pid} {' '.join(proc.cmdline())[:40]} (ppid {proc.ppid()})")
            except psutil.NoSuchProcess:
                continue
        waited = time.monotonic() - started
        if not alive or waited > timeout_s:
            return alive, waited
        time.sleep(0.5)


def test_one_llm_replica_killed_mid_load(app, base_url, serve_pid):
    """The replica process alone is SIGKILLed (as Ray's OOM killer or a crash would): requests go to the
    other replica, Serve replaces it, and its engine processes end themselves instead of living on as
    orphans (issue 16; llm/engine_lifetime.py)."""
    replicas = replica_processes(serve_pid, "llm")
    assert len(replicas) == 2, f"expected 2 llm replicas, found {[p.pid for p in replicas]}"
    engines = engine_processes(replicas[0])
    assert any("VLLM::EngineCore" in " ".join(p.cmdline()) for p in engines), \
        f"no engine core below replica {replicas[0].pid}: {[p.pid for p in engines]}"
    retries_before = log_count(app, "LLM replica lost")
    load = start_load(base_url, workers=6)
    try:
        load.wait_for_ok(3)
        killed_at = time.monotonic()
        replicas[0].kill()
        killed = {replicas[0].pid}
        sent_at_kill = load.report.sent
        orphans, orphans_gone_s = wait_orphans_gone(engines)
        recover_s = wait_replaced(base_url, serve_pid, "llm", killed, 2, killed_at)
        load.wait_for_ok(6)
    finally:
        load.stop()
        for proc in engines:  # never leave GBs behind, whatever the outcome
            try:
                proc.kill()
            except psutil.NoSuchProcess:
                pass
    record(app, "llm_replica_killed", load, killed_pids=sorted(killed), engine_pids=sorted(p.pid for p in engines),
           engines_gone_after_s=orphans_gone_s, orphans_left=len(orphans), sent_before_kill=sent_at_kill,
           recover_s=recover_s, retried_on_other_replica=log_count(app, "LLM replica lost") - retries_before)
    assert not orphans, f"engine processes outlived their replica by {ORPHAN_TIMEOUT_S:.0f} s: {orphans}"
    assert_no_failures(load)


# ----------------------------------------------------------------------------- 3. a cache shard killed


def test_cache_shard_killed_mid_load(app, base_url, serve_pid):
    shards = replica_processes(serve_pid, "token_cache_shard_0")
    assert len(shards) == 1, f"expected one replica of token_cache_shard_0, found {[p.pid for p in shards]}"
    load = start_load(base_url)
    try:
        # Make requests need the shards: with every tier emptied, lookups go L0 -> shard -> Redis.
        http_json("POST", f"{base_url}/v1/cache/invalidate", {"collection": "support_kb"})
        killed_at = time.monotonic()
        killed = set(kill_tree(shards[0]))
        http_json("POST", f"{base_url}/v1/cache/invalidate", {"collection": "support_kb"})
        recover_s = wait_replaced(base_url, serve_pid, "token_cache_shard_0", killed, 1, killed_at)
        load.wait_for_ok(6)
    finally:
        load.stop()
    shard_errors = sum(
        int(s.get("errors", 0))
        for agent in cache_stats(base_url)["agents"].values()
        for tiers in agent["tiers"]
        for s in [tiers["shards"].get("token_cache_shard_0", {})]
    )
    record(app, "cache_shard_killed", load, killed_pids=sorted(killed), recover_s=recover_s,
           shard_errors_seen=shard_errors)
    assert_no_failures(load)


# ----------------------------------------------------------------------------- 4. corrupted Redis entry


def _fresh_chunk_key(app: Any, redis_server: Any, collection: str, doc_id: str) -> str:
    """The Redis key the new document's (single) chunk will be cached under, computed like the app does."""
    from cache.keys import ChunkKey, ChunkRef
    from rag.pipeline import chunk_segment_text
    from retrieval.store import CollectionStore

    client = redis_client(redis_server)
    sample = next(client.scan_iter(match=f"tcrag:tok:{collection}:*", count=1000), None)
    assert sample is not None, f"no {collection} entries in Redis to read the tokenizer fingerprint from"
    fingerprint16 = sample.decode().split(":")[3]
    store = CollectionStore(Path(app.log_path).parent / "data" / "collections.sqlite3")
    try:
        chunks, _ = store.load(collection)
    finally:
        store.close()
    mine = [c for c in chunks if c.doc_id == doc_id]
    assert len(mine) == 1, f"expected the probe document to be one chunk, got {len(mine)}"
    ref = ChunkRef(collection=collection, doc_id=doc_id, chunk_id=mine[0].chunk_id, text=chunk_segment_text(mine[0]))
    key = ChunkKey.for_chunk(ref, fingerprint16).storage_key
    assert key.split(":")[3] == fingerprint16
    return key


CORRUPTION_ATTEMPTS = 3


def test_corrupted_redis_entry_is_detected_rebuilt_and_counted(app, base_url, redis_server):
    """A garbage value under a chunk's Redis key is detected, counted, rewritten, and costs no request.

    The Redis tier's calls have a 50 ms budget, so under load on 2 cores the one read that would see the
    garbage can time out (or be skipped by an open breaker). The agent then treats it as a miss, tokenizes
    and writes the right value over the garbage. That is correct, but it never reads the garbage. Such an
    attempt is retried with a new probe document, so a new key that no tier holds yet. An attempt whose read
    neither timed out nor was skipped must count the corruption.
    """
    from cache.codec import decode_tokens
    from cache.exceptions import CorruptEntryError

    client = redis_client(redis_server)
    collection = "support_kb"
    garbage = b"\x00garbage\xff" * 7
    # Warm the collection so Redis holds its entries (and we can read the tokenizer fingerprint).
    http_json("POST", f"{base_url}/v1/cache/warmup", {"collection": collection}, timeout_s=300)
    load = start_load(base_url)
    attempts: list[dict[str, int]] = []
    try:
        for attempt in range(CORRUPTION_ATTEMPTS):
            doc_id = f"corruption-probe-{attempt}"
            text = (f"Corruption probe {attempt}: the zebra-striped router reboots when the moon is full. "
                    f"Hold the blue button for {12 + attempt} seconds to recover it.")
            status, body = http_json("PUT", f"{base_url}/v1/collections/{collection}/documents",
                                     {"documents": [{"id": doc_id, "text": text}]})
            assert status == 200, body
            try:
                # Garbage where the new chunk's IDs will be looked up: no tier holds its key yet (keys are
                # content-addressed, and adding a document tokenizes nothing), so the first request that
                # retrieves the chunk asks Redis for it.
                key = _fresh_chunk_key(app, redis_server, collection, doc_id)
                before = redis_totals(base_url)
                client.set(key, garbage)
                corrupted_at = time.monotonic()
                status, answer = http_json("POST", f"{base_url}{SUPPORT}",
                                           {"query": text, "max_tokens": MAX_TOKENS, "top_k": 3},
                                           timeout_s=REQUEST_TIMEOUT_S)
                assert status == 200, answer
                assert any(s.startswith(doc_id) for s in answer["sources"]), answer["sources"]
                deadline = time.monotonic() + 30
                value = client.get(key)
                while value == garbage and time.monotonic() < deadline:  # a background write-through
                    time.sleep(0.2)
                    value = client.get(key)
                rebuilt_s = time.monotonic() - corrupted_at
                after = redis_totals(base_url)
            finally:
                http_json("DELETE", f"{base_url}/v1/collections/{collection}/documents/{doc_id}")
            delta = {k: after[k] - before[k] for k in ("corruptions", "timeouts", "skipped_calls", "errors")}
            attempts.append(delta)
            if delta["corruptions"] > 0:
                assert value != garbage, f"the corrupted entry was not rewritten (attempt {attempt}: {delta})"
                break
            # Not counted: only a read that never reached Redis (timed out or skipped) may explain it.
            assert delta["timeouts"] + delta["skipped_calls"] > 0, (
                f"the corrupted entry was not counted, and no Redis call timed out or was skipped: {delta}")
        load.wait_for_ok(4)
    finally:
        load.stop()
    assert delta["corruptions"] > 0, f"every attempt's Redis read timed out or was skipped: {attempts}"
    try:
        ids = decode_tokens(value)
    except CorruptEntryError as err:  # pragma: no cover - the assertion message is the point
        raise AssertionError(f"rewritten entry is still corrupt: {err}") from err
    assert len(ids) > 10
    record(app, "redis_entry_corrupted", load, corruptions_counted=delta["corruptions"],
           rebuilt_after_s=rebuilt_s, rebuilt_tokens=len(ids), attempts=len(attempts))
    assert_no_failures(load)


# ----------------------------------------------------------------------------- 5. Redis flushed


def test_redis_flushall_is_rebuilt_on_demand(app, base_url, redis_server):
    client = redis_client(redis_server)
    load = start_load(base_url)
    try:
        assert client.dbsize() > 0
        flushed_at = time.monotonic()
        client.flushall()
        load.wait_for_ok(4)
        # Entries come back on demand: anything not in a faster tier is looked up, tokenized and written.
        rebuilt: dict[str, int] = {}
        deadline = time.monotonic() + 180
        while len(rebuilt) < 2 and time.monotonic() < deadline:
            for collection in ("support_kb", "documentation"):
                http_json("POST", f"{base_url}/v1/cache/invalidate", {"collection": collection})
            load.wait_for_ok(6, timeout_s=90)
            for collection in ("support_kb", "documentation"):
                n = sum(1 for _ in client.scan_iter(match=f"tcrag:tok:{collection}:*", count=1000))
                if n:
                    rebuilt[collection] = n
        rebuilt_s = time.monotonic() - flushed_at
    finally:
        load.stop()
    assert len(rebuilt) == 2, f"entries not rebuilt after FLUSHALL: {rebuilt}"
    record(app, "redis_flushall", load, rebuilt_after_s=rebuilt_s, keys_rebuilt=rebuilt)
    assert_no_failures(load)


# ----------------------------------------------------------------------------- 6. LLM pool unavailable


def test_fallback_serves_when_the_pool_is_unreachable(app, base_url):
    """The fallback client against a real second server (the app's own /v1/completions) while the
    primary is a real endpoint that refuses connections."""
    import asyncio

    from llm import GenerateRequest
    from llm.fallback import FallbackConfig, FallbackLLM, OpenAIFallbackClient
    from testbed.redis_server import free_port

    prompt = [1, 9690, 30, 314, 2, 198] * 20
    status, direct = http_json("POST", f"{base_url}/v1/completions",
                               {"prompt": prompt, "max_tokens": 8, "temperature": 0, "return_token_ids": True})
    assert status == 200, direct

    async def run():
        dead = OpenAIFallbackClient(FallbackConfig(base_url=f"http://127.0.0.1:{free_port()}/v1", model="x",
                                                   timeout_s=5))
        second = OpenAIFallbackClient(FallbackConfig(base_url=f"{base_url}/v1", model=direct["model"], timeout_s=120))
        llm = FallbackLLM(dead, second)
        try:
            started = time.monotonic()
            result = await llm.generate(GenerateRequest(prompt_token_ids=prompt, max_tokens=8, temperature=0))
            return result, llm.fallbacks, time.monotonic() - started
        finally:
            await dead.aclose()
            await second.aclose()

    result, fallbacks, elapsed = asyncio.run(run())
    assert fallbacks == 1
    assert 0 < result.completion_tokens <= 8 and result.prompt_tokens == len(prompt)
    assert result.replica_id.startswith("fallback:")
    record(app, "llm_fallback_client", None, fallback_latency_s=elapsed, completion_tokens=result.completion_tokens,
           same_ids_as_pool=result.token_ids == direct["choices"][0]["token_ids"])


def test_whole_llm_pool_killed_answers_503_with_retry_after_or_serves_never_hangs(app, base_url, serve_pid):
    """Both vLLM replicas killed at once, no fallback configured: every request is answered within the
    request timeout (120 s, plus margin), either served (once Serve has replaced a replica) or 503 with
    Retry-After and a message. Nothing hangs, nothing is a 500."""
    import concurrent.futures

    replicas = replica_processes(serve_pid, "llm")
    assert len(replicas) == 2
    killed_at = time.monotonic()
    killed: set[int] = set()
    for proc in replicas:
        killed |= set(kill_tree(proc))

    def one(i: int) -> tuple[int, dict, dict, float]:
        import urllib.request

        started = time.monotonic()
        body = json.dumps({"query": f"Is the service down? ({i})", "max_tokens": MAX_TOKENS}).encode()
        request = urllib.request.Request(f"{base_url}{SUPPORT}", data=body, method="POST",
                                         headers={"Content-Type": "application/json"})
        try:
            with urllib.request.urlopen(request, timeout=REQUEST_TIMEOUT_S) as response:
                return response.status, dict(response.headers), json.loads(response.read()), time.monotonic() - started
        except urllib.error.HTTPError as err:
            return err.code, dict(err.headers), json.loads(err.read() or b"{}"), time.monotonic() - started

    with concurrent.futures.ThreadPoolExecutor(4) as pool:
        outcomes = list(pool.map(one, range(4)))
    recover_s = wait_replaced(base_url, serve_pid, "llm", killed, 2, killed_at)
    statuses = [o[0] for o in outcomes]
    record(app, "llm_pool_killed", None, sent=len(outcomes), statuses=statuses,
           slowest_answer_s=max(o[3] for o in outcomes), recover_s=recover_s)
    for status, headers, body, elapsed in outcomes:
        assert status in (200, 503), (status, body)
        assert elapsed < 120 + 30, f"answer took {elapsed:.0f} s"
        if status == 503:
            assert {k.lower() for k in headers} >= {"retry-after"}, headers
            assert body["error"]["message"], body
