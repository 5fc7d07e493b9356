"""Domain-randomised phantoms (phantom_v2): determinism, what varies, the physiological order
that defines the BraTS sub-regions, and the written files."""

import numpy as np
import pytest
from scipy import ndimage

from SAMBACore import brats, phantom
from SAMBACore.phantom_v2 import draw_design, make_case_v2

# Seeds 6-11 between them hold 1, 2 and 3 lesions, a case without ET and all three intensity
# kinds; a given six seeds need not (a quarter of the cases are non-enhancing), which is why
# test_design_varies_over_many_seeds surveys the draws over many seeds without choosing them.
SEEDS = range(6, 12)


@pytest.fixture(scope="module")
def cases():
    return {seed: make_case_v2(seed) for seed in SEEDS}


def _raw(case, key):
    """The image before its arbitrary scale and offset: the order lives in this signal."""
    scale, offset = (case.params["intensity"][k][key] for k in ("scale", "offset"))
    return (case.images[key] - offset) / scale


def test_shapes_labels_and_volumes(cases):
    for case in cases.values():
        assert set(case.images) == set(brats.MODALITIES)
        for image in case.images.values():
            assert image.shape == phantom.SHAPE and image.dtype == np.float32 and np.isfinite(image).all()
        assert case.labels.shape == phantom.SHAPE and case.labels.dtype == np.uint8
        assert set(np.unique(case.labels)) <= {0, 1, 2, 3}
        assert case.spacing == phantom.SPACING and case.origin == phantom.ORIGIN
        p = case.params
        assert 1.0 <= p["total_ml"] <= 150.0, p["total_ml"]
        assert p["total_ml"] == pytest.approx((case.labels > 0).sum() / 1000)
        assert len(p["lesion_ml"]) == p["lesions"] and all(v > 0 for v in p["lesion_ml"])
        assert (case.tissues[case.labels > 0] > 0).all()  # tumour only inside the brain


def test_same_seed_same_case_and_seeds_differ(cases):
    # test_written_files regenerates a fixture case through write_case and compares every
    # array bit for bit; here, different seeds give different cases.
    a, b = cases[6], cases[7]
    assert not np.array_equal(a.labels, b.labels)
    assert not np.array_equal(a.images["flair"], b.images["flair"])
    assert draw_design(6)["values"] == draw_design(6)["values"] != draw_design(7)["values"]


def test_drawn_parameters_vary(cases):
    params = [c.params for c in cases.values()]
    assert {p["lesions"] for p in params} == {1, 2, 3}
    assert not all(p["has_et"] for p in params) and any(p["has_et"] for p in params)
    assert any(not (c.labels == brats.ET).any() for c in cases.values())
    assert len({s["axis"] for p in params for s in p["slices"].values()}) >= 2
    assert len({p["intensity"]["kind"] for p in params}) >= 2
    assert len({s["thickness_mm"] for p in params for s in p["slices"].values()}) >= 3


def test_design_varies_over_many_seeds():
    """The cheap draws alone, over 80 seeds nobody chose (about 3 s)."""
    designs = [draw_design(seed) for seed in range(80)]
    counts = [len(d["plan"]) for d in designs]
    assert all(counts.count(n) >= 6 for n in (1, 2, 3)), counts
    assert 8 <= sum(not d["tumour"]["enhancing"] for d in designs) <= 35  # a quarter drawn
    acq = [a for d in designs for a in d["acquisition"].values()]
    assert {a["axis"] for a in acq} == {0, 1, 2}
    assert {a["thickness_mm"] for a in acq} == set(range(1, 8))
    assert {d["kind"] for d in designs} == {"int16", "float", "zscore"}
    assert {d["tumour"]["edema"] for d in designs} == {"none", "mild", "moderate", "extensive"}
    assert {les["site"] for d in designs for les in d["plan"]} == {"deep", "cortical", "midline"}
    drawn = [d["tumour"]["drawn_ml"] for d in designs]
    assert min(drawn) < 3 and max(drawn) > 100 and all(1 <= v <= 150 for v in drawn)


@pytest.mark.parametrize("seed", SEEDS)
def test_physiological_order(cases, seed):
    case = cases[seed]
    far = ~ndimage.binary_dilation(case.labels > 0, iterations=3)
    wm = ndimage.binary_erosion(case.tissues == 3) & far
    edema, et = case.labels == brats.SNFH, case.labels == brats.ET
    med = {k: (lambda mask, img=_raw(case, k): float(np.median(img[mask]))) for k in brats.MODALITIES}
    if edema.any():
        assert med["flair"](edema) > med["flair"](wm)
        assert med["t2"](edema) > med["t2"](wm)
    if et.any():
        assert med["t1ce"](et) > med["t1ce"](wm)
        assert med["t1ce"](et) / med["t1ce"](wm) > med["t1"](et) / med["t1"](wm)
    else:  # a non-enhancing tumour core: bright on T2, not enhancing
        core = case.labels == brats.NETC
        assert med["t2"](core) > med["t2"](wm)
        assert med["t1ce"](core) / med["t1ce"](wm) < 1.1 * med["t1"](core) / med["t1"](wm)


