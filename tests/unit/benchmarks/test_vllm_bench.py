"""benchmarks/vllm_bench.py: the `vllm bench serve` command line it builds (issue 18)."""

from __future__ import annotations

import argparse

from benchmarks.vllm_bench import bench_argv


def args(**overrides) -> argparse.Namespace:
    base = dict(url="http://127.0.0.1:8000/", endpoint="completions", dataset="prefix_repetition", num_prompts=32,
                max_concurrency=4, prefix_len=512, suffix_len=64, num_prefixes=4, output_len=32, seed=0, label="app",
                vllm_args=["--temperature", "0"])
    return argparse.Namespace(**{**base, **overrides})


def test_completions_with_a_prefix_repetition_dataset():
    argv = bench_argv(args(), "/models/m", "out.json")
    assert argv[:2] == ["bench", "serve"]
    pairs = {flag: argv[i + 1] for i, flag in enumerate(argv[:-1]) if flag.startswith("--")}
    assert pairs["--backend"] == "openai" and pairs["--endpoint"] == "/v1/completions"
    assert pairs["--base-url"] == "http://127.0.0.1:8000" and pairs["--tokenizer"] == "/models/m"
    assert pairs["--dataset-name"] == "prefix_repetition" and pairs["--prefix-repetition-prefix-len"] == "512"
    assert argv[-2:] == ["--temperature", "0"]


def test_chat_with_a_random_dataset_and_a_shared_prefix():
    argv = bench_argv(args(endpoint="chat", dataset="random"), "/models/m", "out.json")
    assert "openai-chat" in argv and "/v1/chat/completions" in argv
    assert argv[argv.index("--random-prefix-len") + 1] == "512"
