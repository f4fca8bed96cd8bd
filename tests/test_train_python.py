"""From Python, the command line's guarantees (issue 29): ``jaxmlp.train`` resumes exactly from a path,
a ``Path``, an ``Interrupted`` or a ``TrainState`` and refuses a changed setup; it puts the process's
signal handlers back whatever ends it; it compiles a program once per computation and keeps a bounded
number; and a wrong argument is one message that names the fix."""

import dataclasses
import os
import signal

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from conftest import make_synthetic_dataset
from test_engine import linear_data, linear_loss, linear_params  # the engine tests' tiny linear model

import jaxmlp
from jaxmlp import engine, optim, runs
from jaxmlp._compat import enable_x64
from jaxmlp.checkpoint import load_params, read_meta, save_checkpoint
from jaxmlp.config import TrainConfig


def leaves_equal(a, b) -> bool:
    la, lb = jax.tree_util.tree_leaves(a), jax.tree_util.tree_leaves(b)
    return len(la) == len(lb) and all(np.array_equal(np.asarray(x), np.asarray(y)) for x, y in zip(la, lb))


def losses_of(history):
    return [(r["epoch"], r["loss"]) for r in history]


SETUP = dict(epochs=2, batch_size=8, key=jax.random.PRNGKey(3), chunk_steps=3)


def interrupted_run(path=None):
    """A run of 2 epochs of 12 steps stopped by SIGINT after its second chunk: at epoch 0, step 6."""
    calls = []

    def send_sigint(event):
        if event.kind == "chunk":
            calls.append(1)
            if len(calls) == 2:
                os.kill(os.getpid(), signal.SIGINT)

    with pytest.raises(engine.Interrupted) as stop:
        jaxmlp.train(linear_loss, linear_params(), optim.momentum(0.1), linear_data(), **SETUP,
                     handlers=[send_sigint], checkpoint=path)
    assert (int(stop.value.state.epoch), int(stop.value.state.step)) == (0, 6)
    return stop.value


@pytest.fixture
def whole():
    return jaxmlp.train(linear_loss, linear_params(), optim.momentum(0.1), linear_data(), **SETUP)


def resume(source, **changes):
    return jaxmlp.train(linear_loss, linear_params(), optim.momentum(0.1), linear_data(), **{**SETUP, **changes},
                        resume=source)


# ---------------------------------------------------------------- 1. resume


def test_a_path_object_resumes_the_history_and_the_partial_epoch(tmp_path, whole):
    """resume=Path(...) (not only a str) reads the meta: the stopped epoch's loss counts its first six
    steps, so the history equals the uninterrupted run's exactly, as does the state."""
    interrupted_run(str(tmp_path / "stop.npz"))
    resumed = resume(tmp_path / "stop.npz")
    assert leaves_equal(resumed.state, whole.state)
    assert losses_of(resumed.history) == losses_of(whole.history)


def test_an_interrupted_resumes_exactly_and_its_state_alone_loses_only_the_history(whole):
    """resume=the Interrupted itself (no checkpoint) continues the history and the partial epoch; its
    bare ``.state`` continues the params bit for bit but cannot know the epochs' losses before it."""
    stop = interrupted_run()
    assert stop.saved is None and stop.history == [] and stop.partial["loss_sum"] > 0
    resumed = resume(stop)
    assert leaves_equal(resumed.state, whole.state)
    assert losses_of(resumed.history) == losses_of(whole.history)
    bare = resume(stop.state)
    assert leaves_equal(bare.state, whole.state) and bare.history[0]["loss"] < whole.history[0]["loss"]