def test_intensity_kinds(cases):
    for case in cases.values():
        intensity = case.params["intensity"]
        for key, image in case.images.items():
            background = intensity["background"][key]
            assert image[0, 0, 0] == background and (image[case.tissues == 0] == background).all()
            brain = image[case.tissues > 0]
            if intensity["kind"] == "int16":
                assert background == 0 and (brain == np.rint(brain)).all() and 0 < brain.max() <= 32767
            elif intensity["kind"] == "float":
                assert background == 0 and brain.min() > 0
            else:  # z-scored: negative values inside the brain
                assert brain.min() < 0 < brain.max()


def test_written_files(tmp_path, cases):
    sitk = pytest.importorskip("SimpleITK")
    # An int16 case: its files are written as int16, as a scanner's would be.
    seed = next(s for s, c in cases.items() if c.params["intensity"]["kind"] == "int16")
    folders = phantom.write_cases(tmp_path, 1, seed=seed, randomise=True)
    case_id = phantom.case_id_for(seed)
    assert folders == [tmp_path / case_id]
    case = cases[seed]
    for key in (*brats.MODALITIES, "seg"):
        image = sitk.ReadImage(str(folders[0] / brats.case_file_name(case_id, key, "2023")))
        assert image.GetSize() == (240, 240, 155) and image.GetSpacing() == (1.0, 1.0, 1.0)
        assert image.GetOrigin() == (0.0, -239.0, 0.0)
        array = sitk.GetArrayFromImage(image)
        expected = case.labels if key == "seg" else case.images[key]
        np.testing.assert_array_equal(array, expected)  # also: the same seed, bit-identical
        if key != "seg":
            assert array.dtype == np.int16


def test_v3_same_cases_harder_contrasts(cases):
    """v3 draws the same designs as v2 except the tumour intensities: fainter enhancement, necrosis
    that may look like edema on T1, a non-enhancing tumour darker on T1 and brighter on T2 than edema."""
    ratios = []
    for seed in range(80):
        v2, v3 = draw_design(seed), draw_design(seed, "v3")
        assert repr(v3["plan"]) == repr(v2["plan"]) and v3["acquisition"] == v2["acquisition"] and v3["kind"] == v2["kind"]
        assert v3["values"]["flair"]["wm"] == v2["values"]["flair"]["wm"]  # healthy tissue as in v2
        t1, ce, t2 = (v3["values"][k] for k in ("t1", "t1ce", "t2"))
        assert t1["net"] < t1["edema"] and t2["net"] > t2["edema"]
        ratios.append((ce["et"] / max(ce["wm"], ce["gm"]), t1["nec"] / t1["wm"]))
    enhancement, necrosis = np.array(ratios).T
    assert enhancement.min() >= 1.15 and (enhancement < 1.4).sum() >= 15 and enhancement.max() > 2.0
    assert (necrosis > 0.75).sum() >= 10  # v2 never above 0.7
    v3 = make_case_v2(6, "v3")
    assert v3.params["generator"] == "v3" and np.array_equal(v3.labels, cases[6].labels)
    assert not np.array_equal(v3.images["t1ce"], cases[6].images["t1ce"])
    with pytest.raises(ValueError, match="v2"):
        make_case_v2(6, "v5")


def test_v4_is_v3_with_lookalikes_labelled_background():
    """v4: the same case as v3 (labels, tumour) with non-tumour look-alikes painted in outside the tumour:
    hyperintensities brighter than white matter on FLAIR, vessels brighter than it on T1CE."""
    from SAMBACore.phantom_v2 import lookalikes

    v3, v4 = make_case_v2(6, "v3"), make_case_v2(6, "v4")
    assert v4.params["generator"] == "v4" and np.array_equal(v4.labels, v3.labels)
    look = v4.params["lookalikes"]
    assert look["ml"]["wmh"] > 0.3 and look["ml"]["vessel"] > 0.3, look  # this seed draws both kinds (0.6 and 1.5 mL)
    wm = v3.tissues == 3
    for key, brighter in (("flair", "wmh"), ("t1ce", "vessel")):
        changed = (np.abs(v4.images[key].astype(np.float32) - v3.images[key].astype(np.float32)) > 0) & (v3.labels == 0)
        assert changed.sum() > 500, key
        gain = v4.images[key][changed].astype(np.float32) - v3.images[key][changed].astype(np.float32)
        scale = v3.images[key][wm].astype(np.float32).std()
        assert np.percentile(gain, 99) > 0.5 * scale, (key, brighter)  # some look-alike voxels clearly brighter
    values = lookalikes.values(lookalikes.draw(np.random.default_rng(0)), draw_design(6, "v3")["values"])
    tissue = draw_design(6, "v3")["values"]
    assert values["flair"]["wmh"] > tissue["flair"]["wm"] and values["t1ce"]["vessel"] > tissue["t1ce"]["wm"]
