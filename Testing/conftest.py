"""Shared fixtures: a headless MRML scene from slicer-core, the one place tests are seeded, and
the record of the numbers learning tests assert on (for scripts/learning_spread.py)."""

import json
import os
import random

import numpy as np
import pytest
import torch

from SAMBACore import bridge

# ultralytics binds its log handler to the sys.stdout of the moment it is first imported. Imported first
# inside a test that captures output (capsys), that stream is closed after the test, and each later
# ultralytics log line ("Overriding model.yaml nc=80 ...") prints a "Logging error" traceback into the
# stderr of whichever test runs then, failing any test that reads its stderr (which test depends on the
# order the tests run in). Imported here, the handler gets the stream pytest keeps open all session.
import ultralytics  # noqa: E402,F401

# Every test starts from this seed (torch, numpy's global RNG, Python's random). Override it to
# measure how a test's numbers spread over seeds: SAMBA_TEST_SEED=3 pytest ...
TEST_SEED = int(os.environ.get("SAMBA_TEST_SEED", "0"))
# SAMBA_TEST_THREADS=N runs every test with N torch threads, to measure the spread over thread
# counts; unset, the tests that pin threads (one_thread) use 1 and the others torch's default.
THREADS = os.environ.get("SAMBA_TEST_THREADS")
# `make test` runs the suite in two pytest-xdist workers; each takes one core (one torch thread),
# rather than two workers each asking for both cores. Learning tests were measured with 1 and 2.
if os.environ.get("PYTEST_XDIST_WORKER") and not THREADS:
    THREADS = "1"
PINNED_THREADS = int(THREADS or 1)


def _seed_everything():
    random.seed(TEST_SEED)
    np.random.seed(TEST_SEED)
    torch.manual_seed(TEST_SEED)
    if THREADS:
        torch.set_num_threads(int(THREADS))


@pytest.fixture(autouse=True)
def seeded():
    """Seeds before every test: its numbers do not depend on which tests ran before it."""
    _seed_everything()


@pytest.fixture(scope="session")
def reseed():
    """reseed(): the same seeding, for a module- or session-scoped fixture that makes something
    random (a bundle of random weights made once): it is made alike whichever test asks first."""
    return _seed_everything


@pytest.fixture
def measured(request):
    """measured(name, value): a number the test asserts on, appended as one JSON line to the file
    that SAMBA_MEASUREMENTS names (nothing when unset), with the seed, threads and CPU kernels."""
    path = os.environ.get("SAMBA_MEASUREMENTS")

    def record(name: str, value) -> None:
        if path:
            entry = {"test": request.node.nodeid, "name": name, "value": value, "seed": TEST_SEED,
                     "threads": torch.get_num_threads(), "kernels": torch.backends.cpu.get_cpu_capability()}
            with open(path, "a") as stream:
                stream.write(json.dumps(entry) + "\n")

    return record


@pytest.fixture
def scene():
    """A fresh headless MRML scene (the same API Slicer's own scene has)."""
    scene = bridge.get_scene()
    yield scene
    scene.Clear(True)


def _pinned_threads():
    threads = torch.get_num_threads()
    torch.set_num_threads(PINNED_THREADS)
    yield
    torch.set_num_threads(threads)


# One torch thread: tiny models gain nothing from two, and OpenMP threads fighting a busy 2-core
# machine for cores cost far more than they give. one_thread_module for module-scoped fixtures.
one_thread = pytest.fixture(_pinned_threads, name="one_thread")
one_thread_module = pytest.fixture(_pinned_threads, name="one_thread_module", scope="module")
