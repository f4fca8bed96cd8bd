"""The engine: the jitted step, chunks and fused epochs, compilation counts, fit, stopping and resuming
anywhere bit for bit, float64 kept to its scope, evaluation."""
import dataclasses
import math
import os
import signal

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from conftest import make_synthetic_dataset

from jaxmlp import engine, handlers, runs
from jaxmlp.backprop import manual_grad
from jaxmlp.config import TrainConfig, hparams
from jaxmlp.engine import DivergenceError, Interrupted, batch_slices, epoch_loss
from jaxmlp.evaluation import evaluate
from jaxmlp.model import forward, init_params
from jaxmlp.models import MLP
from jaxmlp.runs import TrainSpec, fit, prepare, split_validation
from jaxmlp.steps import sgd_step


def _toy(n=70, d=12, c=4, seed=0):
    k1, k2, k3 = jax.random.split(jax.random.PRNGKey(seed), 3)
    params = init_params(k1, [d, 9, 7, c], "he", jnp.float64)
    x = jax.random.uniform(k2, (n, d), jnp.float64)
    y = jax.random.randint(k3, (n,), 0, c)
    return params, x, y


def _leaves_close(a, b, rtol):
    for u, v in zip(jax.tree_util.tree_leaves(a), jax.tree_util.tree_leaves(b)):
        np.testing.assert_allclose(u, v, rtol=rtol, atol=1e-14)


def _identical(a, b) -> bool:
    la, lb = jax.tree_util.tree_leaves(a), jax.tree_util.tree_leaves(b)
    return len(la) == len(lb) and all(np.array_equal(np.asarray(u), np.asarray(v)) for u, v in zip(la, lb))


def _state(params, spec, hp, key=0):
    return engine.init_state(params, runs.make_optimizer(spec, hp), jax.random.PRNGKey(key))


def test_sgd_step_is_p_minus_lr_grad(x64):
    """sgd_step returns params - lr * grad (the notebook's backprop as the witness) and the pre-update loss."""
    params, x, y = _toy()
    new, value = sgd_step(params, x, y, 0.3)
    want = jax.tree_util.tree_map(lambda p, g: p - 0.3 * g, params, jax.jit(manual_grad)(params, x, y))
    _leaves_close(new, want, 1e-12)
    assert float(value) > 0


def test_batch_slices_keep_the_short_last_batch():
    """70 examples in batches of 32: 32, 32 and a final 6; nothing dropped."""
    assert [s.stop - s.start for s in batch_slices(70, 32)] == [32, 32, 6]


def test_a_chunk_equals_the_python_loop_of_steps(x64):
    """A chunk running a whole epoch (short last batch included) equals the loop of sgd_step calls over
    epoch_order's permutation, to round-off (float64: same ops, only XLA's fusion differs); so does the
    fused epoch, and both report the same per-batch losses."""
    params, x, y = _toy()
    spec, hp = TrainSpec(batch_size=32), hparams(None, jnp.float64, lr=0.2)
    state = _state(params, spec, hp)
    order = engine.epoch_order(state.key, state.epoch, 70)
    new, losses = engine.run_chunk(state, order, x, y, hp, jnp.int32(3), spec=spec, capacity=3)
    ref, ref_losses = params, []
    for s in batch_slices(70, 32):
        ref, value = sgd_step(ref, x[order[s]], y[order[s]], 0.2)
        ref_losses.append(float(value))
    np.testing.assert_allclose(losses, ref_losses, rtol=1e-12)
    _leaves_close(new.params, ref, 1e-11)
    assert (int(new.epoch), int(new.step)) == (1, 0)
    fused, fused_losses = engine.run_fused_epoch(state, x, y, hp, spec=spec)
    _leaves_close(fused.params, ref, 1e-11)
    np.testing.assert_allclose(fused_losses, ref_losses, rtol=1e-12)


