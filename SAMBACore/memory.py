"""Freed memory kept for reuse while a model runs on the CPU (glibc's malloc; elsewhere nothing changes).

glibc hands freed memory at the top of its heap back to the system once more than 128 KB is free
there, so the next large tensor is fresh memory that the kernel must fault in and zero again.
LiteMedSAM's encoder allocates and frees tens of MB for every slice: on the 2-core development
machine a whole real case took 98-103 s in a fresh process and 70 s with freed memory kept
(docs/results.md). PyTorch's CPU tuning guides swap in jemalloc or tcmalloc for the same reason; an
extension cannot change its host's allocator, so glibc's own settings (mallopt) are changed for the
duration of a run and put back after, when the memory kept is given back (malloc_trim). Runs in
several threads at once share one setting: the last to finish puts it back.
"""

from __future__ import annotations

import contextlib
import ctypes
import sys
import threading

# mallopt parameters (malloc.h) and glibc's documented defaults
M_TRIM_THRESHOLD, M_TOP_PAD, M_MMAP_THRESHOLD = -1, -2, -3
DEFAULTS = {M_TRIM_THRESHOLD: 128 * 1024, M_TOP_PAD: 128 * 1024, M_MMAP_THRESHOLD: 128 * 1024}
# While a run lasts: up to 1 GB freed is kept, the heap grows 512 MB at a time (address space; pages
# are only faulted in when used), and blocks below 32 MB (glibc's largest threshold) come from the heap.
KEEP = {M_TRIM_THRESHOLD: 1 << 30, M_TOP_PAD: 512 << 20, M_MMAP_THRESHOLD: 32 << 20}

_lock = threading.Lock()
_active = 0


def _glibc():
    if not sys.platform.startswith("linux"):
        return None
    try:
        libc = ctypes.CDLL(None)
        return libc if hasattr(libc, "mallopt") and hasattr(libc, "malloc_trim") else None
    except OSError:
        return None


@contextlib.contextmanager
def freed_memory_kept():
    """Within: glibc keeps freed memory for reuse. After the last concurrent run: its defaults again,
    and the memory kept returned to the system. (Setting any of these turns off glibc's own
    adjustment of the mmap threshold for the rest of the process; the documented defaults come back.)"""
    global _active
    libc = _glibc()
    if libc is None:
        yield
        return
    with _lock:
        if _active == 0:
            for parameter, value in KEEP.items():
                libc.mallopt(parameter, value)
        _active += 1
    try:
        yield
    finally:
        with _lock:
            _active -= 1
            if _active == 0:
                for parameter, value in DEFAULTS.items():
                    libc.mallopt(parameter, value)
                libc.malloc_trim(0)
