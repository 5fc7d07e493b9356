"""Segmenting from the terminal, one case or a folder of them: the loop both modules' commands share.

A batch goes on past a case it cannot read (a missing modality, a NaN volume, an unreadable file),
saying why, so that one bad folder does not lose a night's run; it ends with exit status 2 naming
the cases it skipped. The volumes of every case go in one table, a row per case.
"""

from __future__ import annotations

import sys
from pathlib import Path
from typing import Callable

from SAMBACore.errors import BridgeError

SegmentCase = Callable[[Path, Path], dict]  # (case folder or file, .seg.nrrd to write) -> volumes in mL per region


def is_case_set(path: Path) -> bool:
    """A folder of case folders (no images of its own) rather than one case or one image file."""
    from SAMBACore.brats import ModalityError, find_case_files

    path = Path(path)
    if not path.is_dir():
        return False
    try:
        find_case_files(path)
        return False
    except ModalityError:  # not one case: a folder of them, or a broken case that find_case_files explains
        return any(p.is_dir() for p in path.iterdir())


def check_outputs(input_path: Path, output: Path, volumes: Path | None, batch: bool, preview: Path | None = None) -> None:
    """Refuse, before any work, outputs that cannot be written as asked (and make a batch's preview folder)."""
    if batch and str(output).endswith(".seg.nrrd"):
        raise ValueError(f"{input_path} holds several cases: give a folder for -o, not {output}.")
    if not batch and not str(output).endswith(".seg.nrrd"):
        raise ValueError(f"{output}: the output must end in .seg.nrrd.")
    if volumes and volumes.suffix.lower() not in (".csv", ".tsv"):
        raise ValueError(f"{volumes}: the volume table must end in .csv or .tsv.")
    if preview and batch and Path(preview).suffix.lower() == ".png":
        raise ValueError(f"{input_path} holds several cases: give a folder for --preview (one CASE.png each), not {preview}.")
    if preview and not batch and Path(preview).suffix.lower() != ".png":
        raise ValueError(f"{preview}: the preview is a picture, so it must end in .png.")
    if preview and batch:
        Path(preview).mkdir(parents=True, exist_ok=True)


def segment_cases(input_path: Path, output: Path, segment_case: SegmentCase, volumes_path: Path | None = None,
                  batch: bool | None = None) -> int:
    """Run `segment_case` on one input, or on every case folder of a set (output is then a folder of
    CASE.seg.nrrd); write the volume table if asked. Returns the exit status: 0, or 2 if a case was
    skipped. A single input's error propagates (the CLI prints it)."""
    from SAMBACore import bridge

    batch = is_case_set(input_path) if batch is None else batch
    cases = sorted(p for p in Path(input_path).iterdir() if p.is_dir()) if batch else [Path(input_path)]
    if batch:
        Path(output).mkdir(parents=True, exist_ok=True)
    volumes, skipped = {}, []
    for index, case in enumerate(cases):
        if batch:
            print(f"== [{index + 1}/{len(cases)}] {case.name}", flush=True)
        try:
            name = case.name if case.is_dir() else case.name.split(".")[0]  # an image file: its name without extensions
            volumes[name] = segment_case(case, Path(output) / f"{case.name}.seg.nrrd" if batch else output)
        except (ValueError, BridgeError) as error:
            if not batch:
                raise
            skipped.append(case.name)
            print(f"Skipped {case.name}: {error}", file=sys.stderr, flush=True)
    if volumes_path and volumes:
        # Every region any case has, in the first case's order; a case made without T1CE has WT only,
        # and its other cells stay empty (not 0: nothing was measured there).
        regions = list(dict.fromkeys(r for v in volumes.values() for r in v))
        columns = {"Case": list(volumes),
                   **{f"{r} (mL)": [round(v[r], 3) if r in v else "" for v in volumes.values()] for r in regions}}
        table = bridge.table_node(bridge.get_scene(), "Tumour volumes", columns)
        print(f"Volume table: {bridge.save_table(table, volumes_path)}")
    if skipped:
        print(f"{len(skipped)} of {len(cases)} case(s) were skipped ({', '.join(skipped)}): see the messages above.",
              file=sys.stderr)
        return 2
    return 0
