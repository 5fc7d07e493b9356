"""Real cases as a low-field site scans them: thick axial slices (docs/results.md, "Real scans with thick slices").

Each image becomes slabs THICKNESS voxels deep along its first array axis (axial for BraTS files), each slab the
mean of the slices it covers (partial volume, as phantoms v2's acquisition makes them). Then either kept on that
grid (--grid thick: what a scanner writes, e.g. 1 x 1 x 5 mm) or interpolated linearly back to the original grid
between slab centres (--grid fine: as BraTS-Africa's thick-slice scans were resampled to the 1 mm atlas).
Labels: on the thick grid the label at each slab's centre slice (nearest neighbour); on the fine grid the
original labels. Slices past the last whole slab are left out of the thick grid. A measurement aid, not part of
the product; the inputs are never changed.

Usage: .venv/bin/python scripts/thick_slices.py IN_DIR OUT_DIR [--thickness 5] [--grid thick|fine]
(IN_DIR: folders of BraTS cases; OUT_DIR/CASE/ gets the same file names.)
"""

from __future__ import annotations

import argparse
from pathlib import Path

import numpy as np
import SimpleITK as sitk

from SAMBACore.brats import find_case_files
from SAMBACore.phantom_v2.fields import lerp_axis


def slabs(array: np.ndarray, thickness: int) -> np.ndarray:
    """Mean of each run of `thickness` slices along axis 0 (whole runs only)."""
    n = array.shape[0] // thickness * thickness
    return array[:n].reshape((n // thickness, thickness) + array.shape[1:]).mean(axis=1, dtype=np.float64)


def thick_image(image: sitk.Image, thickness: int, grid: str, labels: bool) -> sitk.Image:
    array = sitk.GetArrayFromImage(image)
    if grid == "fine":
        if labels:
            return image
        centres = (np.arange(array.shape[0] // thickness) * thickness + (thickness - 1) / 2)
        fine = lerp_axis(slabs(array, thickness).astype(np.float32), (np.arange(array.shape[0]) - centres[0]) / thickness, 0)
        out = sitk.GetImageFromArray(fine.astype(np.float32))
        out.CopyInformation(image)
        return out
    if labels:  # the slab's centre slice
        picked = array[thickness // 2: array.shape[0] // thickness * thickness: thickness]
    else:
        picked = slabs(array, thickness).astype(np.float32)
    out = sitk.GetImageFromArray(picked)
    spacing = list(image.GetSpacing())  # (x, y, z): array axis 0 is z
    spacing[2] *= thickness
    out.SetSpacing(spacing)
    out.SetDirection(image.GetDirection())
    # the first slab's centre, half a slab past the first slice's centre
    out.SetOrigin(image.TransformContinuousIndexToPhysicalPoint((0.0, 0.0, (thickness - 1) / 2)))
    return out


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("in_dir", type=Path)
    parser.add_argument("out_dir", type=Path)
    parser.add_argument("--thickness", type=int, default=5, help="slab depth in slices (default 5: 5 mm from 1 mm)")
    parser.add_argument("--grid", choices=("thick", "fine"), default="thick")
    args = parser.parse_args(argv)
    for case in sorted(p for p in args.in_dir.iterdir() if p.is_dir()):
        files = find_case_files(case, need_seg=True, allow_missing=True)
        (args.out_dir / case.name).mkdir(parents=True, exist_ok=True)
        for key, path in files.items():
            image = thick_image(sitk.ReadImage(str(path)), args.thickness, args.grid, labels=key == "seg")
            sitk.WriteImage(image, str(args.out_dir / case.name / path.name), True)
        print(f"{case.name}: {args.grid} grid, slabs of {args.thickness}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
