"""The YOLOv8 tumour localizer (ultralytics): one box per slice, trained on FLAIR slices.

As in the SAMBA paper: YOLOv8n, one class, FLAIR slices normalised like SAM's input, boxes from
the whole-tumour mask, tumour-free slices kept as background with probability 1/5; at inference
the top box per slice above a confidence threshold, reused for all four modalities. Unlike the
published code, boxes stay in each slice's own pixel frame (ultralytics letterboxes and maps
back), so non-square coronal and sagittal slices are handled exactly.

Weights travel as a safetensors state dict in a bundle, never as ultralytics' pickled .pt.
"""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np

os.environ.setdefault("YOLO_OFFLINE", "true")  # never reach for weights or fonts on the network

from SAMBASegmentLib.prompts import Boxes, box_of_mask  # noqa: E402
from SAMBASegmentLib.slices import normalise_slices, view_slices  # noqa: E402

CONFIG = {"cfg": "yolov8n.yaml", "imgsz": 256, "conf": 0.25, "names": {0: "tumour"}}
BACKGROUND_KEEP = 0.2


def build_detector(config: dict = CONFIG, state_dict: dict | None = None):
    """An ultralytics YOLO object for one class, optionally with weights from a bundle; the bundle's
    confidence threshold (config "conf") is kept in the model's own overrides for detect_boxes."""
    from ultralytics import YOLO
    from ultralytics.nn.tasks import DetectionModel

    yolo = YOLO(config["cfg"], task="detect")
    network = DetectionModel(config["cfg"], nc=len(config["names"]), verbose=False)
    if state_dict is not None:
        network.load_state_dict(state_dict)
    network.names = {int(k): v for k, v in config["names"].items()}
    yolo.model = network
    yolo.overrides["conf"] = float(config.get("conf", CONFIG["conf"]))
    return yolo


def detector_state_dict(yolo) -> dict:
    """float32, contiguous tensors: what safetensors stores."""
    return {k: v.detach().float().contiguous().clone() for k, v in yolo.model.state_dict().items()}


def validation_case(index: int, count: int, val_every: int = 2) -> bool:
    """Whether case `index` of `count` is held out for validation: every `val_every`-th (the 2nd,
    4th, ... by default), none with one case or `val_every` 0 (validation then reuses the training
    slices). ultralytics keeps the epoch that validates best, so these cases choose, not train."""
    return val_every > 0 and count > 1 and index % val_every == val_every - 1


def export_dataset(cases: list[tuple[np.ndarray, np.ndarray]], out_dir, seed: int = 0, views=("axial", "coronal", "sagittal"),
                   val_every: int = 2) -> Path:
    """Write a YOLO dataset from (flair volume, whole-tumour mask) pairs; returns its data.yaml.
    Cases for validation (validation_case) let training report mAP on slices it has not seen."""
    from PIL import Image

    out_dir = Path(out_dir)
    rng = np.random.default_rng(seed)
    for index, (flair, whole) in enumerate(cases):
        split = "val" if validation_case(index, len(cases), val_every) else "train"
        (out_dir / "images" / split).mkdir(parents=True, exist_ok=True)
        (out_dir / "labels" / split).mkdir(parents=True, exist_ok=True)
        for view in views:
            images = normalise_slices(view_slices(flair, view))
            masks = view_slices(whole, view)
            for n in range(images.shape[0]):
                box = box_of_mask(masks[n])
                if not images[n].any() or (box is None and rng.random() >= BACKGROUND_KEEP):
                    continue
                stem = f"c{index:03d}_{view}_{n:03d}"
                Image.fromarray(images[n]).save(out_dir / "images" / split / f"{stem}.png")
                height, width = masks[n].shape
                label = ""
                if box is not None:
                    x0, y0, x1, y1 = box
                    label = f"0 {(x0 + x1) / 2 / width:.6f} {(y0 + y1) / 2 / height:.6f} {(x1 - x0) / width:.6f} {(y1 - y0) / height:.6f}\n"
                (out_dir / "labels" / split / f"{stem}.txt").write_text(label)
    has_val = (out_dir / "images" / "val").is_dir()
    data = out_dir / "data.yaml"
    data.write_text(
        f"path: {out_dir.resolve()}\ntrain: images/train\nval: images/{'val' if has_val else 'train'}\n"
        f"names:\n  0: {CONFIG['names'][0]}\n"
    )
    return data