def test_chunks_of_any_size_give_the_same_state_bit_for_bit(x64):
    """Advancing an epoch as 1+1+1 steps, 2+1 or 3 at once gives identical params and losses: a chunk
    boundary changes nothing, so a run can stop at any step."""
    params, x, y = _toy()
    spec, hp = TrainSpec(batch_size=32, model=MLP(dropout=0.2), optimizer="adam"), hparams(None, jnp.float64, lr=0.01)
    results = []
    for sizes in ([1, 1, 1], [2, 1], [3]):
        state = _state(params, spec, hp)
        order = engine.epoch_order(state.key, state.epoch, 70)
        losses = []
        for k in sizes:
            state, out = engine.run_chunk(state, order, x, y, hp, jnp.int32(k), spec=spec, capacity=3)
            losses.extend(np.asarray(out[:k]))
        results.append((state, losses))
    for state, losses in results[1:]:
        assert _identical(state, results[0][0]) and losses == results[0][1]


def test_manual_and_autodiff_chunks_agree(x64):
    """--grad manual (the notebook's backprop) and jax.grad train to the same params."""
    params, x, y = _toy()
    hp = hparams(None, jnp.float64, lr=0.2)
    outs = []
    for grad in ("manual", "autodiff"):
        spec = TrainSpec(batch_size=16, grad=grad)
        state = _state(params, spec, hp)
        order = engine.epoch_order(state.key, state.epoch, 70)
        outs.append(engine.run_chunk(state, order, x, y, hp, jnp.int32(5), spec=spec, capacity=5)[0].params)
    _leaves_close(outs[0], outs[1], 1e-10)


@pytest.mark.parametrize("extra", [dict(l2=0.01), dict(l2=0.01, dropout=0.3), dict(activation="tanh", l2=0.02)],
                         ids=["l2", "l2-dropout", "tanh-l2"])
def test_manual_gradients_cover_l2_dropout_and_activations(extra):
    """--grad manual with --l2 (and dropout, and another activation) trains what jax.grad trains, to
    1e-6 in float64 (float64 round-off over 16 steps; a dropped term would differ at 1e-3), and
    differs from the run without the L2 term: the manual path no longer drops it."""
    data = make_synthetic_dataset(128, 32)
    base = TrainConfig(hidden=(16,), epochs=2, batch_size=16, lr=0.1, init="he", dtype="float64", **extra)
    with engine.precision("float64"):
        manual = fit(dataclasses.replace(base, grad="manual"), data)
        auto = fit(base, data)
        no_l2 = fit(dataclasses.replace(base, grad="manual", l2=0.0), data)
    _leaves_close(manual.params, auto.params, 1e-6)
    far = max(float(np.max(np.abs(np.asarray(a) - np.asarray(b))))
              for a, b in zip(jax.tree_util.tree_leaves(manual.params), jax.tree_util.tree_leaves(no_l2.params)))
    assert far > 1e-4


def test_epoch_loss_weights_the_short_batch_and_sums_over_chunks():
    """The example-weighted mean (short batch by its size); sums of chunks starting anywhere add up."""
    losses = np.array([1.0, 2.0, 4.0])
    assert epoch_loss(losses, 70, 32) == pytest.approx((32 * 1 + 32 * 2 + 6 * 4) / 70)
    parts = engine.loss_sum(losses[:2], 70, 32) + engine.loss_sum(losses[2:], 70, 32, first_step=2)
    assert parts == pytest.approx(70 * epoch_loss(losses, 70, 32))


def _count_compiles():
    events = []

    def listener(name, *args, **kwargs):
        if "backend_compile" in name:
            events.append(name)

    jax.monitoring.register_event_duration_secs_listener(listener)
    return events


def test_nothing_recompiles_across_epochs_chunk_sizes_lrs_and_runs(monkeypatch):
    """fit compiles the chunk program once, from shapes, on its background thread: the executable it
    builds is the one that runs; chunk sizes picked at run time, later epochs, a new lr (traced) and a
    second run with the same shapes compile nothing new."""
    monkeypatch.setattr(engine, "_COMPILED", {})
    data = make_synthetic_dataset(256, 64)
    cfg = TrainConfig(hidden=(24,), epochs=3, batch_size=50, init="he", optimizer="adam", lr=1e-3)
    events = _count_compiles()
    first = fit(cfg, data)
    assert first.compile_seconds > 0 and len(engine._COMPILED) == 1
    n = len(events)
    assert n >= 1, "the compile listener saw nothing, so this test would prove nothing"
    again = fit(dataclasses.replace(cfg, lr=5e-3, seed=3), data, chunk_steps=2)
    assert again.compile_seconds == 0.0 and len(engine._COMPILED) == 1
    assert len(events) == n, "a second run with the same shapes compiled something"
    assert not np.array_equal(again.params[0]["W"], first.params[0]["W"])


