"""The divergence rule (``jaxmlp.divergence``): one function that every judge calls (a run's handlers, a
sweep's members, the notebook's epochs), with the run's recorded start as its reference, kept across
resume, so that a healthy resumed run never trips it and a diverging one always does."""
from __future__ import annotations

import math
from typing import NamedTuple

import jax.numpy as jnp
import numpy as np
import pytest

import jaxmlp
from jaxmlp import handlers, optim
from jaxmlp.checkpoint import read_meta
from jaxmlp.divergence import HEALTHY, NON_FINITE_LOSS, NON_FINITE_PARAMS, ROSE, diverged, reference_loss
from jaxmlp.engine import DivergenceError, Event, TrainState
from jaxmlp.members import diverged_members
from jaxmlp.notebook import _check_divergence

# (losses of a 2-step chunk, reference, params finite, the verdict)
CASES = [
    ([2.3, 2.2], 2.3, True, HEALTHY),
    ([15.0, 20.0], 2.3, True, HEALTHY),         # bad, but under 10 x 2.3
    ([40.0, 30.0], 2.3, True, ROSE),
    ([300.0, 290.0], 40.0, True, HEALTHY),      # a high start: under 10 x 40
    ([2.0, np.nan], 2.3, True, NON_FINITE_LOSS),
    ([np.inf, 2.0], 2.3, False, NON_FINITE_LOSS),  # the loss is named first
    ([2.0, 1.9], 2.3, False, NON_FINITE_PARAMS),
    ([5e26, 4000.0], 2.3, True, ROSE),
]


def test_diverged_gives_each_member_the_single_runs_verdict():
    """Vectorised over members, ``diverged`` gives each row what it gives that row alone; without the
    factor rule only non-finite values count; a reference at or below zero (a loss of unknown scale)
    leaves only the finiteness checks."""
    losses = np.array([c[0] for c in CASES])
    refs = np.array([c[1] for c in CASES])
    finite = np.array([c[2] for c in CASES])
    together = diverged(losses, refs, params_finite=finite)
    alone = [str(diverged(c[0], c[1], params_finite=c[2])) for c in CASES]
    assert list(together) == alone == [c[3] for c in CASES]
    assert [str(r) for r in diverged(losses, refs, rule=False, params_finite=finite)] == [
        HEALTHY if c[3] == ROSE else c[3] for c in CASES]
    assert str(diverged([5.0, 9.0], -1.0)) == HEALTHY and str(diverged([5.0, 9.0], 0.0)) == HEALTHY
    assert reference_loss([0.5, 4.0], math.log(10)).tolist() == [math.log(10), 4.0]


class _Run(NamedTuple):
    loss_floor: float = 0.0
    steps_per_epoch: int = 100


def _chunk_event(losses, first_loss, params_finite=True, history=()) -> Event:
    params = {"w": jnp.ones(3) * (1.0 if params_finite else np.nan)}
    state = TrainState(params, None, None, jnp.int32(0), jnp.int32(0))
    return Event("chunk", _Run(), state, state, np.asarray(losses, float), list(history), 0.0, "",
                 {"first_loss": first_loss})


def _handlers_verdict(losses, reference, params_finite) -> str:
    try:
        for check in handlers.default_checks(True):
            check(_chunk_event(losses, reference, params_finite))
    except DivergenceError as err:
        return "non-finite" if "non-finite" in str(err) else "diverged"
    return "healthy"


def _notebook_verdict(losses, reference) -> str:
    try:
        _check_divergence(np.asarray(losses), reference, 1, True)
    except DivergenceError as err:
        return "non-finite" if "non-finite" in str(err) else "diverged"
    return "healthy"


