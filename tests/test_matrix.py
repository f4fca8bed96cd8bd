"""Every combination right: each subcommand and run mode against each of its flags and edge values.

The cells are generated from ``jaxmlp.cli.build_parser()``: for every run mode (train's default run,
notebook-exact, ensemble, finetune, resume; sweep grid and random; eval, predict, bench, gradcheck,
download) and every flag its subcommand declares, the flag's values in ``VALUES`` make cells. A flag
without an entry fails ``test_every_flag_has_a_cell``. Each cell asserts one of two things:

* ``CHANGES``: exit 0, and what the run produces differs from the same command without the flag:
  stdout, the metrics JSON (less timings and the echo of the settings: a flag recorded but unused
  must not count), the files written (checkpoint arrays, logs, pictures), the trained params, and a
  few internals that are the flag's whole effect by design (steps per compiled chunk, checkpoint
  saves, the divergence rule and matmul precision in force, a progress bar, the URLs fetched).
* ``REFUSED``: exit != 0 with one line on stderr starting ``jaxmlp`` and no traceback.

Everything runs in-process on tiny synthetic IDX datasets (64 training and 32 test images of 28x28)
found through $JAXMLP_DATA_DIR, one epoch of a 784-8-10 MLP, so most cells reuse programs compiled
by earlier ones. ``bench`` runs with ``jaxmlp.bench.run_bench`` replaced by a recorder (its rows take
~15 s to compile even at toy sizes; tests/test_bench.py times them), so the matrix checks that every
bench flag reaches it. ``download`` fetches from a ``file://`` mirror whose files the registry is
patched to expect. ``--devices 2`` needs two devices, which one CPU process cannot grow after JAX
started: ``test_devices_mode`` runs those cells in a child process with two forced CPU devices.
"""
from __future__ import annotations

import json
import os
import subprocess
import sys
import textwrap

import pytest
from _matrix import (
    CHANGES,
    EDGES,
    MODES,
    REFUSED,
    Cell,
    _compared,
    _options,
    _options_for,
    _subcommands,
    all_cells,
    assert_one_line_error,
    call,
    make_world,
    values_of,
)

OURS = ("train", "notebook-exact", "finetune", "resume", "eval", "predict")  # tests/test_matrix_groups.py: the rest
CELLS = all_cells(OURS)


@pytest.fixture(scope="module")
def world(tmp_path_factory):
    yield from make_world(tmp_path_factory)


def test_every_flag_has_a_cell():
    """Each flag of each subcommand has a value in every mode of that subcommand (a new flag without one
    fails here), and every mode's base run works."""
    missing = [f"{mode}: {option}" for mode, spec in MODES.items() for option in _options(spec.command)
               if not values_of(mode, option)]
    assert not missing, "flags without a matrix cell: " + ", ".join(missing)
    assert set(MODES[m].command for m in MODES) | {"presets"} == set(_subcommands()), "a subcommand without a mode"


@pytest.mark.parametrize("cell", CELLS, ids=[c.id for c in CELLS])
def test_cell(world, cell: Cell):
    """The flag either changes what the run produces or is refused in one line before any work."""
    run = world.run(cell.mode, _options_for(cell, True))
    if cell.expectation() == REFUSED:
        assert_one_line_error(run)
        return
    assert run["rc"] == 0, f"{run['argv']}: exit {run['rc']}\n{run['stderr']}"
    reference = world.run(cell.mode, _options_for(cell, False))  # may fail: the flag is what makes it work
    assert _compared(run) != _compared(reference), f"{' '.join(run['argv'])}: the same as without {cell.option}"


@pytest.mark.parametrize("mode", OURS)
def test_base_run(world, mode):
    """Every mode's base command works (so a cell's reference failing is the cell's own context)."""
    run = world.run(mode, dict(MODES[mode].base))
    assert run["rc"] == 0, f"{run['argv']}\n{run['stderr']}"


@pytest.mark.parametrize("mode,what,subst,expect", EDGES, ids=[f"{m}:{w}" for m, w, _, _ in EDGES])
def test_edge(world, mode, what, subst, expect):
    positional = tuple(subst.get(p, p) for p in MODES[mode].positional)
    run = world.run(mode, dict(MODES[mode].base), positional)
    if expect == REFUSED:
        assert_one_line_error(run)
    else:
        assert run["rc"] == 0, run["stderr"]
        assert run["stdout"] != world.run(mode, dict(MODES[mode].base))["stdout"]


