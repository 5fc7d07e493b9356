"""Training each SAMBA component from a folder of BraTS cases into a bundle, one component at a time.

`slicer-samba train yolo|sam|voting DATA_DIR -o BUNDLE_DIR` calls these. Each adds or replaces
its component in the bundle (the others are kept) and records how it was trained in the
manifest, so a bundle says exactly which command, seeds and steps made it.
"""

from __future__ import annotations

import tempfile
from pathlib import Path
from typing import Callable

import numpy as np
import torch

from SAMBACore.brats import MODALITIES, ModalityError, find_training_cases, read_case, region_masks
from SAMBACore.bundles import BundleError, check_state_dict, load_bundle, load_state_dict, save_bundle
from SAMBASegmentLib import localizer, sam_training, simulated_votes, voting
from SAMBASegmentLib.pipeline import run_samba
from SAMBASegmentLib.sam_model import SMALL_DEFAULT, build_sam
from SAMBASegmentLib.samba_bundle import backbone_state_dict, load_samba_models, trained_on_backbone
from SAMBASegmentLib.slices import VIEWS

Progress = Callable[[str], None]

BASE_MANIFEST = {
    "name": "samba",
    "version": "0.1",
    "description": "SAMBA models: YOLOv8 localizer, box-prompted SAM, voting 3D U-Net",
    "licence": "Apache-2.0",
    "intended_use": "research",
    "preprocessing": {"slices": "per-slice 0.5/99.5 percentile clip to 0-255, zeros kept, 3 channels",
                      "voting_inputs": "images z-scored inside the brain + 12 SAM votes (modality-major)"},
    "labels": {"1": "NETC", "2": "SNFH", "3": "ET"},
    "training": {},
    "metrics": {},
}


def _load_cases(data_dir, log: Progress):
    return [case[1:] for case in _load_named_cases(data_dir, log)]


def _load_named_cases(data_dir, log: Progress, need: dict[str, str] | None = None):
    """[(case folder name, images, labels)] of the usable cases in `data_dir`: with all four contrasts, or
    (`need` given: {contrast: why the caller needs it}) with any set of them that holds those in `need`."""
    cases, skipped = find_training_cases(data_dir, allow_missing=need is not None)
    if need is not None:
        lacking = [files for files in cases if any(m not in files for m in need)]
        skipped += [f"{files['seg'].parent.name}: has no "
                    + ", ".join(f"{m} ({why})" for m, why in need.items() if m not in files) for files in lacking]
        cases = [files for files in cases if files not in lacking]
        if not cases:
            raise ModalityError(f"No usable case in {data_dir}: none has {' and '.join(need)}. Skipped: {skipped[0]}")
    for reason in skipped:
        log(f"skipped {reason}")
    log(f"reading {len(cases)} case(s) from {data_dir}")
    return [(next(iter(files.values())).parent.name, *read_case(files)[:2]) for files in cases]


def _update_bundle(bundle_dir, name: str, kind: str, config: dict, state: dict, record: dict, manifest: dict | None = None):
    """Replace one component, keep the others, and note how it was trained; atomic like save_bundle."""
    bundle_dir = Path(bundle_dir)
    if (bundle_dir / "manifest.json").exists():
        bundle = load_bundle(bundle_dir)
        base = dict(bundle.manifest)
        states = {n: load_state_dict(bundle, n) for n in bundle.components if n != name}
        components = {n: {"kind": c.kind, "config": c.config} for n, c in bundle.components.items() if n != name}
    else:
        base, states, components = dict(manifest or BASE_MANIFEST), {}, {}
    base["training"] = {**base.get("training", {}), name: record}
    base["metrics"] = {}  # measured with the component as it was: no longer this bundle's
    base["components"] = {**components, name: {"kind": kind, "config": config}}
    states[name] = state
    return save_bundle(bundle_dir, base, states)


def copy_component(source, bundle_dir, name: str, half: bool = False, config: dict | None = None):
    """Take component `name` (weights, config and how it was trained) from bundle `source` into
    `bundle_dir`: for a head that does not depend on the SAM, such as the YOLO localizer. `half`
    stores its float tensors as float16 (half the size; loading casts them back to float32);
    `config` adds or changes config entries (e.g. the voting net's {"whole_tumour": "votes"})."""
    from SAMBASegmentLib.samba_bundle import resolve_bundle

    origin = load_bundle(resolve_bundle(source))
    component = origin.component(name)
    record = {"copied_from": f"{origin.manifest.get('name', origin.path.name)} (sha256 {component.sha256})"
                             + (", stored as float16" if half else ""),
              **origin.manifest.get("training", {}).get(name, {})}
    state = load_state_dict(origin, name)
    if half:
        state = {k: v.half() if v.is_floating_point() else v for k, v in state.items()}
    return _update_bundle(bundle_dir, name, component.kind, {**component.config, **(config or {})}, state, record)


