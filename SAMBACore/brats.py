"""BraTS conventions in one place: modality names, label values, sub-regions, segment display.

Internal label convention (what every model and metric in SlicerSAMBA uses):
    0 background, 1 NETC (necrotic / non-enhancing tumour core), 2 SNFH (edema),
    3 ET (enhancing tumour)
BraTS 2023 files use exactly these values; BraTS 2021 files store ET as 4.
Derived regions: ET = {3}, TC = {1, 3}, WT = {1, 2, 3}.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from pathlib import Path

import numpy as np

MODALITIES = ("t1", "t1ce", "t2", "flair")  # internal keys, in the order models expect

# File-name suffixes per naming year: 2023 `<id>-t1n.nii.gz`, 2021 `<id>_t1.nii.gz`.
SUFFIXES = {
    "2023": {"t1": "t1n", "t1ce": "t1c", "t2": "t2w", "flair": "t2f", "seg": "seg"},
    "2021": {"t1": "t1", "t1ce": "t1ce", "t2": "t2", "flair": "flair", "seg": "seg"},
}
SEPARATOR = {"2023": "-", "2021": "_"}

# Every spelling we accept for a modality token, lower-case with separators removed.
# Ordered so that the more specific names are tried first ("t1ce" before "t1").
_ALIASES = {
    "t1ce": ("t1ce", "t1c", "t1gd", "t1post", "t1contrast", "t1wce", "ce"),
    "flair": ("flair", "t2f", "t2flair"),
    "t2": ("t2", "t2w"),
    "t1": ("t1", "t1n", "t1w", "t1native", "t1pre"),
    "seg": ("seg", "label", "labels", "gt", "truth"),
}

NETC, SNFH, ET = 1, 2, 3
LABELS = (NETC, SNFH, ET)
REGIONS = ("ET", "TC", "WT")
REGION_LABELS = {"ET": (ET,), "TC": (NETC, ET), "WT": (NETC, SNFH, ET)}

_TERMINOLOGY_CONTEXT = "Segmentation category and type - 3D Slicer General Anatomy list"
_ANATOMY_CONTEXT = "Anatomic codes - DICOM master list"
_ABNORMAL = "SCT^49755003^Morphologically Altered Structure"


@dataclass(frozen=True)
class Segment:
    """How one label or region is shown in Slicer."""

    key: str  # short id, also the segment id in the .seg.nrrd
    name: str  # what the radiologist reads in the Segmentations module
    color: tuple[float, float, float]  # RGB 0-1
    snomed_type: str  # "SCT^code^meaning" of the property type

    @property
    def terminology(self) -> str:
        """Slicer's serialised terminology entry (the segment's TerminologyEntry tag)."""
        return f"{_TERMINOLOGY_CONTEXT}~{_ABNORMAL}~{self.snomed_type}~^^~{_ANATOMY_CONTEXT}~^^~^^"


# Colours follow the BraTS figures radiologists know: edema green, core red, enhancing yellow.
LABEL_SEGMENTS = {
    NETC: Segment("NETC", "Necrotic / non-enhancing tumour core", (0.80, 0.16, 0.16), "SCT^6574001^Necrosis"),
    SNFH: Segment("SNFH", "Peritumoral edema (SNFH)", (0.35, 0.78, 0.35), "SCT^79654002^Edema"),
    ET: Segment("ET", "Enhancing tumour", (0.98, 0.85, 0.20), "SCT^108369006^Neoplasm"),
}
REGION_SEGMENTS = {
    "ET": LABEL_SEGMENTS[ET],
    "TC": Segment("TC", "Tumour core", (0.90, 0.45, 0.10), "SCT^108369006^Neoplasm"),
    "WT": Segment("WT", "Whole tumour", (0.30, 0.55, 0.90), "SCT^4147007^Mass"),
}


class ModalityError(ValueError):
    """The four inputs could not be identified; the message lists what was found."""


def _normalise(token: str) -> str:
    return re.sub(r"[^a-z0-9]", "", token.lower())


def _strip_extension(name: str) -> str:
    for ext in (".nii.gz", ".seg.nrrd", ".nii", ".nrrd", ".nhdr", ".mha", ".mhd"):
        if name.lower().endswith(ext):
            return name[: -len(ext)]
    return name


def modality_of(name: str) -> str | None:
    """The internal key ("t1", "t1ce", "t2", "flair" or "seg") a file or node name stands for.

    The last token of the name decides ("BraTS-GLI-00001-000-t2f" -> flair,
    "case_T1CE" -> t1ce); if it is not a known token the whole name is tried
    ("FLAIR" -> flair). Returns None when nothing matches.
    """
    stem = _strip_extension(Path(name).name)
    tokens = [t for t in re.split(r"[-_.\s]+", stem) if t]
    candidates = [_normalise(tokens[-1])] if tokens else []
    if len(tokens) >= 2:  # "t2_flair", "T1 post"
        candidates.append(_normalise("".join(tokens[-2:])))
    candidates.append(_normalise(stem))
    for candidate in candidates:
        for key, aliases in _ALIASES.items():
            if candidate in aliases:
                return key
    return None


def assign_modalities(names: list[str], need_seg: bool = False, allow_missing: bool = False) -> dict[str, str]:
    """Map each of the four modalities (and "seg" when present) to exactly one of `names`.

    Raises ModalityError listing every name and what it was read as, when a modality is missing
    (with allow_missing: when none of the four is) or claimed by more than one name.
    """
    found: dict[str, list[str]] = {}
    for name in names:
        key = modality_of(name)
        if key is not None:
            found.setdefault(key, []).append(name)
    wanted = MODALITIES + (("seg",) if need_seg else ())
    missing = [m for m in wanted if m not in found]
    if allow_missing and any(m in found for m in MODALITIES):
        missing = [m for m in missing if m == "seg"]
    duplicated = {m: v for m, v in found.items() if len(v) > 1}
    if missing or duplicated:
        read_as = ", ".join(f"{n} -> {modality_of(n) or '?'}" for n in names) or "nothing"
        problems = []
        if missing:
            problems.append("missing " + ", ".join(missing))
        for m, v in duplicated.items():
            problems.append(f"{m} is ambiguous ({', '.join(v)})")
        # allow_missing fails only when none of the four was found or one was found twice
        what = ("any of the BraTS inputs" if missing else "the BraTS inputs") if allow_missing else "the four BraTS inputs"
        fix = "Keep one file per contrast, named" if duplicated else "Name them"
        raise ModalityError(
            f"Could not identify {what}: {'; '.join(problems)}. Found: {read_as}. "
            f"{fix} t1/t1n, t1ce/t1c, t2/t2w and flair/t2f; in Slicer you can also choose the volumes in the module's inputs."
        )
    return {key: found[key][0] for key in wanted if key in found}


def find_case_files(case_dir: str | Path, need_seg: bool = False, allow_missing: bool = False) -> dict[str, Path]:
    """The image files of a BraTS case folder, keyed by internal modality (and "seg"). allow_missing:
    any non-empty set of the four contrasts (the models that can use fewer say what they used)."""
    case_dir = Path(case_dir)
    if not case_dir.is_dir():
        raise ModalityError(f"{case_dir} is not a folder: give a BraTS case folder with four NIfTI images.")
    files = sorted(
        p.name for p in case_dir.iterdir() if p.is_file() and re.search(r"\.(nii(\.gz)?|nrrd|nhdr|mha)$", p.name, re.I)
    )
    assigned = assign_modalities(files, need_seg=need_seg, allow_missing=allow_missing)
    return {key: case_dir / name for key, name in assigned.items()}


# A result made without T1CE holds the whole tumour only (label 1): shown as one "Whole tumour" segment.
WHOLE_TUMOUR_SEGMENTS = {1: REGION_SEGMENTS["WT"]}
ALL_REGIONS = ("ET", "TC", "WT")


def only_whole_tumour(regions) -> bool:
    """Whether a result with these regions holds the whole tumour alone (made without T1CE)."""
    return tuple(regions) == ("WT",)


def segments_for(regions) -> dict[int, Segment]:
    """The segments a result's labels stand for: NETC, SNFH, ET, or the whole tumour alone."""
    return WHOLE_TUMOUR_SEGMENTS if only_whole_tumour(regions) else LABEL_SEGMENTS


