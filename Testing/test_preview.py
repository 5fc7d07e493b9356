"""The preview picture (SAMBACore/preview.py): orientation, proportions, and outlines drawn where the
segment is, read back from the PNG; and `--preview` on segment, r2unet and evaluate."""

import numpy as np
import pytest
import SimpleITK as sitk
import torch
from matplotlib import image as mpimg
from R2UNetSegmentLib.logic import LESION
from R2UNetSegmentLib.r2unet_bundle import save_r2unet_bundle
from R2UNetSegmentLib.unet3d import UNet3D
from test_r2unet_training import write_tiny_cases

from SAMBACore.brats import ET, LABEL_SEGMENTS, NETC, SNFH
from SAMBACore.cli import main
from SAMBACore.preview import ijk_to_ras_of_file, to_sar, view_slice, volumes_of, write_preview

# Slicer's geometry for a BraTS NIfTI (LPS on disk): i towards the patient's left, j posterior, k superior.
# Here with 2 mm slices, so that a wrong aspect ratio shows.
LPS_LIKE = np.diag([-1.0, -1.0, 2.0, 1.0])
SHAPE = (20, 50, 60)  # (k, j, i)
CUBE = (slice(5, 15), slice(10, 30), slice(30, 45))  # k, j, i


def gradient_image():
    k, j, i = np.indices(SHAPE)
    return (50.0 + i + j + k).astype(np.float32)  # non-zero everywhere: nothing is cropped away


def cube_labels(value=ET):
    labels = np.zeros(SHAPE, np.uint8)
    labels[CUBE] = value
    return labels


def coloured(picture, colour, tolerance=0.12):
    return np.linalg.norm(picture[..., :3] - np.asarray(colour), axis=-1) < tolerance