def test_runs_members_and_the_notebook_judge_alike():
    """The same chunks get the same verdict from a run's checks, a sweep's members and the notebook's
    epochs (the notebook judges losses only: its params follow its losses)."""
    word = {HEALTHY: "healthy", ROSE: "diverged", NON_FINITE_LOSS: "non-finite", NON_FINITE_PARAMS: "non-finite"}
    members = diverged_members(np.array([c[0] for c in CASES]), np.array([c[1] for c in CASES]),
                               np.array([c[2] for c in CASES]))
    assert members.tolist() == [c[3] != HEALTHY for c in CASES]
    for losses, ref, finite, verdict in CASES:
        assert _handlers_verdict(losses, ref, finite) == word[verdict], (losses, ref, finite)
        if finite:
            assert _notebook_verdict(losses, ref) == word[verdict], (losses, ref)


def test_the_run_start_is_the_recorded_one_then_the_history_then_the_chunk():
    """The rule's start: the engine's recorded ``first_loss``, else (a run resumed from a bare state) the
    first epoch record's loss, else the chunk's first loss."""
    event = _chunk_event([0.05, 0.9], 1.1, history=[{"epoch": 1, "loss": 0.7}])
    assert handlers.run_start(event) == 1.1
    assert handlers.run_start(event._replace(partial={})) == 0.7
    assert handlers.run_start(event._replace(partial={}, history=[])) == 0.05


def _noisy_data(n=64, d=8, classes=3, noise=0.1, scale=3.0, seed=1):
    """Separable classes with 10% of the labels flipped: a fitted model's batches of 4 swing from near 0
    (clean) to several nats (a flipped label)."""
    rng = np.random.default_rng(seed)
    y = rng.integers(0, classes, n)
    x = rng.standard_normal((n, d)).astype(np.float32) * 0.3 + np.eye(classes, d, dtype=np.float32)[y] * scale
    flip = rng.random(n) < noise
    y = np.where(flip, (y + rng.integers(1, classes, n)) % classes, y)
    return jnp.asarray(x), jnp.asarray(y.astype(np.int32))


def _linear_loss(params, x, y, key):
    del key
    return jaxmlp.cross_entropy(x @ params["w"] + params["b"], y)


@pytest.fixture
def halfway(tmp_path):
    """8 epochs of a healthy run (batch 4, chunks of 2 steps) saved to a checkpoint."""
    path = tmp_path / "run.npz"
    params = {"w": jnp.zeros((8, 3)), "b": jnp.zeros(3)}
    jaxmlp.train(_linear_loss, params, optim.sgd(0.5), _noisy_data(), epochs=8, batch_size=4, chunk_steps=2,
                 checkpoint=str(path))
    return params, path


def test_a_healthy_run_resumed_mid_run_keeps_its_start_and_never_raises(halfway):
    """The checkpoint records the loss of the run's first step (ln 3 from zero params); the resumed run
    judges against it, not against its own first chunk: that one is ~0.05, and the noisy batches that
    follow pass 10x it, which the old rule called divergence."""
    params, path = halfway
    assert read_meta(path)["partial"]["first_loss"] == pytest.approx(math.log(3))
    seen = []

    def watch(event):
        if event.kind == "chunk":
            seen.append((float(event.losses[0]), float(np.mean(event.losses)), handlers.run_start(event)))

    res = jaxmlp.train(_linear_loss, params, optim.sgd(0.5), _noisy_data(), epochs=14, batch_size=4, chunk_steps=2,
                       resume=str(path), handlers=[watch])
    assert res.reason == "done" and [r["epoch"] for r in res.history] == list(range(1, 15))
    assert [start for _, _, start in seen] == pytest.approx([math.log(3)] * len(seen))
    resumed_first = seen[0][0]
    assert max(mean for _, mean, _ in seen) > 10 * resumed_first  # the old reference would have raised


def test_a_diverging_run_still_raises_fresh_or_resumed(halfway):
    """A huge lr passes 10x the recorded start whether the run is fresh or resumed from the checkpoint."""
    params, path = halfway
    for resume in (None, str(path)):
        with pytest.raises(DivergenceError, match="diverged.*divergence=False"):
            jaxmlp.train(_linear_loss, params, optim.sgd(1e3), _noisy_data(), epochs=14, batch_size=4,
                         chunk_steps=2, resume=resume)
