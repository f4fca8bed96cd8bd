"""The rows that run JAX: the notebook's loop over the jitted step, the fused epoch, the engine's chunks,
a user's loss through ``jaxmlp.train``, the vmapped lr sweep and its wide-first-layer prototype, and an
epoch's matmuls alone. Each returns (seconds per epoch, compile seconds, recompilations while timed)."""
from __future__ import annotations

import dataclasses
import functools
import time

import jax
import jax.numpy as jnp
import numpy as np

from .. import engine, members, parallel, runs, steps as teaching
from ..config import TrainConfig
from ..losses import cross_entropy
from ..model import forward, relu
from .numpy_rows import _host_shuffle
from .timing import CompileCounter, _best_per_step, _timed


def _setup(layer_sizes, batch_size: int, num_examples: int, lr: float):
    """(config, spec, state, hparams) of the bench's run, built as ``runs.setup`` builds a run's."""
    config = TrainConfig(hidden=tuple(int(h) for h in layer_sizes[1:-1]), batch_size=batch_size, lr=lr, seed=0)
    spec = runs.spec_for(config, num_examples)
    state, hp = members.member_state(config, int(layer_sizes[0]), int(layer_sizes[-1]), spec)
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
    from ..optim import sgd

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


def _lr_sweep_members(layer_sizes, batch_size: int, num_examples: int, lrs, mesh=None) -> tuple:
    """(spec, stacked state, stacked hparams, epoch 0's shared order) of the bench's lr sweep: the
    bench run's config at each lr, one seed, so one key and one shuffle for every member. On a members
    ``mesh``, padded as ``members.train_group`` pads them and placed on it."""
    config, spec, _, _ = _setup(layer_sizes, batch_size, num_examples, float(lrs[0]))
    configs = [dataclasses.replace(config, lr=float(lr)) for lr in lrs]
    if mesh is not None:
        configs = members.padded(configs, parallel.device_count(mesh))
    state, hp = members.init_members(configs, int(layer_sizes[0]), int(layer_sizes[-1]), spec, shared_key=True,
                                     mesh=mesh)
    return spec, state, hp, members.group_order(state.key, state.epoch, num_examples, True)


def _sweep_program(x: jax.Array, y: jax.Array, layer_sizes, batch_size: int, lrs, mesh=None) -> tuple:
    """(epoch, compile seconds, the compiled program) of the bench's lr sweep as ``members.train_group``
    compiles it (``members.default_chains`` chains a device, ``members.group_options``), on ``mesh``
    (None: one device); ``epoch()`` runs one whole epoch of every member."""
    n = x.shape[0]
    spec, state, hp, _ = _lr_sweep_members(layer_sizes, batch_size, n, lrs, mesh)
    steps, count = engine.steps_per_epoch(n, batch_size), jnp.int32(engine.steps_per_epoch(n, batch_size))
    if mesh is not None:
        x, y, count = parallel.replicate((x, y, count), mesh)
    local = 1 if mesh is None else len(mesh.local_devices)
    k = jax.tree_util.tree_leaves(state.params)[0].shape[0]
    statics = {"spec": spec, "capacity": steps, "shared_key": True,
               "chains": members.default_chains(k // local, local), "mesh": mesh}
    order = members.group_order(state.key, state.epoch, n, True)
    program, compile_s = engine.compile_program(members.run_group_chunk, statics, state, order, x, y, hp, count,
                                               options=members.group_options(jax.default_backend()))

    def epoch():
        return np.asarray(parallel.to_host(program(state, members.group_order(state.key, state.epoch, n, True),
                                                   x, y, hp, count)[1]))

    return epoch, compile_s, program


def time_sweep(x: jax.Array, y: jax.Array, layer_sizes, batch_size: int, lrs,
               repeats: int = 2) -> tuple[float, float, int]:
    """(seconds per epoch for all ``len(lrs)`` models, compile seconds, recompilations while timed) of
    the lr sweep of ``jaxmlp sweep``: one seed (so one key, one shuffle), the group's order and one
    ``members.run_group_chunk`` (the vmapped engine chunk, ``members.default_chains`` chains) per epoch;
    best of ``repeats``. ``x`` (N, D), ``y`` (N,) int on the device; the MLP ``layer_sizes``, ``batch_size``."""
    epoch, compile_s, _ = _sweep_program(x, y, layer_sizes, batch_size, lrs)
    epoch()
    best, recompiles = _timed(epoch, repeats)
    return best, compile_s, recompiles


def program_bytes(program) -> int | None:
    """Device memory one device needs for a compiled program: its arguments, results and scratch space
    (``memory_analysis``; what is donated counted once), or None where the backend does not say."""
    try:
        m = program.memory_analysis()
        return int(m.argument_size_in_bytes + m.output_size_in_bytes + m.temp_size_in_bytes - m.alias_size_in_bytes)
    except (AttributeError, NotImplementedError, TypeError, RuntimeError):
        return None


def time_sharded_sweep(x: jax.Array, y: jax.Array, layer_sizes, batch_size: int, lrs, num_devices: int,
                       repeats: int = 2) -> tuple[float, float, int, int | None]:
    """(seconds per epoch for all ``len(lrs)`` models, compile seconds, recompilations while timed, bytes
    a device) of ``time_sweep``'s lr sweep with its members split over ``num_devices`` of this process's
    devices (``jaxmlp sweep --devices N``: a ``"members"`` mesh, the data replicated, the members padded
    to a multiple of the devices); best of ``repeats``. ``x`` (N, D), ``y`` (N,) int; the MLP
    ``layer_sizes``, ``batch_size``."""
    mesh = parallel.make_mesh(num_devices, jax.local_devices(), axis=parallel.MEMBER_AXIS)
    epoch, compile_s, program = _sweep_program(x, y, layer_sizes, batch_size, lrs, mesh)
    epoch()
    best, recompiles = _timed(epoch, repeats)
    return best, compile_s, recompiles, program_bytes(program)


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
