"""The body of LoRATrainer's self-test: run in Slicer by LoRATrainerTest, and headless in CI."""

from __future__ import annotations

import tempfile
from pathlib import Path

from SAMBACore.brats import ModalityError
from SAMBACore.phantom import write_cases


def run_self_test(find_cases, log=print) -> None:
    """`find_cases(folder)` is the logic's data check: cases without ground truth are skipped
    with a reason, and a folder with nothing to train on is refused with a clear message."""
    with tempfile.TemporaryDirectory() as folder:
        log("Writing two phantom cases, one without its segmentation")
        first, second = write_cases(folder, 2, seed=20003)
        next(second.glob("*seg*")).unlink()
        cases, skipped = find_cases(folder)
        assert [c["seg"].parent for c in cases] == [first], cases
        assert len(skipped) == 1 and second.name in skipped[0] and "missing seg" in skipped[0], skipped

        empty = Path(folder) / "empty"
        empty.mkdir()
        try:
            find_cases(empty)
        except ModalityError as error:
            assert "No usable BraTS case" in str(error), error
        else:
            raise AssertionError("an empty folder was accepted as training data")
    log("Self-test passed")
