"""Shared test setup.

float64 is scoped, not global: a test that computes in float64 asks for the ``x64`` fixture (by name,
or a whole module with ``pytestmark = pytest.mark.usefixtures("x64")``), and everything else runs with
jax's default 32-bit types, as users do. Real-data tests use the ``mnist_dir`` / ``mnist`` fixtures:
they skip when the MNIST files are absent, unless JAXMLP_REQUIRE_DATA=1 (set by .ci/run), where they
fail. Slow tests are marked here centrally (``SLOW``): ``python -m pytest -m "not slow"`` skips them.
"""
from __future__ import annotations

import os
import tempfile
from pathlib import Path

import jax
import pytest

# In-process CLI calls would otherwise switch on the on-disk compilation cache for the whole session.
os.environ.setdefault("JAXMLP_COMPILE_CACHE", "0")
# Downloads, hash stamps and caches that tests cause go to a folder of this session, never the user's.
os.environ["XDG_CACHE_HOME"] = tempfile.mkdtemp(prefix="jaxmlp-tests-cache-")

REPO = Path(__file__).resolve().parents[1]
SHARED_MNIST = REPO.parent / "shared" / "data" / "mnist"


# The day-to-day selection `python -m pytest -m "not slow"` leaves these out; CI (`python -m pytest`) runs
# everything. Node-id prefixes (a file, or a file::test) and why each takes long on the 2-core machine.
# Tests may also carry @pytest.mark.slow themselves.
SLOW = {
    "tests/test_notebooks.py::test_notebook_0": "executes a whole notebook on real MNIST (20-60 s each)",
    "tests/test_notebook_exact.py": "the notebook's float64 training runs on real MNIST, epoch by epoch",
    "tests/test_fuzz_checkpoint.py": "hundreds of fuzzed checkpoint files per test",
    "tests/test_fuzz_idx.py": "hundreds of fuzzed IDX files per test",
    # Property tests over random shapes: every new shape is a new compilation (~2 s each when loaded).
    "tests/test_model.py::test_forward_shapes_any_depth": "12 random architectures, one compile each",
    "tests/test_backprop.py::test_manual_equals_autodiff_any_depth": "16 random architectures, two compiles each",
    "tests/test_losses.py::test_cross_entropy_matches_numpy_for_both_label_forms": "20 random shapes",
    # Eager jax.random/init calls compile one tiny program per primitive and shape (~15 s per dtype).
    "tests/test_model.py::test_init_is_per_layer_draws_of_split_keys": "dozens of eager per-op compiles",
}


def pytest_collection_modifyitems(config, items):
    for item in items:
        if any(item.nodeid.startswith(prefix) for prefix in SLOW):
            item.add_marker(pytest.mark.slow)


@pytest.fixture
def x64():
    """jax's 64-bit types on for one test (float64 arrays stay float64), off again afterwards.

    ``jax.enable_x64`` is a context, so nothing leaks into the next test. A module-scoped fixture that
    builds float64 arrays opens its own ``with jax.enable_x64(True):``. Hypothesis tests may use it:
    the context spans all of a test's examples.
    """
    with jax.enable_x64(True):
        yield


def _mnist_dir() -> Path | None:
    for candidate in (os.environ.get("JAXMLP_DATA_DIR"), SHARED_MNIST):
        if candidate and any((Path(candidate) / f"train-labels-idx1-ubyte{ext}").exists() for ext in ("", ".gz")):
            return Path(candidate)
    return None


@pytest.fixture(scope="session")
def mnist_dir() -> Path:
    """The folder holding real MNIST (skip, or fail under JAXMLP_REQUIRE_DATA=1, when absent)."""
    found = _mnist_dir()
    if found is None:
        if os.environ.get("JAXMLP_REQUIRE_DATA") == "1":
            pytest.fail("JAXMLP_REQUIRE_DATA=1 but no MNIST found (set JAXMLP_DATA_DIR)")
        pytest.skip("real MNIST not found (set JAXMLP_DATA_DIR)")
    return found


@pytest.fixture(scope="session")
def mnist(mnist_dir):
    """The real MNIST Dataset (uint8), loaded once per session."""
    from jaxmlp.data import load_dataset

    return load_dataset(mnist_dir)


def make_synthetic_dataset(n_train: int = 512, n_test: int = 128, seed: int = 0, side: int = 28):
    """A small learnable Dataset of uint8 images: class c lights a 4x4 block at a class-specific spot,
    plus uniform noise, so a linear model can separate it but not at the first step."""
    import numpy as np

    from jaxmlp.data import Dataset

    rng = np.random.default_rng(seed)

    def images(n):
        labels = rng.integers(0, 10, size=n).astype(np.uint8)
        x = rng.integers(0, 90, size=(n, side, side)).astype(np.uint8)
        for i, c in enumerate(labels):
            r, col = 2 + 2 * (c % 5) * 2, 4 + (c // 5) * 12
            x[i, r:r + 4, col:col + 4] = 255
        return x, labels

    x_train, y_train = images(n_train)
    x_test, y_test = images(n_test)
    return Dataset(x_train, y_train, x_test, y_test)


@pytest.fixture
def synthetic():
    return make_synthetic_dataset()
