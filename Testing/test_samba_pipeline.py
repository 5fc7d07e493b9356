"""The SAMBA pipeline's plumbing on tiny untrained models: shapes, prompts, cache, bundle round trip.

Quality is measured with the trained demo bundle, not here: these models are random.
"""

import numpy as np
import pytest

from SAMBACore.bundles import BundleError
from SAMBASegmentLib import localizer, voting
from SAMBASegmentLib.pipeline import run_samba
from SAMBASegmentLib.sam_model import build_sam
from SAMBASegmentLib.sam_runner import EmbeddingCache
from SAMBASegmentLib.samba_bundle import SambaModels, load_samba_models, save_samba_bundle

TINY_SAM = {"type": "small", "img_size": 64, "patch_size": 8, "embed_dim": 32, "depth": 1, "num_heads": 2,
            "prompt_embed_dim": 32, "mlp_dim": 64, "decoder_heads": 2}
MANIFEST = {"name": "tiny-random", "version": "0", "description": "random weights for plumbing tests",
            "licence": "Apache-2.0", "intended_use": "tests only", "preprocessing": {}, "labels": {},
            "training": {"how": "not trained"}, "metrics": {}}


@pytest.fixture(scope="module")
def case():
    rng = np.random.default_rng(0)
    shape = (12, 20, 18)
    images = {m: rng.uniform(10, 100, shape).astype(np.float32) for m in ("t1", "t1ce", "t2", "flair")}
    for image in images.values():
        image[:, :2] = 0  # background outside the "brain"
    return images


@pytest.fixture(scope="module")
def models(reseed):
    reseed()  # conftest.py
    return SambaModels(build_sam(TINY_SAM).eval(), None, voting.build_voting_net().eval(), region_tokens=True)


def test_roi_prompt_gives_labels_and_agreement_on_the_input_grid(case, models):
    roi = ((3, 5, 4), (8, 14, 12))
    result = run_samba(case, models, prompt="roi", roi=roi)
    assert result.labels.shape == case["flair"].shape and result.labels.dtype == np.uint8
    assert result.agreement.shape == case["flair"].shape
    assert 0 <= result.agreement.min() and result.agreement.max() <= 1
    assert result.boxes == {"axial": 6, "coronal": 10, "sagittal": 9}
    # SAM runs only on the slices the ROI crosses: a voxel on none of them (in no view) gets no vote.
    k, j, i = np.indices(case["flair"].shape)
    crossed = ((k >= 3) & (k <= 8)) | ((j >= 5) & (j <= 14)) | ((i >= 4) & (i <= 12))
    assert not result.agreement[~crossed].any()


def test_second_run_with_another_roi_reuses_cached_embeddings(case, models):
    cache = EmbeddingCache()
    run_samba(case, models, prompt="roi", roi=((3, 5, 4), (8, 14, 12)), cache=cache, volume_key="c1")
    first_misses = cache.misses
    run_samba(case, models, prompt="roi", roi=((4, 5, 4), (8, 15, 12)), cache=cache, volume_key="c1")
    assert cache.hits > 0
    assert cache.misses - first_misses < first_misses / 4, "only the few new slices are encoded"


def test_multiclass_mode_and_missing_prompts(case, models):
    result = run_samba(case, models, prompt="roi", roi=((3, 5, 4), (8, 14, 12)), mode="samba-mc")
    assert set(np.unique(result.labels)) <= {0, 1, 2, 3}
    with pytest.raises(ValueError, match="no YOLO localizer"):
        run_samba(case, models, prompt="yolo")
    with pytest.raises(ValueError, match="needs a box"):
        run_samba(case, models, prompt="roi")
    with pytest.raises(ValueError, match="Unknown mode"):
        run_samba(case, models, prompt="roi", roi=((0, 0, 0), (1, 1, 1)), mode="sam3")


def test_yolo_finding_nothing_is_an_empty_result_not_a_crash(case, models):
    with_yolo = SambaModels(models.sam, localizer.build_detector(), models.voting)
    result = run_samba(case, with_yolo, prompt="yolo")
    assert not result.tumour_found and not result.labels.any()
    assert result.boxes == {"axial": 0, "coronal": 0, "sagittal": 0}