def train_yolo(data_dir, bundle_dir, epochs: int = 30, seed: int = 0, batch: int = 16, device: str = "cpu",
               views=("axial", "coronal", "sagittal"), start_from=None, command: str = "", log: Progress = print,
               val_every: int = 2):
    """`start_from`: a bundle (folder or bundled name) whose YOLO is fine-tuned instead of training from scratch.
    `val_every`: every how many cases one is held out for validation (localizer.validation_case)."""
    start, started_from = None, None
    if start_from is not None:
        from SAMBASegmentLib.samba_bundle import resolve_bundle

        origin = load_bundle(resolve_bundle(start_from))
        if "yolo" not in origin.components:
            raise BundleError(f"{origin.path}: this bundle has no YOLO localizer to start from "
                              f"(it has {', '.join(origin.components)}).")
        start = load_state_dict(origin, "yolo")
        started_from = f"{origin.manifest.get('name', origin.path.name)} (yolo sha256 {origin.component('yolo').sha256})"
    named = _load_named_cases(data_dir, log)
    cases = [case[1:] for case in named]
    held_out = [name for index, (name, _, _) in enumerate(named) if localizer.validation_case(index, len(named), val_every)]
    with tempfile.TemporaryDirectory() as work:
        log("exporting FLAIR slices and whole-tumour boxes")
        data = localizer.export_dataset([(images["flair"], region_masks(labels)["WT"]) for images, labels in cases],
                                        Path(work) / "dataset", seed=seed, views=views, val_every=val_every)
        log(f"{'fine-tuning' if start else 'training'} YOLOv8n for {epochs} epoch(s)")
        yolo = localizer.train_detector(data, epochs, Path(work) / "runs", batch=batch, seed=seed, device=device,
                                        start=start)
    # "cases" counts them all; those in "validation_cases" only chose the epoch kept, the others were trained on.
    record = {"command": command, "cases": len(cases), "validation_cases": held_out or "none (validated on the training slices)",
              "epochs": epochs, "seed": seed, "views": list(views),
              "imgsz": localizer.CONFIG["imgsz"], **({"started_from": started_from} if start else {})}
    return _update_bundle(bundle_dir, "yolo", "yolo", localizer.CONFIG, localizer.detector_state_dict(yolo), record)


def backbone_config(name: str) -> dict:
    """The sam config of a bundle built on a pretrained backbone: only its heads are stored."""
    from SAMBASegmentLib import litemedsam

    if name != "litemedsam":
        raise ValueError(f"Unknown backbone {name!r}: the pretrained backbone available is litemedsam.")
    return {"type": "litemedsam", "backbone": {"name": "litemedsam", "sha256": litemedsam.CHECKPOINT_SHA256,
                                               "package": litemedsam.PACKAGE, "source": litemedsam.SOURCE}}


