"""One drawn ROI to per-slice prompts by propagation, the presets that choose which votes run, and
fusion that keeps the votes' whole tumour.

Propagation's logic is checked with an oracle in place of SAM's decoder (a named stand-in: it
returns the true tumour inside the box it is given), so what is tested is which boxes are asked
for, not SAM. How much it helps a real SAM is measured on real scans (docs/results.md).
"""

import numpy as np
import pytest
import torch

from SAMBACore.brats import ET, NETC, SNFH
from SAMBASegmentLib import propagation, voting
from SAMBASegmentLib.pipeline import ALL_VOTES, PRESETS, choose_preset, fill_missing_votes, prompt_boxes, run_samba
from SAMBASegmentLib.cascade_roi import MARGIN
from SAMBASegmentLib.prompts import boxes_from_roi, roi_around
from SAMBASegmentLib.sam_model import build_sam
from SAMBASegmentLib.sam_runner import EmbeddingCache
from SAMBASegmentLib.samba_bundle import SambaModels

TINY_SAM = {"type": "small", "img_size": 64, "patch_size": 8, "embed_dim": 32, "depth": 1, "num_heads": 2,
            "prompt_embed_dim": 32, "mlp_dim": 64, "decoder_heads": 2}


def _ball(shape, centre, radius):
    k, j, i = np.indices(shape)
    return (k - centre[0]) ** 2 + (j - centre[1]) ** 2 + (i - centre[2]) ** 2 <= radius ** 2


@pytest.fixture
def oracle(monkeypatch):
    """SAM's decoder replaced by the truth inside each box; records the boxes it was asked with."""
    state = {"truth": None, "asked": []}

    def decode_boxes(sam, embeddings, boxes, size, multimask=False):
        index = state["current"]
        x0, y0, x1, y1 = np.asarray(boxes[0]).round().astype(int)
        mask = np.zeros(size, bool)
        mask[y0:y1, x0:x1] = state["truth"][index][y0:y1, x0:x1]
        state["asked"].append((index, np.asarray(boxes[0])))
        return torch.as_tensor(mask)[None, None], None

    class Cache(EmbeddingCache):
        def embeddings(self, sam, slices, indices, key, batch_size=None):
            state["current"] = indices[0]
            return torch.zeros(1, 1)

    monkeypatch.setattr(propagation, "decode_boxes", decode_boxes)
    return state, Cache()


def test_propagation_boxes_each_slice_from_its_neighbour_and_stops_where_the_tumour_ends(oracle):
    state, cache = oracle
    shape = (40, 48, 48)
    truth = _ball(shape, (20, 24, 24), 9)  # slices 11-29 hold tumour
    roi = ((6, 10, 10), (34, 38, 38))  # a loose drawn box: 5 slices beyond each end
    state["truth"] = truth
    roi_boxes = boxes_from_roi(*roi, shape, "axial")
    slices = np.zeros(shape + (3,), np.uint8)
    masks, used = propagation.propagate_stack(None, slices, roi_boxes, cache, margin=3)
    np.testing.assert_array_equal(masks, truth)  # the oracle's masks, every tumour slice reached
    assert sorted(used) == list(range(10, 31))  # one empty slice past each end, then it stops
    for index, box in used.items():
        if index == 20:
            np.testing.assert_array_equal(box, roi_boxes[20])  # the middle slice gets the drawn box
            continue
        neighbour = truth[index - 1 if index > 20 else index + 1]
        rows, cols = np.flatnonzero(neighbour.any(1)), np.flatnonzero(neighbour.any(0))
        # the neighbour's tight box grown by 3 px, not the drawn box
        np.testing.assert_array_equal(box, [cols[0] - 3, rows[0] - 3, cols[-1] + 4, rows[-1] + 4])
        assert (box[2] - box[0]) < (roi_boxes[index][2] - roi_boxes[index][0])


def test_propagated_boxes_stay_inside_the_drawn_roi(oracle):
    state, cache = oracle
    shape = (20, 40, 40)
    truth = np.zeros(shape, bool)
    truth[4:16, 5:35, 5:35] = True  # larger than the ROI in-plane
    state["truth"] = truth
    roi_boxes = boxes_from_roi((4, 10, 12), (15, 30, 28), shape, "axial")
    _, used = propagation.propagate_stack(None, np.zeros(shape + (3,), np.uint8), roi_boxes, cache)
    for index, box in used.items():
        limit = roi_boxes[index]
        assert box[0] >= limit[0] and box[1] >= limit[1] and box[2] <= limit[2] and box[3] <= limit[3]