def test_cascade_prompt_is_the_locators_box_prompted_as_a_drawn_one_and_finding_nothing_is_an_empty_result(case, models, monkeypatch):
    """The locator's box is prompted like a drawn ROI: the MARGIN (= propagation.REACH) slices at each end
    of either are reach (propagation keeps a mask there only while it narrows)."""
    from SAMBASegmentLib import pipeline, propagation
    from SAMBASegmentLib.cascade_roi import MARGIN

    assert MARGIN == propagation.REACH  # else a drawn box and the locator's would differ below
    piece = np.zeros(case["flair"].shape, bool)  # what the cascade found, in a (12, 20, 18) case
    piece[1:6, 3:13, 2:11] = True
    roi = ((1 - MARGIN, 3 - MARGIN, 2 - MARGIN), (5 + MARGIN, 12 + MARGIN, 10 + MARGIN))
    asked, prompted = [], []

    def locate(images, device, progress):
        asked.append(sorted(m for m, image in images.items() if image is not None))
        progress(1.0, "located")
        return piece

    original = pipeline.propagate_stack

    def spy(sam, slices, roi_boxes, *args, **kwargs):
        prompted.append((len(roi_boxes), sorted(getattr(roi_boxes, "spans", roi_boxes))))
        return original(sam, slices, roi_boxes, *args, **kwargs)

    monkeypatch.setattr(pipeline, "propagate_stack", spy)
    drawn = run_samba(case, models, prompt="roi", roi=roi)
    drawn_calls = len(prompted)
    fractions = []
    located = run_samba(case, models, prompt="cascade", roi=((0, 0, 0), (1, 1, 1)), locate=locate,
                        progress=lambda fraction, message: fractions.append(fraction))
    assert fractions == sorted(fractions) and fractions[-1] == 1.0, "the progress bar never goes back"
    assert asked == [["flair", "t1", "t1ce", "t2"]]  # every contrast given, once; a roi passed in is ignored
    assert located.boxes == drawn.boxes == {"axial": 11, "coronal": 18, "sagittal": 16}  # clipped to the case
    own = {11: range(1, 6), 18: range(3, 13), 16: range(2, 11)}  # the piece's extent along each view's axis
    assert prompted[drawn_calls:] == prompted[:drawn_calls], "the same box: the same reach"
    assert prompted[drawn_calls:] and all(spans == list(own[n]) for n, spans in prompted[drawn_calls:])
    nothing = run_samba(case, models, prompt="cascade", locate=lambda images, device, progress: np.zeros_like(piece))
    assert not nothing.tumour_found and nothing.boxes == {"axial": 0, "coronal": 0, "sagittal": 0}


def test_one_box_prompts_drop_pieces_under_a_tenth_of_the_tumour(case, models, monkeypatch):
    from SAMBASegmentLib import pipeline

    fused = np.zeros(case["flair"].shape, np.uint8)
    fused[3:8, 5:12, 4:10] = 2  # the tumour: 210 voxels
    fused[10, 18, 16] = 1  # a speck apart from it: 1 voxel
    monkeypatch.setattr(pipeline, "fuse_votes", lambda *args: (fused.copy(), fused.astype(np.float32)))
    roi = ((3, 5, 4), (8, 14, 12))
    found = np.zeros(fused.shape, bool)
    found[3:8, 5:12, 4:10] = True  # the cascade's piece (the fusion is replaced here: any piece would do)
    for prompt in ("roi", "cascade"):  # core voting: the speck's label as fused (t1ce would drop small cores again)
        result = run_samba(case, models, prompt=prompt, roi=roi, locate=lambda images, device, progress: found, core="voting")
        assert result.labels.sum() == fused.sum() - 1 and not result.labels[10, 18, 16], prompt
    kept = run_samba(case, models, prompt="mask", mask=fused > 0, core="voting")  # several boxes, several lesions: kept
    assert kept.labels[10, 18, 16] == 1