def test_evaluate_matches_numpy(x64):
    """evaluate returns the mean cross-entropy and the accuracy computed independently in numpy."""
    params, x, y = _toy(n=50)
    logits = np.asarray(forward(params, x))
    logp = logits - logits.max(1, keepdims=True)
    logp -= np.log(np.exp(logp).sum(1, keepdims=True))
    want_loss = -logp[np.arange(50), np.asarray(y)].mean()
    got_loss, got_acc = evaluate(MLP(), params, x, y, chunk_size=16)
    assert got_loss == pytest.approx(want_loss, rel=1e-12)
    assert got_acc == pytest.approx(float((logits.argmax(1) == np.asarray(y)).mean()))


def test_fit_learns_a_learnable_problem(synthetic):
    """The default recipe (SGD, lr 0.1, batch 32) separates the synthetic classes: >= 95% test accuracy in 3 epochs."""
    result = fit(TrainConfig(hidden=(32,), epochs=3, init="he"), synthetic)
    assert [h["epoch"] for h in result.history] == [1, 2, 3]
    assert result.history[-1]["loss"] < result.history[0]["loss"]
    assert result.test_accuracy >= 0.95


# ---------------------------------------------------------------- stopping anywhere, resuming exactly


CFG = TrainConfig(hidden=(16,), epochs=3, init="he", optimizer="adam", lr=1e-3, dropout=0.1, augment="shift")


@pytest.fixture(scope="module")
def uninterrupted():
    data = make_synthetic_dataset(512, 64)  # 16 steps per epoch
    return data, fit(CFG, data, chunk_steps=4)


class SignalAt:
    """Sends ``signum`` to this process once the run has done ``steps`` steps in all (after that chunk)."""

    def __init__(self, steps: int, signum=signal.SIGINT):
        self.steps, self.signum = steps, signum

    def __call__(self, event):
        done = int(event.state.epoch) * event.run.steps_per_epoch + int(event.state.step)
        if event.kind == "chunk" and done == self.steps:
            os.kill(os.getpid(), self.signum)


def _interrupt(data, path, steps, signum=signal.SIGINT, resume=None):
    hs = [SignalAt(steps, signum), handlers.Checkpointer(path), handlers.SignalStop()]
    with pytest.raises(Interrupted) as stop:
        fit(CFG, data, handlers=hs, resume=resume, chunk_steps=1)
    assert stop.value.signum == signum
    loaded = runs.load_run(path)
    assert int(loaded.state.epoch) * 16 + int(loaded.state.step) == steps
    return loaded


@pytest.mark.parametrize("steps", [1, 7, 15, 16], ids=["first-step", "mid-epoch", "last-of-epoch", "epoch-boundary"])
def test_a_signal_stops_at_the_step_and_the_resumed_run_is_bit_exact(tmp_path, uninterrupted, steps):
    """SIGINT after `steps` steps stops at that chunk boundary with that exact step saved; resuming it
    and finishing equals the uninterrupted run bit for bit (params, Adam's state, key, counters) and
    reports the same epoch losses."""
    data, full = uninterrupted
    resume = _interrupt(data, tmp_path / "ck.npz", steps)
    done = fit(CFG, data, resume=resume, chunk_steps=3)
    assert _identical(done.state, full.state)
    assert [h["loss"] for h in done.history] == [h["loss"] for h in full.history]
    assert done.test_accuracy == full.test_accuracy


