"""Device choice in one place: what "auto", "cpu" and "cuda" mean for every module and command."""

from __future__ import annotations

DEVICES = ("auto", "cpu", "cuda")


def choose_device(requested: str = "auto") -> str:
    """'auto' takes the GPU when torch sees one; asking for 'cuda' without one is a clear error."""
    import torch

    if requested not in DEVICES:
        raise ValueError(f"Unknown device {requested!r}: choose one of {', '.join(DEVICES)}.")
    if requested == "auto":
        return "cuda" if torch.cuda.is_available() else "cpu"
    if requested == "cuda" and not torch.cuda.is_available():
        raise ValueError("No CUDA GPU is visible to PyTorch: use --device cpu, or install a CUDA build of torch.")
    return requested
