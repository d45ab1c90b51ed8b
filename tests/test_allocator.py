"""keep_freed_memory: freed activation-sized blocks stay in the process for reuse."""
from __future__ import annotations

import os
import subprocess
import sys

import pytest

PROBE = r"""
import resource, sys
import torch
from recbole_mmm4rec.allocator import keep_freed_memory

def rss_mib():
    with open("/proc/self/statm") as f:
        return int(f.read().split()[1]) * resource.getpagesize() / 2**20

applied = keep_freed_memory() if sys.argv[1] == "keep" else False
before = rss_mib()
block = torch.ones(64 * 2**20 // 4)  # 64 MiB: above glibc's mmap threshold
del block
print(applied, round(rss_mib() - before))
"""


def run_probe(mode: str, **environment) -> tuple[str, int]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("MALLOC_")}
    env.update(environment)
    out = subprocess.run([sys.executable, "-c", PROBE, mode], capture_output=True, text=True, env=env, check=True)
    applied, kept = out.stdout.split()
    return applied, int(kept)


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="glibc's malloc")
def test_freed_blocks_are_kept_only_when_asked():
    applied, kept = run_probe("default")
    assert applied == "False" and kept < 16  # glibc gives the mmap'd block back
    applied, kept = run_probe("keep")
    assert applied == "True" and kept >= 60
    # The user's own malloc settings win: nothing is changed.
    assert run_probe("keep", MALLOC_TRIM_THRESHOLD_="131072")[0] == "False"
