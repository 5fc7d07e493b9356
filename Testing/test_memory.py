"""glibc keeps freed memory for reuse during a run, and gets it back after (SAMBACore/memory.py)."""

import ctypes
import os
import subprocess
import sys

import pytest

from SAMBACore import memory

libc = memory._glibc()
pytestmark = pytest.mark.skipif(libc is None, reason="glibc (Linux) only")


def _resident() -> int:
    """Bytes of this process in memory (Linux /proc)."""
    with open("/proc/self/statm") as f:
        return int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")


def _allocate_and_free(megabytes: int) -> int:
    """Allocate and touch megabytes in 256 KB blocks (the size of a few feature maps), free them, and
    say how much of it stayed in memory."""
    libc.malloc.restype = ctypes.c_void_p
    libc.free.argtypes = [ctypes.c_void_p]
    before = _resident()
    blocks = [libc.malloc(256 << 10) for _ in range(megabytes * 4)]
    for block in blocks:
        ctypes.memset(block, 1, 256 << 10)
    for block in reversed(blocks):
        libc.free(block)
    return _resident() - before


def scenario():
    with memory.freed_memory_kept():
        with memory.freed_memory_kept():  # a second run at the same time
            pass
        during = _allocate_and_free(64)
        assert during > 48 << 20, f"only {during >> 20} MB of 64 kept while the first run still goes on"
        held = _resident()
    assert held - _resident() > 48 << 20, "given back when the last run ended"
    after = _allocate_and_free(64)
    assert after < 16 << 20, f"{after >> 20} MB kept after the run: the defaults were not put back"


def test_freed_memory_is_kept_during_a_run_and_given_back_after():
    """In a fresh process: in one that has run other tests, memory allocated above these blocks keeps
    glibc from trimming them whatever its settings."""
    run = subprocess.run([sys.executable, __file__], capture_output=True, text=True, timeout=120)
    assert run.returncode == 0, run.stderr[-2000:]


if __name__ == "__main__":
    scenario()
