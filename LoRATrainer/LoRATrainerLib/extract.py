"""LoRA by SVD energy: turn a full fine-tune (or a high-rank adapter) into a small adapter.

Per target layer the weight change dW = W_tuned - W_base (a Conv2d/Conv3d weight read as an
(out, in * kernel) matrix, which is how peft's conv LoRA composes B and A) is split by SVD; the
rank kept is the smallest whose singular values hold the asked fraction of sum(sigma^2). The
truncated SVD is the best approximation of that rank (Eckart-Young), so the adapter is as close
to the fine-tune as that rank allows. The adapter is then checked on the model's outputs.
"""

from __future__ import annotations

import math
import os
import uuid
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

import torch
from torch import nn

from SAMBACore.bundles import Bundle, check_state_dict, load_bundle, load_state_dict

from SAMBACore.adapters import (INFO, SAM_ENCODER_TARGETS, LoraSpec, add_lora, apply_adapter, base_record,
                       conv_targets, read_adapter, save_adapter)

ADAPTER = "default"  # peft's name for the one adapter add_lora injects
LORA_TYPES = (nn.Linear, nn.Conv2d, nn.Conv3d)  # the layer types peft's LoRA wraps here
DEFAULT_TOLERANCE = 0.01  # relative error of the adapted model's output vs the fine-tune's


@dataclass
class LayerSpectrum:
    """The SVD of one layer's weight change, dW (as a matrix) = U diag(S) Vh."""

    name: str
    shape: tuple[int, ...]  # the weight's own shape
    U: torch.Tensor
    S: torch.Tensor
    Vh: torch.Tensor

    @property
    def curve(self) -> torch.Tensor:
        """Cumulative fraction of sum(sigma^2) kept at rank 1, 2, ... (the last is exactly 1)."""
        energy = torch.cumsum(self.S ** 2, 0)
        return energy / energy[-1] if energy[-1] > 0 else energy

    def rank_for(self, energy: float) -> int:
        """The smallest rank keeping `energy` of sum(sigma^2); 0 when the layer did not change."""
        if self.S[0] == 0:
            return 0
        return int(torch.searchsorted(self.curve, torch.tensor(energy, dtype=self.S.dtype)).item()) + 1

    def factors(self, rank: int, scaling: float) -> tuple[torch.Tensor, torch.Tensor]:
        """(B, A) with B @ A * scaling = the rank-`rank` truncation of dW (peft multiplies by scaling)."""
        root = torch.sqrt(self.S[:rank] / scaling)
        return (self.U[:, :rank] * root).float(), (root[:, None] * self.Vh[:rank]).float()


def component_model(bundle: Bundle, component: str) -> tuple[nn.Module, str]:
    """The component's model with its verified weights, and the sub-module LoRA adapts
    ("image_encoder" of a SAM, "" for a whole U-Net)."""
    part = bundle.component(component)
    if part.kind == "sam":
        from SAMBASegmentLib.sam_model import build_sam

        model, target = build_sam(part.config), "image_encoder"
    elif part.kind in ("unet3d", "r2unet"):
        from R2UNetSegmentLib.r2unet_bundle import build_model

        model, target = build_model(part.kind, part.config), ""
    else:
        raise ValueError(f"{bundle.path}: component '{component}' is a '{part.kind}'; LoRA extraction handles "
                         "SAM (sam) and U-Net (unet3d, r2unet) components.")
    return check_state_dict(model, load_state_dict(bundle, component), component).eval(), target