def train_sam(data_dir, bundle_dir, steps: int = 2000, seed: int = 0, batch: int = 8, lr: float = 3e-4,
              train_encoder: bool = True, multimask: bool = False, sam_config: dict | None = None,
              device: str = "cpu", command: str = "", log: Progress = print, backbone: str | None = None,
              head_only: bool = False, views=VIEWS, modalities=MODALITIES):
    """The small SAM from scratch (train_encoder True) or, with an existing 'sam' in the bundle, its decoder.
    `backbone` (litemedsam): start a new sam component from that pretrained backbone (replacing one the
    bundle had); with steps 0 it is used as it was pretrained. `head_only`: only the decoder's output
    layers learn (sam_training.DECODER_HEAD); `views` and `modalities`: the slices trained on."""
    cases = _load_cases(data_dir, log) if steps else []
    torch.manual_seed(seed)
    if backbone:
        sam_config = backbone_config(backbone)
    existing = not backbone and Path(bundle_dir, "manifest.json").exists() and "sam" in load_bundle(bundle_dir).components
    earlier = None
    if existing:
        bundle = load_bundle(bundle_dir)
        earlier = bundle.manifest.get("training", {}).get("sam")
        sam_config = bundle.component("sam").config
        sam = load_samba_models(bundle_dir).sam  # with its backbone, if it has one
    else:
        sam_config = sam_config or SMALL_DEFAULT
        sam = build_sam(sam_config)
        if sam_config.get("backbone"):  # fine-tune from the pretrained weights, not from scratch
            sam.load_state_dict(backbone_state_dict(sam_config["backbone"]))
    sam.to(device)
    samples = [s for images, labels in cases for s in sam_training.samples_from_case(images, labels, views, modalities,
                                                                                         multimask=multimask)]
    part = "encoder and decoder" if train_encoder else "decoder's output layers" if head_only else "decoder"
    log(f"training SAM ({part}) on {len(samples)} slices, {steps} steps")

    def report(step, loss):
        if step % 50 == 0 or step == steps - 1:
            log(f"step {step + 1}/{steps} loss {loss:.3f}")

    if steps:
        sam_training.train_sam(sam, samples, steps, batch=batch, lr=lr, train_encoder=train_encoder,
                               multimask=multimask, seed=seed, progress=report, head_only=head_only)
    record = {"command": command, "cases": len(cases), "slices": len(samples), "steps": steps, "seed": seed,
              "batch": batch, "lr": lr, "trained": "encoder+decoder" if train_encoder else "decoder head" if head_only else "decoder",
              "views": list(views), "modalities": list(modalities),
              "mode": "samba-mc" if multimask else "samba", "box_jitter_px": sam_training.MAX_JITTER}
    if not steps:
        record["trained"] = "nothing: the backbone as it was pretrained"
    if backbone:
        record["starting_from"] = sam_config["backbone"]
    if earlier:
        record["starting_from"] = earlier  # how the weights this run started from were made
    return _update_bundle(bundle_dir, "sam", "sam", sam_config, trained_on_backbone(sam.state_dict(), sam_config), record)


def sam_votes_for_training(models, images, labels, device: str = "cpu", preset: str = "auto") -> np.ndarray:
    """The 12 SAM votes the voting net will see: from YOLO boxes when the bundle has YOLO (as at
    inference), otherwise from the true whole-tumour boxes; those the preset does not run filled in
    as at inference."""
    if models.yolo is not None:
        prompt, mask = "yolo", None
    else:
        prompt, mask = "mask", region_masks(labels)["WT"]
    no_fusion = type(models)(models.sam, models.yolo, None)
    result = run_samba(images, no_fusion, prompt=prompt, mask=mask, device=device, keep_votes=True, preset=preset)
    return result.votes, result.preset


VOTE_SOURCES = ("sam", "simulated")


def _simulated_sample(images, labels, rng) -> tuple[np.ndarray, np.ndarray]:
    """Voting inputs with votes simulated from the truth, cut to the tumour and its surroundings
    (images z-scored over the whole brain first, as at inference), stored as float16."""
    whole = region_masks(labels)["WT"]
    channels, labels, whole = simulated_votes.crop_to_tumour([voting.image_channels(images, labels.shape), labels, whole],
                                                             whole)
    votes = simulated_votes.simulated_votes(whole, rng)
    return np.concatenate([channels, votes]).astype(np.float16), labels


