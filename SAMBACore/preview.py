"""A picture of a segmentation, for deciding at a glance whether it is right: `--preview OUT.png`.

Axial, coronal and sagittal slices through the tumour's centre, shown the radiological way round
(axial: anterior up and the patient's right on the left; coronal: superior up, right on the left;
sagittal: superior up, anterior on the left), each input contrast drawn with the segment outlines
in the segments' own colours (brats.py), a legend with each segment's volume in mL, and a row
with the ground truth's outlines when there is one. Pixels keep their millimetre proportions
(anisotropic slices are stretched accordingly). Headless: matplotlib's Agg backend, imported
when a preview is made, so `slicer-samba --help` stays fast.

Arrays are (k, j, i) as everywhere in SlicerSAMBA; the IJK-to-RAS matrix (bridge.ijk_to_ras) says
which way is which. An oblique volume is shown along the voxel axes nearest to R, A and S.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from itertools import permutations
from pathlib import Path
from typing import Mapping

import numpy as np

from SAMBACore.brats import LABEL_SEGMENTS, MODALITIES, Segment

VIEWS = ("axial", "coronal", "sagittal")
CONTRAST_NAMES = {"t1": "T1", "t1ce": "T1CE", "t2": "T2", "flair": "FLAIR"}
# FLAIR shows the edema, T1CE the enhancing rim and the necrotic core: what is read first in a glioma.
PREFERRED = ("flair", "t1ce")
WIDTH_PX = 1200
DPI = 100
BACKGROUND = "#101010"
TEXT = "#e8e8e8"
# Orientation letters at each panel's left, right and top edges (radiological convention).
EDGES = {"axial": ("R", "L", "A"), "coronal": ("R", "L", "S"), "sagittal": ("A", "P", "S")}


@dataclass
class Panel:
    row: str  # the row's label, e.g. "FLAIR" or "FLAIR, truth"
    view: str  # axial, coronal or sagittal
    bbox: tuple[int, int, int, int]  # x0, y0, x1, y1 of the slice in the PNG, in pixels from the top left
    labels: np.ndarray  # the label slice as drawn: rows top to bottom, columns left to right


@dataclass
class Preview:
    path: Path
    size: tuple[int, int]  # width, height in pixels
    panels: list[Panel] = field(default_factory=list)
    centre: tuple[int, int, int] = (0, 0, 0)  # the (k, j, i) voxel the three slices go through


def ras_axes(ijk_to_ras) -> tuple[tuple[int, int, int], tuple[bool, bool, bool], tuple[float, float, float]]:
    """How to turn a (k, j, i) array into one whose axes run towards S, A and R:
    (array axis for S, A, R; whether each is flipped; the spacing along each in mm)."""
    direction = np.asarray(ijk_to_ras, dtype=float)[:3, :3]
    steps = [direction[:, 2 - axis] for axis in range(3)]  # array axis 0 is k (the matrix's third column)
    norms = [float(np.linalg.norm(v)) or 1.0 for v in steps]
    targets = (2, 1, 0)  # RAS component of S, A, R

    def alignment(order):
        return sum(abs(steps[a][t]) / norms[a] for a, t in zip(order, targets))

    order = max(permutations(range(3)), key=alignment)
    flips = tuple(bool(steps[a][t] < 0) for a, t in zip(order, targets))
    return tuple(order), flips, tuple(norms[a] for a in order)


def to_sar(array: np.ndarray, ijk_to_ras) -> tuple[np.ndarray, tuple[float, float, float]]:
    """The (k, j, i[, c]) array with its axes running towards S, A, R (index 0 inferior, posterior,
    left), and the spacing along them; a trailing colour axis stays last."""
    order, flips, spacing = ras_axes(ijk_to_ras)
    out = np.transpose(np.asarray(array), order + tuple(range(3, np.ndim(array))))
    for axis, flip in enumerate(flips):
        if flip:
            out = np.flip(out, axis)
    return out, spacing


def view_slice(sar: np.ndarray, view: str, centre) -> np.ndarray:
    """The slice of an S, A, R array as it is shown: axial (rows anterior to posterior, columns the
    patient's right to left), coronal (superior to inferior, right to left), sagittal (superior to
    inferior, anterior to posterior)."""
    s, a, r = centre
    plane = {"axial": lambda: sar[s], "coronal": lambda: sar[:, a], "sagittal": lambda: sar[:, :, r]}[view]()
    return plane[::-1, ::-1]


def view_spacing(spacing, view: str) -> tuple[float, float]:
    """(row, column) pixel size in mm of a view, from the S, A, R spacing."""
    s, a, r = spacing
    return {"axial": (a, r), "coronal": (s, r), "sagittal": (s, a)}[view]


def volumes_of(labels: np.ndarray, ijk_to_ras, segments: Mapping[int, Segment]) -> dict[str, float]:
    """Volume in mL of each segment (by key); for the BraTS labels also TC and WT (metrics.volumes_ml)."""
    from SAMBACore import metrics

    direction = np.asarray(ijk_to_ras, dtype=float)[:3, :3]
    if dict(segments) == dict(LABEL_SEGMENTS):
        spacing = tuple(float(np.linalg.norm(direction[:, c])) for c in (2, 1, 0))
        return metrics.volumes_ml(labels, spacing)
    voxel_ml = abs(float(np.linalg.det(direction))) / 1000.0
    return {segment.key: float(np.count_nonzero(labels == value)) * voxel_ml for value, segment in segments.items()}


def _window(volume: np.ndarray) -> np.ndarray:
    """Grey values scaled to 0-1 by robust percentiles of the non-zero voxels (colour: by the maximum)."""
    volume = np.asarray(volume, dtype=np.float32)
    if volume.ndim == 4:  # a colour photo
        top = float(volume.max()) or 1.0
        return np.clip(volume / top, 0, 1)
    sample = volume[::2, ::2, ::2]
    sample = sample[sample != 0] if np.any(sample != 0) else sample.ravel()
    low, high = np.percentile(sample, (1.0, 99.5)) if sample.size else (0.0, 1.0)
    return np.clip((volume - low) / ((high - low) or 1.0), 0, 1)


def _crop_box(volumes: list[np.ndarray], masks: list[np.ndarray], margin: int = 4) -> tuple[slice, slice, slice]:
    """The box (in S, A, R) around the visible image (the brain: windowed grey above 5%; scanner noise
    in the background is darker) and every mask, with a margin."""
    shape = masks[0].shape
    occupied = np.zeros(shape, dtype=bool)
    for volume in volumes:
        occupied |= (volume > 0.05) if volume.ndim == 3 else (volume > 0.05).any(axis=-1)
    for mask in masks:
        occupied |= mask
    if not occupied.any():
        return tuple(slice(0, n) for n in shape)
    found = np.argwhere(occupied)
    low, high = found.min(axis=0), found.max(axis=0)
    return tuple(slice(max(0, int(lo) - margin), min(n, int(hi) + margin + 1)) for lo, hi, n in zip(low, high, shape))


def _centre(masks: list[np.ndarray], shape) -> tuple[int, int, int]:
    """The centre of mass of the first non-empty mask (the result, else the truth), else the middle."""
    for mask in masks:
        if mask.any():
            return tuple(int(round(c)) for c in np.argwhere(mask).mean(axis=0))
    return tuple(n // 2 for n in shape)


def _contrast_rows(images: Mapping[str, np.ndarray], contrasts) -> list[str]:
    if contrasts:
        missing = [c for c in contrasts if c not in images]
        if missing:
            raise ValueError(f"No image {', '.join(missing)} to show; the inputs are {', '.join(images)}.")
        return list(contrasts)
    preferred = [c for c in PREFERRED if c in images]
    return preferred or [next(iter(images))]


def write_preview(path, images: Mapping[str, np.ndarray], labels: np.ndarray, ijk_to_ras,
                  segments: Mapping[int, Segment] = LABEL_SEGMENTS, truth: np.ndarray | None = None,
                  title: str = "", note: str = "", contrasts=None) -> Preview:
    """Write the preview PNG (1200 px wide) of `labels` on `images` and return where each panel is.

    `images`: contrast name -> (k, j, i) array on the labels' grid ("t1", "t1ce", "t2", "flair" are
    shown as T1, T1CE, T2, FLAIR; a (k, j, i, 3) array is drawn in colour). Rows: FLAIR and T1CE
    when present (else the first image, or `contrasts`), then the truth's outlines on the first
    of them when `truth` is given. `segments`: label value -> Segment (the BraTS labels, or
    R2U-Net's single lesion). `note`: a line under the title (e.g. the Dice)."""
    from matplotlib.lines import Line2D

    from SAMBACore.plots import check_png, pyplot, save_figure

    path = check_png(path, "the preview")
    labels = np.asarray(labels)
    if not images:
        raise ValueError("A preview needs at least one image to draw the outlines on.")
    for name, image in images.items():
        if np.shape(image)[:3] != labels.shape:
            raise ValueError(f"The image {name} is {np.shape(image)[:3]} voxels but the segmentation {labels.shape}.")
    if truth is not None and np.shape(truth) != labels.shape:
        raise ValueError(f"The truth is {np.shape(truth)} voxels but the segmentation {labels.shape}.")
    plt = pyplot()

    rows_shown = _contrast_rows(images, contrasts)
    sar_images = {name: to_sar(_window(images[name]), ijk_to_ras)[0] for name in rows_shown}
    sar_labels, spacing = to_sar(labels, ijk_to_ras)
    sar_truth = to_sar(np.asarray(truth), ijk_to_ras)[0] if truth is not None else None
    masks = [sar_labels > 0] + ([sar_truth > 0] if sar_truth is not None else [])
    box = _crop_box(list(sar_images.values()), masks)
    sar_images = {name: image[box] for name, image in sar_images.items()}
    sar_labels = sar_labels[box]
    sar_truth = sar_truth[box] if sar_truth is not None else None
    centre = _centre([m[box] for m in masks], sar_labels.shape)

    shown = [v for v in VIEWS if min(view_slice(sar_labels, v, centre).shape) > 1]  # a single slice: one view
    extents = {v: tuple(n * mm for n, mm in zip(view_slice(sar_labels, v, centre).shape, view_spacing(spacing, v)))
               for v in shown}  # (height, width) in mm
    name_of = lambda key: CONTRAST_NAMES.get(key, key)  # noqa: E731
    rows = [(name_of(c), c, sar_labels) for c in rows_shown]
    if sar_truth is not None:
        rows.append((f"{name_of(rows_shown[0])}, truth", rows_shown[0], sar_truth))

    # Layout in inches, so that every slice keeps its millimetre proportions exactly.
    width_in = WIDTH_PX / DPI
    left, right, gap = 0.45, 0.1, 0.08
    top = 0.95 if note else 0.7
    scale = (width_in - left - right - gap * (len(shown) - 1)) / sum(extents[v][1] for v in shown)  # in per mm
    row_h = max(extents[v][0] for v in shown) * scale
    legend_rows = -(-len(segments) // 2)
    bottom = 0.3 + 0.28 * legend_rows
    height_in = top + len(rows) * row_h + gap * (len(rows) - 1) + bottom
    figure = plt.figure(figsize=(width_in, height_in), dpi=DPI, facecolor=BACKGROUND)
    panels_axes = []
    for r, (row_name, contrast, row_labels) in enumerate(rows):
        x = left
        y_top = top + r * (row_h + gap)
        for v in shown:
            h_mm, w_mm = extents[v]
            w, h = w_mm * scale, h_mm * scale
            y0 = y_top + (row_h - h) / 2
            axes = figure.add_axes((x / width_in, 1 - (y0 + h) / height_in, w / width_in, h / height_in))
            image = view_slice(sar_images[contrast], v, centre)
            shown_labels = view_slice(row_labels, v, centre)
            axes.imshow(image, cmap="gray", vmin=0, vmax=1, interpolation="bilinear", aspect="auto",
                        extent=(0, w_mm, h_mm, 0))
            row_mm, col_mm = view_spacing(spacing, v)
            xs = (np.arange(shown_labels.shape[1]) + 0.5) * col_mm
            ys = (np.arange(shown_labels.shape[0]) + 0.5) * row_mm
            # Largest first, so that an inner segment's outline (the core inside the edema) stays on top
            # where the two share a boundary.
            areas = {value: int(np.count_nonzero(shown_labels == value)) for value in segments}
            for value in sorted(segments, key=lambda v: -areas[v]):
                segment, mask = segments[value], shown_labels == value
                if mask.any() and not mask.all():
                    axes.contour(xs, ys, mask.astype(np.float32), levels=[0.5], colors=[segment.color],
                                 linewidths=1.6)
            axes.set_xlim(0, w_mm)
            axes.set_ylim(h_mm, 0)
            axes.set_axis_off()
            left_letter, right_letter, top_letter = EDGES[v]
            for text, xy, align in ((left_letter, (0.01, 0.5), "left"), (right_letter, (0.99, 0.5), "right")):
                axes.text(*xy, text, transform=axes.transAxes, ha=align, va="center", color=TEXT, fontsize=9)
            axes.text(0.5, 0.99, top_letter, transform=axes.transAxes, ha="center", va="top", color=TEXT, fontsize=9)
            if r == 0:
                axes.set_title(v.capitalize(), color=TEXT, fontsize=11, pad=3)
            if v == shown[0]:
                figure.text((x - 0.12) / width_in, 1 - (y_top + row_h / 2) / height_in, row_name, rotation=90,
                            ha="center", va="center", color=TEXT, fontsize=11)
            panels_axes.append((row_name, v, axes, shown_labels))
            x += w + gap
    if title:
        figure.text(0.5, 1 - 0.12 / height_in, title, ha="center", va="top", color=TEXT, fontsize=13)
    if note:
        figure.text(0.5, 1 - 0.42 / height_in, note, ha="center", va="top", color=TEXT, fontsize=10)

    volumes = volumes_of(labels, ijk_to_ras, segments)
    truth_volumes = volumes_of(np.asarray(truth), ijk_to_ras, segments) if truth is not None else None
    handles, texts = [], []
    for segment in segments.values():
        name = segment.name if segment.key in segment.name else f"{segment.key}  {segment.name}"
        text = f"{name}: {volumes[segment.key]:.1f} mL"
        if truth_volumes is not None:
            text += f" (truth {truth_volumes[segment.key]:.1f})"
        handles.append(Line2D([], [], color=segment.color, lw=3))
        texts.append(text)
    derived = [k for k in volumes if k not in {s.key for s in segments.values()}]  # TC, WT
    if derived:
        handles.append(Line2D([], [], color=BACKGROUND, lw=0))
        texts.append(", ".join(f"{k} {volumes[k]:.1f} mL" for k in derived)
                     + (" (truth " + ", ".join(f"{truth_volumes[k]:.1f}" for k in derived) + ")" if truth_volumes else ""))
    legend = figure.legend(handles, texts, loc="lower center", ncol=2, frameon=False, fontsize=10,
                           bbox_to_anchor=(0.5, 0.08 / height_in), labelcolor=TEXT, handlelength=1.8)
    legend.set_in_layout(False)
    # Grey images keep every colour in a 256-colour palette (a smaller file); a colour photo does not.
    grey = all(np.ndim(images[c]) == 3 for c in rows_shown)
    save_figure(figure, path, dpi=DPI, grey_palette=tuple(s.color for s in segments.values()) if grey else None)

    width, height = round(width_in * DPI), round(height_in * DPI)
    panels = []
    for row_name, v, axes, shown_labels in panels_axes:
        pos = axes.get_position()
        bbox = (round(pos.x0 * width), round((1 - pos.y1) * height), round(pos.x1 * width), round((1 - pos.y0) * height))
        panels.append(Panel(row_name, v, bbox, shown_labels))
    starts = [s.start for s in box]
    return Preview(path, (width, height), panels, _kji_of(tuple(c + s for c, s in zip(centre, starts)), ijk_to_ras,
                                                           labels.shape))


def _kji_of(sar_index, ijk_to_ras, shape) -> tuple[int, int, int]:
    """The (k, j, i) voxel of an index into the S, A, R array."""
    order, flips, _ = ras_axes(ijk_to_ras)
    kji = [0, 0, 0]
    for n, (axis, flip) in enumerate(zip(order, flips)):
        kji[axis] = shape[axis] - 1 - sar_index[n] if flip else sar_index[n]
    return tuple(int(v) for v in kji)


def ijk_to_ras_of_file(path) -> np.ndarray:
    """The IJK-to-RAS matrix of an image file, from its header alone (SimpleITK; LPS -> RAS)."""
    from SAMBACore.image_files import read_image_information

    reader = read_image_information(path)
    lps_to_ras = np.diag([-1.0, -1.0, 1.0])
    direction = np.array(reader.GetDirection(), dtype=float).reshape(3, 3) @ np.diag(reader.GetSpacing())
    matrix = np.eye(4)
    matrix[:3, :3] = lps_to_ras @ direction
    matrix[:3, 3] = lps_to_ras @ np.array(reader.GetOrigin(), dtype=float)
    return matrix


def truth_file(case_dir) -> Path | None:
    """A case folder's ground-truth segmentation file (BraTS `-seg` / `_seg`), if it has one."""
    from SAMBACore.brats import modality_of

    case_dir = Path(case_dir)
    if not case_dir.is_dir():
        return None
    found = sorted(p for p in case_dir.iterdir() if p.is_file() and modality_of(p.name) == "seg"
                   and not p.name.lower().endswith(".seg.nrrd"))
    return found[0] if len(found) == 1 else None


def case_images(images: Mapping[str, np.ndarray]) -> dict[str, np.ndarray]:
    """The BraTS contrasts of `images` (by internal key), in MODALITIES order, for write_preview."""
    return {key: images[key] for key in MODALITIES if key in images}


def read_truth(path, shape) -> np.ndarray | None:
    """A ground-truth label file as internal labels (brats.to_internal_labels), or None when it is not
    on the segmentation's grid or cannot be read (then the preview goes without it, saying so)."""
    import sys

    import SimpleITK as sitk

    from SAMBACore.brats import to_internal_labels
    from SAMBACore.image_files import ImageFileError, read_image

    try:
        truth = sitk.GetArrayFromImage(read_image(path))
    except ImageFileError as error:  # the segmentation is written by now: the picture goes without the truth
        print(f"Preview: {error} Shown without the truth.", file=sys.stderr)
        return None
    if truth.shape != tuple(shape):
        print(f"Preview: the truth {path} is {truth.shape} voxels, not {tuple(shape)}: shown without it.",
              file=sys.stderr)
        return None
    return to_internal_labels(truth)


def dice_note(labels: np.ndarray, truth: np.ndarray, segments: Mapping[int, Segment]) -> str:
    """'Dice against the truth: ET 0.943, TC 0.912, WT 0.913' (the BraTS regions), or the lesion's."""
    from SAMBACore.brats import region_masks

    if dict(segments) == dict(LABEL_SEGMENTS):
        pairs = list(zip(region_masks(labels).items(), region_masks(truth).values()))
    else:
        pairs = [((s.key, labels == v), truth == v) for v, s in segments.items()]
    scores = []
    for (name, pred), true in pairs:
        total = int(np.count_nonzero(pred)) + int(np.count_nonzero(true))
        scores.append(f"{name} {2 * np.count_nonzero(pred & true) / total:.3f}" if total else f"{name} (both empty)")
    return "Dice against the truth: " + ", ".join(scores)


def preview_case(path, images: Mapping[str, np.ndarray], labels: np.ndarray, ijk_to_ras,
                 segments: Mapping[int, Segment] = LABEL_SEGMENTS, case_dir=None, truth=None, title: str = "",
                 note: str = "") -> Path:
    """write_preview for one segmented case, the truth's outlines beside the result when `truth` is
    given or `case_dir` has a seg file (a binary model's lesion is compared with the whole tumour)."""
    if truth is None and case_dir is not None and truth_file(case_dir) is not None:
        truth = read_truth(truth_file(case_dir), np.shape(labels))
    if truth is not None and dict(segments) != dict(LABEL_SEGMENTS):
        truth = np.where(np.asarray(truth) > 0, next(iter(segments)), 0).astype(np.uint8)
    if truth is not None and not note:
        note = dice_note(labels, truth, segments)
    preview = write_preview(path, images, labels, ijk_to_ras, segments, truth=truth, title=title, note=note)
    print(f"Preview: {preview.path}", flush=True)
    return preview.path


def preview_path(option, case: Path, batch: bool) -> Path | None:
    """--preview's file for one case: the option itself, or FOLDER/CASE.png for a batch."""
    if not option:
        return None
    return Path(option) / f"{Path(case).name.split('.')[0] if not Path(case).is_dir() else Path(case).name}.png" \
        if batch else Path(option)


def case_preview_writer(folder, title: str):
    """An `on_case(files, images, labels, truth)` for evaluation.score_cases that writes FOLDER/CASE.png
    (result and truth); None when no folder is given."""
    if not folder:
        return None
    folder = Path(folder)
    if folder.suffix.lower() == ".png":
        raise ValueError(f"--preview {folder}: give a folder (one CASE.png per case is written there).")
    folder.mkdir(parents=True, exist_ok=True)

    def on_case(files, images, labels, truth):
        case = Path(files["seg"]).parent.name
        preview_case(folder / f"{case}.png", case_images(images), labels, ijk_to_ras_of_file(files["seg"]),
                     truth=truth, title=f"{title}: {case}")

    return on_case