def test_a_changed_batch_size_data_or_key_is_refused_unless_allowed(tmp_path):
    """Resuming a batch-8 checkpoint with batch_size=16, other data or another key is a ValueError
    naming the saved and the given value; allow_changes=True continues with the given ones."""
    path = tmp_path / "stop.npz"
    stop = interrupted_run(str(path))
    with pytest.raises(ValueError, match=r"batch_size: saved 8, given 16.*allow_changes=True"):
        resume(path, batch_size=16)
    with pytest.raises(ValueError, match=r"batch_size: saved 8, given 16"):
        resume(stop, batch_size=16)
    with pytest.raises(ValueError, match=r"data x: saved float32\[96, 12\] sample \w+, given float32\[96, 12\]"):
        jaxmlp.train(linear_loss, linear_params(), optim.momentum(0.1), linear_data(seed=1), **SETUP, resume=path)
    with pytest.raises(ValueError, match=r"key: saved \[0, 3\], given \[0, 4\]"):
        resume(path, key=jax.random.PRNGKey(4))
    with pytest.raises(ValueError, match=r"key: saved \[0, 3\], given \[0, 4\]"):
        resume(stop.state, key=jax.random.PRNGKey(4))
    changed = resume(path, batch_size=16, key=jax.random.PRNGKey(4), allow_changes=True)
    assert np.array_equal(np.asarray(changed.state.key), np.asarray(jax.random.PRNGKey(4)))
    assert int(changed.state.epoch) == 2 and len(changed.history) == 2
    with pytest.raises(ValueError, match="resume: expected a checkpoint path, a TrainState or an Interrupted"):
        resume(changed)  # a TrainResult: its .state is the thing to pass


def test_load_params_reads_a_train_checkpoint_and_a_command_line_one(tmp_path):
    """load_params needs no template: a train checkpoint's nested dict/list/tuple params come back with
    their structure (the tuple as a list) and bits; a `jaxmlp train --save` checkpoint's list of
    {"W", "b"} layers equals what load_model restores through its config."""
    x, y = linear_data()
    params = {"layers": [{"w": jnp.zeros((12, 3))}, {"w": jnp.eye(3)}],
              "pair": (jnp.zeros(3), jnp.ones((), jnp.float16))}

    def loss_fn(p, x, y, key):
        logits = x @ p["layers"][0]["w"] @ p["layers"][1]["w"] + p["pair"][0] * p["pair"][1]
        return jaxmlp.cross_entropy(logits, y)

    res = jaxmlp.train(loss_fn, params, optim.sgd(0.1), (x, y), batch_size=32, checkpoint=tmp_path / "run.npz")
    got = load_params(tmp_path / "run.npz")
    assert set(got) == {"layers", "pair"} and isinstance(got["layers"], list) and isinstance(got["pair"], list)
    assert leaves_equal(got, res.params) and got["pair"][1].dtype == jnp.float16
    data = make_synthetic_dataset(64, 16)
    cfg = TrainConfig(hidden=(8,), epochs=1, batch_size=32)
    fitted = runs.fit(cfg, data)
    save_checkpoint(tmp_path / "cli.npz", fitted.state, runs.run_meta(cfg, 784, 10, fitted.history))
    cli = load_params(tmp_path / "cli.npz")
    assert isinstance(cli, list) and set(cli[0]) == {"W", "b"}
    assert leaves_equal(cli, runs.load_model(tmp_path / "cli.npz").params)


# ---------------------------------------------------------------- 2. signals


@pytest.fixture
def default_sigint():
    """SIGINT handled by Python's default handler (KeyboardInterrupt) for the test, as in a notebook."""
    before = signal.signal(signal.SIGINT, signal.default_int_handler)
    yield
    signal.signal(signal.SIGINT, before)


def _raise(event):
    if event.kind == "chunk":
        raise RuntimeError("a broken handler")


