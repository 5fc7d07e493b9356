"""A phantom BraTS case as sample data: made on this computer (nothing to download), then loaded.

SAMBA Segment registers it in Slicer's Sample Data module, so that a first-time user can try the
three modules without a case of their own: the four volumes are named as BraTS names them (the
modules fill their inputs from the names) and the ground truth comes as a segmentation (for
comparing, or for training LoRA Trainer on the scene). It is the `make demo` case: the phantom-demo
bundle never saw it in training.
"""

from __future__ import annotations

from pathlib import Path

DEMO_SEED = 20261  # phantom seeds from 20000 up are never used for training
SAMPLE_NAME = "BraTS phantom (SlicerSAMBA)"


def phantom_case_folder(cache_dir, seed: int = DEMO_SEED) -> Path:
    """The case folder under `cache_dir`, written the first time (about 10 s), reused after."""
    from SAMBACore.atomic import replacing_folder
    from SAMBACore.brats import find_case_files
    from SAMBACore.phantom import case_id_for, write_case

    case_id = case_id_for(seed)
    holder = Path(cache_dir) / f"phantom-{seed}"
    try:
        find_case_files(holder / case_id, need_seg=True)
    except ValueError:  # missing or incomplete: written whole, so an interrupted run leaves nothing half-made
        with replacing_folder(holder, "phantom case") as partial:
            write_case(partial, case_id, seed)
    return holder / case_id


def load_phantom_case(scene, cache_dir, seed: int = DEMO_SEED) -> dict:
    """Load the phantom case into `scene`: volume nodes keyed t1, t1ce, t2, flair, and "truth", a
    segmentation node with the three sub-regions (named and coloured as SAMBA's results)."""
    import slicer

    from SAMBACore import bridge
    from SAMBACore.brats import LABEL_SEGMENTS, MODALITIES, find_case_files, to_internal_labels

    files = find_case_files(phantom_case_folder(cache_dir, seed), need_seg=True)
    nodes = {key: bridge.load_volume(scene, files[key]) for key in MODALITIES}
    scratch = slicer.vtkMRMLScene()  # the label volume is only read: it goes to the user's scene as a segmentation
    truth = to_internal_labels(bridge.array_from_volume(bridge.load_volume(scratch, files["seg"])))
    name = f"{files['seg'].name.split('.')[0]} (ground truth)"
    nodes["truth"] = bridge.segmentation_from_labels(scene, truth, nodes["t1"], LABEL_SEGMENTS, name)
    return nodes