def test_fit_resumes_from_a_path_or_an_interrupted_and_refuses_other_settings(tmp_path, uninterrupted):
    """``fit(resume=...)`` takes what ``train(resume=...)`` takes: the checkpoint's path, or the
    ``Interrupted`` itself (its state, history and partial epoch); both finish bit for bit as the
    uninterrupted run. A config that differs from the checkpoint's in anything but epochs is refused."""
    data, full = uninterrupted
    path = tmp_path / "ck.npz"
    with pytest.raises(Interrupted) as stop:
        fit(CFG, data, handlers=[SignalAt(7), handlers.Checkpointer(path), handlers.SignalStop()], chunk_steps=1)
    assert len(stop.value.partial) and stop.value.partial["loss_sum"] > 0
    for resume in (path, str(path), stop.value):
        done = fit(CFG, data, resume=resume, chunk_steps=3)
        assert _identical(done.state, full.state), type(resume)
        assert [h["loss"] for h in done.history] == [h["loss"] for h in full.history]
    with pytest.raises(ValueError, match=r"^resume: the checkpoint was trained with TrainConfig.lr 0.001, config "
                                         r"has 0.002 \(only TrainConfig.epochs may change\)$"):
        fit(dataclasses.replace(CFG, lr=2e-3), data, resume=path)
    with pytest.raises(ValueError, match="^resume: expected a checkpoint path"):
        fit(CFG, data, resume={"state": full.state})


def test_sigterm_and_a_resumed_run_resumed_again(tmp_path, uninterrupted):
    """SIGTERM stops like SIGINT; a resumed run stopped again and resumed once more still equals the
    uninterrupted run bit for bit."""
    data, full = uninterrupted
    first = _interrupt(data, tmp_path / "a.npz", 5, signal.SIGTERM)
    second = _interrupt(data, tmp_path / "b.npz", 29, signal.SIGTERM, resume=first)
    done = fit(CFG, data, resume=second)
    assert _identical(done.state, full.state)
    assert [h["loss"] for h in done.history] == [h["loss"] for h in full.history]


def test_a_second_signal_during_the_save_leaves_a_whole_checkpoint(tmp_path, uninterrupted, monkeypatch):
    """A second SIGINT arriving while the stop's checkpoint is written is only counted: the save
    finishes and the file loads; nothing temporary is left."""
    from jaxmlp import fileio

    data, _ = uninterrupted
    real_fsync, sent = fileio.os.fsync, []

    def fsync_with_a_signal(fd):
        if not sent:
            sent.append(1)
            os.kill(os.getpid(), signal.SIGINT)
        return real_fsync(fd)

    monkeypatch.setattr(fileio.os, "fsync", fsync_with_a_signal)
    _interrupt(data, tmp_path / "ck.npz", 6)
    assert sent and [p.name for p in tmp_path.iterdir()] == ["ck.npz"]


def test_float64_stays_in_its_scope_and_numpy_rng_is_untouched(synthetic):
    """After a float64 fit, the process's default dtype is float32 again, jax_enable_x64 is as it was,
    and NumPy's global RNG has not moved; the result's params are float64."""
    before_x64, rng_state = jax.config.jax_enable_x64, np.random.get_state()[1].copy()
    result = fit(TrainConfig(hidden=(8,), epochs=1, dtype="float64", val_split=0.1), synthetic)
    assert result.params[0]["W"].dtype == jnp.float64
    assert jax.config.jax_enable_x64 == before_x64 and jnp.zeros(1).dtype == jnp.float32
    assert (np.random.get_state()[1] == rng_state).all()


# ---------------------------------------------------------------- divergence, validation, config


def test_a_non_finite_loss_is_divergence(synthetic):
    """An absurd learning rate makes the loss non-finite: DivergenceError names the epoch and suggests a lower lr."""
    with pytest.raises(DivergenceError, match=r"epoch \d+.*lower learning rate"):
        fit(TrainConfig(hidden=(32,), epochs=3, lr=1e10, init="he"), synthetic)


def _event(losses, num_classes=10):
    run = type("R", (), {"loss_floor": math.log(num_classes), "steps_per_epoch": 100})()
    state = engine.TrainState(None, None, None, jnp.int32(0), jnp.int32(0))
    return engine.Event("chunk", run, state, state, np.asarray(losses, float), [], 0.0)