def test_yolo_runs_become_rois_each_propagated_from_its_most_confident_box(oracle):
    state, cache = oracle
    shape = (60, 48, 48)
    truth = _ball(shape, (15, 24, 24), 6) | _ball(shape, (45, 12, 12), 4)  # two lesions: slices 9-21, 41-49
    state["truth"] = truth
    # YOLO's runs: a box per slice, two slices missed inside the first run, boxes of varying size
    boxes = {n: np.array([16 + n % 3, 17, 32, 31 - n % 2], np.float32) for n in (9, 10, 11, 14, 15, 16, 19, 20, 21)}
    boxes.update({n: np.array([7, 7, 18, 18], np.float32) for n in range(42, 49)})
    boxes[16] = np.array([18, 18, 30, 30], np.float32)  # the first run's most confident box: a tight one
    scores = {n: 0.5 for n in boxes} | {16: 0.9}
    runs = [[9, 10, 11, 14, 15, 16, 19, 20, 21], list(range(42, 49))]  # YOLO missed lesion 2's end slices 41, 49
    assert sorted(propagation.rois_of_runs(boxes, runs, scores)) == list(range(9, 22)) + list(range(42, 49))
    rois = propagation.rois_of_runs(boxes, runs, scores, reach=3, slices=60)
    assert sorted(rois) == list(range(6, 25)) + list(range(39, 52))  # missed 12, 13, 17, 18 filled; 3 beyond the ends
    np.testing.assert_array_equal(rois[12], [16, 17, 32, 31])  # the union of the run's boxes
    assert sorted(rois.seeds) == [16, 45]  # the most confident box; a tie: the run's middle
    masks, used = propagation.propagate_stack(None, np.zeros(shape + (3,), np.uint8), rois, cache, margin=3)
    assert state["asked"][0][0] == 16, "a run starts from its seed"
    np.testing.assert_array_equal(used[16], boxes[16])  # prompted with its own box, not the union
    np.testing.assert_array_equal(used[45], rois[45])
    assert not set(used) - set(rois), "propagation stays inside each ROI's slices"
    found = sorted(np.flatnonzero(masks.any(axis=(1, 2))))
    assert found == list(range(9, 22)) + list(range(41, 50)), "both lesions, every slice, YOLO's missed ends too"
    assert min(used) == 8 and max(used) == 50, "stopped one slice past each end, where the mask came back empty"


def test_past_yolos_last_box_a_mask_is_kept_only_while_the_tumour_tapers(oracle):
    """In an ROI's reach a mask as large as its neighbour's is taken as SAM filling the box: dropped,
    and propagation stops; inside YOLO's run the same mask is kept."""
    state, cache = oracle
    shape = (40, 48, 48)
    truth = np.zeros(shape, bool)
    truth[10:30, 18:30, 18:30] = True  # a column of tumour: the same area on every slice
    state["truth"] = truth
    boxes = {n: np.array([17, 17, 31, 31], np.float32) for n in range(14, 26)}  # YOLO saw slices 14-25
    rois = propagation.rois_of_runs(boxes, [list(range(14, 26))], reach=5, slices=40)
    masks, used = propagation.propagate_stack(None, np.zeros(shape + (3,), np.uint8), rois, cache, margin=3)
    assert sorted(np.flatnonzero(masks.any(axis=(1, 2)))) == list(range(14, 26))
    assert min(used) == 13 and max(used) == 26, "one slice tried past each end, then dropped"


@pytest.mark.parametrize("prompt, reach", [("cascade", MARGIN), ("roi", propagation.REACH)])
def test_a_one_box_prompts_outer_slices_are_reach_where_a_mask_is_kept_only_while_the_tumour_tapers(oracle, prompt, reach):
    """The 3D U-Net's box is its tumour's box grown by MARGIN, and a drawn box has a margin too: the outer
    slices are reach, as past a YOLO run, so SAM filling the box there (a mask as large as its
    neighbour's) is dropped, a tapering end kept."""
    state, cache = oracle
    shape = (40, 48, 48)
    piece = np.zeros(shape, bool)
    piece[10:30, 18:30, 18:30] = True  # the tumour's body: slices 10-29
    roi = roi_around(piece, reach)
    sam_sees = np.zeros(shape, bool)
    sam_sees[:, 18:30, 18:30] = True  # SAM outlines the same square in every box it is given ...
    for n, half in ((30, 5), (31, 4), (32, 3)):  # ... except where the tumour tapers past the body's end
        sam_sees[n] = False
        sam_sees[n, 24 - half : 24 + half, 24 - half : 24 + half] = True
    state["truth"] = sam_sees
    images = {"flair": np.zeros(shape, np.float32)}
    rois = prompt_boxes(None, images, "axial", prompt, roi)
    assert sorted(rois) == list(range(5, 35)) and rois.spans == set(range(10, 30))
    assert prompt_boxes(None, images, "coronal", prompt, roi).spans == set(range(18, 30)), "the view's own axis"
    masks, used = propagation.propagate_stack(None, np.zeros(shape + (3,), np.uint8), rois, cache, margin=3)
    assert sorted(np.flatnonzero(masks.any(axis=(1, 2)))) == list(range(10, 33)), "the taper kept, the fill dropped"
    assert min(used) == 9 and max(used) == 33, "one slice tried past each end, then dropped"


