"""Save a picture of domain-randomised phantoms (SAMBACore.phantom_v2) to look at: one row per
seed with the four contrasts on the axial slice holding the most tumour, FLAIR on the coronal
one, and the truth. Headless (Agg).

    python scripts/phantom_v2_gallery.py out.png [seed ...]     (default seeds 0-5)
"""

import sys

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402

from SAMBACore.brats import MODALITIES  # noqa: E402
from SAMBACore.phantom_v2 import make_case_v2  # noqa: E402


def _grey(ax, img, title):
    lo, hi = np.percentile(img, (0.5, 99.5))
    ax.imshow(img, cmap="gray", vmin=lo, vmax=hi)
    ax.set_title(title, fontsize=8)


def main(path: str, seeds: list[int]) -> None:
    fig, axes = plt.subplots(len(seeds), 6, figsize=(15, 2.6 * len(seeds)), squeeze=False)
    for row, seed in enumerate(seeds):
        case = make_case_v2(seed)
        p = case.params
        tumour = case.labels > 0
        z = int(np.argmax(tumour.sum(axis=(1, 2))))
        y = int(np.argmax(tumour.sum(axis=(0, 2))))
        for col, key in enumerate(MODALITIES):
            s = p["slices"][key]
            _grey(axes[row, col], case.images[key][z], f"{key}: {s['plane']} {s['thickness_mm']} mm")
        _grey(axes[row, 4], case.images["flair"][:, y][::-1], "flair, coronal view")
        axes[row, 5].imshow(case.labels[z], cmap="viridis", vmin=0, vmax=3, interpolation="nearest")
        axes[row, 5].set_title(f"seed {seed}: {p['lesions']} lesion(s), {p['total_ml']:.0f} mL, {p['intensity']['kind']}\n"
                               f"{'ET' if p['has_et'] else 'no ET'}, edema {p['edema']}, shift {p['midline_shift_mm']} mm",
                               fontsize=7)
        for ax in axes[row]:
            ax.axis("off")
    fig.tight_layout()
    fig.savefig(path, dpi=70)
    print(f"wrote {path}")


if __name__ == "__main__":
    if len(sys.argv) < 2:
        sys.exit(__doc__)
    main(sys.argv[1], [int(a) for a in sys.argv[2:]] or list(range(6)))
