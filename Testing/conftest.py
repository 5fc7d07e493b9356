"""Shared fixtures: a headless MRML scene from slicer-core, and phantom cases made once per run."""

import pytest

from SAMBACore import bridge


@pytest.fixture
def scene():
    """A fresh headless MRML scene (the same API Slicer's own scene has)."""
    scene = bridge.get_scene()
    yield scene
    scene.Clear(True)


@pytest.fixture
def one_thread():
    """One torch thread: tiny models gain nothing from two, and OpenMP threads fighting a busy
    2-core machine for cores cost far more than they give."""
    import torch

    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)
