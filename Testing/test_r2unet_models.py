"""R2U-Net / R2AttU-Net, the plain U-Net, the hybrid loss and the measured receptive field.

Models are tiny so the file runs in seconds on a shared CPU; what is checked is structure
(shapes, recurrence, gating, parameter counts), that the networks learn, and exact numbers
(loss terms against torch/MONAI, receptive fields against hand counts and a second method).
"""

import math

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from monai.losses import DiceLoss
from torch import nn

from R2UNetSegmentLib.losses import HybridLoss, positive_weight
from R2UNetSegmentLib.r2unet import RRCU, R2UNet, RecurrentBlock
from R2UNetSegmentLib.receptive_field import receptive_field, required_margin
from R2UNetSegmentLib.unet3d import UNet3D
from SAMBACore.metrics import binary_metrics


# On a CPU shared with other work, two OpenMP threads spin-wait on each other and run these
# small networks 10-40x slower than one thread does. Seeds: conftest.py, before every test.
pytestmark = pytest.mark.usefixtures("one_thread_module")


def count(model):
    return sum(p.numel() for p in model.parameters())


# ---------------------------------------------------------------- shapes and parameters


@pytest.mark.parametrize("attention", [False, True])
@pytest.mark.parametrize("spatial_dims,shape,depth", [(2, (37, 45), 3), (3, (20, 22, 18), 2)])
def test_r2unet_output_has_input_shape(spatial_dims, shape, depth, attention):
    model = R2UNet(
        in_channels=2, out_channels=3, spatial_dims=spatial_dims, base_width=4, depth=depth, attention=attention
    )
    out = model(torch.randn(2, 2, *shape))
    assert out.shape == (2, 3) + shape
    assert (model.gates is not None) == attention
    assert torch.isfinite(out).all()


@pytest.mark.parametrize("spatial_dims,shape", [(2, (37, 45)), (3, (20, 22, 18))])
def test_unet_output_has_input_shape(spatial_dims, shape):
    model = UNet3D(in_channels=4, out_channels=2, widths=(4, 8, 16), spatial_dims=spatial_dims)
    assert model(torch.randn(1, 4, *shape)).shape == (1, 2) + shape


def test_padding_keeps_voxels_in_place():
    # A 15x15 input is padded to 16x16 at its high end and cropped back: away from that border
    # (farther than the network looks) its output must equal that of the uncut 16x16 input.
    model = UNet3D(1, 1, (2, 4), spatial_dims=2).eval()
    x = torch.randn(1, 1, 16, 16)
    with torch.no_grad():
        full, cut = model(x), model(x[:, :, :15, :15])
    assert cut.shape == (1, 1, 15, 15)
    margin = required_margin(model, 2, probe_size=32)
    inner = 15 - margin[0]
    torch.testing.assert_close(cut[:, :, :inner, :inner], full[:, :, :inner, :inner])