def train_detector(data_yaml, epochs: int, out_dir, config: dict = CONFIG, batch: int = 16, seed: int = 0,
                   device: str = "cpu", start: dict | None = None):
    """Train from scratch, or from the weights `start` (a bundle's YOLO state dict: fine-tuning); no
    pretrained weights are downloaded. Returns the trained YOLO object."""
    yolo = build_detector(config, start)
    if start is not None:
        # ultralytics seeds training from yolo.model only while yolo.ckpt is set (a model built from
        # its yaml has none, and would train from random weights).
        yolo.ckpt = {"model": yolo.model}
    yolo.train(
        data=str(data_yaml), epochs=epochs, imgsz=config["imgsz"], batch=batch, device=device, seed=seed,
        deterministic=True, amp=False, plots=False, workers=0, pretrained=start is not None, verbose=False,
        project=str(Path(out_dir).resolve()), name="yolo", exist_ok=True,
    )
    return yolo


def detect_boxes(yolo, slices_uint8: np.ndarray, conf: float | None = None, batch: int = 32, device: str = "cpu",
                 scores: dict[int, float] | None = None) -> Boxes:
    """The top box per slice above `conf` (None: the bundle's threshold, build_detector), in each
    slice's pixel frame; empty slices are skipped. `scores`, when given, receives each box's
    confidence (slice index -> score)."""
    if conf is None:  # a YOLO just trained has ultralytics' training overrides, where conf may be None
        conf = yolo.overrides.get("conf")
        conf = CONFIG["conf"] if conf is None else conf
    boxes: Boxes = {}
    candidates = [n for n in range(slices_uint8.shape[0]) if slices_uint8[n].any()]
    for start in range(0, len(candidates), batch):
        chunk = candidates[start : start + batch]
        results = yolo.predict(
            [slices_uint8[n] for n in chunk], imgsz=CONFIG["imgsz"], conf=conf, device=device, verbose=False
        )
        for n, result in zip(chunk, results):
            if len(result.boxes):
                best = int(result.boxes.conf.argmax())
                boxes[n] = result.boxes.xyxy[best].cpu().numpy().astype(np.float32)
                if scores is not None:
                    scores[n] = float(result.boxes.conf[best])
    return boxes


# A tumour spans several slices, each box overlapping the next; a box alone (a bright vessel or
# a remnant of skull on one slice) only gives SAM a false lesion to segment.
MAX_GAP = 2  # slices a run of boxes may skip (a slice YOLO missed inside the tumour)
MIN_RUN = 3  # boxes a run needs to be kept by consistent_boxes
# main_runs' `keep` in the pipeline, chosen on 10 held-out phantoms v2 (seeds 40000-40009, axial)
# with `bench yolo` (docs/results.md): slice Dice 0.404 at 0.25 against 0.407 with every run kept,
# with a third fewer false boxes (0.26 against 0.38 per tumour slice); 0.5 and 1 lose second lesions.
KEEP = 0.25
KEEP_CHOICES = (1.0, 0.5, 0.25, 0.0)  # what bench yolo compares


def _overlap(a: np.ndarray, b: np.ndarray) -> bool:
    return min(a[2], b[2]) > max(a[0], b[0]) and min(a[3], b[3]) > max(a[1], b[1])


def box_runs(boxes: Boxes, max_gap: int = MAX_GAP) -> list[list[int]]:
    """The boxes' slices chained into runs: each box joins the longest run whose last box is at
    most `max_gap` slices before it and overlaps it, or starts a run of its own. A false box
    between two tumour slices starts a run of its own, so it does not cut the tumour's."""
    runs: list[list[int]] = []
    for n in sorted(boxes):
        open_runs = [r for r in runs if n - r[-1] <= max_gap + 1 and _overlap(boxes[r[-1]], boxes[n])]
        if open_runs:
            max(open_runs, key=len).append(n)
        else:
            runs.append([n])
    return runs


def consistent_boxes(boxes: Boxes, max_gap: int = MAX_GAP, min_run: int = MIN_RUN) -> Boxes:
    """Only the boxes in runs (box_runs) of at least `min_run` slices; the rest are taken as false."""
    return {n: boxes[n] for r in box_runs(boxes, max_gap) if len(r) >= min_run for n in r}


def main_runs(boxes: Boxes, scores: dict[int, float], keep: float) -> list[list[int]]:
    """The runs (box_runs) kept: the one with the most confidence, the sum of its boxes' scores, and
    those with at least `keep` times as much (a second or third lesion; keep 1: the strongest run
    alone, 0: every run). False boxes come in short, unsure runs; a tumour in a long, confident one."""
    runs = box_runs(boxes)
    weights = [sum(scores.get(n, 1.0) for n in r) for r in runs]
    return [r for r, w in zip(runs, weights) if w >= keep * max(weights, default=0.0)]
