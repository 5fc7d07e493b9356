"""Training cases for an adapter: read from a folder of BraTS cases, checked, split for validation.

A case is the four images and its ground truth as arrays; where it came from (a folder, or a
segmentation a radiologist corrected in the Slicer scene, see scene_data) no longer matters.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Callable

import numpy as np

from SAMBACore.brats import MODALITIES, find_training_cases, read_case, region_masks
from SAMBACore.inputs import InputError, check_same_geometry


@dataclass
class Case:
    name: str
    images: dict[str, np.ndarray]  # modality -> (K, J, I) float32
    labels: np.ndarray  # (K, J, I) uint8 internal labels


def _geometry(path) -> tuple[tuple, np.ndarray]:
    """(shape in (k, j, i), voxel-to-physical 4x4) from the file header only (a truncated or
    corrupt file is refused here, before training reads anything)."""
    from SAMBACore.image_files import read_image_information

    reader = read_image_information(path)
    matrix = np.eye(4)
    direction = np.array(reader.GetDirection()).reshape(3, 3)
    matrix[:3, :3] = direction * np.array(reader.GetSpacing())
    matrix[:3, 3] = reader.GetOrigin()
    return tuple(reversed(reader.GetSize())), matrix


def check_case_geometry(files: dict) -> None:
    """Images and labels are read voxel by voxel side by side: refuse a case whose grids differ."""
    case = files["seg"].parent.name
    reference = _geometry(files["t1"])
    others = {f"{case}: {files[key].name}": _geometry(files[key]) for key in (*MODALITIES[1:], "seg")}
    check_same_geometry(f"{case}: {files['t1'].name}", reference, others)


def cases_from_folder(data_dir, log: Callable[[str], None] = print) -> list[Case]:
    """Every usable case in `data_dir` (others are logged with the reason they were skipped)."""
    found, skipped = find_training_cases(data_dir)
    for reason in skipped:
        log(f"skipped {reason}")
    cases = []
    for files in found:
        check_case_geometry(files)
        images, labels, _ = read_case(files)
        cases.append(Case(files["seg"].parent.name, images, labels))
    return cases


def check_has_tumour(cases: list[Case], what: str) -> None:
    empty = [c.name for c in cases if not region_masks(c.labels)["WT"].any()]
    if len(empty) == len(cases):
        raise InputError(f"The {what} cases ({', '.join(empty)}) have no tumour in their ground truth: "
                         "box-prompted SAM learns only from slices that show tumour. Add cases with a segmented tumour.")


def split_cases(cases: list[Case], val_fraction: float, seed: int) -> tuple[list[Case], list[Case]]:
    """(training, validation): a seeded random `val_fraction` of the cases, at least one each."""
    if not 0 < val_fraction < 1:
        raise ValueError(f"--val-fraction must be between 0 and 1, not {val_fraction}.")
    if len(cases) < 2:
        raise InputError(f"Only {len(cases)} case: validation needs cases that are not trained on. "
                         "Add cases, or give a separate validation folder (--val DIR).")
    order = np.random.default_rng(seed).permutation(len(cases))
    n_val = min(max(1, round(val_fraction * len(cases))), len(cases) - 1)
    val = sorted(order[:n_val].tolist())
    return [c for i, c in enumerate(cases) if i not in val], [cases[i] for i in val]