def internal_labels_of(labels: np.ndarray, regions) -> np.ndarray:
    """A result's labels in the internal convention: a whole-tumour-only result (label 1) as SNFH, so
    region_masks gives its WT right (and TC, ET empty: not produced, which callers say)."""
    if not only_whole_tumour(regions):
        return labels
    return np.where(labels > 0, SNFH, 0).astype(np.uint8)


def case_file_name(case_id: str, key: str, naming: str = "2023") -> str:
    """File name of one image of a case in the given naming ("2023" or "2021")."""
    return f"{case_id}{SEPARATOR[naming]}{SUFFIXES[naming][key]}.nii.gz"


def to_internal_labels(labels: np.ndarray, naming: str | None = None) -> np.ndarray:
    """BraTS 2021 (1, 2, 4) or 2023 (1, 2, 3) label values -> internal (1, 2, 3).

    With naming None the year is read off the values: a 4 means 2021. Values that are
    neither raise ValueError, since silently dropping a label would corrupt training.
    """
    labels = np.asarray(labels)
    values = set(np.unique(labels).tolist())
    if naming is None:
        naming = "2021" if 4 in values else "2023"
    allowed = {0, 1, 2, 4} if naming == "2021" else {0, 1, 2, 3}
    unexpected = sorted(values - allowed)
    if unexpected:
        raise ValueError(f"Unexpected label values {unexpected} for BraTS {naming} (allowed {sorted(allowed)}).")
    out = labels.astype(np.uint8, copy=True)
    if naming == "2021":
        out[labels == 4] = ET
    return out


