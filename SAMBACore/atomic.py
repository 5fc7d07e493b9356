"""Replacing a folder of files (a bundle, an adapter) in one step, so no reader ever sees half of one.

The new content is written to a hidden sibling folder; only when it is complete does one rename
put it in place. A failure while writing (disk full, cancel, a bug) deletes the partial folder and
leaves the previous one exactly as it was.
"""

from __future__ import annotations

import os
import shutil
import uuid
from contextlib import contextmanager
from pathlib import Path


@contextmanager
def replacing_folder(folder, what: str, error: type[Exception] = OSError, catch: tuple = (OSError,)):
    """Yield an empty sibling folder to fill; on leaving the block it replaces `folder`.

    Exceptions of the `catch` types become `error` with a message naming the folder and saying
    the previous `what` is unchanged; others propagate as they are (after the clean-up)."""
    folder = Path(folder)
    tag = uuid.uuid4().hex[:8]
    partial = folder.with_name(f".{folder.name}.partial-{tag}")
    old = folder.with_name(f".{folder.name}.old-{tag}")
    try:
        folder.parent.mkdir(parents=True, exist_ok=True)
        partial.mkdir()
        yield partial
        if folder.exists():
            os.replace(folder, old)
        try:
            os.replace(partial, folder)
        except BaseException:
            if old.exists():
                os.replace(old, folder)
            raise
    except catch as e:
        reason = getattr(e, "strerror", None) or e
        raise error(f"Could not write the {what} to {folder} ({reason}); the previous {what} there, if any, "
                    "is unchanged. Free disk space or choose a writable folder.") from None
    finally:
        shutil.rmtree(partial, ignore_errors=True)
        shutil.rmtree(old, ignore_errors=True)