def test_parameter_counts():
    r2u = R2UNet(1, 1, spatial_dims=2, base_width=16, depth=4)
    r2att = R2UNet(1, 1, spatial_dims=2, base_width=16, depth=4, attention=True)
    unet = UNet3D(1, 1, widths=(16, 32, 64, 128, 256), spatial_dims=2)
    print(f"\n2D, widths 16..256: U-Net {count(unet):,}  R2U-Net {count(r2u):,}  R2AttU-Net {count(r2att):,}")
    assert 0.2 < count(r2u) / count(unet) < 5  # same order of magnitude
    assert count(r2att) > count(r2u)
    # The gates are all the difference: per level, two 1x1 convs + BN to w/2, 1x1 conv + BN to 1.
    gates = sum(2 * (w * (w // 2) + w // 2 + w) + (w // 2 + 1) + 2 for w in (16, 32, 64, 128))
    assert count(r2att) - count(r2u) == gates


# ---------------------------------------------------------------- recurrence and attention


def test_recurrent_block_applies_one_shared_conv_t_plus_one_times():
    model = R2UNet(1, 1, spatial_dims=2, base_width=4, depth=1, t=2).eval()
    blocks = [m for m in model.modules() if isinstance(m, RecurrentBlock)]
    assert len(blocks) == 2 * 3  # two per RRCU; RRCUs: 2 encoder levels + 1 decoder level
    calls = []
    for b in blocks:
        # One conv module per block: the recurrence reuses its weights.
        assert sum(isinstance(m, nn.Conv2d) for m in b.modules()) == 1
        b.conv.register_forward_hook(lambda m, i, o: calls.append(m))
    model(torch.randn(1, 1, 8, 8))
    assert [calls.count(b.conv) for b in blocks] == [3] * len(blocks)

    # What is computed: out = f_0(x); out = f_k(x + out) for k = 1..t, f_k = ReLU(BN_k(conv)).
    block = blocks[0]
    x = torch.randn(1, 4, 6, 6)
    with torch.no_grad():
        for norm in block.norms:  # distinct statistics per step, so a step mix-up shows
            norm.running_mean.normal_()
        expected = F.relu(block.norms[0](block.conv(x)))
        for k in (1, 2):
            expected = F.relu(block.norms[k](block.conv(x + expected)))
        torch.testing.assert_close(block(x), expected)

    longer = RecurrentBlock(4, spatial_dims=2, t=4)
    steps = []
    longer.conv.register_forward_hook(lambda m, i, o: steps.append(1))
    longer(x)
    assert len(steps) == 5


def test_rrcu_is_projection_plus_recurrent_blocks():
    unit = RRCU(3, 8, spatial_dims=3, t=2).eval()
    # 1x1 projection (weights + bias) and, per recurrent block, one 3x3x3 conv and t + 1 BNs.
    assert count(unit) == (3 * 8 + 8) + 2 * (27 * 8 * 8 + 3 * 2 * 8)
    x = torch.randn(1, 3, 5, 5, 5)
    with torch.no_grad():
        projected = unit.project(x)
        torch.testing.assert_close(unit(x), projected + unit.recurrent(projected))


def test_eval_mode_reproduces_training_mode():
    # Running statistics gathered from one batch (momentum None: a plain average) must give, in
    # eval mode, what training mode gives on that batch. A BN shared by the recurrent steps
    # fails this by far: its running statistics average three different distributions.
    model = R2UNet(1, 1, spatial_dims=2, base_width=4, depth=2, attention=True)
    norms = [m for m in model.modules() if isinstance(m, nn.BatchNorm2d)]
    counts = {}
    for m in norms:
        m.momentum = None
        m.register_forward_hook(lambda m, i, o: counts.__setitem__(m, i[0].numel() // i[0].shape[1]))
    x = torch.randn(8, 1, 24, 24)
    with torch.no_grad():
        trained = model(x)
        for m in norms:  # running variance is unbiased, training mode normalises by the biased one
            m.running_var *= (counts[m] - 1) / counts[m]
        evaluated = model.eval()(x)
    torch.testing.assert_close(evaluated, trained, rtol=1e-4, atol=1e-4)


def test_attention_gate_multiplies_skip_by_one_channel_map_in_unit_interval():
    model = R2UNet(2, 1, spatial_dims=2, base_width=4, depth=2, attention=True)
    seen = {}
    for level, gate in enumerate(model.gates):
        gate.coefficients.register_forward_hook(lambda m, i, o, level=level: seen.__setitem__(("alpha", level), o))
        gate.register_forward_hook(lambda m, i, o, level=level: seen.__setitem__(("gate", level), (i, o)))
    model(torch.randn(2, 2, 20, 20))
    for level in range(2):
        alpha = seen[("alpha", level)]
        (gating, skip), out = seen[("gate", level)]
        assert alpha.shape == (2, 1) + skip.shape[2:]
        assert alpha.min() >= 0 and alpha.max() <= 1 and alpha.std() > 0
        torch.testing.assert_close(out, skip * alpha)
        assert gating.shape == skip.shape  # the gating signal was brought to the skip's size


# ---------------------------------------------------------------- learning


def blobs(count, size, dims, rng, radii):
    """Bright discs (2D) or balls (3D), one or two per image, on unit-variance-ish noise."""
    grid = np.stack(np.meshgrid(*[np.arange(size)] * dims, indexing="ij"), -1)
    masks = np.zeros((count,) + (size,) * dims, bool)
    for mask in masks:
        for _ in range(rng.integers(1, 3)):
            radius = rng.uniform(*radii)
            centre = rng.uniform(radii[1], size - radii[1], dims)
            mask |= ((grid - centre) ** 2).sum(-1) <= radius**2
    images = masks + rng.normal(0, 0.35, masks.shape)
    return torch.tensor(images[:, None], dtype=torch.float32), torch.tensor(masks[:, None], dtype=torch.float32)


def train_and_score(model, size, dims, radii, steps, batch):
    rng = np.random.default_rng(0)
    images, masks = blobs(64, size, dims, rng, radii)
    held_images, held_masks = blobs(16, size, dims, rng, radii)
    loss_fn, optimizer = HybridLoss(), torch.optim.Adam(model.parameters(), 1e-2)
    for _ in range(steps):
        pick = torch.randint(0, len(images), (batch,))
        loss = loss_fn(model(images[pick]), masks[pick])
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
    model.eval()
    with torch.no_grad():
        predicted = model(held_images) > 0
    return binary_metrics(predicted.numpy(), held_masks.numpy())["dice"]


def test_r2attunet_learns_discs(measured):
    model = R2UNet(1, 1, spatial_dims=2, base_width=8, depth=2, attention=True)
    dice = train_and_score(model, size=32, dims=2, radii=(3, 7), steps=80, batch=8)
    measured("dice", dice)
    assert dice > 0.85  # measured 0.972-0.982 (threads 1/2, seeds 0-2, default and AVX2-only kernels; spread 0.010)


def test_unet3d_learns_balls(measured):
    model = UNet3D(1, 1, widths=(4, 8, 16))
    dice = train_and_score(model, size=24, dims=3, radii=(3, 6), steps=80, batch=4)
    measured("dice", dice)
    assert dice > 0.7  # measured 0.901-0.955 (threads 1/2, seeds 0-2, default and AVX2-only kernels; spread 0.054)


# ---------------------------------------------------------------- loss


def test_positive_weight():
    target = torch.zeros(2, 1, 4, 4)
    target[0, 0, :2, :2] = 1  # 4 positives, 28 negatives
    assert positive_weight(target).tolist() == [7.0]
    assert positive_weight(target, max_pos_weight=5).tolist() == [5.0]
    assert positive_weight(torch.zeros(1, 1, 30, 30)).tolist() == [100.0]  # no positive: the clip
    assert positive_weight(torch.ones(1, 1, 3, 3)).tolist() == [1.0]  # never below 1
    two = torch.cat([1 - target, target], 1)  # per channel: background 4/28 -> clipped to 1
    assert positive_weight(two).tolist() == [1.0, 7.0]


def test_hybrid_terms_match_torch_and_monai():
    logits = torch.randn(2, 1, 8, 8)
    target = (torch.rand(2, 1, 8, 8) > 0.8).float()
    weight = positive_weight(target)
    bce = F.binary_cross_entropy_with_logits(logits, target, pos_weight=weight)
    torch.testing.assert_close(HybridLoss(dice_weight=0)(logits, target), bce)
    fg_dice = DiceLoss(sigmoid=True, smooth_nr=1.0, smooth_dr=1.0)(logits, target)
    bg_dice = DiceLoss(sigmoid=True, smooth_nr=1.0, smooth_dr=1.0)(-logits, 1 - target)
    torch.testing.assert_close(HybridLoss(include_background=False, bce_weight=0)(logits, target), fg_dice)
    torch.testing.assert_close(HybridLoss(bce_weight=0)(logits, target), (fg_dice + bg_dice) / 2)
    torch.testing.assert_close(HybridLoss()(logits, target), bce + (fg_dice + bg_dice) / 2)

    # Multi-class: a label map and its one-hot give the same loss; BCE is per channel on softmax.
    labels = torch.randint(0, 3, (2, 1, 8, 8))
    one_hot = F.one_hot(labels[:, 0], 3).movedim(-1, 1).float()
    logits = torch.randn(2, 3, 8, 8)
    torch.testing.assert_close(HybridLoss()(logits, labels), HybridLoss()(logits, one_hot))
    p = logits.softmax(1)
    w = positive_weight(one_hot).view(1, 3, 1, 1)
    expected = -(w * one_hot * p.log() + (1 - one_hot) * (1 - p).log()).mean()
    torch.testing.assert_close(HybridLoss(dice_weight=0)(logits, one_hot), expected)


@pytest.mark.parametrize("channels", [1, 3])
def test_hybrid_loss_is_lower_for_better_predictions(channels):
    labels = torch.randint(0, max(channels, 2), (2, 1, 12, 12))
    target = labels.float() if channels == 1 else F.one_hot(labels[:, 0], channels).movedim(-1, 1).float()
    good = 4 * (2 * target - 1)
    losses = [HybridLoss()(z, target).item() for z in (good, torch.zeros_like(good), -good)]
    assert losses[0] < losses[1] < losses[2]


def test_include_background_on_an_all_background_patch():
    empty = torch.zeros(1, 1, 16, 16, 16)
    confident = torch.full_like(empty, -12.0)  # p = 6e-6 per voxel: a correct empty prediction
    dice = {bg: HybridLoss(include_background=bg, bce_weight=0)(confident, empty).item() for bg in (True, False)}
    # Foreground: sum(p) / (sum(p) + 1) ~ 0.025; the background channel adds a ~0 term.
    assert math.isfinite(dice[True]) and dice[True] < 0.02
    assert math.isfinite(dice[False]) and dice[True] < dice[False] < 0.05
    # Less confident, still correct (p = 0.018): without background the term is near 1 and
    # says nothing about correctness; with background it is halved by the well-scored channel.
    unsure = torch.full_like(empty, -4.0)
    loose = {bg: HybridLoss(include_background=bg, bce_weight=0)(unsure, empty).item() for bg in (True, False)}
    assert loose[False] > 0.95 and 0.45 < loose[True] < 0.55
    # Multi-class, softmax: still finite with or without background, gradients too.
    logits = torch.zeros(1, 3, 8, 8, 8, requires_grad=True)
    for bg in (True, False):
        loss = HybridLoss(include_background=bg)(logits, torch.zeros(1, 1, 8, 8, 8, dtype=torch.long))
        (grad,) = torch.autograd.grad(loss, logits)
        assert torch.isfinite(loss) and torch.isfinite(grad).all()


# ---------------------------------------------------------------- receptive field


def test_receptive_field_of_simple_networks():
    two_convs = nn.Sequential(nn.Conv2d(1, 4, 3, padding=1), nn.ReLU(), nn.Conv2d(4, 2, 3, padding=1))
    assert receptive_field(two_convs, 2, probe_size=32) == (5, 5)
    assert required_margin(two_convs, 2, probe_size=32) == (2, 2)
    # 3 after the first conv; the 2x2 pool adds 1 (-> 4) and doubles the step; the second conv
    # adds 2 steps of 2 (-> 8).
    pooled = nn.Sequential(nn.Conv2d(1, 4, 3, padding=1), nn.ReLU(), nn.MaxPool2d(2), nn.Conv2d(4, 2, 3, padding=1))
    assert receptive_field(pooled, 2, probe_size=32) == (8, 8)
    # 3D, anisotropic kernel, dilation 2 on the last axis: 3 -> 3 + 2 * 2 = 7 there.
    aniso = nn.Sequential(
        nn.Conv3d(1, 2, (3, 1, 5), padding=(1, 0, 2)), nn.Conv3d(2, 1, 3, padding=(1, 1, 2), dilation=(1, 1, 2))
    )
    assert receptive_field(aniso, 3, probe_size=32, thin=4) == (5, 3, 9)


def forward_field(widths, size, period):
    """An independent measurement along axis 0 of a 2D model: with positive weights, no BN
    and max-pools of positive values, a delta at input voxel i reaches output o exactly when
    o depends on i (nothing cancels). Returns (field, margin) over one period of outputs."""
    model = UNet3D(1, 1, widths, spatial_dims=2).double().eval()
    with torch.no_grad():
        for m in model.modules():
            if isinstance(m, (nn.Conv2d, nn.ConvTranspose2d)):
                m.weight.fill_(1.0 / m.weight[0].numel())
                if m.bias is not None:
                    m.bias.zero_()
        deltas = torch.zeros(size, 1, size, 4, dtype=torch.float64)
        deltas[torch.arange(size), 0, torch.arange(size), 1] = 1
        reached = model(deltas)[:, 0].abs().amax(-1) > 0  # reached[i, o]: input i -> output o
    start = size // 2 // period * period
    field, margin = 0, 0
    for o in range(start, start + period):
        inputs = torch.nonzero(reached[:, o]).flatten()
        first, last = int(inputs[0]), int(inputs[-1])
        field, margin = max(field, last - first + 1), max(margin, o - first, last - o)
    return field, margin


def test_receptive_field_of_unets():
    fields = []
    for widths in [(4, 8), (4, 8, 16), (4, 8, 16, 32)]:
        model = UNet3D(1, 1, widths, spatial_dims=2)
        field, margin = receptive_field(model, 2, probe_size=128), required_margin(model, 2, probe_size=128)
        assert field[0] == field[1] and margin[0] == margin[1]
        assert (field[0], margin[0]) == forward_field(widths, 128, model.size_multiple)
        assert margin[0] >= (field[0] - 1) / 2
        fields.append(field[0])
    # By hand for one down-sampling: 2 convs (5), pool (6, step 2), 2 convs (+8 = 14),
    # up, 2 convs at step 1 (+4 = 18).
    assert fields[0] == 18
    assert fields[0] < fields[1] < fields[2]
    # The 3D network has the same field on every axis as its 2D twin.
    unet3d = UNet3D(1, 2, (4, 8, 16))
    assert receptive_field(unet3d, 3, probe_size=64) == (fields[1],) * 3
    assert fields[1] > 20


def test_r2unet_receptive_field_grows_with_depth_and_t():
    fields = [receptive_field(R2UNet(1, 1, 2, base_width=2, depth=d, t=t), 2)[0] for d, t in [(1, 2), (2, 2), (1, 3)]]
    # Depth 1, t=2: each RRCU is 6 stacked 3x3 convs (+12): 13, pool (+1, step 2), 12 convs at
    # step 2 (+24), decoder RRCU at step 1 (+12) = 50.
    assert fields[0] == 50
    assert fields[1] > fields[0]
    assert fields[2] == 50 + 4 + 8 + 4  # t=3: 8 convs per RRCU instead of 6


def test_receptive_field_reports_a_too_small_probe():
    model = UNet3D(1, 1, (4, 8, 16), spatial_dims=2)
    with pytest.raises(ValueError, match="probe"):
        receptive_field(model, 2, probe_size=32)
    frozen = [p.clone() for p in model.parameters()]
    assert receptive_field(model, 2) == (44, 44)  # grows the probe by itself
    assert model.training and all(torch.equal(a, b) for a, b in zip(frozen, model.parameters()))