def test_the_cascade_prompt_boxes_the_largest_piece_and_says_when_another_is_at_least_half_as_large(case, models):
    tumour = np.zeros(case["flair"].shape, bool)
    tumour[0:3, 3:11, 3:11] = True  # 192 voxels on axial slices 0-2: the box is around this one
    tumour[5:12, 13:18, 12:17] = True  # 175 voxels on slices 5-11, apart from it
    result = run_samba(case, models, prompt="cascade", locate=lambda images, device, progress: tumour, core="voting")
    assert result.boxes["axial"] == 8  # slices 0-7: the first piece's, grown by 5 (the second's or both: 12)
    assert len(result.warnings) == 1 and "two separate tumour-like regions" in result.warnings[0]
    tumour[5:12, 13:18, 12:17] = False  # one piece: nothing to tell
    assert run_samba(case, models, prompt="cascade", locate=lambda images, device, progress: tumour,
                     core="voting").warnings == []
    # FLAIR alone: the automatic box is less sure (measured on real cases), and the user is told what to do.
    flair = run_samba({"flair": case["flair"]}, models, prompt="cascade",
                      locate=lambda images, device, progress: tumour, core="voting")
    assert flair.warnings[0].startswith("No T1CE")
    assert "FLAIR alone" in flair.warnings[1] and "--roi" in flair.warnings[1]
    drawn = run_samba({"flair": case["flair"]}, models, prompt="roi", roi=((0, 3, 3), (2, 10, 10)), core="voting")
    assert len(drawn.warnings) == 1  # a drawn box: only the no-T1CE message


def test_bundle_round_trip_gives_the_same_result(case, models, tmp_path):
    configs = {"sam": TINY_SAM, "voting": voting.CONFIG}
    save_samba_bundle(tmp_path / "b", models, configs, MANIFEST)
    loaded = load_samba_models(tmp_path / "b")
    roi = ((3, 5, 4), (8, 14, 12))
    np.testing.assert_array_equal(run_samba(case, loaded, prompt="roi", roi=roi).agreement,
                                  run_samba(case, models, prompt="roi", roi=roi).agreement)
    weights = tmp_path / "b" / "voting.safetensors"
    data = bytearray(weights.read_bytes())
    data[-5] ^= 0xFF
    weights.write_bytes(bytes(data))
    with pytest.raises(BundleError, match="voting.safetensors.*checksum"):
        load_samba_models(tmp_path / "b")


def test_binary_mode_needs_a_voting_network(case, models):
    without_voting = SambaModels(models.sam, None, None, region_tokens=True)
    with pytest.raises(ValueError, match="no voting network"):
        run_samba(case, without_voting, prompt="roi", roi=((3, 5, 4), (8, 14, 12)))
    result = run_samba(case, without_voting, prompt="roi", roi=((3, 5, 4), (8, 14, 12)), mode="samba-mc")
    assert result.labels.shape == case["flair"].shape


def test_samba_mc_needs_a_sam_trained_for_region_tokens(case, models, tmp_path):
    """A SAM whose extra mask tokens were never trained as WT, TC, ET (LiteMedSAM, an official SAM) is
    refused in SAMBA-mc mode, with what to do; the bundle's manifest says which SAM was (train sam --mode)."""
    untrained = SambaModels(models.sam, None, None)
    with pytest.raises(ValueError, match="not trained for SAMBA-mc.*Use mode samba"):
        run_samba(case, untrained, prompt="roi", roi=((3, 5, 4), (8, 14, 12)), mode="samba-mc")
    with pytest.raises(ValueError, match="no voting network.*use a bundle with a voting network"):
        run_samba(case, untrained, prompt="roi", roi=((3, 5, 4), (8, 14, 12)))
    for mode, expected in (("samba-mc", True), ("samba", False)):
        manifest = {**MANIFEST, "training": {"sam": {"mode": mode}}}
        save_samba_bundle(tmp_path / mode, models, {"sam": TINY_SAM, "voting": voting.CONFIG}, manifest)
        assert load_samba_models(tmp_path / mode).region_tokens is expected


