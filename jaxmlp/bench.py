"""``jaxmlp bench``: the ways of training the notebook's MLP, timed side by side in one process.

Rows, all on the same data: the notebook's NumPy algorithm (float64 weights, float32 inputs, its
forward / backward / update functions); the notebook's loop calling the jitted ``teaching.sgd_step`` on
host minibatches instead; the pre-chunk fused epoch (``engine.fused_epoch``: one ``lax.scan``
program per epoch) and its matmuls alone (how much of the epoch its 32-row products are); the
engine ``runs.fit`` runs (``engine.chunk``, in 4 chunks an epoch and in one) beside it; a vmapped
learning-rate sweep (``sweep.run_group_chunk``: the same chunk under ``vmap``) and a prototype of
the same sweep with the members' first layers as one wide product on the shared minibatch
(``wide_sweep_steps``: plain SGD only, not the engine; measured so that a machine shows whether
that layout would pay off there); a large-batch fused run and that run's matmuls alone, so the
distance between an epoch and its dots shows. Every timing is steady state: programs are compiled
(and the compile time reported) and run once before the clock starts; the best of the repeats is
kept, as ``timeit`` does, because on a shared machine noise only ever adds time. The report names
the machine (CPU model, cores, device).

Work per epoch is counted in matmul FLOPs, for layer sizes d_0..d_L and N examples::

    FLOPs = N * (2 * S  +  2 * S  +  2 * (S - d_0 * d_1)),   S = sum_l d_{l-1} * d_l
              forward   weight grads   activation grads (none for the input layer)

i.e. 454,400 per example and 27.3 GFLOP per MNIST epoch for 784-128-64-10 (elementwise work ignored).
Achieved GFLOP/s are set against a matmul peak measured in the same process (a jitted float32
square matmul).
"""
from __future__ import annotations

import dataclasses
import functools
import os
import platform
import resource
import sys
import time
from collections.abc import Callable
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np

from . import engine, runs, steps as teaching, sweep
from .config import TrainConfig
from .losses import cross_entropy
from .model import forward, relu

# A program built by XLA, or loaded from the persistent compilation cache (the CLI turns that on):
# either way the in-memory jit cache missed.
PROGRAM_BUILD_EVENTS = ("/jax/core/compile/backend_compile_duration", "/jax/compilation_cache/cache_retrieval_time_sec")


# ---------------------------------------------------------------- arithmetic and the machine


def mlp_flops_per_example(layer_sizes) -> int:
    """Matmul FLOPs of one training example (forward + backward) of the MLP ``layer_sizes`` (d0, ...,
    d_L); see the module docstring."""
    s = sum(a * b for a, b in zip(layer_sizes[:-1], layer_sizes[1:]))
    first = layer_sizes[0] * layer_sizes[1]
    return 2 * s + 2 * s + 2 * (s - first)


def matmul_peak(size: int = 2048, repeats: int = 5) -> float:
    """Achieved GFLOP/s of a jitted float32 ``(size, size) @ (size, size)`` on the default device, best
    of ``repeats`` runs after a warm-up."""
    k1, k2 = jax.random.split(jax.random.PRNGKey(0))
    a = jax.random.normal(k1, (size, size), jnp.float32)
    b = jax.random.normal(k2, (size, size), jnp.float32)
    f = jax.jit(jnp.matmul)
    f(a, b).block_until_ready()
    best = _best_of(lambda: f(a, b).block_until_ready(), repeats)
    return 2.0 * size ** 3 / best / 1e9


def machine_info() -> dict:
    """Where the numbers come from: CPU model, cores, backend, device, versions."""
    cpu = platform.processor() or platform.machine()
    try:
        with open("/proc/cpuinfo") as f:
            cpu = next((line.split(":", 1)[1].strip() for line in f if line.startswith("model name")), cpu)
    except OSError:
        pass
    return {"cpu": cpu, "cores": os.cpu_count(), "system": platform.system(), "python": platform.python_version(),
            "backend": jax.default_backend(), "device": str(jax.devices()[0].device_kind),
            "device_count": jax.device_count(), "jax": jax.__version__, "jaxlib": _jaxlib_version(),
            "numpy": np.__version__, "load_average": _load_average()}


def _load_average() -> float | None:
    """The 1-minute load average (runnable processes; above the core count, rows share the CPU with
    other work), or None where the OS has none."""
    try:
        return round(os.getloadavg()[0], 2)
    except (AttributeError, OSError):
        return None


def _jaxlib_version() -> str:
    try:
        import jaxlib

        return str(jaxlib.__version__)
    except (ImportError, AttributeError):
        return "unknown"


def peak_rss_mb() -> float:
    """This process's peak resident memory so far, in MiB (on Linux the kernel's VmHWM, which a test
    can reset by writing 5 to /proc/self/clear_refs; elsewhere getrusage's maximum)."""
    try:
        with open("/proc/self/status") as f:
            return next(int(line.split()[1]) for line in f if line.startswith("VmHWM:")) / 1024
    except (OSError, StopIteration, ValueError, IndexError):
        rss = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
        return rss / 2 ** 20 if sys.platform == "darwin" else rss / 1024  # bytes on macOS, KiB on Linux


def _best_of(fn: Callable[[], Any], repeats: int) -> float:
    best = float("inf")
    for _ in range(max(repeats, 1)):
        t0 = time.perf_counter()
        fn()
        best = min(best, time.perf_counter() - t0)
    return best