@pytest.mark.parametrize("how", ["handler", "checkpoint"])
def test_an_error_inside_train_puts_the_signal_handlers_back(tmp_path, default_sigint, how):
    """A handler that raises, or a checkpoint that cannot be written (a folder): the error propagates and
    SIGINT is Python's own handler again, so Ctrl-C in the notebook raises KeyboardInterrupt."""
    original = signal.getsignal(signal.SIGINT)
    kw = {"handlers": [_raise]} if how == "handler" else {"checkpoint": tmp_path}
    with pytest.raises((RuntimeError, ValueError)):
        jaxmlp.train(linear_loss, linear_params(), optim.sgd(0.1), linear_data(), batch_size=32, **kw)
    assert signal.getsignal(signal.SIGINT) is original
    assert signal.getsignal(signal.SIGTERM) is not None and "SignalStop" not in repr(signal.getsignal(signal.SIGTERM))
    with pytest.raises(KeyboardInterrupt):
        os.kill(os.getpid(), signal.SIGINT)


def test_an_error_inside_fit_puts_the_signal_handlers_back(default_sigint, synthetic):
    """``fit`` with the command line's ``SignalStop`` and a handler that raises: the engine's loop gives
    every handler its "end" event on any error, so the process's SIGINT handler is back."""
    from jaxmlp.config import TrainConfig
    from jaxmlp.handlers import SignalStop

    original = signal.getsignal(signal.SIGINT)
    with pytest.raises(RuntimeError, match="a broken handler"):
        jaxmlp.fit(TrainConfig(hidden=(8,), epochs=1, batch_size=128), synthetic, handlers=[SignalStop(), _raise])
    assert signal.getsignal(signal.SIGINT) is original
    with pytest.raises(KeyboardInterrupt):
        os.kill(os.getpid(), signal.SIGINT)


def test_signals_false_leaves_the_process_handlers_alone(default_sigint):
    """With signals=False the run never installs its own handlers: during it SIGINT is still the
    process's (KeyboardInterrupt)."""
    seen = []
    res = jaxmlp.train(linear_loss, linear_params(), optim.sgd(0.1), linear_data(), batch_size=32, signals=False,
                       handlers=[lambda event: seen.append(signal.getsignal(signal.SIGINT))])
    assert res.reason == "done" and seen and all(s is signal.default_int_handler for s in seen)


# ---------------------------------------------------------------- 3. compiles and memory


@dataclasses.dataclass
class PlainSGD:
    """An unhashable optimizer (a plain @dataclass has __hash__ = None) in optax's protocol."""

    lr: float

    def init(self, params):
        return ()

    def update(self, grads, state, params=None):
        return jax.tree_util.tree_map(lambda g: -self.lr * g, grads), state


def test_an_optimizer_built_twice_compiles_once():
    """optim.sgd(0.1) built twice is the same computation: the second train compiles nothing."""
    data = linear_data(n=37)
    jaxmlp.train(linear_loss, linear_params(), optim.sgd(0.1), data, batch_size=8)
    again = jaxmlp.train(linear_loss, linear_params(), optim.sgd(0.1), data, batch_size=8)
    assert again.compile_seconds == 0.0


def test_an_unhashable_dataclass_optimizer_trains_like_sgd():
    """A @dataclass optimizer (unhashable) trains through train and matches optim.sgd bit for bit."""
    with pytest.raises(TypeError):
        hash(PlainSGD(0.1))
    ours = jaxmlp.train(linear_loss, linear_params(), PlainSGD(0.1), linear_data(), epochs=2, batch_size=16)
    sgd = jaxmlp.train(linear_loss, linear_params(), optim.sgd(0.1), linear_data(), epochs=2, batch_size=16)
    assert leaves_equal(ours.params, sgd.params)