def test_the_issue_cases_run_or_refuse_in_one_line(world):
    """The combinations the issue named, as it wrote them, with what each now does. (Those that are also
    cells: batch size past the data with --ensemble, --classes, sweep, --devices; --notebook-exact --hidden;
    sweep --random; divergence in tests/test_matrix_groups.py.)"""
    ok = {("train", "--batch-size", "128"), ("train", "--arch", "cnn", "--plot-dir", "p"),
          ("train", "--ensemble", "2", "--chunk-steps", "4")}  # refused until ensembles could stop between chunks
    refused = {
        ("train", "--val-split", "0.99999"), ("train", "--val-split", "0.999999"),
        ("train", "--notebook-exact", "--chunk-steps", "4"),
        ("train", "--notebook-exact", "--num-processes", "1"), ("train", "--save-every", "5"),
        ("predict", "@IMAGES", "--load", "@CK", "--json", "--format", "csv"),
        ("bench", "--train-size", "64", "--batch-size", "128", "--synthetic"),
        ("bench", "--out", "a.json", "--metrics-out", "b.json"),
        ("train", "--arch", "cnn", "--hidden", "16"), ("train", "--arch", "cnn", "--init", "glorot"),
        ("train", "--warmup-epochs", "1", "--epochs", "2"),
    }
    small = ["--epochs", "1", "--quiet"]
    for argv in sorted(ok | refused):
        args = [world.subst.get(a, a) for a in argv]
        extra = small if args[0] in ("train", "sweep") else []
        if args[0] in ("train", "sweep") and "--hidden" not in args and "cnn" not in args:
            extra = [*extra, "--hidden", "8"]
        rc, out, err = call([*args, *extra], world.root)
        if argv in ok:
            assert rc == 0, (argv, err)
        else:
            assert_one_line_error({"rc": rc, "stderr": err, "argv": argv, "stdout": out})


# ---------------------------------------------------------------- --devices 2, in a child process

DEVICES_CELLS = [  # (extra flags, expectation)
    ([], CHANGES), (["--batch-size", "128"], CHANGES), (["--batch-size", "1"], REFUSED),
    (["--batch-size", "33"], REFUSED), (["--val-split", "0.25"], CHANGES), (["--ensemble", "2"], CHANGES),
    (["--notebook-exact"], REFUSED),
    (["--val-split", "0.999999"], REFUSED),
]

_CHILD = textwrap.dedent("""
    import io, json, sys
    from contextlib import redirect_stderr, redirect_stdout
    from jaxmlp.cli import main
    results = []
    for argv in json.loads(sys.argv[1]):
        out, err = io.StringIO(), io.StringIO()
        with redirect_stdout(out), redirect_stderr(err):
            rc = main(argv)
        results.append([rc, out.getvalue(), err.getvalue()])
    print(json.dumps(results))
""")


def test_devices_mode(world):
    """--devices 2 on two forced CPU devices: batch sizes (1 and 33 do not split; 128 is one batch of all
    64), a validation split and an ensemble (its members over the devices) train; the modes that cannot
    split are refused."""
    base = ["train", "--devices", "2", "--hidden", "8", "--epochs", "1", "--batch-size", "32", "--quiet"]
    argvs = [base + extra for extra, _ in DEVICES_CELLS] + [["train", "--hidden", "8", "--epochs", "1",
                                                             "--batch-size", "32", "--quiet"]]
    env = {**os.environ, "XLA_FLAGS": "--xla_force_host_platform_device_count=2", "JAX_PLATFORMS": "cpu",
           "JAXMLP_DATA_DIR": str(world.root / "data")}
    proc = subprocess.run([sys.executable, "-c", _CHILD, json.dumps(argvs)], capture_output=True, text=True,
                          env=env, timeout=300, cwd=world.root)
    assert proc.returncode == 0, proc.stderr[-3000:]
    results = json.loads(proc.stdout.splitlines()[-1])
    one_device = results.pop()
    for (extra, expect), (rc, out, err) in zip(DEVICES_CELLS, results):
        run = {"rc": rc, "stdout": out, "stderr": err, "argv": base + extra}
        if expect == REFUSED:
            assert_one_line_error(run)
        else:
            assert rc == 0, (extra, err)
            if extra:
                assert out != results[0][1], extra
    # The same global batches on two devices as on one: the same test scores (to printed digits).
    assert results[0][1] == one_device[1]