def test_fill_missing_votes_from_the_same_modality_then_the_same_view():
    shape = (4, 5, 6)
    votes = np.zeros((12, 1) + shape, bool)
    index = {pair: n for n, pair in enumerate(ALL_VOTES)}
    flair_axial, flair_coronal, t1ce_axial = (np.random.default_rng(s).random((1,) + shape) > 0.5 for s in (1, 2, 3))
    votes[index[("flair", "axial")]] = flair_axial
    votes[index[("flair", "coronal")]] = flair_coronal
    votes[index[("t1ce", "axial")]] = t1ce_axial
    filled = fill_missing_votes(votes.copy(), PRESETS["balanced"])
    # FLAIR sagittal: the majority of FLAIR's two views (ties count as not tumour)
    np.testing.assert_array_equal(filled[index[("flair", "sagittal")]], flair_axial & flair_coronal)
    np.testing.assert_array_equal(filled[index[("t1ce", "coronal")]], t1ce_axial)  # T1CE's only view
    # T1 has no vote at all: its axial slot takes the axial majority of the others
    np.testing.assert_array_equal(filled[index[("t1", "axial")]], flair_axial & t1ce_axial)


def test_the_balanced_preset_runs_only_its_stacks_and_reports_agreement_over_them():
    torch.manual_seed(0)
    models = SambaModels(build_sam(TINY_SAM).eval(), None, voting.build_voting_net().eval())
    rng = np.random.default_rng(0)
    images = {m: rng.uniform(10, 100, (12, 20, 18)).astype(np.float32) for m in ("t1", "t1ce", "t2", "flair")}
    encoded = []
    hook = models.sam.image_encoder.register_forward_hook(lambda module, args, out: encoded.append(out.shape[0]))
    try:
        result = run_samba(images, models, prompt="roi", roi=((3, 5, 4), (8, 14, 12)), preset="balanced", keep_votes=True,
                           core="voting")  # the preset's stacks only: the T1CE core outline encodes its own
    finally:
        hook.remove()
    assert result.preset == "balanced" and result.boxes["sagittal"] == 0
    # propagation encodes a slice at a time, at most every ROI slice: FLAIR axial + coronal, T1CE axial
    assert 0 < sum(encoded) <= 6 + 10 + 6
    computed = [ALL_VOTES.index(p) for p in PRESETS["balanced"]]
    np.testing.assert_allclose(result.agreement, result.votes[computed].mean(axis=0))
    with pytest.raises(ValueError, match="Unknown preset 'quick'"):
        run_samba(images, models, prompt="roi", roi=((3, 5, 4), (8, 14, 12)), preset="quick")


def test_auto_preset_is_all_for_the_small_sam_and_for_a_64_by_64_encoder_fast_or_balanced_on_a_gpu_with_one_box():
    small = build_sam(TINY_SAM)
    with torch.device("meta"):
        big = build_sam({"type": "vit_b"})  # 64 x 64 embedding, like LiteMedSAM's
    assert choose_preset("auto", small, "cpu") == "all"
    assert choose_preset("auto", small, "cuda", "yolo") == "all"
    assert choose_preset("auto", big, "cpu") == "fast"
    assert choose_preset("auto", big, "cpu", "roi") == "fast"
    assert choose_preset("auto", big, "cuda") == "balanced"  # the default prompt, the 3D U-Net's box
    assert choose_preset("auto", big, "cuda", "roi") == "balanced"
    assert choose_preset("auto", big, "cuda", "yolo") == "fast"
    assert choose_preset("all", big, "cpu") == "all"


def test_within_votes_keeps_the_nets_split_inside_the_votes_tumour_only():
    labels = np.array([[0, SNFH, NETC, ET, ET, 0]], np.uint8)
    whole = np.array([[True, True, True, True, False, False]])
    # outside the votes: nothing; inside but left out by the net: edema; inside: the net's label
    np.testing.assert_array_equal(voting.within_votes(labels, whole), [[SNFH, SNFH, NETC, ET, 0, 0]])
