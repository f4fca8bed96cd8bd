"""Shared test setup.

x64 is enabled for the whole session: gradient and optimizer checks compare in float64, and tests that
want float32 say so explicitly. Real-data tests use the ``mnist_dir`` / ``mnist`` fixtures: they skip
when the MNIST files are absent, unless JAXMLP_REQUIRE_DATA=1 (set by .ci/run), where they fail.
"""
from __future__ import annotations

import os
from pathlib import Path

import jax
import pytest

jax.config.update("jax_enable_x64", True)
# In-process CLI calls would otherwise switch on the on-disk compilation cache for the whole session.
os.environ.setdefault("JAXMLP_COMPILE_CACHE", "0")

REPO = Path(__file__).resolve().parents[1]
SHARED_MNIST = REPO.parent / "shared" / "data" / "mnist"


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
