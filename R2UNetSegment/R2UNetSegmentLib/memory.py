"""Memory of an inference run: the measured peak (PeakMemory) and a tensor-level tracker.

PeakMemory measures what a block of code adds at its peak: on CUDA the allocator's peak,
on CPU the process' resident set size (RSS) sampled by a background thread. AllocationTracker
follows every tensor created inside a block (through a TorchDispatchMode) and keeps the peak of
their live bytes: exact for tensors, blind to what a kernel allocates privately (workspaces).
"""

from __future__ import annotations

import threading
import time
import weakref

import psutil
import torch
from torch.utils._python_dispatch import TorchDispatchMode
from torch.utils._pytree import tree_leaves


def _is_cuda(device) -> bool:
    return str(device).startswith("cuda")


class PeakMemory:
    """`with PeakMemory(device) as peak: ...` then `peak.peak_bytes`, `peak.seconds`.

    peak_bytes is the peak minus the level at entry (what the block added). On CPU, RSS is
    sampled every `interval` seconds: an allocation that lives shorter than that can be missed,
    and memory the C allocator kept from earlier frees is reused without growing RSS (run the
    smallest workloads first, or release freed memory before measuring).
    """

    def __init__(self, device="cpu", interval: float = 0.002) -> None:
        self.device = device
        self.interval = interval
        self.peak_bytes = 0
        self.seconds = 0.0
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None

    def _sample(self) -> None:
        process = psutil.Process()
        while not self._stop.is_set():
            self._peak = max(self._peak, process.memory_info().rss)
            time.sleep(self.interval)

    def __enter__(self) -> "PeakMemory":
        if _is_cuda(self.device):
            torch.cuda.synchronize(self.device)
            self._start = torch.cuda.memory_allocated(self.device)
            torch.cuda.reset_peak_memory_stats(self.device)
        else:
            self._start = self._peak = psutil.Process().memory_info().rss
            self._stop.clear()
            self._thread = threading.Thread(target=self._sample, daemon=True)
            self._thread.start()
        self._started = time.perf_counter()
        return self

    def __exit__(self, *exc) -> None:
        if _is_cuda(self.device):
            torch.cuda.synchronize(self.device)
            peak = torch.cuda.max_memory_allocated(self.device)
        else:
            self._stop.set()
            self._thread.join()
            peak = max(self._peak, psutil.Process().memory_info().rss)
        self.seconds = time.perf_counter() - self._started
        self.peak_bytes = max(0, peak - self._start)


class AllocationTracker(TorchDispatchMode):
    """Peak bytes of the tensors created inside the block (`with AllocationTracker() as t:`).

    Storages that exist before (inputs, weights: pass them as `existing`) are not counted, even
    when an op returns a view of them. A storage is live while any tensor created on it inside
    the block is alive (views share their base's storage).
    """

    def __init__(self, existing=()) -> None:
        super().__init__()
        self._existing = {t.untyped_storage().data_ptr() for t in existing}
        self._live: dict[int, list[int]] = {}  # storage address -> [bytes, tensors alive on it]
        self.current = 0
        self.peak = 0

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        out = func(*args, **(kwargs or {}))
        for leaf in tree_leaves(out):
            if isinstance(leaf, torch.Tensor):
                self._track(leaf)
        return out

    def _track(self, tensor: torch.Tensor) -> None:
        storage = tensor.untyped_storage()
        key = storage.data_ptr()
        if key == 0 or key in self._existing:
            return
        entry = self._live.get(key)
        if entry is None:
            entry = self._live[key] = [storage.nbytes(), 0]
            self.current += entry[0]
            self.peak = max(self.peak, self.current)
        entry[1] += 1
        weakref.finalize(tensor, self._release, key)

    def _release(self, key: int) -> None:
        entry = self._live[key]
        entry[1] -= 1
        if entry[1] == 0:
            self.current -= entry[0]
            del self._live[key]