def finetuned_model(source, base: Bundle, component: str) -> nn.Module:
    """The fine-tuned model: a bundle's component of the same architecture, or an adapter folder
    merged onto the base (its dW is then exactly B @ A * alpha / r per layer)."""
    source = Path(source)
    if (source / INFO).is_file():
        made_for = read_adapter(source)[0]["base"]["component"]
        if made_for != component:
            raise ValueError(f"{source} adapts the '{made_for}' component, not '{component}': pass --component {made_for}.")
        model, _ = component_model(base, component)
        return apply_adapter(model, source, base, merge=True)
    tuned = load_bundle(source)
    mine, theirs = base.component(component), tuned.component(component)
    if (mine.kind, mine.config) != (theirs.kind, theirs.config):
        differ = {k: (theirs.config.get(k), mine.config.get(k))
                  for k in sorted(set(mine.config) | set(theirs.config)) if mine.config.get(k) != theirs.config.get(k)}
        raise ValueError(
            f"The fine-tuned '{component}' in {source} ({theirs.kind}) is not the same model as the base's in "
            f"{base.path} ({mine.kind}): settings differ (fine-tuned vs base: "
            + (", ".join(f"{k} {a} vs {b}" for k, a, b in ((k, *v) for k, v in differ.items())) or "kind")
            + "). A weight change only exists between two models of one shape: give the bundle it was fine-tuned from.")
    model, _ = component_model(tuned, component)
    return model


def target_layers(module: nn.Module, targets) -> list[str]:
    """Full names of the Linear/Conv layers matching `targets` the way peft matches a list
    (the name itself or its last dotted parts)."""
    return [name for name, m in module.named_modules()
            if type(m) in LORA_TYPES and any(name == t or name.endswith("." + t) for t in targets)]


def layer_spectra(base: nn.Module, tuned: nn.Module, layers: list[str]) -> list[LayerSpectrum]:
    """SVD (float64, for clean small singular values) of each layer's weight change."""
    spectra = []
    for name in layers:
        w0, w1 = base.get_submodule(name).weight, tuned.get_submodule(name).weight
        delta = (w1.detach().double() - w0.detach().double()).reshape(w0.shape[0], -1)
        U, S, Vh = torch.linalg.svd(delta, full_matrices=False)
        spectra.append(LayerSpectrum(name, tuple(w0.shape), U, S, Vh))
    return spectra


def change_outside(base: nn.Module, tuned: nn.Module, layers: list[str]) -> float:
    """Fraction of the squared weight change (parameters and buffers) that lies outside the target
    weights: biases, norms, other layers. An adapter on the targets cannot reproduce that part."""
    inside = {f"{name}.weight" if name else "weight" for name in layers}
    tuned_state = tuned.state_dict()
    total = outside = 0.0
    for key, value in base.state_dict().items():
        if not value.is_floating_point():
            continue
        change = float(((tuned_state[key].double() - value.double()) ** 2).sum())
        total += change
        outside += 0.0 if key in inside else change
    return outside / total if total else 0.0


def build_extracted(module: nn.Module, spectra: list[LayerSpectrum], energy: float) -> tuple[LoraSpec, dict[str, int]]:
    """Inject peft LoRA layers at the per-layer ranks into `module` and set A, B from the SVD."""
    ranks = {s.name: s.rank_for(energy) for s in spectra}
    ranks = {name: r for name, r in ranks.items() if r > 0}
    if not ranks:
        raise ValueError("The fine-tuned model's target layers are identical to the base's: there is nothing to "
                         "extract. Check --targets, or that FINETUNED really was fine-tuned from this base.")
    top = max(ranks.values())
    # alpha = the largest rank: scaling alpha / r is 1 there and larger on low-rank layers; the
    # factors divide it out, so the product B @ A * scaling is the truncated dW either way.
    spec = LoraSpec(targets=tuple(ranks), rank=top, alpha=float(top), ranks=ranks)
    add_lora(module, spec)
    with torch.no_grad():
        for s in spectra:
            if s.name not in ranks:
                continue
            layer = module.get_submodule(s.name)
            B, A = s.factors(ranks[s.name], layer.scaling[ADAPTER])
            layer.lora_A[ADAPTER].weight.copy_(A.reshape(layer.lora_A[ADAPTER].weight.shape))
            layer.lora_B[ADAPTER].weight.copy_(B.reshape(layer.lora_B[ADAPTER].weight.shape))
    return spec, ranks