def _best_per_step(run_chunk: Callable[[int, int], None], steps: int, repeats: int, chunks: int = 10) -> float:
    """Best seconds per step over ``repeats`` passes of ``steps`` steps, each pass timed in ``chunks``
    pieces: ``run_chunk(a, b)`` runs steps a..b-1 and waits for them. Short pieces let best-of skip
    the moments when other processes hold the CPU."""
    size = max(1, steps // chunks)
    best = float("inf")
    for _ in range(max(repeats, 1)):
        for a in range(0, steps - size + 1, size):
            t0 = time.perf_counter()
            run_chunk(a, a + size)
            best = min(best, (time.perf_counter() - t0) / size)
    return best


def _timed(fn: Callable[[], Any], repeats: int) -> tuple[float, int]:
    """(best seconds of ``repeats`` calls, XLA compilations during them): the second number is the
    check that steady-state calls reuse their compiled programs."""
    with CompileCounter() as counter:
        best = _best_of(fn, repeats)
    return best, counter.count


class CompileCounter:
    """Context manager counting the XLA programs built (compiled, or loaded from the persistent
    cache) while active: ``with CompileCounter() as c: ...; c.count``."""

    def __init__(self):
        self.count = 0

    def _listener(self, event, duration, **kwargs):
        if event in PROGRAM_BUILD_EVENTS:
            self.count += 1

    def __enter__(self):
        jax.monitoring.register_event_duration_secs_listener(self._listener)
        return self

    def __exit__(self, *exc):
        jax.monitoring.unregister_event_duration_listener(self._listener)


# ---------------------------------------------------------------- the notebook's algorithm in NumPy


def numpy_params(layer_sizes, seed: int = 42) -> list:
    """The notebook's init of the MLP ``layer_sizes`` with its own RNG (``RandomState(seed)``): float64
    ``randn * 0.01`` weights, zero (1, n) biases."""
    rng = np.random.RandomState(seed)
    return [{"W": rng.randn(a, b) * 0.01, "b": np.zeros((1, b))} for a, b in zip(layer_sizes[:-1], layer_sizes[1:])]


def numpy_step(params: list, x: np.ndarray, y_onehot: np.ndarray, lr: float) -> float:
    """One minibatch of the notebook: forward (ReLU, softmax), its epsilon cross-entropy, the
    hand-written backward pass, the in-place SGD update of ``params`` with step size ``lr``. Returns
    the batch loss.

    Args:
        params: ``numpy_params``'s list of {"W", "b"} float64 arrays, updated in place.
        x: (B, D) float32 inputs.
        y_onehot: (B, C) float64 one-hot labels.
        lr: learning rate.
    """
    acts, zs = [x], []
    for i, p in enumerate(params):
        z = np.dot(acts[-1], p["W"]) + p["b"]
        zs.append(z)
        if i < len(params) - 1:
            acts.append(np.maximum(0, z))
        else:
            e = np.exp(z - np.max(z, axis=1, keepdims=True))
            acts.append(e / np.sum(e, axis=1, keepdims=True))
    m = x.shape[0]
    loss = -np.sum(y_onehot * np.log(acts[-1] + 1e-8)) / m
    dz = acts[-1] - y_onehot
    for i in range(len(params) - 1, -1, -1):
        dW = np.dot(acts[i].T, dz) / m
        db = np.sum(dz, axis=0, keepdims=True) / m
        if i > 0:
            dz = np.dot(dz, params[i]["W"].T) * (zs[i - 1] > 0)
        params[i]["W"] -= lr * dW
        params[i]["b"] -= lr * db
    return float(loss)


def _host_shuffle(images: np.ndarray, targets: np.ndarray, repeats: int):
    """(seconds of one epoch's NumPy shuffle, shuffled float32 inputs, shuffled targets): the notebook's
    ``astype(float32) / 255`` preprocessing, then ``x[perm]`` as its epoch loop does on the host."""
    x = images.astype(np.float32) / np.float32(255.0)
    rng = np.random.RandomState(0)

    def shuffle():
        idx = rng.permutation(x.shape[0])
        return x[idx], targets[idx]

    shuffle_s = _best_of(shuffle, repeats)
    return (shuffle_s, *shuffle())


def time_numpy(images: np.ndarray, y: np.ndarray, layer_sizes, batch_size: int, lr: float, steps: int,
               repeats: int = 3) -> float:
    """Seconds per epoch of the notebook's NumPy loop on uint8 ``images`` (N, D), int labels ``y`` (N,):
    the epoch's shuffled copy of the data plus ceil(N / batch_size) steps of ``lr`` on the MLP
    ``layer_sizes``, timed over ``steps`` steps, best of ``repeats``. The notebook's float32 inputs and
    float64 one-hot labels live only inside this call."""
    n = images.shape[0]
    # float64 one-hot labels, as the notebook's np.eye
    shuffle_s, xs, ys = _host_shuffle(images, np.eye(layer_sizes[-1])[y], repeats)
    params = numpy_params(layer_sizes)
    steps = max(1, min(steps, n // batch_size))
    for i in range(min(3, steps)):  # warm-up: BLAS threads, page faults
        numpy_step(params, xs[i * batch_size:(i + 1) * batch_size], ys[i * batch_size:(i + 1) * batch_size], lr)

    def run(a, b):
        for i in range(a, b):
            s = slice(i * batch_size, (i + 1) * batch_size)
            numpy_step(params, xs[s], ys[s], lr)

    return shuffle_s + _best_per_step(run, steps, repeats) * -(-n // batch_size)


# ---------------------------------------------------------------- the JAX rows


def _setup(layer_sizes, batch_size: int, num_examples: int, lr: float):
    """(config, spec, state, hparams) of the bench's run, built as ``runs.setup`` builds a run's."""
    config = TrainConfig(hidden=tuple(int(h) for h in layer_sizes[1:-1]), batch_size=batch_size, lr=lr, seed=0)
    spec = runs.spec_for(config, num_examples)
    state, hp = sweep.member_state(config, int(layer_sizes[0]), int(layer_sizes[-1]), spec)
    return config, spec, state, hp


def time_jit_loop(images: np.ndarray, labels: np.ndarray, layer_sizes, batch_size: int, lr: float, steps: int,
                  repeats: int = 3) -> tuple[float, float, int]:
    """(seconds per epoch, compile seconds, recompilations while timed) of the notebook's loop with its
    update replaced by the jitted ``teaching.sgd_step``: NumPy shuffles and slices float32 minibatches on
    the host, one jitted call per minibatch. Timed on ``steps`` minibatches and scaled to the epoch,
    plus the epoch's shuffle; best of ``repeats``. uint8 ``images`` (N, D), int ``labels`` (N,); the
    MLP ``layer_sizes`` trained with ``batch_size`` and ``lr``."""
    n = images.shape[0]
    shuffle_s, xs, ys = _host_shuffle(images, labels, repeats)
    steps = max(1, min(steps, n // batch_size))
    params = _setup(layer_sizes, batch_size, n, lr)[2].params
    t0 = time.perf_counter()
    jax.block_until_ready(teaching.sgd_step(params, xs[:batch_size], ys[:batch_size], lr))  # compiles
    compile_s = time.perf_counter() - t0

    state = [params]

    def run(a, b):
        p = state[0]
        for i in range(a, b):
            batch = slice(i * batch_size, (i + 1) * batch_size)
            p, _ = teaching.sgd_step(p, xs[batch], ys[batch], lr)
        state[0] = jax.block_until_ready(p)

    with CompileCounter() as counter:
        per_step = _best_per_step(run, steps, repeats)
    return shuffle_s + per_step * -(-n // batch_size), compile_s, counter.count


def time_fused(x: jax.Array, y: jax.Array, layer_sizes, batch_size: int, lr: float,
               repeats: int = 3) -> tuple[float, float, int]:
    """(seconds per epoch, compile seconds, recompilations while timed) of ``engine.fused_epoch``: the
    whole epoch, shuffle included, as one ``lax.scan`` program; best of ``repeats``. Inputs ``x`` (N, D)
    and int labels ``y`` (N,) on the device; the MLP ``layer_sizes`` trained with ``batch_size`` and ``lr``."""
    _, spec, state, hp = _setup(layer_sizes, batch_size, x.shape[0], lr)
    program, compile_s = engine.compile_program(engine.run_fused_epoch, {"spec": spec}, state, x, y, hp)
    jax.block_until_ready(program(state, x, y, hp))
    best, recompiles = _timed(lambda: jax.block_until_ready(program(state, x, y, hp)), repeats)
    return best, compile_s, recompiles


def time_chunked(x: jax.Array, y: jax.Array, layer_sizes, batch_size: int, lr: float, chunks: int,
                 repeats: int = 3) -> tuple[float, float, int]:
    """(seconds per epoch, compile seconds, recompilations while timed) of the engine ``runs.fit``
    runs: the epoch's order (``engine.epoch_order``), then ``chunks`` calls of the chunk program
    (capacity one epoch, a traced step count), each waited for as fit waits for its losses; best of
    ``repeats``. ``x`` (N, D), ``y`` (N,) int on the device; the MLP ``layer_sizes``, ``batch_size``, ``lr``."""
    _, spec, state, hp = _setup(layer_sizes, batch_size, x.shape[0], lr)
    return _time_engine_epoch(spec, state, hp, x, y, chunks, repeats)


def _user_loss(params, x, y, key):
    """The built-in objective written as a user of ``jaxmlp.train`` would write it."""
    del key
    return cross_entropy(forward(params, x), y)


def time_user_loss(x: jax.Array, y: jax.Array, layer_sizes, batch_size: int, lr: float,
                   repeats: int = 3) -> tuple[float, float, int]:
    """(seconds per epoch, compile seconds, recompilations while timed) of ``jaxmlp.train`` with a
    user's loss function and ``optim.sgd``: the same engine, one chunk an epoch, the step built from
    the user's function instead of a ``TrainSpec``; best of ``repeats``. ``x`` (N, D), ``y`` (N,) int on
    the device; the MLP ``layer_sizes``, ``batch_size``, ``lr``."""
    from .optim import sgd

    _, _, state, _ = _setup(layer_sizes, batch_size, x.shape[0], lr)
    opt = sgd(lr)
    spec = engine.FunctionTask(_user_loss, opt, batch_size)
    return _time_engine_epoch(spec, engine.init_state(state.params, opt, state.key), {}, x, y, 1, repeats)


def _time_engine_epoch(spec, state, hp, x: jax.Array, y: jax.Array, chunks: int,
                       repeats: int) -> tuple[float, float, int]:
    n = x.shape[0]
    steps = engine.steps_per_epoch(n, spec.batch_size)
    program, compile_s = engine.compile_program(engine.run_chunk, {"spec": spec, "capacity": steps}, state,
                                               jnp.zeros((n,), jnp.int32), x, y, hp, jnp.int32(steps))
    size = -(-steps // max(1, chunks))

    def epoch():
        s, order = state, engine.epoch_order(state.key, state.epoch, n)
        for a in range(0, steps, size):
            s, losses = program(s, order, x, y, hp, jnp.int32(min(size, steps - a)))
            np.asarray(losses)
        return s

    epoch()
    best, recompiles = _timed(epoch, repeats)
    return best, compile_s, recompiles


def _lr_sweep_members(layer_sizes, batch_size: int, num_examples: int, lrs) -> tuple:
    """(spec, stacked state, stacked hparams, epoch 0's shared order) of the bench's lr sweep: the
    bench run's config at each lr, one seed, so one key and one shuffle for every member."""
    config, spec, _, _ = _setup(layer_sizes, batch_size, num_examples, float(lrs[0]))
    configs = [dataclasses.replace(config, lr=float(lr)) for lr in lrs]
    state, hp = sweep.init_members(configs, int(layer_sizes[0]), int(layer_sizes[-1]), spec, shared_key=True)
    return spec, state, hp, sweep.group_order(state.key, state.epoch, num_examples, True)


def time_sweep(x: jax.Array, y: jax.Array, layer_sizes, batch_size: int, lrs,
               repeats: int = 2) -> tuple[float, float, int]:
    """(seconds per epoch for all ``len(lrs)`` models, compile seconds, recompilations while timed) of
    the lr sweep of ``jaxmlp sweep``: one seed (so one key, one shuffle), the group's order and one
    ``sweep.run_group_chunk`` (the vmapped engine chunk, ``sweep.default_chains`` chains) per epoch;
    best of ``repeats``. ``x`` (N, D), ``y`` (N,) int on the device; the MLP ``layer_sizes``, ``batch_size``."""
    n = x.shape[0]
    spec, state, hp, order = _lr_sweep_members(layer_sizes, batch_size, n, lrs)
    steps = engine.steps_per_epoch(n, batch_size)
    statics = {"spec": spec, "capacity": steps, "shared_key": True, "chains": sweep.default_chains(len(lrs))}
    program, compile_s = engine.compile_program(sweep.run_group_chunk, statics, state, order, x, y, hp,
                                               jnp.int32(steps))

    def epoch():
        return np.asarray(program(state, sweep.group_order(state.key, state.epoch, n, True), x, y, hp,
                                  jnp.int32(steps))[1])

    epoch()
    best, recompiles = _timed(epoch, repeats)
    return best, compile_s, recompiles


def wide_params(stacked: list) -> list:
    """K stacked MLPs (leading axis K on every leaf) with their first layers side by side as one
    (d0, K * d1) matrix (member k's units in columns k*d1 .. (k+1)*d1 - 1); the other layers stay stacked."""
    w, b = stacked[0]["W"], stacked[0]["b"]
    k, d0, d1 = w.shape
    return [{"W": jnp.transpose(w, (1, 0, 2)).reshape(d0, k * d1), "b": b.reshape(k * d1)}, *stacked[1:]]


def _wide_loss(params: list, xb: jax.Array, yb: jax.Array) -> tuple[jax.Array, jax.Array]:
    """(sum, each (K,)) of the K members' mean cross-entropies on one shared minibatch xb (B, d0)."""
    k = params[1]["W"].shape[0]
    h = relu(xb @ params[0]["W"] + params[0]["b"])              # (B, K * d1): one product for every member
    h = jnp.swapaxes(h.reshape(xb.shape[0], k, -1), 0, 1)      # (K, B, d1)
    for layer in params[1:-1]:
        h = relu(jnp.einsum("kbi,kio->kbo", h, layer["W"]) + layer["b"][:, None])
    logits = jnp.einsum("kbi,kio->kbo", h, params[-1]["W"]) + params[-1]["b"][:, None]
    losses = jax.vmap(cross_entropy, in_axes=(0, None))(logits, yb)
    return jnp.sum(losses), losses  # each member's gradient is that of the sum: they share no params


@functools.partial(jax.jit, static_argnames=("batch_size",))
def wide_sweep_steps(params: list, lrs: jax.Array, x: jax.Array, y: jax.Array, order: jax.Array,
                     batch_size: int) -> tuple[list, jax.Array]:
    """Plain SGD for K models with learning rates ``lrs`` (K,) on the shared minibatches of ``order``
    (its ``len(order) // batch_size`` full batches), params in ``wide_params`` layout. The same
    arithmetic as an lr sweep's group (tested against it), in the layout a shared batch allows: the
    prototype of a sweep whose first layers are one wide product. Returns params and losses (steps, K)."""
    d1 = params[0]["b"].shape[0] // lrs.shape[0]
    lr_tree = [{"W": jnp.repeat(lrs, d1)[None, :], "b": jnp.repeat(lrs, d1)},
               *({"W": lrs[:, None, None], "b": lrs[:, None]} for _ in params[1:])]

    def body(p, i):
        idx = jax.lax.dynamic_slice_in_dim(order, i * batch_size, batch_size)
        (_, losses), grads = jax.value_and_grad(_wide_loss, has_aux=True)(p, x[idx], y[idx])
        return jax.tree_util.tree_map(lambda w, lr, g: w - lr.astype(w.dtype) * g, p, lr_tree, grads), losses

    return jax.lax.scan(body, params, jnp.arange(order.shape[0] // batch_size))


def time_wide_sweep(x: jax.Array, y: jax.Array, layer_sizes, batch_size: int, lrs,
                    repeats: int = 2) -> tuple[float, float, int]:
    """(seconds per epoch for all ``len(lrs)`` models, compile seconds, recompilations while timed) of
    ``wide_sweep_steps`` over one epoch's full batches, from the members an lr sweep starts with; best
    of ``repeats``. ``x`` (N, D), ``y`` (N,) int on the device; the MLP ``layer_sizes``, ``batch_size``."""
    n = x.shape[0]
    _, state, _, order = _lr_sweep_members(layer_sizes, batch_size, n, lrs)
    params, lrs = wide_params(state.params), jnp.asarray(lrs, x.dtype)
    program, compile_s = engine.compile_program(wide_sweep_steps, {"batch_size": batch_size}, params, lrs, x, y,
                                               order)
    jax.block_until_ready(program(params, lrs, x, y, order))
    best, recompiles = _timed(lambda: jax.block_until_ready(program(params, lrs, x, y, order)), repeats)
    return best * n / ((n // batch_size) * batch_size), compile_s, recompiles


def _dots(weights: list, xb: jax.Array) -> list:
    """The matmuls of one training step and nothing else: forward ``h_l = h_{l-1} @ W_l``, weight
    gradients ``h_{l-1}.T @ d_l``, activation gradients ``d_l @ W_l.T`` (none for the input)."""
    hs = [xb]
    for w in weights:
        hs.append(hs[-1] @ w)
    d, grads = hs[-1], []
    for i in reversed(range(len(weights))):
        grads.append(hs[i].T @ d)
        if i > 0:
            d = d @ weights[i].T
    return grads[::-1]


@jax.jit
def _dots_epoch(weights: list, batches: jax.Array) -> list:
    def body(acc, xb):
        return [a + g for a, g in zip(acc, _dots(weights, xb))], None

    return jax.lax.scan(body, [jnp.zeros_like(w) for w in weights], batches)[0]


def time_matmuls(x: jax.Array, layer_sizes, batch_size: int, repeats: int = 3) -> tuple[float, float, int]:
    """(seconds per epoch, compile seconds, recompilations while timed) of an epoch's matmuls alone
    (``_dots`` over every full batch of ``batch_size``, scaled to the epoch): what the epoch would
    take if its elementwise work, gathers and loop were free. ``x`` (N, D) on the device, the MLP
    ``layer_sizes``' weights, best of ``repeats``."""
    n = x.shape[0]
    full = max(1, n // batch_size)
    batches = x[: full * batch_size].reshape(full, batch_size, -1) if n >= batch_size else x[None]
    weights = [w["W"] for w in _setup(layer_sizes, batch_size, n, 0.1)[2].params]
    program, compile_s = engine.compile_program(_dots_epoch, {}, weights, batches)
    jax.block_until_ready(program(weights, batches))
    best, recompiles = _timed(lambda: jax.block_until_ready(program(weights, batches)), repeats)
    return best * n / (batches.shape[0] * batches.shape[1]), compile_s, recompiles


# ---------------------------------------------------------------- the whole benchmark


def load_bench_data(data_dir=None, dataset: str = "mnist", synthetic: bool = False,
                    train_size: int | None = None, seed: int = 0) -> tuple[np.ndarray, np.ndarray, str]:
    """uint8 images (N, 784) and int labels (N,) for the bench, and a note saying where they came from.

    Real ``dataset`` from ``data_dir`` / $JAXMLP_DATA_DIR / the cache when found there (never
    downloaded); otherwise, or with ``synthetic``, random pixels and labels of MNIST's shape drawn with
    ``seed`` (timing does not depend on the values). ``train_size``: keep the first that many examples."""
    from .data import DataError, load_dataset, resolve_data_dir

    note = None
    if not synthetic:
        folder = resolve_data_dir(data_dir, dataset)
        try:
            ds = load_dataset(folder)
            images, labels = ds.x_train.reshape(len(ds.x_train), -1), ds.y_train.astype(np.int32)
            note = f"{dataset} from {folder}"
        except DataError as err:
            if data_dir is not None:
                raise
            note = f"synthetic ({dataset} not found: {str(err).splitlines()[0]})"
    if note is None or note.startswith("synthetic"):
        n = train_size or 60000
        rng = np.random.default_rng(seed)
        images = rng.integers(0, 256, (n, 784), dtype=np.uint8)
        labels = rng.integers(0, 10, n).astype(np.int32)
        note = note or "synthetic (random pixels of MNIST's shape, by request)"
    if train_size is not None:
        if train_size > len(images):
            raise ValueError(f"--train-size {train_size} exceeds the {len(images)} training examples")
        images, labels = images[:train_size], labels[:train_size]
    return images, labels, note


SMALL_DOTS, LARGE_DOTS = "its matmuls alone", "the large batch's matmuls alone"
WIDE_SWEEP = "sweep, one wide first layer"
USER_LOSS = "jaxmlp.train, a user's loss, 1 chunk/epoch"


def _row(name: str, batch_size: int, seconds: float, samples: int, flops: float, peak: float,
         compile_s: float | None, models: int, note: str) -> dict:
    """One row of the report: ``samples`` examples and ``flops`` matmul FLOPs done in ``seconds``."""
    return {"name": name, "batch_size": batch_size, "models": models, "seconds_per_epoch": seconds,
            "seconds_per_model_epoch": seconds / models, "samples_per_second": samples / seconds,
            "gflops": flops / seconds / 1e9, "fraction_of_peak": flops / seconds / 1e9 / peak,
            "compile_seconds": compile_s, "note": note}


def _ratios(by: dict, sweep_size: int) -> dict:
    """The report's ratios from its rows (by name)."""
    seconds = {name: row["seconds_per_epoch"] for name, row in by.items()}
    np_s, loop_s = seconds["numpy notebook"], seconds["jit step, Python loop"]
    fused_s, big_s = seconds["fused epoch (lax.scan)"], seconds["fused epoch, large batch"]
    chunk_s, whole_s = seconds["chunked engine, 4 chunks/epoch"], seconds["chunked engine, 1 chunk/epoch"]
    sweep_s = seconds[f"vmapped sweep, {sweep_size} lrs"]
    return {
        "fused_speedup_vs_numpy": np_s / fused_s,
        "fused_speedup_vs_jit_loop": loop_s / fused_s,
        "jit_loop_speedup_vs_numpy": np_s / loop_s,
        # The engine against the pre-chunk fused epoch (seconds over seconds; 1.05 = 5% slower).
        "chunked_vs_fused": chunk_s / fused_s,
        "one_chunk_vs_fused": whole_s / fused_s,
        # A user's loss through jaxmlp.train against the built-in step on the same engine (1.0 = same cost).
        "user_loss_vs_builtin": seconds[USER_LOSS] / whole_s,
        "sweep_cost_per_model_vs_fused": (sweep_s / sweep_size) / fused_s,
        "sweep_cost_per_model_vs_single": (sweep_s / sweep_size) / whole_s,
        # The wide-first-layer prototype (shared batch, plain SGD) against the fused single run.
        "wide_sweep_cost_per_model_vs_fused": (seconds[WIDE_SWEEP] / sweep_size) / fused_s,
        # A sweep cannot beat the matmul peak, so its per-model cost is at least the single run's
        # fraction of peak: the floor of the ratios above on this machine.
        "sweep_cost_floor_at_peak": by["fused epoch (lax.scan)"]["fraction_of_peak"],
        # How much of the single run its matmuls alone take (one bare scan of the same products): near
        # 1, the epoch is bound by its 32-row products and a sweep can gain only by running members
        # concurrently (chains over cores) or by products of other shapes that run nearer the peak.
        "fused_matmul_share": seconds[SMALL_DOTS] / fused_s,
        "large_batch_fraction_of_peak": by["fused epoch, large batch"]["fraction_of_peak"],
        # How much of the large-batch epoch its matmuls account for (the rest: elementwise work,
        # gathers, the update, the loop).
        "large_batch_matmul_share": seconds[LARGE_DOTS] / big_s,
    }


def _device_rows(add: Callable, x: jax.Array, y: jax.Array, sizes: list, *, batch_size: int, lr: float,
                 large_batch: int, sweep_size: int, repeats: int) -> int:
    """``add`` the rows that train on the device-resident x (N, D), y (N,); returns the number of
    recompilations seen while timing them."""
    fused_s, fused_c, r2 = time_fused(x, y, sizes, batch_size, lr, repeats)
    add("fused epoch (lax.scan)", batch_size, fused_s, fused_c, note="engine.fused_epoch")
    small_dots_s, small_dots_c, r8 = time_matmuls(x, sizes, batch_size, repeats)
    add(SMALL_DOTS, batch_size, small_dots_s, small_dots_c, note="forward + backward dots of the fused epoch")
    chunk_s, chunk_c, r3 = time_chunked(x, y, sizes, batch_size, lr, 4, repeats)
    add("chunked engine, 4 chunks/epoch", batch_size, chunk_s, chunk_c, note="engine.chunk, as fit runs it")
    whole_s, _, r4 = time_chunked(x, y, sizes, batch_size, lr, 1, repeats)
    add("chunked engine, 1 chunk/epoch", batch_size, whole_s, 0.0, note="the same program")
    user_s, user_c, r10 = time_user_loss(x, y, sizes, batch_size, lr, repeats)
    add(USER_LOSS, batch_size, user_s, user_c, note="jaxmlp.train's step from a user's loss_fn and optim.sgd")
    lrs = np.geomspace(1e-3, 0.5, sweep_size) if sweep_size > 1 else np.array([lr])
    sweep_s, sweep_c, r5 = time_sweep(x, y, sizes, batch_size, lrs, max(2, repeats // 2))  # K epochs a repeat
    add(f"vmapped sweep, {sweep_size} lrs", batch_size, sweep_s, sweep_c, models=sweep_size,
        note="vmap of engine.chunk, one chunk/epoch")
    wide_s, wide_c, r9 = time_wide_sweep(x, y, sizes, batch_size, lrs, max(2, repeats // 2))
    add(WIDE_SWEEP, batch_size, wide_s, wide_c, models=sweep_size,
        note="prototype, not the engine: plain SGD, shared minibatch, the first layers as one wide product")
    big_s, big_c, r6 = time_fused(x, y, sizes, large_batch, lr, repeats)
    add("fused epoch, large batch", large_batch, big_s, big_c)
    dots_s, dots_c, r7 = time_matmuls(x, sizes, large_batch, repeats)
    add(LARGE_DOTS, large_batch, dots_s, dots_c, note="forward + backward dots of the large-batch epoch")
    return r2 + r3 + r4 + r5 + r6 + r7 + r8 + r9 + r10


def run_bench(images: np.ndarray, labels: np.ndarray, *, hidden=(128, 64), batch_size: int = 32,
              lr: float = 0.1, large_batch: int = 512, sweep_size: int = 16, numpy_steps: int = 600,
              loop_steps: int = 600, repeats: int = 5, peak_size: int = 2048, data_note: str = "",
              on_row: Callable[[dict], None] | None = None) -> dict:
    """Run every row on (images uint8 (N, D), labels (N,)) and return the report dict (see ``--json``).

    Args:
        images: (N, D) uint8 training images.
        labels: (N,) int labels.
        hidden: the MLP's hidden sizes.
        batch_size: the small batch of most rows.
        lr: learning rate of every row.
        large_batch: the batch of the large-batch rows.
        sweep_size: models in the sweep rows.
        numpy_steps: steps the NumPy row times.
        loop_steps: steps the Python-loop row times.
        repeats: timings per row, the best kept.
        peak_size: the side of the matmul that measures the peak.
        data_note: where the data came from, copied into the report.
        on_row: called with each row as it is measured.
    """
    n, d = images.shape
    num_classes = max(int(labels.max()) + 1, 10)
    sizes = [d, *[int(h) for h in hidden], num_classes]
    flops_epoch = mlp_flops_per_example(sizes) * n
    peak_before = matmul_peak(peak_size)
    rows: list[dict] = []

    def add(name, bs, seconds, compile_s=None, models=1, note=""):
        rows.append(_row(name, bs, seconds, n * models, flops_epoch * models, peak_before, compile_s, models, note))
        if on_row is not None:
            on_row(rows[-1])

    np_s = time_numpy(images, labels, sizes, batch_size, lr, numpy_steps, repeats)
    add("numpy notebook", batch_size, np_s, note=f"float64 weights; {min(numpy_steps, n // batch_size)} steps timed")
    loop_s, loop_c, r1 = time_jit_loop(images, labels, sizes, batch_size, lr, loop_steps, repeats)
    add("jit step, Python loop", batch_size, loop_s, loop_c, note=f"{min(loop_steps, n // batch_size)} steps timed")
    x = runs.prepare(images, jnp.float32)  # resident on the device, as fit() has it
    recompiles = r1 + _device_rows(add, x, jnp.asarray(labels, jnp.int32), sizes, batch_size=batch_size, lr=lr,
                                   large_batch=large_batch, sweep_size=sweep_size, repeats=repeats)
    # Measured before and after the rows, the higher kept: a busy moment must not lower the bar.
    peak = max(peak_before, matmul_peak(peak_size))
    for row in rows:
        row["fraction_of_peak"] = row["gflops"] / peak
    return _report(rows, sizes, n, lr, peak, peak_size, repeats, sweep_size, recompiles, data_note)


def _report(rows: list[dict], sizes: list, n: int, lr: float, peak: float, peak_size: int, repeats: int,
            sweep_size: int, recompiles: int, data_note: str) -> dict:
    """The report dict of ``run_bench`` around its measured rows (the machine stamped now)."""
    flops = mlp_flops_per_example(sizes)
    return {
        "machine": machine_info(),
        "data": data_note,
        "train_examples": n,
        "layer_sizes": sizes,
        "lr": lr,
        "flops_per_example": flops,
        "flops_per_epoch": flops * n,
        "flops_formula": "N * (2S + 2S + 2(S - d0*d1)), S = sum of d_{l-1}*d_l (forward, weight grads, "
                         "activation grads)",
        "matmul_peak_gflops": peak,
        "matmul_peak_size": peak_size,
        "timing": f"best of {repeats} after a warm-up (step loops: best of 10 chunks per pass); compile time separate",
        "rows": rows,
        "ratios": _ratios({r["name"]: r for r in rows}, sweep_size),
        "recompiles_while_timed": int(recompiles),
        "persistent_compile_cache": getattr(jax.config, "jax_compilation_cache_dir", None) or None,
        "peak_rss_mb": peak_rss_mb(),
    }


TABLE_HEADER = ["", "batch", "s/epoch", "samples/s", "GFLOP/s", "% peak", "vs numpy", "compile s"]


def _table(report: dict) -> list[list[str]]:
    """The report's rows as the cells of ``TABLE_HEADER``."""
    numpy_s = report["rows"][0]["seconds_per_model_epoch"]
    return [[r["name"], str(r["batch_size"]),
             f"{r['seconds_per_model_epoch']:.3f}" + ("/model" if r["models"] > 1 else ""),
             f"{r['samples_per_second']:,.0f}", f"{r['gflops']:.1f}", f"{r['fraction_of_peak'] * 100:.0f}%",
             f"{numpy_s / r['seconds_per_model_epoch']:.1f}x",
             "-" if r["compile_seconds"] is None else f"{r['compile_seconds']:.2f}"] for r in report["rows"]]


def _findings(report: dict) -> list[str]:
    """The ratios, one sentence each."""
    q = report["ratios"]
    return [f"fused epoch: {q['fused_speedup_vs_numpy']:.2f}x the numpy notebook, "
            f"{q['fused_speedup_vs_jit_loop']:.2f}x the jitted-step loop; its matmuls alone take "
            f"{q['fused_matmul_share'] * 100:.0f}% of its time",
            f"chunked engine: {q['chunked_vs_fused']:.3f}x the fused epoch's time in 4 chunks, "
            f"{q['one_chunk_vs_fused']:.3f}x in one; a user's loss through jaxmlp.train: "
            f"{q['user_loss_vs_builtin']:.3f}x the built-in step's epoch",
            f"sweep: {q['sweep_cost_per_model_vs_single']:.2f}x a single run (one chunk an epoch) and "
            f"{q['sweep_cost_per_model_vs_fused']:.2f}x a fused epoch per model-epoch (floor here: "
            f"{q['sweep_cost_floor_at_peak']:.2f}x, a sweep at 100% of the matmul peak)",
            f"sweep with one wide first layer (a prototype): {q['wide_sweep_cost_per_model_vs_fused']:.2f}x a "
            f"fused epoch per model-epoch",
            f"large batch: {q['large_batch_fraction_of_peak'] * 100:.0f}% of the matmul peak; its matmuls alone "
            f"take {q['large_batch_matmul_share'] * 100:.0f}% of its time",
            f"recompilations while timed: {report['recompiles_while_timed']}",
            f"peak RSS: {report['peak_rss_mb']:.0f} MiB"]


def format_report(report: dict) -> str:
    """The report as an aligned text table plus the ratios."""
    m = report["machine"]
    lines = [f"machine: {m['cpu']}, {m['cores']} cores, {m['backend']} ({m['device']}), jax {m['jax']}",
             f"data: {report['data']}; {report['train_examples']} examples; model "
             f"{'-'.join(map(str, report['layer_sizes']))}; {report['flops_per_epoch'] / 1e9:.1f} GFLOP per epoch",
             f"matmul peak ({report['matmul_peak_size']}^2 float32): {report['matmul_peak_gflops']:.1f} GFLOP/s", ""]
    table = _table(report)
    widths = [max(len(h), *(len(t[i]) for t in table)) for i, h in enumerate(TABLE_HEADER)]
    fmt = lambda cells: "  ".join(c.ljust(w) if i == 0 else c.rjust(w)  # noqa: E731
                                  for i, (c, w) in enumerate(zip(cells, widths)))
    lines += [fmt(TABLE_HEADER), *map(fmt, table)]
    if report.get("persistent_compile_cache"):
        lines.append(f"(compile s may be loads from the persistent cache {report['persistent_compile_cache']}; "
                     f"JAXMLP_COMPILE_CACHE=0 times cold compiles)")
    return "\n".join([*lines, "", *_findings(report)])


def format_markdown(report: dict, date: str | None = None) -> str:
    """The report as a Markdown page fragment: the machine and software it ran on (CPU model, cores, GPU,
    jax/jaxlib/numpy versions), the date, the settings, the table and the ratios. No paths: where the
    data was read from is left out.

    Args:
        report: ``run_bench``'s report.
        date: the date to stamp (default: today, UTC, as YYYY-MM-DD).
    """
    import datetime

    m = report["machine"]
    date = date or datetime.datetime.now(datetime.timezone.utc).date().isoformat()
    gpu = f"{m['device']} x {m['device_count']}" if m["backend"] == "gpu" else "none"
    data = report["data"].split(" from ")[0].split(" (")[0]  # "mnist from /a/path" -> "mnist"
    sizes = "-".join(map(str, report["layer_sizes"]))
    cell = lambda text: text.replace("|", "\\|")  # noqa: E731
    lines = ["<!-- Written by `jaxmlp bench --markdown FILE`; run it again rather than edit this. -->", "",
             "| | |", "| --- | --- |",
             f"| date | {date} |", f"| CPU | {cell(m['cpu'])}, {m['cores']} cores |", f"| GPU | {cell(gpu)} |",
             f"| JAX backend | {m['backend']}, {m['device_count']} device(s) |",
             f"| load average | {m.get('load_average') or 'unknown'} at the end (1 minute; above {m['cores']}, "
             f"other work shared the CPU) |",
             f"| software | Python {m['python']}, jax {m['jax']}, jaxlib {m.get('jaxlib', '?')}, numpy {m['numpy']}, "
             f"{m['system']} |",
             f"| data | {data}, {report['train_examples']:,} training examples |",
             f"| model | {sizes}, SGD lr {report['lr']:g}; {report['flops_per_epoch'] / 1e9:.1f} GFLOP of matmuls "
             f"an epoch |",
             f"| matmul peak | {report['matmul_peak_gflops']:.1f} GFLOP/s (float32, {report['matmul_peak_size']}^2) |",
             f"| timing | {report['timing']} |",
             "| compile s | " + ("some programs loaded from the persistent compile cache (JAXMLP_COMPILE_CACHE=0 "
                                "times cold compiles)" if report.get("persistent_compile_cache") else
                                "cold: every program compiled in this process") + " |", "",
             "| row | " + " | ".join(TABLE_HEADER[1:]) + " |", "| --- |" + " ---: |" * (len(TABLE_HEADER) - 1)]
    lines += ["| " + " | ".join(cell(c) for c in row) + " |" for row in _table(report)]
    return "\n".join([*lines, "", *(f"- {line}" for line in _findings(report)), ""])