def test_programs_are_keyed_by_what_they_compute_and_bounded(monkeypatch):
    """compile_program finds a program again by its HLO, whatever function object built it; captured
    arrays are part of it (equal text, equal numbers); at most MAX_PROGRAMS are kept, the least
    recently used dropped first."""
    monkeypatch.setattr(engine, "MAX_PROGRAMS", 2)
    monkeypatch.setattr(engine, "_COMPILED", {})
    x = jnp.zeros(1000)

    def adding(c):
        return jax.jit(lambda x: x + c)  # a new function object every time

    first, second = np.arange(1000.0, dtype=np.float32), np.arange(1000.0, dtype=np.float32)
    second[999] = -1.0
    (one, s1), (two, s2) = engine.compile_program(adding(first), {}, x), engine.compile_program(adding(second), {}, x)
    assert s1 > 0 and s2 > 0 and float(one(x)[999]) == 999.0 and float(two(x)[999]) == -1.0
    assert engine.compile_program(adding(second.copy()), {}, x)[1] == 0.0
    assert engine.compile_program(adding(np.ones(1000, np.float32)), {}, x)[1] > 0
    assert len(engine._COMPILED) == 2
    assert engine.compile_program(adding(first), {}, x)[1] > 0  # the least recently used was dropped


def _rss_mib() -> float:
    with open("/proc/self/statm") as f:
        return int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE") / 2**20


@pytest.mark.slow  # 25 runs, ~5 s
@pytest.mark.skipif(not os.path.exists("/proc/self/statm"), reason="reads the RSS from /proc")
def test_fresh_optimizers_do_not_grow_memory():
    """25 train calls, each with a fresh optimizer, keep one program: after the first few calls the
    RSS grows by well under one program (~2.5 MiB here) per call (it grew ~60 MiB when every call
    kept its own)."""
    data = linear_data(n=64, d=8)
    params = linear_params(d=8)
    rss = []
    for _ in range(25):
        jaxmlp.train(linear_loss, params, optim.sgd(0.1), data, batch_size=16, chunk_steps=4)
        rss.append(_rss_mib())
    assert rss[-1] - rss[4] < 12.0, rss


# ---------------------------------------------------------------- 4. messages that name the fix


def test_a_loss_of_the_wrong_form_names_the_fix():
    """A tuple without has_aux, a scalar with has_aux, a per-example loss: one ValueError each."""
    def pair(p, x, y, key):
        return linear_loss(p, x, y, key), {}

    def per_example(p, x, y, key):
        return jnp.sum((x @ p["w"]) ** 2, axis=1)

    cases = [(pair, False, "loss_fn returned a tuple of 2; pass has_aux=True"),
             (linear_loss, True, r"with has_aux=True it must return \(loss, aux\)"),
             (per_example, False, r"loss of shape \(32,\); it must be a scalar")]
    for loss_fn, has_aux, message in cases:
        with pytest.raises(ValueError, match=message):
            jaxmlp.train(loss_fn, linear_params(), optim.sgd(0.1), linear_data(), batch_size=32, has_aux=has_aux)


def test_a_three_argument_loss_names_the_signature():
    def loss3(params, x, y):
        return linear_loss(params, x, y, None)

    with pytest.raises(ValueError, match=r"loss_fn: must take \(params, x, y, key\), got loss3\(params, x, y\)"):
        jaxmlp.train(loss3, linear_params(), optim.sgd(0.1), linear_data())


def test_a_string_leaf_in_params_is_named_by_its_path():
    params = {**linear_params(), "meta": {"name": "my-model"}}
    with pytest.raises(ValueError, match=r"params\['meta'\]\['name'\]: str 'my-model' is not an array of numbers"):
        jaxmlp.train(linear_loss, params, optim.sgd(0.1), linear_data())


def test_numpy_integer_counts_are_accepted_and_bad_chunk_steps_refused():
    """batch_size, epochs and chunk_steps take NumPy integers; a chunk_steps that is not a positive
    integer (-1 would never finish, 2.5 was a bare TypeError) is a ValueError naming it."""
    res = jaxmlp.train(linear_loss, linear_params(), optim.sgd(0.1), linear_data(), batch_size=np.int64(32),
                       epochs=np.int64(2), chunk_steps=np.int32(2))
    assert [r["epoch"] for r in res.history] == [1, 2]
    for bad in (-1, 0, 2.5, True, "4"):
        with pytest.raises(ValueError, match=f"chunk_steps: expected a positive integer, got {bad!r}"):
            jaxmlp.train(linear_loss, linear_params(), optim.sgd(0.1), linear_data(), chunk_steps=bad)
    with pytest.raises(ValueError, match="epochs: expected a positive integer"):
        jaxmlp.train(linear_loss, linear_params(), optim.sgd(0.1), linear_data(), epochs=np.float64(2))


