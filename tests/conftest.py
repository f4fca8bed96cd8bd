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
    "tests/test_model.py::test_forward_shapes_any_depth": "6 random architectures, one compile each",
    "tests/test_backprop.py::test_manual_equals_autodiff_any_depth": "8 random architectures, two compiles each",
    "tests/test_losses.py::test_cross_entropy_matches_numpy_for_both_label_forms": "10 random shapes",
    # Eager jax.random/init calls compile one tiny program per primitive and shape (~15 s per dtype).
    "tests/test_model.py::test_init_is_per_layer_draws_of_split_keys": "dozens of eager per-op compiles",
    # Whole training runs, several per test, or programs compiled for their own shapes (3-10 s each).
    "tests/test_bench.py": "every bench row, each compiling its own program",
    "tests/test_sweep.py::test_sweep_members_equal_single_runs": "a vmapped group against each member's fit",
    "tests/test_sweep.py::test_chains_split_members": "the same group trained in one chain and in three",
    "tests/test_sweep.py::test_shared_order_members_differ_only_in_their_params": "a group against 5 single fits",
    "tests/test_sweep.py::test_fit_ensemble_members": "an ensemble against each member's own fit",
    "tests/test_sweep.py::test_group_program_keeps_the_short_batch_branch": "compiles and reads a group's HLO",
    "tests/test_sweep.py::test_second_group_call_does_not_recompile": "two group trainings counting compiles",
    "tests/test_parallel.py::test_params_are_replicated": "a child process with 4 forced devices",
    "tests/test_parallel.py::test_cli_devices_flag": "a child process with 4 forced devices",
    "tests/test_sweep.py::test_cli_sweep_table_and_json": "a whole sweep through the CLI",
    "tests/test_optim.py::test_float32_params_stay_float32": "several training steps per optimizer",
    "tests/test_backend.py::test_the_cnn_follows_the_switch": "a CNN forward compiled both ways",
    "tests/test_parallel.py::test_multi_device_matches_single_device": "a child process with 4 forced devices",
    "tests/test_train.py::test_chunks_of_any_size": "three chunkings of an Adam + dropout epoch in float64",
    "tests/test_train.py::test_a_signal_stops": "the resume matrix: a run stopped at 4 places, each resumed",
    "tests/test_train.py::test_sigterm_and_a_resumed_run": "two stops and three resumes",
    "tests/test_train.py::test_a_second_signal": "a stopped run whose save is hit by a signal",
    "tests/test_train.py::test_nothing_recompiles": "two fits counting XLA compilations",
    "tests/test_cli.py::test_sigterm_in_a_real_process": "a real `jaxmlp train` process, killed mid-run",
    "tests/test_cli.py::test_resume_is_bit_exact": "three CLI training runs",
    "tests/test_cli.py::test_finetune_freezes_layers": "fine-tuning, eval and predict through the CLI",
    "tests/test_cli.py::test_console_script_bad_flag": "starts the installed console script",
    "tests/test_cli.py::test_python_dash_m_and_version": "starts a Python process",
    "tests/test_cli.py::test_the_compile_cache": "two real `jaxmlp train` processes",
    "tests/test_backprop.py::test_finite_differences_agree_with_both[2": "float64 finite differences, depth 2",
    "tests/test_backprop.py::test_finite_differences_agree_with_both[3": "float64 finite differences, depth 3",
    "tests/test_backprop.py::test_finite_differences_agree_with_both[4": "float64 finite differences, depth 4",
    "tests/test_backprop.py::test_relu_kink_exact_zeros": "eager float64 finite differences at the kink",
    "tests/test_cli.py::test_gradcheck_passes_across_sizes_and_seeds": "15 float64 gradient checks on real MNIST",
    "tests/test_cnn.py::test_grad_matches_central_differences": "finite differences through convolutions",
    "tests/test_cnn.py::test_inverted_dropout_preserves_mean": "a large dropout sample",
    "tests/test_augment.py::test_keys_shapes_dtypes_jit_range": "jitted and eager augmentation per dtype",
    "tests/test_augment.py::test_affine_translation_matches_bilinear_reference": "a NumPy bilinear reference",
}


# Under `--dist loadscope` (pyproject) a module is one unit of work for a worker. The longest modules
# go first, so that none of them starts last while the other worker has nothing left to do.
LONGEST_FIRST = ("tests/test_roundtrip.py", "tests/test_notebooks.py", "tests/test_sharded.py", "tests/test_docs.py",
                 "tests/test_reproduce.py", "tests/test_matrix.py", "tests/test_notebook_exact.py",
                 "tests/test_matrix_groups.py", "tests/test_roundtrip_cnn.py")


def pytest_collection_modifyitems(config, items):
    for item in items:
        if any(item.nodeid.startswith(prefix) for prefix in SLOW):
            item.add_marker(pytest.mark.slow)
    rank = {path: i for i, path in enumerate(LONGEST_FIRST)}
    items.sort(key=lambda item: rank.get(item.nodeid.split("::")[0], len(rank)))  # stable: each module keeps its order


@pytest.fixture
def x64():
    """jax's 64-bit types on for one test (float64 arrays stay float64), off again afterwards.

    ``jax.enable_x64`` is a context, so nothing leaks into the next test. A module-scoped fixture that
    builds float64 arrays opens its own ``with enable_x64(True):`` (``jaxmlp._compat``'s: JAX's own
    on jax >= 0.8, its older name below). Hypothesis tests may use it: the context spans all of a
    test's examples.
    """
    from jaxmlp._compat import enable_x64

    with enable_x64(True):
        yield


def float32_tolerance(cpu: float, setting: str | None = None) -> float:
    """An absolute tolerance for O(1) float32 results of matmuls that follows the matmul-precision policy
    (``jaxmlp.backend``): ``cpu`` where float32 products are full float32 (CPUs, "highest"), plus the
    relative rounding of a product's inputs where they are not (TF32 on a GPU: 2**-11). ``setting``:
    the run's --matmul-precision (None: the one in force)."""
    from jaxmlp.backend import matmul_epsilon

    return cpu + matmul_epsilon(setting) - matmul_epsilon("highest", "cpu")


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


def reset_peak_rss() -> bool:
    """Reset this process's peak-RSS mark (Linux VmHWM) so a memory check sees only what follows: the
    test workers run many modules, and a peak reached by an earlier test would hide a later one's."""
    try:
        with open("/proc/self/clear_refs", "w") as f:
            f.write("5")
        return True
    except OSError:
        return False