def probe_inputs(module: nn.Module, seed: int = 0) -> torch.Tensor:
    """Seeded random inputs of the module's input shape: SAM's encoder takes normalised images
    (about zero mean, unit variance); a U-Net a small 4-channel patch."""
    generator = torch.Generator().manual_seed(seed)
    if hasattr(module, "img_size") and hasattr(module, "patch_embed"):
        return torch.randn(2, 3, module.img_size, module.img_size, generator=generator)
    first = next(m for m in module.modules() if isinstance(m, (nn.Conv2d, nn.Conv3d)))
    return torch.randn(1, first.in_channels, *[32] * (first.weight.dim() - 2), generator=generator)


@torch.no_grad()
def output_check(base: nn.Module, adapted: nn.Module, tuned: nn.Module, inputs: torch.Tensor,
                 tolerance: float = DEFAULT_TOLERANCE) -> dict:
    """How well the adapted module reproduces the fine-tuned one on `inputs`.

    relative_error: |y_adapted - y_tuned| / |y_tuned| (Frobenius norms), checked against tolerance;
    unexplained: the same difference over |y_tuned - y_base|, the part of the fine-tune's effect on
    the outputs the adapter misses (1.0 would be no better than the base)."""
    y0, y1, ya = base(inputs).double(), tuned(inputs).double(), adapted(inputs).double()
    error = float(torch.linalg.vector_norm(ya - y1))
    change = float(torch.linalg.vector_norm(y1 - y0))
    relative = error / max(float(torch.linalg.vector_norm(y1)), 1e-30)
    return {"relative_error": relative, "unexplained": error / change if change else 0.0,
            "base_relative_error": change / max(float(torch.linalg.vector_norm(y1)), 1e-30),
            "tolerance": tolerance, "within_tolerance": relative <= tolerance,
            "inputs": f"{tuple(inputs.shape)} seeded standard-normal"}


def plot_energy(spectra: list[LayerSpectrum], ranks: dict[str, int], energy: float, path) -> Path:
    """PNG of the energy curves (cumulative sigma^2 fraction vs rank), chosen ranks marked;
    written to a temporary name first so a failed plot never leaves half a file."""
    import matplotlib

    matplotlib.use("Agg")
    from matplotlib import pyplot as plt

    path = Path(path)
    figure, axes = plt.subplots(figsize=(7, 4.5))
    for s in spectra:
        curve = s.curve.numpy()
        line, = axes.plot(range(1, len(curve) + 1), curve, lw=1, label=s.name)
        if ranks.get(s.name):
            axes.plot(ranks[s.name], curve[ranks[s.name] - 1], "o", color=line.get_color(), ms=4)
    axes.axhline(energy, color="black", ls="--", lw=0.8, label=f"energy {energy:g}")
    axes.set(xscale="log", xlabel="rank", ylabel="fraction of sum(sigma^2) kept", ylim=(0, 1.02),
             title="Weight-change energy per layer (dots: chosen ranks)")
    if len(spectra) <= 12:
        axes.legend(fontsize=6, loc="lower right")
    figure.tight_layout()
    partial = path.with_name(f".{path.name}.{uuid.uuid4().hex[:8]}.png")
    try:
        figure.savefig(partial, dpi=120)
        os.replace(partial, path)
    finally:
        plt.close(figure)
        partial.unlink(missing_ok=True)
    return path