def train_voting(data_dir, bundle_dir, steps: int = 600, seed: int = 0, patch: int = 64, batch: int = 2,
                 lr: float = 3e-3, device: str = "cpu", command: str = "", log: Progress = print, preset: str = "auto",
                 votes: str = "sam", drop_contrasts: float = 0.0, contrast_curves: float = 0.0,
                 config: dict | None = None, add_member: bool = False, fine_tune: bool = False):
    """The voting net on the votes of the bundle's SAM (`votes` sam), or on votes simulated from the
    true whole tumour (simulated: no SAM run, see simulated_votes.py), with contrast dropout `drop_contrasts`
    and random contrast curves `contrast_curves` (contrast_curves.py).
    `config` adds entries to the component's config (e.g. {"whole_tumour": "votes"}). `add_member`: keep
    the bundle's voting net(s) and add the new one, their logits averaged (voting.VotingEnsemble).
    `fine_tune`: go on training the bundle's voting net(s) (every member, their averaged logits) on
    these cases, for a site's own labelled or corrected cases; the manifest keeps how the nets were
    first trained and adds this run with its cases' names."""
    if add_member and fine_tune:
        raise ValueError("Choose one of add a member and fine-tune: a new net, or the bundle's own trained further.")
    earlier = _voting_members(bundle_dir) if add_member or fine_tune else None
    if votes not in VOTE_SOURCES:
        raise ValueError(f"Unknown vote source {votes!r}: choose one of {', '.join(VOTE_SOURCES)}.")
    # A site's cases often lack T1 or T2: the net takes any set of contrasts (missing ones zero), but T1CE it needs.
    named = _load_named_cases(data_dir, log, need={"t1ce": "the voting net's enhancing tumour is learned from it"})
    cases = [case[1:] for case in named]
    samples, presets = [], set()
    if votes == "simulated":
        rng = np.random.default_rng(seed)
        for index, (images, labels) in enumerate(cases):
            log(f"simulated votes for case {index + 1}/{len(cases)}")
            samples.append(_simulated_sample(images, labels, rng))
        votes_from = (f"simulated from the true whole tumour: grown or shrunk by up to {simulated_votes.MAX_GROW} "
                      f"voxels, up to {simulated_votes.MAX_MISSED_ENDS} end slices missed, "
                      f"{simulated_votes.SINGLE_VOTE_FRACTION:.0%} of cases one vote copied 12 times")
    else:
        models = load_samba_models(bundle_dir, device)
        for index, (images, labels) in enumerate(cases):
            log(f"SAM votes for case {index + 1}/{len(cases)}")
            case_votes, ran = sam_votes_for_training(models, images, labels, device, preset)
            samples.append((voting.voting_inputs(images, case_votes), labels))
            presets.add(ran)
        votes_from = "yolo boxes" if models.yolo is not None else "true whole-tumour boxes"
    # The net's shape: CONFIG, or the earlier members' (an ensemble's members share one), then `config`.
    config = {**voting.CONFIG, **(earlier["config"] if earlier else {}), **(config or {})}
    if not fine_tune:
        config.pop("members", None)
    torch.manual_seed(seed)
    net = voting.build_voting_net(config)
    if fine_tune:
        net.load_state_dict(voting.ensemble_state(earlier["states"]))

    def report(step, loss):
        if step % 50 == 0 or step == steps - 1:
            log(f"step {step + 1}/{steps} loss {loss:.3f}")

    voting.train_voting(net, samples, steps, patch=(patch,) * 3, batch=batch, lr=lr, seed=seed, device=device,
                        progress=report, drop=drop_contrasts, curves=contrast_curves)
    record = {"command": command, "cases": len(cases), "steps": steps, "seed": seed, "patch": patch, "batch": batch,
              "lr": lr, "votes_from": votes_from, "modalities": list(MODALITIES)}
    if presets:
        record["preset"] = ",".join(sorted(presets))
    if drop_contrasts:
        record["contrast_dropout"] = (f"p {drop_contrasts}: a random non-empty set of t1, t2, flair zeroed "
                                      "(t1ce kept: without it the net is not used)")
    if contrast_curves:
        record["contrast_curves"] = (f"p {contrast_curves} per image: a random monotone intensity curve "
                                     "(MONAI RandHistogramShift, 4-8 control points), brain mean and std kept")
    states = voting.member_states(net)
    if fine_tune:
        record["cases_used"] = [name for name, _, _ in named]
        return _update_bundle(bundle_dir, "voting", "voting", config, voting.ensemble_state(states),
                              {"members": earlier["records"], "fine_tuned": earlier["fine_tuned"] + [record]})
    if earlier is not None:
        # A fine-tuning run before is kept with the members it fine-tuned (all but this new one).
        states, record = earlier["states"] + states, {"members": earlier["records"] + [record],
                                                      **({"fine_tuned": earlier["fine_tuned"]} if earlier["fine_tuned"] else {})}
        config["members"] = len(states)
    return _update_bundle(bundle_dir, "voting", "voting", config, voting.ensemble_state(states), record)


def _voting_members(bundle_dir) -> dict:
    """The voting net(s) of the bundle at `bundle_dir`: their states, config and training records."""
    bundle = load_bundle(bundle_dir)
    if "voting" not in bundle.components:
        raise BundleError(f"{bundle_dir}: has no voting net to add a member to or to fine-tune; train one first, "
                          "without --add-member or --fine-tune.")
    trained = dict(bundle.manifest.get("training", {}).get("voting", {}))
    fine_tuned = trained.pop("fine_tuned", [])
    config = dict(bundle.component("voting").config)
    net = check_state_dict(voting.build_voting_net(config), load_state_dict(bundle, "voting"), "voting")
    return {"states": voting.member_states(net), "config": config, "records": trained.get("members", [trained]),
            "fine_tuned": fine_tuned}
