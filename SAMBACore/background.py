"""Long work off the GUI thread: one worker thread, progress through a queue, cooperative cancel.

Slicer's widgets poll `BackgroundJob.poll()` from a QTimer on the main thread and touch the
scene only there, after the job has finished: the worker gets plain arrays and returns plain
arrays, so a cancelled or failed run leaves the scene exactly as it was. No Qt here, so the
same class is tested headless.
"""

from __future__ import annotations

import queue
import threading
from typing import Any, Callable


class Cancelled(Exception):
    """Raised inside the worker at its next progress report after cancel() was asked for."""


class BackgroundJob:
    """Runs `work(progress)` on a thread; `progress(fraction, message)` is what `work` calls to report."""

    def __init__(self, work: Callable[[Callable[[float, str], None]], Any]):
        self._work = work
        self._updates: queue.Queue = queue.Queue()
        self._cancel = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)
        self.result: Any = None
        self.error: BaseException | None = None
        self.cancelled = False

    def start(self) -> "BackgroundJob":
        self._thread.start()
        return self

    def cancel(self) -> None:
        self._cancel.set()

    @property
    def done(self) -> bool:
        return not self._thread.is_alive() and self._thread.ident is not None

    def wait(self, timeout: float | None = None) -> bool:
        self._thread.join(timeout)
        return self.done

    def poll(self) -> list[tuple[float, str]]:
        """Progress reports since the last poll, oldest first."""
        updates = []
        while True:
            try:
                updates.append(self._updates.get_nowait())
            except queue.Empty:
                return updates

    def _progress(self, fraction: float, message: str) -> None:
        if self._cancel.is_set():
            raise Cancelled(message)
        self._updates.put((float(fraction), message))

    def _run(self) -> None:
        try:
            self.result = self._work(self._progress)
        except Cancelled:
            self.cancelled = True
        except BaseException as error:  # reported to the GUI thread, never lost in the worker
            self.error = error