@pytest.mark.parametrize("name, matrix", [
    ("LPS-like", np.diag([-1.0, -1.0, 1.0, 1.0])),
    ("RAS", np.eye(4)),
    ("sagittal acquisition", np.array([[0, 0, 1.0, 0], [-1.0, 0, 0, 0], [0, -1.0, 0, 0], [0, 0, 0, 1]])),
])
def test_slices_are_shown_the_radiological_way_round(name, matrix):
    # Mark the voxels at the patient's far right, far anterior and top, wherever the voxel axes point.
    shape = (16, 18, 20)
    ras = np.einsum("rc,kjic->kjir", matrix[:3, :3], np.stack(np.indices(shape)[::-1], -1).astype(float))
    marks = {axis: (ras[..., axis] >= ras[..., axis].max() - 0.5) for axis in range(3)}  # R, A, S edges
    centre = tuple(n // 2 for n in to_sar(np.zeros(shape), matrix)[0].shape)
    shown = {axis: {v: view_slice(to_sar(marks[axis], matrix)[0], v, centre) for v in ("axial", "coronal", "sagittal")}
             for axis in range(3)}
    assert shown[0]["axial"][:, 0].all() and not shown[0]["axial"][:, -1].any()  # patient's right on the left
    assert shown[1]["axial"][0].all() and not shown[1]["axial"][-1].any()  # anterior up
    assert shown[0]["coronal"][:, 0].all()  # right on the left
    assert shown[2]["coronal"][0].all() and shown[2]["sagittal"][0].all()  # superior up
    assert shown[1]["sagittal"][:, 0].all() and not shown[1]["sagittal"][:, -1].any()  # anterior on the left


def test_outline_pixels_lie_on_the_cube_boundary_in_every_view(tmp_path):
    labels = cube_labels(ET)
    preview = write_preview(tmp_path / "cube.png", {"flair": gradient_image()}, labels, LPS_LIKE, title="cube")
    picture = mpimg.imread(preview.path)
    assert picture.shape[1] == 1200 and tuple(reversed(picture.shape[:2])) == preview.size
    k, j, i = preview.centre
    assert all(s.start <= c < s.stop for c, s in zip(preview.centre, CUBE))
    # What each view shows, by the geometry above (i left, j posterior, k superior): axial rows are j,
    # columns i; coronal rows are k from the top, columns i; sagittal rows k from the top, columns j.
    expected = {"axial": labels[k], "coronal": labels[::-1, j, :], "sagittal": labels[::-1, :, i]}
    mm = {"axial": (1.0, 1.0), "coronal": (2.0, 1.0), "sagittal": (2.0, 1.0)}
    assert [p.view for p in preview.panels] == ["axial", "coronal", "sagittal"]
    yellow = LABEL_SEGMENTS[ET].color
    in_panels = np.zeros(picture.shape[:2], bool)
    for panel in preview.panels:
        np.testing.assert_array_equal(panel.labels, expected[panel.view])
        x0, y0, x1, y1 = panel.bbox
        rows, cols = panel.labels.shape
        row_mm, col_mm = mm[panel.view]
        # The panel keeps the millimetre proportions (2 mm slices: coronal and sagittal are stretched).
        assert (y1 - y0) / (x1 - x0) == pytest.approx(rows * row_mm / (cols * col_mm), rel=0.02)
        in_panels[y0:y1, x0:x1] = True
        ys, xs = np.nonzero(coloured(picture[y0:y1, x0:x1], yellow))
        assert len(ys) > 100
        # Back to millimetres in the slice, and to the cube's edges there.
        y_mm = (ys + 0.5) / (y1 - y0) * rows * row_mm
        x_mm = (xs + 0.5) / (x1 - x0) * cols * col_mm
        r, c = np.nonzero(panel.labels)
        top, bottom = r.min() * row_mm, (r.max() + 1) * row_mm
        left, right = c.min() * col_mm, (c.max() + 1) * col_mm
        inside_x, inside_y = (x_mm > left - 1) & (x_mm < right + 1), (y_mm > top - 1) & (y_mm < bottom + 1)
        distance = np.minimum.reduce([np.where(inside_x, abs(y_mm - top), 99), np.where(inside_x, abs(y_mm - bottom), 99),
                                      np.where(inside_y, abs(x_mm - left), 99), np.where(inside_y, abs(x_mm - right), 99)])
        assert distance.max() < 0.8, panel.view  # every outline pixel on the boundary, none elsewhere
        for edge in (abs(y_mm - top) < 0.8, abs(y_mm - bottom) < 0.8, abs(x_mm - left) < 0.8, abs(x_mm - right) < 0.8):
            assert edge.sum() > 10, panel.view  # and all four sides drawn
    # Outside the panels the colour is only in the legend, at the bottom.
    ys, _ = np.nonzero(coloured(picture, yellow) & ~in_panels)
    assert ys.min() > max(p.bbox[3] for p in preview.panels)


def test_the_truth_row_and_the_volumes_in_the_legend(tmp_path):
    labels = np.zeros(SHAPE, np.uint8)
    labels[CUBE] = SNFH
    labels[8:12, 15:25, 35:40] = NETC
    truth = cube_labels(SNFH)
    images = {"t1": gradient_image(), "t1ce": gradient_image(), "flair": gradient_image() * 2}
    preview = write_preview(tmp_path / "p.png", images, labels, LPS_LIKE, truth=truth)
    assert [p.row for p in preview.panels] == ["FLAIR"] * 3 + ["T1CE"] * 3 + ["FLAIR, truth"] * 3
    truth_axial = preview.panels[6].labels
    assert set(np.unique(truth_axial)) == {0, SNFH}
    volumes = volumes_of(labels, LPS_LIKE, LABEL_SEGMENTS)
    assert volumes["NETC"] == pytest.approx(4 * 10 * 5 * 2 / 1000) and volumes["WT"] == pytest.approx(10 * 20 * 15 * 2 / 1000)
    red = coloured(mpimg.imread(preview.path), LABEL_SEGMENTS[NETC].color)
    x0, y0, x1, y1 = preview.panels[6].bbox
    assert red[y0:y1, x0:x1].sum() == 0  # the truth has no core: none drawn in its row
    x0, y0, x1, y1 = preview.panels[0].bbox
    assert red[y0:y1, x0:x1].sum() > 20


def test_a_lesion_and_a_single_slice(tmp_path):
    # R2U-Net's binary result (one 'lesion' segment) on a one-slice image: one view, the axial one.
    labels = np.zeros((1, 40, 50), np.uint8)
    labels[0, 10:20, 5:25] = 1
    image = np.random.default_rng(0).uniform(10, 20, (1, 40, 50, 3)).astype(np.float32)  # a colour photo
    preview = write_preview(tmp_path / "photo.png", {"photo": image}, labels, np.diag([-1.0, -1.0, 1.0, 1.0]),
                            segments=LESION)
    assert [p.view for p in preview.panels] == ["axial"]
    x0, y0, x1, y1 = preview.panels[0].bbox
    assert coloured(mpimg.imread(preview.path)[y0:y1, x0:x1], LESION[1].color).sum() > 50
    with pytest.raises(ValueError, match="end in .png"):
        write_preview(tmp_path / "photo.jpg", {"photo": image}, labels, np.eye(4), segments=LESION)


def test_header_geometry_matches_slicers(tmp_path, scene):
    from SAMBACore import bridge

    image = sitk.GetImageFromArray(gradient_image())
    image.SetSpacing((0.9, 1.1, 2.0))
    image.SetOrigin((3.0, -4.0, 5.0))
    sitk.WriteImage(image, str(tmp_path / "x.nii.gz"))
    np.testing.assert_allclose(ijk_to_ras_of_file(tmp_path / "x.nii.gz"),
                               bridge.ijk_to_ras(bridge.load_volume(scene, tmp_path / "x.nii.gz")), atol=1e-6)


def tiny_r2unet_bundle(path, in_channels=4):
    torch.manual_seed(1)
    model = UNet3D(in_channels, 4, (4, 8))
    torch.nn.init.normal_(model.head.weight, std=3.0)  # random weights that still give several labels
    save_r2unet_bundle(path, {"unet": (model, {"in_channels": in_channels, "out_channels": 4, "widths": [4, 8]})})
    return path


def test_r2unet_and_segment_commands_write_previews(tmp_path, capsys):
    cases = write_tiny_cases(tmp_path / "cases", [7, 8])
    bundle = tiny_r2unet_bundle(tmp_path / "bundle")
    case = cases / "TINY-00007-000"
    assert main(["r2unet", str(case), "-o", str(tmp_path / "one.seg.nrrd"), "--bundle", str(bundle), "--mode", "full",
                 "--preview", str(tmp_path / "one.png")]) == 0
    assert f"Preview: {tmp_path / 'one.png'}" in capsys.readouterr().out
    assert mpimg.imread(tmp_path / "one.png").shape[1] == 1200
    assert main(["r2unet", str(cases), "-o", str(tmp_path / "out"), "--bundle", str(bundle), "--mode", "full",
                 "--preview", str(tmp_path / "previews")]) == 0
    assert sorted(p.name for p in (tmp_path / "previews").iterdir()) == ["TINY-00007-000.png", "TINY-00008-000.png"]
    # Bad preview paths are refused before any work.
    assert main(["r2unet", str(case), "-o", str(tmp_path / "x.seg.nrrd"), "--bundle", str(bundle),
                 "--preview", str(tmp_path / "x.jpg")]) == 2
    assert "must end in .png" in capsys.readouterr().err
    assert main(["segment", str(cases), "-o", str(tmp_path / "o"), "--preview", str(tmp_path / "x.png")]) == 2
    assert "give a folder for --preview" in capsys.readouterr().err
