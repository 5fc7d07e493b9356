"""Shared fixtures: a headless MRML scene from slicer-core, and phantom cases made once per run."""

import pytest

from SAMBACore import bridge


@pytest.fixture
def scene():
    """A fresh headless MRML scene (the same API Slicer's own scene has)."""
    scene = bridge.get_scene()
    yield scene
    scene.Clear(True)