def test_core_t1ce_reoutlines_the_fused_labels_on_t1ce_and_only_where_there_is_t1ce(case, models, monkeypatch):
    from SAMBACore.brats import NETC
    from SAMBASegmentLib import pipeline

    roi = ((3, 5, 4), (8, 14, 12))
    seen = []

    def outline(labels, t1ce, sam, cache, volume_key):  # stands in for LiteMedSAM (test_core_outline.py)
        seen.append((labels.copy(), t1ce))
        return np.where(labels > 0, NETC, 0).astype(np.uint8)

    monkeypatch.setattr(pipeline, "outline_core", outline)
    voted = run_samba(case, models, prompt="roi", roi=roi, core="voting")
    assert voted.labels.any() and not seen and "core" not in voted.seconds
    outlined = run_samba(case, models, prompt="roi", roi=roi)  # the default: t1ce
    assert len(seen) == 1 and seen[0][1] is case["t1ce"] and np.array_equal(seen[0][0], voted.labels)
    assert np.array_equal(outlined.labels, np.where(voted.labels > 0, NETC, 0)) and "core" in outlined.seconds
    without_t1ce = {m: image for m, image in case.items() if m != "t1ce"}
    whole = run_samba(without_t1ce, models, prompt="roi", roi=roi, core="t1ce")
    assert whole.whole_tumour_only and len(seen) == 1
    assert whole.warnings[0].startswith("No T1CE: only the whole tumour") and not outlined.warnings  # told once, first
    with pytest.raises(ValueError, match="Unknown core method 'sam3': choose one of voting, t1ce"):
        run_samba(case, models, prompt="roi", roi=roi, core="sam3")


def test_the_3d_unets_tumour_is_joined_only_on_slices_where_a_vote_fell_short_of_it():
    from SAMBASegmentLib.cascade_roi import join_where_short

    piece = np.zeros((4, 6, 6), bool)
    piece[1:3, 1:5, 1:5] = True  # 16 voxels on slices 1 and 2
    votes = np.zeros((2,) + piece.shape, bool)
    votes[0, 1, 1:5, 1:4] = True  # covers 12 of 16 on slice 1 (0.75: not short) ...
    votes[0, 2, 1:5, 1:3] = True  # ... and 8 of 16 on slice 2 (short)
    votes[0, 0, 0, 0] = True  # a voxel on a slice without the piece: left alone
    joined = join_where_short(votes, piece, 0.75)
    np.testing.assert_array_equal(joined[0, 1], votes[0, 1])
    np.testing.assert_array_equal(joined[0, 2], votes[0, 2] | piece[2])
    assert joined[0, 0, 0, 0] and not joined[0, 3].any()
    np.testing.assert_array_equal(joined[1], piece)  # a vote that found nothing: the piece, where there is one
    np.testing.assert_array_equal(join_where_short(votes, piece, 1.01)[0], votes[0] | piece)


def test_with_the_cascade_prompt_the_fusion_gets_the_3d_unets_tumour_where_sams_votes_fell_short(case, models, monkeypatch):
    """run_samba joins the piece into the whole-tumour votes before fusion (cascade prompt only; the same box drawn
    as an ROI gets SAM's votes as they are)."""
    from SAMBASegmentLib import pipeline

    piece = np.zeros(case["flair"].shape, bool)
    piece[4:7, 6:12, 5:11] = True
    original_votes, original_fuse = pipeline.sam_votes, pipeline.fuse_votes

    def sam_found_nothing(*args, **kwargs):  # every whole-tumour outline collapsed
        votes = original_votes(*args, **kwargs)
        votes[:, 0] = False
        return votes

    fused = []

    def recorded(images, votes, *args):
        fused.append(votes[:, 0].copy())
        return original_fuse(images, votes, *args)

    monkeypatch.setattr(pipeline, "sam_votes", sam_found_nothing)
    monkeypatch.setattr(pipeline, "fuse_votes", recorded)
    run_samba(case, models, prompt="cascade", locate=lambda images, device, progress: piece, core="voting")
    run_samba(case, models, prompt="roi", roi=pipeline.roi_of_piece(piece), core="voting")
    assert all((vote == piece).all() for vote in fused[0])
    assert not fused[1].any()