def extract_lora(finetuned, base_path, output, component: str = "sam", energy: float = 0.9, targets=None,
                 plot=None, tolerance: float = DEFAULT_TOLERANCE, command: str = "",
                 log: Callable[[str], None] = print) -> dict:
    """Extract an adapter from `finetuned` against the base bundle, write it to `output` (atomically),
    optionally the energy plot; returns the report (also stored in adapter.json under "extraction")."""
    if not 0 < energy <= 1:
        raise ValueError(f"--energy must be in (0, 1], the fraction of sum(sigma^2) to keep; got {energy}.")
    base = load_bundle(base_path)
    base_model, target = component_model(base, component)
    tuned_model = finetuned_model(finetuned, base, component)
    if targets is None:
        adapter = Path(finetuned) / INFO
        targets = (read_adapter(finetuned)[0]["lora"].targets if adapter.is_file()
                   else SAM_ENCODER_TARGETS if target else conv_targets(base_model))
    base_module = base_model.get_submodule(target) if target else base_model
    tuned_module = tuned_model.get_submodule(target) if target else tuned_model
    layers = target_layers(base_module, targets)
    if not layers:
        raise ValueError(f"No Linear/Conv2d/Conv3d layer of the '{component}' component matches the targets "
                         f"{list(targets)}; name layers as they appear in the model (e.g. qkv for SAM).")
    log(f"SVD of the weight change in {len(layers)} layer(s) of '{component}'" + (f".{target}" if target else ""))
    spectra = layer_spectra(base_module, tuned_module, layers)
    outside = change_outside(base_module, tuned_module, layers)

    adapted, _ = component_model(base, component)
    adapted_module = adapted.get_submodule(target) if target else adapted
    spec, ranks = build_extracted(adapted_module, spectra, energy)
    check = output_check(base_module, adapted_module, tuned_module, probe_inputs(base_module), tolerance)

    layer_report = {s.name: {"shape": list(s.shape), "full_rank": len(s.S), "rank": ranks.get(s.name, 0),
                             "energy": float(s.curve[ranks[s.name] - 1]) if ranks.get(s.name) else 0.0}
                    for s in spectra}
    report = {"source": str(finetuned), "energy": energy, "targets": list(targets), "layers": layer_report,
              "lora_parameters": sum(p.numel() for n, p in adapted_module.named_parameters() if "lora_" in n),
              "change_outside_targets": outside, "check": check}
    extra = {"how_trained": {"method": "lora-extract (truncated SVD of the weight change)", "command": command},
             "extraction": report}
    save_adapter(output, adapted_module, spec, base_record(base, component, target), extra)
    for line in report_lines(spectra, report):
        log(line)
    if plot:
        log(f"Energy plot: {plot_energy(spectra, ranks, energy, plot)}")
    log(f"Adapter: {output}")
    return report


def report_lines(spectra: list[LayerSpectrum], report: dict) -> list[str]:
    """The terminal report: per-layer ranks and energy curve, the output check."""
    width = max(len(s.name) for s in spectra)
    lines = [f"{'layer':<{width}}  rank/full  energy kept  energy curve (cumulative sigma^2 at rank 1, 2, 4, ...)"]
    for s in spectra:
        entry = report["layers"][s.name]
        points = [2 ** i for i in range(int(math.log2(len(s.S))) + 1)]
        curve = " ".join(f"{r}:{float(s.curve[r - 1]):.3f}" for r in points)
        lines.append(f"{s.name:<{width}}  {entry['rank']:>4}/{entry['full_rank']:<4}  {entry['energy']:>11.4f}  {curve}")
    check = report["check"]
    lines.append(f"LoRA parameters: {report['lora_parameters']:,}")
    if report["change_outside_targets"] > 1e-9:
        lines.append(f"Note: {report['change_outside_targets']:.1%} of the squared weight change lies outside the "
                     "target weights (biases, norms, other layers); no adapter on these targets can reproduce it.")
    verdict = "within" if check["within_tolerance"] else "WARNING: above"
    lines.append(f"Check on {check['inputs']} inputs: relative output error {check['relative_error']:.2e} "
                 f"({verdict} tolerance {check['tolerance']:g}; the base alone: {check['base_relative_error']:.2e}); "
                 f"{check['unexplained']:.1%} of the fine-tune's output change not reproduced.")
    return lines
