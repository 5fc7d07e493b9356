"""Subcommands of `slicer-samba` that this module owns (handlers import torch lazily)."""

from __future__ import annotations


def register(commands, train, bench) -> None:
    """Add this module's subcommands to the top-level, `train` and `bench` sub-parser groups."""