def from_internal_labels(labels: np.ndarray, naming: str = "2023") -> np.ndarray:
    """Internal labels -> the values a BraTS file of the given year stores."""
    out = np.asarray(labels).astype(np.uint8, copy=True)
    if naming == "2021":
        out[out == ET] = 4
    return out


def region_masks(labels: np.ndarray) -> dict[str, np.ndarray]:
    """Boolean ET, TC, WT masks from an internal label array."""
    return {region: np.isin(labels, values) for region, values in REGION_LABELS.items()}


def find_training_cases(data_dir: str | Path, allow_missing: bool = False) -> tuple[list[dict[str, Path]], list[str]]:
    """(usable cases, reasons others were skipped) for a folder of BraTS case folders.

    A usable case has the four modalities (allow_missing: any of them) and a ground-truth
    segmentation. Raises ModalityError when there is nothing to use, saying what was found instead.
    """
    data_dir = Path(data_dir)
    if not data_dir.is_dir():
        raise ModalityError(f"{data_dir} is not a folder: give a folder of BraTS case folders.")
    cases, skipped = [], []
    for case_dir in sorted(p for p in data_dir.iterdir() if p.is_dir()):
        try:
            cases.append(find_case_files(case_dir, need_seg=True, allow_missing=allow_missing))
        except ModalityError as error:
            skipped.append(f"{case_dir.name}: {error}")
    if not cases:
        detail = f" Skipped: {skipped[0]}" + (f" (and {len(skipped) - 1} more)" if len(skipped) > 1 else "") if skipped else ""
        raise ModalityError(f"No usable BraTS case (four images and a seg file) in {data_dir}.{detail}")
    return cases, skipped


def read_case(files: dict[str, Path]) -> tuple[dict[str, np.ndarray], np.ndarray | None, tuple[float, float, float]]:
    """(images, labels or None, spacing in (k, j, i) order) of one case, for training and batch work.

    Read with SimpleITK, not MRML: training never touches a scene. Images are float32 (k, j, i);
    labels are converted to the internal convention. Each image's background is moved to 0
    (inputs.zero_background: a volume stored shifted by a constant trains and segments like the
    unshifted one). A truncated or corrupt file raises image_files.ImageFileError (an InputError)
    naming it; so does an empty, constant or NaN image (inputs.check_image), as when it is loaded in
    Slicer. (ITK reads a NIfTI file's NaNs as 0, Slicer too; a NRRD or MetaImage keeps them.)
    """
    import SimpleITK as sitk

    from SAMBACore.image_files import read_image
    from SAMBACore.inputs import check_image, zero_background

    images, spacing = {}, None
    for key in (m for m in MODALITIES if m in files):  # a case may lack some (find_case_files' allow_missing)
        image = read_image(files[key])
        array = sitk.GetArrayFromImage(image).astype(np.float32)
        check_image(str(files[key]), array)
        images[key] = zero_background(array)
        spacing = spacing or tuple(reversed(image.GetSpacing()))
    labels = None
    if "seg" in files:
        labels = to_internal_labels(sitk.GetArrayFromImage(read_image(files["seg"])))
    return images, labels, spacing
