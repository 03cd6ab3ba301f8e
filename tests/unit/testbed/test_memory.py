"""`testbed.memory`: a process tree's memory, summed over the root and its descendants."""

from __future__ import annotations

import os
import subprocess
import sys
import time

from testbed.memory import TreeMemorySampler, sample_tree


def test_a_sample_covers_the_root_and_its_children():
    alone = sample_tree(os.getpid())
    child = subprocess.Popen([sys.executable, "-c", "import time; b = bytearray(64 << 20); time.sleep(30)"])
    try:
        with TreeMemorySampler(lambda: os.getpid(), interval_s=0.05) as sampler:
            deadline = time.monotonic() + 20
            while time.monotonic() < deadline:
                sample = sampler.take(os.getpid())
                if sample.processes >= alone.processes + 1 and sample.rss_bytes >= alone.rss_bytes + (48 << 20):
                    break
                time.sleep(0.1)
        assert sample.processes >= alone.processes + 1
        assert sample.rss_bytes >= alone.rss_bytes + (48 << 20)  # the child's 64 MiB counted
        assert sampler.peak is not None and sampler.peak.rss_bytes >= sample.rss_bytes
        assert sampler.samples >= 1
        # The largest processes are named with their pid (the test session may have larger children of its
        # own, so the child is looked for in a sample of its own subtree).
        own = sample_tree(child.pid)
        assert own.processes == 1 and any(str(child.pid) in name for name, _ in own.top)
    finally:
        child.kill()
        child.wait()


def test_a_missing_root_is_an_empty_sample():
    sample = sample_tree(2**22 + 12345)
    assert (sample.processes, sample.rss_bytes) == (0, 0)