def test_the_divergence_rule_catches_a_finite_blow_up():
    """A chunk whose mean loss passes 10x max(the run's first loss, ln C) is divergence, the first chunk
    included; a loss that wanders below that, or a first loss above chance, is not."""
    rule = handlers.DivergenceRule()
    rule(_event([2.3, 2.2]))
    rule(_event([15.0, 20.0]))  # bad, but under 10 x ln(10) = 23
    with pytest.raises(DivergenceError, match="diverged.*divergence=False"):
        rule(_event([4000.0, 4376.0]))
    with pytest.raises(DivergenceError, match="diverged"):
        handlers.DivergenceRule()(_event([2.4, 5e26, 4000.0]))  # blown up within the first chunk
    high_start = handlers.DivergenceRule()
    high_start(_event([40.0]))
    high_start(_event([300.0]))  # under 10 x 40


def test_validation_split_and_early_stopping(synthetic):
    """A 25% validation split holds out 128 of 512 examples, disjoint from training; with patience the run
    keeps the params of its best validation epoch."""
    tr, va = split_validation(512, 0.25, seed=0)
    assert len(va) == 128 and len(tr) == 384 and not set(tr) & set(va)
    result = fit(TrainConfig(hidden=(32,), epochs=6, init="he", val_split=0.25, patience=1, lr=0.5), synthetic)
    best = max(h["val_accuracy"] for h in result.history)
    assert all("val_loss" in h for h in result.history)
    x_val = prepare(synthetic.x_train[va], jnp.float32)
    _, acc = evaluate(MLP(), result.params, x_val, jnp.asarray(synthetic.y_train[va]))
    assert acc == pytest.approx(best)


@pytest.mark.parametrize("bad", [dict(epochs=0), dict(batch_size=-1), dict(lr=0.0), dict(hidden=(0,)),
                                 dict(dropout=1.0), dict(patience=2), dict(init="zeros"), dict(grad="symbolic"),
                                 dict(seed=-1), dict(epochs=2.5), dict(epochs=True), dict(lr="fast"),
                                 dict(optimizer="lion"), dict(dtype="float16"), dict(augment="flip"),
                                 dict(new_head=1), dict(grad="manual", arch="cnn")])
def test_config_validation(bad):
    """Every field is checked from its declaration when the config is built: nonsense is a ValueError naming
    the field (``TrainConfig.name``; the command line words it as the flag)."""
    with pytest.raises(ValueError, match=r"^TrainConfig\.\w+"):
        TrainConfig(**bad)


def test_config_from_dict_refuses_unknown_settings_and_round_trips():
    """from_dict(to_dict(c)) == c; an unknown key or a wrong type is one ValueError naming where."""
    c = TrainConfig(hidden=(64, 32), freeze=(0,), classes=(3, 5), optimizer="adamw").validate()
    assert TrainConfig.from_dict(c.to_dict()) == c
    with pytest.raises(ValueError, match="ck.npz: config: unknown setting 'colour'"):
        TrainConfig.from_dict({**c.to_dict(), "colour": 1}, where="ck.npz: config")
    with pytest.raises(ValueError, match="^config: hidden: "):
        TrainConfig.from_dict({**c.to_dict(), "hidden": [10 ** 12, "x"]})


def test_every_setting_is_a_flag_with_its_default_in_the_help():
    """The CLI's train flags are derived from TrainConfig: each field has a flag whose help shows the
    default (every default except "unset" ones: None, off, empty)."""
    from jaxmlp.cli import build_parser

    train_parser = build_parser()._subparsers._group_actions[0].choices["train"]
    helps = {a.dest: a.help for a in train_parser._actions}
    for f in dataclasses.fields(TrainConfig):
        if not f.metadata["flag"]:
            continue
        assert f.name in helps, f.name
        unset = f.default is None or f.default is False or f.default == ()
        assert unset or "(default: " in helps[f.name], (f.name, helps[f.name])
    assert "(default: 0)" in helps["warmup_epochs"] and "(default: 0.0)" in helps["l2"]
    assert "(default: 128 64)" in helps["hidden"]