def test_a_typed_key_trains_checkpoints_and_resumes(tmp_path):
    """key=jax.random.key(3) draws what PRNGKey(3) draws, saves (as its data) and resumes typed."""
    args = (linear_loss, linear_params(), optim.momentum(0.1), linear_data())
    raw = jaxmlp.train(*args, epochs=2, batch_size=8, key=jax.random.PRNGKey(3))
    first = jaxmlp.train(*args, epochs=1, batch_size=8, key=jax.random.key(3), checkpoint=tmp_path / "k.npz")
    assert read_meta(tmp_path / "k.npz")["key_impl"] == "threefry2x32"
    resumed = jaxmlp.train(*args, epochs=2, batch_size=8, resume=tmp_path / "k.npz")
    assert jax.dtypes.issubdtype(first.state.key.dtype, jax.dtypes.prng_key)
    assert jax.dtypes.issubdtype(resumed.state.key.dtype, jax.dtypes.prng_key)
    assert leaves_equal(resumed.params, raw.params) and losses_of(resumed.history) == losses_of(raw.history)
    again = jaxmlp.train(*args, epochs=2, batch_size=8, key=jax.random.key(3), resume=tmp_path / "k.npz")
    assert leaves_equal(again.params, raw.params)


def test_bfloat16_inputs_keep_float32_losses_and_float64_stays_float64():
    """The losses buffer is at least float32: a loss computed in float32 from bfloat16 inputs reaches the
    history unrounded; float64 inputs keep float64 losses (bit-exact histories)."""
    x, y = linear_data(n=32)
    xb = x.astype(jnp.bfloat16)

    def loss_fn(params, x, y, key):
        return linear_loss(params, x.astype(jnp.float32), y, key) * 1.001

    res = jaxmlp.train(loss_fn, linear_params(), optim.sgd(0.0), (xb, y), batch_size=32)
    want = float(loss_fn(linear_params(), xb, y, None))
    assert res.history[0]["loss"] == pytest.approx(want, rel=1e-6)
    assert float(jnp.asarray(want, jnp.bfloat16)) != pytest.approx(want, rel=1e-3)  # bfloat16 would round it
    with enable_x64(True):
        spec = engine.FunctionTask(linear_loss, optim.sgd(0.1), batch_size=16)
        params = jax.tree_util.tree_map(lambda a: a.astype(jnp.float64), linear_params())
        state = engine.init_state(params, spec.optimizer, jax.random.PRNGKey(0))
        order = engine.epoch_order(state.key, state.epoch, 32)
        _, losses = engine.run_chunk(state, order, x.astype(jnp.float64), y, {}, jnp.int32(2), spec=spec, capacity=2)
        assert losses.dtype == jnp.float64


def test_load_model_of_a_train_checkpoint_points_to_load_params(tmp_path):
    """A ``jaxmlp.train`` checkpoint has no TrainConfig: ``load_model`` says to use ``load_params``,
    which gives the params back."""
    from jaxmlp.checkpoint import CheckpointError

    path = tmp_path / "ck.npz"
    res = jaxmlp.train(linear_loss, linear_params(), optim.sgd(0.1), linear_data(), batch_size=32, checkpoint=path)
    with pytest.raises(CheckpointError, match=r"holds no TrainConfig; read its params with jaxmlp.load_params"):
        jaxmlp.load_model(path)
    loaded = jaxmlp.load_params(path)
    assert all(np.array_equal(a, b) for a, b in zip(jax.tree_util.tree_leaves(loaded),
                                                    jax.tree_util.tree_leaves(res.params)))

