"""Pictures of numbers, headless (matplotlib's Agg backend): Dice per region per case, and LoRA
training curves. matplotlib is imported inside the functions, so `slicer-samba --help` stays fast.

Every figure is written to a temporary name first and then moved in place, so a failed plot never
leaves half a PNG where a previous one was.
"""

from __future__ import annotations

import os
import uuid
from pathlib import Path

import numpy as np


def pyplot():
    """matplotlib.pyplot on the Agg backend (no display needed)."""
    import matplotlib

    matplotlib.use("Agg")
    from matplotlib import pyplot as plt

    return plt


def check_png(path, what: str = "the picture") -> Path:
    """Refuse, before any work, a picture path that does not end in .png."""
    path = Path(path)
    if path.suffix.lower() != ".png":
        raise ValueError(f"{path}: {what} is written as PNG, so the file name must end in .png.")
    return path


def save_figure(figure, path, dpi: int = 100, grey_palette: tuple | None = None) -> Path:
    """Write `figure` to `path` (a PNG) atomically and close it. `grey_palette`: colours (RGB 0-1) to
    keep exactly, stored with grey levels in a 256-colour palette instead of full RGB: for a picture
    of grey MR slices with coloured outlines, half the file for no visible difference."""
    plt = pyplot()
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    partial = path.with_name(f".{path.name}.{uuid.uuid4().hex[:8]}.png")
    try:
        figure.savefig(partial, dpi=dpi, facecolor=figure.get_facecolor())
        if grey_palette is not None:
            _to_palette(partial, grey_palette)
        os.replace(partial, path)
    finally:
        plt.close(figure)
        partial.unlink(missing_ok=True)
    return path


def _to_palette(path: Path, colours) -> None:
    from PIL import Image

    kept = [tuple(round(255 * c) for c in colour[:3]) for colour in colours]
    greys = [(g, g, g) for g in np.linspace(0, 255, 256 - len(kept)).round().astype(int)]
    palette = Image.new("P", (1, 1))
    palette.putpalette([v for rgb in kept + greys for v in rgb])
    with Image.open(path) as picture:
        quantised = picture.convert("RGB").quantize(palette=palette, dither=Image.Dither.NONE)
    quantised.save(path, optimize=True)


def plot_dice(per_case: list[dict], path, title: str = "", regions=("ET", "TC", "WT")) -> Path:
    """Dice per region per case as a box plot with every case drawn on it as a dot (a strip plot), so
    that a spread or one failed case is seen rather than averaged away. `per_case`: the report's
    per_case list ({"case", "metrics": {region: {"dice", ...}}}); a region a case lacks (NaN) is left out."""
    from SAMBACore.brats import REGION_SEGMENTS

    if not per_case:
        raise ValueError("No case was scored, so there is nothing to plot.")
    plt = pyplot()
    figure, axes = plt.subplots(figsize=(7.5, 4.8))
    values = [[float(c["metrics"][r]["dice"]) if r in c["metrics"] else np.nan for c in per_case] for r in regions]
    shown = [[v for v in column if np.isfinite(v)] for column in values]
    axes.boxplot(shown, positions=range(len(regions)), widths=0.5, showfliers=False,
                 medianprops={"color": "black"}, boxprops={"color": "0.4"}, whiskerprops={"color": "0.4"},
                 capprops={"color": "0.4"})
    n = len(per_case)
    offsets = np.linspace(-0.18, 0.18, n) if n > 1 else np.zeros(1)  # evenly spread, the same every run
    for x, (region, column) in enumerate(zip(regions, values)):
        column = np.asarray(column)
        finite = np.isfinite(column)
        axes.scatter(x + offsets[finite], column[finite], s=22, zorder=3, color=REGION_SEGMENTS[region].color,
                     edgecolors="black", linewidths=0.5)
        if finite.any():
            axes.text(x + 0.3, float(np.mean(column[finite])), f"mean {np.mean(column[finite]):.3f}", fontsize=8,
                      va="center")
    lowest = min(range(n), key=lambda i: values[-1][i] if np.isfinite(values[-1][i]) else np.inf)
    if n > 2 and np.isfinite(values[-1][lowest]):  # name the worst case, the one to look at first
        axes.annotate(per_case[lowest]["case"], (len(regions) - 1 + offsets[lowest], values[-1][lowest]),
                      xytext=(-8, -12), textcoords="offset points", fontsize=7, ha="right")
    axes.set_xticks(range(len(regions)), [f"{r}\n{REGION_SEGMENTS[r].name}" for r in regions])
    axes.set(ylabel="Dice", ylim=(0, 1.02), xlim=(-0.6, len(regions) - 0.1),
             title=title or f"Dice per region, {n} case(s): one dot per case")
    axes.grid(axis="y", lw=0.4, alpha=0.5)
    figure.tight_layout()
    return save_figure(figure, path, dpi=150)


def plot_training_curve(info: dict, path, title: str = "LoRA training") -> Path:
    """The curve LoRA Trainer shows in Slicer's plot view, as a PNG: the mean training loss per epoch
    and the validation Dice (epoch 0: the base, before training). `info`: adapter.json's content."""
    plt = pyplot()
    validation = info["validation"]
    dice = [validation["base"], *validation["curve"]]
    losses = info["training"]["loss_curve"]
    figure, loss_axes = plt.subplots(figsize=(7, 4.2))
    epochs = np.arange(1, len(losses) + 1)
    loss_axes.plot(epochs, losses, "o-", color="tab:blue", label="training loss")
    loss_axes.set(xlabel="epoch", ylabel="training loss (Dice loss)")
    loss_axes.yaxis.label.set_color("tab:blue")
    dice_axes = loss_axes.twinx()
    dice_axes.plot(np.arange(len(dice)), dice, "s-", color="tab:red", label="validation Dice")
    dice_axes.set(ylabel="validation Dice (whole tumour)", ylim=(0, 1))
    dice_axes.yaxis.label.set_color("tab:red")
    loss_axes.set_xticks(range(len(dice)))
    loss_axes.set_title(f"{title}: validation Dice {dice[0]:.3f} (base, epoch 0) -> {dice[-1]:.3f}", fontsize=10)
    lines = loss_axes.get_lines() + dice_axes.get_lines()
    loss_axes.legend(lines, [line.get_label() for line in lines], loc="center right", fontsize=8)
    loss_axes.grid(lw=0.4, alpha=0.5)
    figure.tight_layout()
    return save_figure(figure, path, dpi=150)
