"""How a v2 contrast is acquired and stored: gamma, bias field, slices, blur, ghosts, noise,
and an arbitrary intensity scale.

The signal is acquired as slices 1-7 mm thick along one of the three axes (a slab average:
partial volume), blurred in plane by the point-spread function, given mild motion ghosts
along the phase-encoding direction and Rician noise, then interpolated back to the 1 mm grid
the way registration to an atlas would; the ground truth never leaves the 1 mm grid.
"""

from __future__ import annotations

import numpy as np
from scipy import ndimage

from . import fields

PLANES = ("axial", "coronal", "sagittal")  # slices thick along array axis 0 (z), 1 (y), 2 (x)


def draw(rng: np.random.Generator, main_axis: int) -> dict:
    """One contrast's acquisition; half of them follow the case's main slice axis."""
    axis = main_axis if rng.random() < 0.5 else int(rng.integers(3))
    thick = 1 if rng.random() < 0.25 else int(rng.integers(2, 8))  # 3D sequences are 1 mm
    return {
        "axis": axis, "plane": PLANES[axis], "thickness_mm": thick,
        "blur_mm": round(float(rng.uniform(0.0, 1.0)), 3),
        "gamma": round(float(np.exp(np.clip(rng.normal(0, 0.25), -0.5, 0.5))), 3),
        "bias": round(float(rng.uniform(0.0, 0.3)), 3),
        "noise": round(float(rng.uniform(0.01, 0.07)), 4),  # sigma relative to WM
        "ghosting": round(float(rng.uniform(0.05, 0.3)), 3) if rng.random() < 0.4 else 0.0,  # phase error, rad
    }


def acquire(rng: np.random.Generator, signal: np.ndarray, wm_level: float, p: dict) -> np.ndarray:
    """`signal` (float32, the brain's box) as scanned with acquisition `p`, back on 1 mm."""
    peak = float(signal.max()) + 1e-6
    img = np.power(signal / np.float32(peak), np.float32(p["gamma"]))
    if p["bias"] > 0:  # the receive coil's smooth sensitivity
        img *= np.exp(np.float32(p["bias"]) * fields.smooth_field(rng, img.shape, rng.uniform(40, 90)))
    axis, thick = p["axis"], p["thickness_mm"]
    phase = int(rng.integers(thick))
    if thick > 1:
        slab = ndimage.uniform_filter1d(img, thick, axis=axis, mode="nearest")
        img = np.take(slab, np.arange(phase, img.shape[axis], thick), axis=axis)
    if p["blur_mm"] > 0:
        img = ndimage.gaussian_filter(img, [0 if a == axis else p["blur_mm"] for a in range(3)], truncate=2.5)
    sigma = np.float32(p["noise"] * (wm_level / peak) ** p["gamma"])
    if p["ghosting"] > 0:  # periodic motion: a sinusoidal phase error over the k-space lines
        pe = int(rng.choice([a for a in range(3) if a != axis]))
        n = img.shape[pe]
        period = rng.uniform(4, 16)
        err = p["ghosting"] * np.sin(2 * np.pi * np.arange(n) / period + rng.uniform(0, 2 * np.pi))
        shape = [1, 1, 1]
        shape[pe] = n
        k = np.fft.fft(img, axis=pe) * np.exp(1j * err).astype(np.complex64).reshape(shape)
        img = np.fft.ifft(k, axis=pe).astype(np.complex64)
        real, imag = img.real, img.imag
    else:
        real, imag = img, np.zeros((), np.float32)
    # Rician: the magnitude of the complex signal plus Gaussian noise in both channels.
    img = np.sqrt((real + sigma * rng.standard_normal(real.shape, dtype=np.float32)) ** 2
                  + (imag + sigma * rng.standard_normal(real.shape, dtype=np.float32)) ** 2)
    if thick > 1:  # back to 1 mm: linear between slice centres
        centre = phase + (thick - 1) / 2 - (0.5 if thick % 2 == 0 else 0)
        img = fields.lerp_axis(img, (np.arange(signal.shape[axis]) - centre) / thick, axis)
    return img.astype(np.float32)


def draw_scale(rng: np.random.Generator) -> str:
    return str(rng.choice(["int16", "float", "zscore"]))


def store(rng: np.random.Generator, img: np.ndarray, brain: np.ndarray, kind: str, n_total: int) -> tuple[np.ndarray, float, float, float]:
    """Map the brain's values to the stored scale: image = signal * scale + offset inside the
    brain, `background` outside. Returns (image, scale, offset, background).

    int16 and float: skull-stripped, background exactly 0, an arbitrary gain and a positive
    offset. zscore: zero mean, unit std; half of them over the brain only with the background
    left at 0 (inside the brain's value range), half over the whole volume, which leaves the
    background at one negative constant."""
    values = img[brain].astype(np.float64)
    if kind == "int16":
        scale = 10 ** rng.uniform(2.5, 4.2)
        offset, background = float(np.rint(rng.uniform(0, 0.15) * scale)), 0.0
    elif kind == "float":
        scale = 10 ** rng.uniform(-2, 3)
        offset, background = rng.uniform(0, 0.2) * scale, 0.0
    elif rng.random() < 0.5:
        scale = 1 / (values.std() + 1e-12)
        offset, background = -values.mean() * scale, 0.0
    else:
        mean = values.sum() / n_total
        std = np.sqrt((values**2).sum() / n_total - mean**2)
        scale, offset = 1 / std, -mean / std
        background = offset
    out = np.full(img.shape, background, np.float32)
    stored = values * scale + offset
    if kind == "int16":
        stored = np.clip(np.rint(stored), -32768, 32767)
    out[brain] = stored
    return out, float(scale), float(offset), float(background)
