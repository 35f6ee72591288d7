"""training.host_memory: with glibc told to keep freed memory, a large block allocated and freed
on every step (XLA:CPU's temporary buffers) stops page-faulting after the first step."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from training import host_memory

ROOT = Path(__file__).resolve().parents[1]

# A worker thread allocates, touches and frees 80 MB five times, as XLA's executor does each
# step; prints the minor page faults of each round.
STEPS = """
import ctypes, json, resource, sys, threading
from training.host_memory import describe, keep_freed_memory
applied = keep_freed_memory()
libc = ctypes.CDLL("libc.so.6")
libc.malloc.restype = ctypes.c_void_p
libc.free.argtypes = [ctypes.c_void_p]
faults = []
def step():
    before = resource.getrusage(resource.RUSAGE_SELF).ru_minflt
    block = libc.malloc(80 << 20)
    ctypes.memset(block, 1, 80 << 20)
    libc.free(block)
    faults.append(resource.getrusage(resource.RUSAGE_SELF).ru_minflt - before)
for _ in range(5):
    t = threading.Thread(target=step); t.start(); t.join()
print(json.dumps({"applied": applied, "faults": faults, "describe": describe()}))
"""

needs_glibc = pytest.mark.skipif(host_memory.glibc() is None, reason="glibc's mallopt only")


def run_steps(keep: bool) -> dict:
    env = {**os.environ, "PYTHONPATH": str(ROOT), host_memory.ENV: "1" if keep else "0"}
    done = subprocess.run([sys.executable, "-c", STEPS], capture_output=True, text=True,
                          env=env, timeout=120, check=True)
    return json.loads(done.stdout.strip().splitlines()[-1])


@needs_glibc
def test_kept_memory_is_reused_without_page_faults():
    pages = (80 << 20) // os.sysconf("SC_PAGE_SIZE")
    default, kept = run_steps(keep=False), run_steps(keep=True)
    assert default["applied"] is False and kept["applied"] is True   # TLAB_KEEP_HOST_MEMORY=0
    assert "system default" in default["describe"] and "freed memory kept" in kept["describe"]
    assert host_memory.ENV in kept["describe"]
    # glibc's default: every step maps fresh pages (>= 90% of the block faults again)
    assert min(default["faults"][1:]) > 0.9 * pages, default
    # kept: the first step grows the heap, the later ones reuse its pages
    assert kept["faults"][0] > 0.9 * pages, kept
    assert max(kept["faults"][1:]) < 0.02 * pages, kept
