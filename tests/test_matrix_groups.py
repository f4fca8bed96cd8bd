"""The flag matrix (see tests/test_matrix.py) for the modes that train vmapped groups (ensemble, sweep grid
and random) and the tools (bench, gradcheck, download, reproduce, verify): a module of its own so that
xdist's two workers run it beside tests/test_matrix.py. The ensemble's and the sweep's cells share their
compiled programs (two members, their own seeds).
"""
from __future__ import annotations

import re

import pytest
from _matrix import (
    MODES,
    ONE_SEED,
    REFUSED,
    Cell,
    _compared,
    _options_for,
    all_cells,
    assert_one_line_error,
    call,
    make_world,
)

OURS = tuple(m for m in MODES if m not in ("train", "notebook-exact", "finetune", "resume", "eval", "predict"))
CELLS = all_cells(OURS)


@pytest.fixture(scope="module")
def world(tmp_path_factory):
    yield from make_world(tmp_path_factory)


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


def test_divergence_is_judged_alike_for_runs_members_and_the_notebook(world):
    """The same lr diverges a single run, an ensemble member, a sweep member and the notebook's run: the
    single run and the notebook stop with one line; a sweep reports the member and goes on; an ensemble
    whose members all diverged fails in one line; --no-divergence-check lets all of them run."""
    diverging = ["--hidden", "8", "--epochs", "1", "--lr", "200", "--quiet"]
    for argv in (["train"], ["train", "--notebook-exact"], ["train", "--ensemble", "2"]):
        rc, out, err = call([*argv, *diverging], world.root)
        assert_one_line_error({"rc": rc, "stderr": err, "argv": argv, "stdout": out})
        assert "diverged" in err
        rc, out, err = call([*argv, *diverging, "--no-divergence-check"], world.root)
        assert rc == 0, err
    run = world.run("sweep-grid", {**MODES["sweep-grid"].base, **ONE_SEED, "--lr": ["0.1", "200"]})
    assert run["rc"] == 0, run["stderr"]
    assert re.search(r"200\s+diverged\s+-", run["stdout"])
    runs = run["files"]["m.json"]["runs"]
    assert [r["diverged"] for r in runs] == [False, True] and runs[1]["test_accuracy"] is None
