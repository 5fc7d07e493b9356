"""Scoring a bundle's models on labelled BraTS cases: Dice, HD95 and the other metrics per region, time per case."""

from __future__ import annotations

from collections.abc import Callable

from SAMBACore.brats import internal_labels_of
from SAMBACore.contrasts import describe, regions_of
from SAMBACore.evaluation import score_cases

from .presence import stack
from .r2unet_bundle import R2UNetModels


def evaluate(models: R2UNetModels, data_dir, mode: str = "cascade", model: str = "unet", patch_size: int = 64,
             device: str = "cpu", log: Callable[[str], None] = print, contrasts=None, on_case=None) -> dict:
    """Segment every case of data_dir in `mode` (full, patch, cascade, auto) and score it against its truth.

    Cases may have any set of the four contrasts; `contrasts` uses only those (the others left out),
    to measure a subset. Without T1CE only the whole tumour is produced, and only WT is scored. A
    network without presence flags refuses a case that lacks a contrast (InputError). on_case: as for
    score_cases (a preview picture of each case)."""
    from .inference import normalise, segment

    def segment_case(images, truth, spacing):
        image, present = stack(images)
        labels, _, mode_used = segment(normalise(image), model=getattr(models, model), cascade=models.cascade,
                                       mode=mode, patch_size=patch_size, device=device, present=present,
                                       spacing=spacing)
        regions = regions_of(present)
        if regions == ("WT",):
            labels = internal_labels_of((labels > 0).astype("uint8"), regions)
        return labels, {"mode": mode_used, "contrasts": describe(present), "regions": regions}

    scores = score_cases(data_dir, segment_case, log, on_case=on_case, allow_missing=True, contrasts=contrasts)
    return {"mode": mode, "model": "cascade" if mode == "cascade" else model,
            "contrasts": ",".join(contrasts) if contrasts else "as found", **scores}
