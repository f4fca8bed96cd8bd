"""Training: a run is explicit state advanced by compiled chunks of minibatch steps.

* ``sgd_step(params, x, y, lr)``: one jitted update, for notebooks and teaching; ``train_epoch_loop``
  is the notebook's loop over it.
* ``TrainState``: the whole state of a run as one PyTree: params, optimizer state, the run's PRNG key,
  completed epochs and steps done in the current epoch. Epoch ``e``'s order of examples and every
  step's dropout/augmentation key are pure functions of (key, e, step), so any step can be addressed:
  a run stopped anywhere and resumed equals the uninterrupted run bit for bit.
* ``run_chunk``: the compiled unit, up to ``capacity`` steps of one epoch (a traced count, so any
  count up to the capacity runs the same executable: the short last chunk and the chunk sizes picked
  at run time never recompile). The short last batch of an epoch is a second branch of the same
  program. ``fused_epoch`` is the whole epoch as one ``lax.scan`` (kept for ``jaxmlp bench``).
* ``fit(config, data)``: set up, advance chunk by chunk calling small handlers between chunks
  (progress, logs, checkpoints, signals, early stopping: see ``handlers.py``), test.

Numbers that are plain hyperparameters (lr, momentum, ...) travel as a traced ``hparams`` dict (see
``config.hparams``); what changes the program's structure lives in the hashable ``TrainSpec``.
"""
from __future__ import annotations

import concurrent.futures
import contextlib
import dataclasses
import functools
import signal
import time
from collections.abc import Callable, Sequence
from typing import Any, NamedTuple

import jax
import jax.numpy as jnp
import numpy as np

from . import optim
from .backprop import manual_grad
from .config import TrainConfig, hparams
from .losses import accuracy, cross_entropy, loss
from .memory import check_fits
from .model import Params, forward, softmax
from .parallel import to_host

__all__ = ["sgd_step", "train_epoch_loop", "TrainSpec", "TrainState", "TrainConfig", "fit", "FitResult",
           "evaluate", "predict_labels", "predict_probs", "prepare", "DivergenceError", "Interrupted"]


# ---------------------------------------------------------------- the teaching step


@jax.jit
def sgd_step(params: Params, x: jax.Array, y: jax.Array, lr: float) -> tuple[Params, jax.Array]:
    """One minibatch SGD update with ``jax.grad``: x (B, D), y int (B,) or one-hot (B, C).

    Returns the new params and the batch's loss (before the update).
    """
    value, grads = jax.value_and_grad(loss)(params, x, y)
    new_params = jax.tree_util.tree_map(lambda p, g: p - lr * g, params, grads)
    return new_params, value


def batch_slices(num_examples: int, batch_size: int) -> list[slice]:
    """Minibatch slices of one epoch, the last one short when ``batch_size`` doesn't divide N."""
    return [slice(i, min(i + batch_size, num_examples)) for i in range(0, num_examples, batch_size)]


def train_epoch_loop(params: Params, x: jax.Array, y: jax.Array, key: jax.Array, lr: float,
                     batch_size: int) -> tuple[Params, jax.Array]:
    """One epoch as a Python loop over ``sgd_step`` (the notebook's loop, jitted step by step).

    The permutation comes from ``key``; returns params and per-batch losses (num_batches,).
    """
    perm = jax.random.permutation(key, x.shape[0])
    xs, ys = x[perm], y[perm]
    losses = []
    for s in batch_slices(x.shape[0], batch_size):
        params, value = sgd_step(params, xs[s], ys[s], lr)
        losses.append(value)
    return params, jnp.stack(losses)


# ---------------------------------------------------------------- what a step computes


@dataclasses.dataclass(frozen=True)
class TrainSpec:
    """The static part of training (changing it changes the compiled program).

    arch: "mlp" or "cnn"; grad: "autodiff" (jax.grad) or "manual" (the notebook's backprop, MLP);
    optimizer / schedule: names from ``optim``; total_steps / warmup_steps: the schedule's horizon;
    dropout: hidden-unit drop rate; augment: None, "shift" or "affine"; image_side: for augmentation;
    batch_sharding: None or the ``jax.sharding.Sharding`` each minibatch is constrained to (data
    parallelism, see ``parallel.py``); frozen: layer indices the optimizer leaves bit-identical.
    """

    batch_size: int = 32
    arch: str = "mlp"
    grad: str = "autodiff"
    optimizer: str = "sgd"
    schedule: str = "constant"
    total_steps: int = 0
    warmup_steps: int = 0
    dropout: float = 0.0
    augment: str | None = None
    image_side: int = 28
    batch_sharding: Any = None
    frozen: tuple = ()


def spec_for(config: TrainConfig, num_examples: int, image_side: int = 28) -> TrainSpec:
    """The ``TrainSpec`` of ``config`` for a training set of ``num_examples``."""
    steps_per_epoch = -(-num_examples // config.batch_size)
    scheduled = config.schedule != "constant"  # without a schedule, runs of any length share a program
    return TrainSpec(
        batch_size=config.batch_size, arch=config.arch, grad=config.grad, optimizer=config.optimizer,
        schedule=config.schedule, total_steps=steps_per_epoch * config.epochs if scheduled else 0,
        warmup_steps=steps_per_epoch * config.warmup_epochs if scheduled else 0, dropout=float(config.dropout),
        augment=None if config.augment == "none" else config.augment, image_side=image_side,
        frozen=tuple(config.freeze))


def apply_fn(arch: str) -> Callable:
    """The forward function ``(params, x, *, key=None, dropout=0.0) -> logits`` of an architecture."""
    if arch == "mlp":
        return forward
    if arch == "cnn":
        from .cnn import cnn_forward
        return cnn_forward
    raise ValueError(f"unknown architecture {arch!r}; choose mlp or cnn")


def make_optimizer(spec: TrainSpec, hparams: dict) -> optim.Optimizer:
    """The optimizer named by ``spec``, its lr (or lr schedule) and constants taken from ``hparams``."""
    lr = hparams["lr"]
    if spec.schedule != "constant":
        lr = optim.schedule_by_name(spec.schedule, lr, total_steps=max(spec.total_steps, 2),
                                    warmup_steps=spec.warmup_steps or None)
    opt = optim.by_name(spec.optimizer, lr=lr, momentum=hparams["momentum"], beta1=hparams["beta1"],
                        beta2=hparams["beta2"], weight_decay=hparams["weight_decay"])
    if not spec.frozen:
        return opt
    from .transfer import trainable_mask

    # The mask needs the params' structure, known only when init/update see them.
    frozen = lambda params: optim.freeze(opt, trainable_mask(params, spec.frozen))  # noqa: E731
    return optim.Optimizer(lambda params: frozen(params).init(params),
                           lambda grads, state, params: frozen(params).update(grads, state, params))


def value_and_grad_fn(spec: TrainSpec) -> Callable:
    """``(params, x, y, key, hparams) -> (loss, grads)`` for the spec's gradient method."""
    if spec.grad == "manual":
        def manual(params, x, y, key, hparams):
            del key, hparams
            return cross_entropy(forward(params, x), y), manual_grad(params, x, y)

        return manual
    fwd = apply_fn(spec.arch)

    def objective(params, x, y, key, hparams):
        value = cross_entropy(fwd(params, x, key=key, dropout=spec.dropout), y)
        # L2 joins the objective (its gradient flows through jax.grad); decoupled decay is the optimizer's.
        return value + hparams["l2"] * optim.l2_penalty(params), value

    def autodiff(params, x, y, key, hparams):
        (_, value), grads = jax.value_and_grad(objective, has_aux=True)(params, x, y, key, hparams)
        return value, grads

    return autodiff


def _augment(spec: TrainSpec, key: jax.Array, x: jax.Array) -> jax.Array:
    if spec.augment is None:
        return x
    from . import augment

    if spec.augment == "shift":
        return augment.random_shift(key, x, side=spec.image_side)
    if spec.augment == "affine":
        return augment.random_affine(key, x, side=spec.image_side)
    raise ValueError(f"unknown augmentation {spec.augment!r}; choose shift or affine")


# ---------------------------------------------------------------- the state and its chunks


class TrainState(NamedTuple):
    """The whole state of a run: a PyTree that checkpoints, resumes and vmaps as one value."""

    params: Params
    opt_state: Any
    key: jax.Array    # (2,) uint32, the run's key: never advanced, epochs fold their index into it
    epoch: jax.Array  # int32 (): completed epochs
    step: jax.Array   # int32 (): steps done in the current epoch


def init_state(params: Params, opt: optim.Optimizer, key: jax.Array) -> TrainState:
    return TrainState(params, opt.init(params), key, jnp.zeros((), jnp.int32), jnp.zeros((), jnp.int32))


def _epoch_keys(key: jax.Array, epoch: jax.Array) -> tuple[jax.Array, jax.Array]:
    """(shuffle key, base of the step keys) of one epoch: a pure function of the run's key."""
    perm_key, step_base = jax.random.split(jax.random.fold_in(key, epoch))
    return perm_key, step_base


@functools.partial(jax.jit, static_argnames=("num_examples",))
def epoch_order(key: jax.Array, epoch: jax.Array, num_examples: int) -> jax.Array:
    """The order (num_examples,) int32 in which epoch ``epoch`` visits the examples."""
    return jax.random.permutation(_epoch_keys(key, epoch)[0], num_examples).astype(jnp.int32)


def steps_per_epoch(num_examples: int, batch_size: int) -> int:
    return -(-num_examples // batch_size)


def _step_fn(spec: TrainSpec, hparams: dict, x: jax.Array, y: jax.Array, order: jax.Array, step_base):
    """``step(params, opt_state, i) -> (params, opt_state, loss)``: minibatch ``i`` of the epoch whose
    order is ``order``. Batch ``i`` is ``order[i*B:(i+1)*B]``; a short last batch is its own branch."""
    opt, vg = make_optimizer(spec, hparams), value_and_grad_fn(spec)
    bs = spec.batch_size
    num_full, rest = divmod(order.shape[0], bs)

    def update(params, opt_state, idx, i):
        aug_key, drop_key = jax.random.split(jax.random.fold_in(step_base, i))
        xb, yb = _augment(spec, aug_key, x[idx]), y[idx]
        if spec.batch_sharding is not None:
            xb = jax.lax.with_sharding_constraint(xb, spec.batch_sharding)
            yb = jax.lax.with_sharding_constraint(yb, spec.batch_sharding)
        value, grads = vg(params, xb, yb, drop_key, hparams)
        params, opt_state = opt.update(grads, opt_state, params)
        return params, opt_state, value

    def full(params, opt_state, i):
        return update(params, opt_state, jax.lax.dynamic_slice_in_dim(order, i * bs, bs), i)

    def short(params, opt_state, i):
        return update(params, opt_state, order[num_full * bs:], i)

    if not rest:
        return full
    return lambda params, opt_state, i: jax.lax.cond(i < num_full, full, short, params, opt_state, i)


def chunk(state: TrainState, order: jax.Array, x: jax.Array, y: jax.Array, hparams: dict,
          num_steps: jax.Array, *, spec: TrainSpec, capacity: int) -> tuple[TrainState, jax.Array]:
    """Advance ``state`` by ``num_steps`` (<= capacity, traced) steps of its current epoch.

    ``order`` is ``epoch_order(state.key, state.epoch, N)``. Returns the new state (the epoch counter
    moves on when its last step is done) and the steps' losses in a (capacity,) buffer, zero past
    ``num_steps``. Pure; vmap it over models with ``epoch``/``step`` unbatched.
    """
    step = _step_fn(spec, hparams, x, y, order, _epoch_keys(state.key, state.epoch)[1])

    def body(j, carry):
        params, opt_state, losses = carry
        params, opt_state, value = step(params, opt_state, state.step + j)
        return params, opt_state, losses.at[j].set(value)

    losses = jnp.zeros((capacity,), x.dtype)
    params, opt_state, losses = jax.lax.fori_loop(0, num_steps, body, (state.params, state.opt_state, losses))
    done = state.step + num_steps
    finished = done >= steps_per_epoch(order.shape[0], spec.batch_size)
    return TrainState(params, opt_state, state.key, state.epoch + finished.astype(jnp.int32),
                      jnp.where(finished, 0, done).astype(jnp.int32)), losses


def fused_epoch(state: TrainState, x: jax.Array, y: jax.Array, hparams: dict, *,
                spec: TrainSpec) -> tuple[TrainState, jax.Array]:
    """A whole epoch as one ``lax.scan`` from step 0 (the pre-chunk engine; ``jaxmlp bench`` compares)."""
    n = x.shape[0]
    order = jax.random.permutation(_epoch_keys(state.key, state.epoch)[0], n).astype(jnp.int32)
    step = _step_fn(spec, hparams, x, y, order, _epoch_keys(state.key, state.epoch)[1])

    def body(carry, i):
        params, opt_state, value = step(*carry, i)
        return (params, opt_state), value

    (params, opt_state), losses = jax.lax.scan(
        body, (state.params, state.opt_state), jnp.arange(steps_per_epoch(n, spec.batch_size)))
    return TrainState(params, opt_state, state.key, state.epoch + 1, state.step), losses


run_chunk = jax.jit(chunk, static_argnames=("spec", "capacity"))
run_fused_epoch = jax.jit(fused_epoch, static_argnames=("spec",))

_COMPILED: dict = {}


def _arg_signature(v) -> tuple:
    """(shape, dtype, placement), the same for an array on the default device and for an abstract
    ``jax.ShapeDtypeStruct``, so a program compiled from shapes alone is found again later."""
    sharding = getattr(v, "sharding", None)
    if sharding is None:
        sharding = ("single", jax.devices()[0])
    elif isinstance(sharding, jax.sharding.SingleDeviceSharding):
        sharding = ("single", next(iter(sharding.device_set)))
    return tuple(jnp.shape(v)), jnp.result_type(v), sharding


def compile_program(fn, static: dict, *args) -> tuple[Callable, float]:
    """The ahead-of-time compiled ``fn(*args, **static)`` and the seconds spent compiling (0.0 when this
    process compiled the same function, statics and argument shapes before: runs never recompile)."""
    leaves, treedef = jax.tree_util.tree_flatten(args)
    signature = (fn, tuple(sorted(static.items())), treedef, tuple(map(_arg_signature, leaves)),
                 jax.config.read("jax_enable_x64"))
    if signature not in _COMPILED:
        t0 = time.perf_counter()
        _COMPILED[signature] = (fn.lower(*args, **static).compile(), time.perf_counter() - t0)
        return _COMPILED[signature]
    return _COMPILED[signature][0], 0.0


def epoch_loss(batch_losses, num_examples: int, batch_size: int, first_step: int = 0) -> float:
    """Example-weighted mean of per-batch losses of steps ``first_step..``: the short last batch counts
    by its size. (Sums over chunks: pass each chunk's losses and add ``loss_sum`` instead.)"""
    return loss_sum(batch_losses, num_examples, batch_size, first_step) / num_examples


def loss_sum(batch_losses, num_examples: int, batch_size: int, first_step: int = 0) -> float:
    """Sum over examples of the losses of steps ``first_step, first_step + 1, ...`` (float64)."""
    losses = np.asarray(batch_losses, dtype=np.float64)
    starts = (first_step + np.arange(len(losses))) * batch_size
    sizes = np.minimum(starts + batch_size, num_examples) - starts
    return float((losses * sizes).sum())


# ---------------------------------------------------------------- evaluation


def _eval_chunk(params, x, y, arch: str):
    logits = apply_fn(arch)(params, x)
    return cross_entropy(logits, y) * x.shape[0], accuracy(logits, y) * x.shape[0]


_eval_chunk_jit = jax.jit(_eval_chunk, static_argnames=("arch",))


def _default_chunk(arch: str) -> int:
    # The CNN's im2col patches take ~0.2 MB per image; 1000 images keep a chunk near 200 MB.
    return 1000 if arch == "cnn" else 10000


def evaluate(params: Params, x: jax.Array, y: jax.Array, *, arch: str = "mlp",
             chunk_size: int | None = None) -> tuple[float, float]:
    """``(mean loss, accuracy in [0, 1])`` of the model on x (N, D), y (N,), in chunks to bound memory."""
    n = x.shape[0]
    if n == 0:
        raise ValueError("cannot evaluate on an empty set")
    total_loss = total_acc = 0.0
    for s in batch_slices(n, chunk_size or _default_chunk(arch)):
        lo, ac = _eval_chunk_jit(params, x[s], y[s], arch)
        total_loss += float(lo)
        total_acc += float(ac)
    return total_loss / n, total_acc / n


@functools.partial(jax.jit, static_argnames=("arch", "probs"))
def _predict_chunk(params, x, arch: str, probs: bool):
    logits = apply_fn(arch)(params, x)
    return softmax(logits) if probs else jnp.argmax(logits, axis=-1)


def predict_labels(params: Params, x: jax.Array, *, arch: str = "mlp", chunk_size: int | None = None) -> np.ndarray:
    """Predicted classes (N,) as a numpy int array."""
    return np.concatenate([np.asarray(_predict_chunk(params, x[s], arch, False))
                           for s in batch_slices(x.shape[0], chunk_size or _default_chunk(arch))])


def predict_probs(params: Params, x: jax.Array, *, arch: str = "mlp", chunk_size: int | None = None) -> np.ndarray:
    """Class probabilities (N, C) as a numpy array of the params' dtype: softmax of the logits."""
    return np.concatenate([np.asarray(_predict_chunk(params, x[s], arch, True))
                           for s in batch_slices(x.shape[0], chunk_size or _default_chunk(arch))])


# ---------------------------------------------------------------- setting a run up


class DivergenceError(ArithmeticError):
    """Training diverged (a non-finite loss or params, or the loss far above its start)."""


class Interrupted(KeyboardInterrupt):
    """The run was stopped by a signal at a chunk boundary; ``state`` is where it stopped."""

    def __init__(self, signum: int, state: TrainState, saved: str | None = None):
        super().__init__(signum)
        self.signum, self.state, self.saved = signum, state, saved


def dtype_of(config: TrainConfig):
    return jnp.float64 if config.dtype == "float64" else jnp.float32


def precision(dtype: str) -> contextlib.AbstractContextManager:
    """A context in which ``dtype`` ("float32"/"float64") arrays can exist: float64 needs JAX's x64
    mode, switched on for the block only, so nothing outside it changes."""
    return jax.enable_x64(True) if dtype == "float64" else contextlib.nullcontext()


def prepare(images: np.ndarray, dtype, arch: str = "mlp") -> jax.Array:
    """uint8 images (N, H, W) -> float inputs (N, H*W) in [0, 1] on the device (the CNN reshapes)."""
    from .data import normalize

    del arch
    images = np.asarray(images)
    return normalize(images.reshape(images.shape[0], -1), dtype)


def split_validation(n: int, fraction: float, seed: int) -> tuple[np.ndarray, np.ndarray]:
    """Indices (train, val): a seeded shuffle, the last ``round(fraction * n)`` held out."""
    order = np.random.default_rng(seed).permutation(n)
    n_val = int(round(fraction * n))
    return np.sort(order[: n - n_val]), np.sort(order[n - n_val:])


def init_model(config: TrainConfig, key: jax.Array, input_dim: int, num_classes: int) -> Params:
    """Fresh params for ``config``: the MLP ``input_dim-hidden...-num_classes`` or the CNN."""
    from .model import init_params

    if config.arch == "cnn":
        from .cnn import init_cnn_params
        side = int(round(np.sqrt(input_dim)))
        return init_cnn_params(key, in_shape=(side, side, 1), num_classes=num_classes, dtype=dtype_of(config))
    return init_params(key, [input_dim, *config.hidden, num_classes], scheme=config.init, dtype=dtype_of(config))


def state_template(config: TrainConfig, input_dim: int, num_classes: int) -> TrainState:
    """The shapes and dtypes (``jax.ShapeDtypeStruct``) of a run's state: what a checkpoint must hold."""
    spec = spec_for(config, 1)

    def build(key):
        return init_state(init_model(config, key, input_dim, num_classes),
                          make_optimizer(spec, hparams(config, dtype_of(config))), key)

    with precision(config.dtype):
        return jax.eval_shape(build, jax.random.PRNGKey(0))


class Run(NamedTuple):
    """Everything fixed for the length of a run, built by ``setup``."""

    config: TrainConfig
    spec: TrainSpec
    hparams: dict
    x: jax.Array            # (N, D) training inputs on the device; y (N,) int32
    y: jax.Array
    x_val: jax.Array | None
    y_val: jax.Array | None
    x_test: jax.Array
    y_test: jax.Array
    num_classes: int
    steps_per_epoch: int
    program: Callable       # the compiled chunk
    capacity: int           # the most steps one chunk runs
    compile_seconds: float


def _num_classes(config: TrainConfig, data) -> int:
    if config.classes is not None:
        return len(config.classes)
    return max(int(max(data.y_train.max(), data.y_test.max())) + 1, 10)


def _start_params(config, key, input_dim, num_classes):
    if config.finetune:
        return finetune_params(config, key, input_dim, num_classes)
    return init_model(config, key, input_dim, num_classes)


def _compile_chunk(spec, capacity, state, n, input_dim, dtype, hp):
    """The chunk program compiled from shapes alone (callable from a second thread: x64 is per thread)."""
    with precision(jnp.dtype(dtype).name):
        return compile_program(run_chunk, {"spec": spec, "capacity": capacity}, state,
                               jax.ShapeDtypeStruct((n,), jnp.int32), jax.ShapeDtypeStruct((n, input_dim), dtype),
                               jax.ShapeDtypeStruct((n,), jnp.int32), hp, jax.ShapeDtypeStruct((), jnp.int32))


def _arrays(config: TrainConfig, data, dtype):
    """(x, y, x_val, y_val, x_test, y_test) on the device, the validation split held out."""
    train_idx, val_idx = np.arange(len(data.y_train)), np.arange(0)
    if config.val_split:
        train_idx, val_idx = split_validation(len(data.y_train), config.val_split, config.seed)
    as_labels = lambda a: jnp.asarray(np.asarray(a).astype(np.int32))  # noqa: E731
    val = (prepare(data.x_train[val_idx], dtype), as_labels(data.y_train[val_idx])) if len(val_idx) else (None, None)
    return (prepare(data.x_train[train_idx], dtype), as_labels(data.y_train[train_idx]), *val,
            prepare(data.x_test, dtype), as_labels(data.y_test))


def setup(config: TrainConfig, data, state: TrainState | None = None, mesh: Any = None) -> tuple[Run, TrainState]:
    """The ``Run`` and the starting state (``state`` to resume; else fresh or fine-tuned params).

    The chunk program compiles on a second thread from shapes alone while this one initialises and
    copies the data to the device, so a cold start's largest compile overlaps the rest.
    """
    if config.classes is not None:
        from .data import select_classes
        data = select_classes(data, config.classes)
    dtype, num_classes = dtype_of(config), _num_classes(config, data)
    input_dim = int(np.prod(data.x_train.shape[1:]))
    n = len(data.y_train) - int(round(config.val_split * len(data.y_train)))
    check_fits(config, len(data.y_train), input_dim, num_classes, len(data.y_test))  # refuse before any work
    spec, hp = spec_for(config, n, int(data.x_train.shape[1])), hparams(config, dtype)
    capacity = steps_per_epoch(n, config.batch_size)
    if state is None:
        init_key, run_key = jax.random.split(jax.random.PRNGKey(config.seed))
        state = init_state(_start_params(config, init_key, input_dim, num_classes), make_optimizer(spec, hp), run_key)
    arrays = _arrays(config, data, dtype)
    if mesh is not None:
        from .parallel import distribute, replicate

        # Everything the chunk reads is placed on the mesh first, so the program is compiled for the
        # placements it will be called with (the epoch's order comes out replicated, like the key).
        spec, (state, *placed) = distribute(mesh, spec, (state, arrays[0], arrays[1]))
        arrays, hp = (*placed, *arrays[2:]), replicate(hp, mesh)
        order = replicate(jnp.zeros((n,), jnp.int32), mesh)
        program, seconds = compile_program(run_chunk, {"spec": spec, "capacity": capacity}, state, order,
                                           arrays[0], arrays[1], hp, jnp.int32(0))
    else:
        with concurrent.futures.ThreadPoolExecutor(1) as pool:
            pending = pool.submit(_compile_chunk, spec, capacity, jax.eval_shape(lambda s: s, state), n,
                                  input_dim, dtype, hp)
            chunk_size = min(_default_chunk(config.arch), arrays[4].shape[0])  # the test program, meanwhile
            _eval_chunk_jit(state.params, arrays[4][:chunk_size], arrays[5][:chunk_size], config.arch)
            program, seconds = pending.result()
    x, y, x_val, y_val, x_test, y_test = arrays
    return Run(config, spec, hp, x, y, x_val, y_val, x_test, y_test, num_classes, capacity, program, capacity,
               seconds), state


def finetune_params(config: TrainConfig, key: jax.Array, input_dim: int, num_classes: int) -> Params:
    """The params of checkpoint ``config.finetune`` in the run's dtype; with ``config.new_head`` the
    output layer is replaced by a fresh ``num_classes``-way one drawn from ``key``. ValueError (naming
    --finetune) when the model does not fit the config or the data."""
    from .transfer import replace_head

    path = config.finetune
    params, saved, meta = load_model(path)
    if saved.arch != config.arch:
        raise ValueError(f"--finetune: {path} holds a {saved.arch} model, but the run's --arch is {config.arch}")
    if meta["input_dim"] != input_dim:
        raise ValueError(f"--finetune: {path} takes {meta['input_dim']} inputs, the data has {input_dim}")
    if config.arch == "mlp" and saved.hidden != config.hidden:
        raise ValueError(f"--finetune: {path} has hidden sizes {list(saved.hidden)}, the run asks for "
                         f"{list(config.hidden)}")
    params = jax.tree_util.tree_map(lambda a: jnp.asarray(a, dtype_of(config)), params)
    if config.new_head:
        return replace_head(key, params, num_classes, scheme="he" if config.init == "notebook" else config.init)
    if meta["num_classes"] != num_classes:
        raise ValueError(f"--finetune: {path} has {meta['num_classes']} outputs but the data has {num_classes} "
                         f"classes; add --new-head")
    return params


# ---------------------------------------------------------------- checkpoints of runs


def run_meta(run: Run, history: list, partial: dict | None = None) -> dict:
    """What a checkpoint stores beside the state: enough to rebuild its template and continue."""
    return {"config": run.config.to_dict(), "history": history, "input_dim": int(run.x.shape[1]),
            "num_classes": run.num_classes, "partial": partial or {}}


def _checked_meta(path, meta: dict) -> tuple[TrainConfig, dict]:
    from .checkpoint import CheckpointError

    try:
        config = TrainConfig.from_dict(meta.get("config"), where=f"{path}: config")  # type: ignore[arg-type]
        for name in ("input_dim", "num_classes"):
            if not isinstance(meta.get(name), int) or not 0 < meta[name] <= 1 << 20:
                raise ValueError(f"{path}: meta {name!r} must be a positive integer, got {meta.get(name)!r}")
        if not isinstance(meta.get("history", []), list) or not isinstance(meta.get("partial", {}), dict):
            raise ValueError(f"{path}: meta 'history' must be a list and 'partial' an object")
    except ValueError as err:
        raise CheckpointError(str(err)) from None
    return config, meta


def load_run(path) -> tuple[TrainConfig, TrainState, dict]:
    """(config, state, meta) of a checkpoint from ``jaxmlp train --save``, restored strictly against
    the template its config implies (a float64 run's arrays come back as float64 arrays)."""
    from .checkpoint import CheckpointError, load_state, read_meta

    config, meta = _checked_meta(path, read_meta(path))
    template = state_template(config, meta["input_dim"], meta["num_classes"])
    with precision(config.dtype):
        state = load_state(path, template)
    if not 0 <= int(state.epoch) <= config.epochs or not 0 <= int(state.step) < meta.get("steps_per_epoch", 1 << 31):
        raise CheckpointError(f"{path}: member 'state/epoch' or 'state/step' is out of range")
    return config, state, meta


def load_model(path) -> tuple[Params, TrainConfig, dict]:
    """(params, config, meta) of a checkpoint, for evaluation, prediction and fine-tuning."""
    config, state, meta = load_run(path)
    return state.params, config, meta


def save_run(path, run: Run, state: TrainState, history: list, partial: dict | None = None):
    """Atomically write ``state`` and the run's meta to ``path`` (``checkpoint.save_checkpoint``)."""
    from .checkpoint import save_checkpoint

    meta = {**run_meta(run, history, partial), "steps_per_epoch": run.steps_per_epoch}
    return save_checkpoint(path, to_host(state), meta)


# ---------------------------------------------------------------- advancing a run


class Event(NamedTuple):
    """What handlers see: ``kind`` is "start", "chunk", "epoch" or "end"."""

    kind: str
    run: Run
    state: TrainState          # after the chunk (for "end": the state the run stops with)
    previous: TrainState       # before the chunk: the last state known good
    losses: np.ndarray         # this chunk's per-step losses
    history: list              # epoch records so far
    seconds: float             # this chunk's wall time
    reason: str = ""           # for "end": "done", "early-stop", "SIGINT", "SIGTERM", "diverged"
    partial: dict = {}         # the current epoch's loss sum and seconds so far (for checkpoints)


class StopRun(Exception):
    """Raised by a handler to end the run at this chunk boundary; ``reason`` is reported in "end"."""

    def __init__(self, reason: str, signum: int = 0):
        super().__init__(reason)
        self.reason, self.signum = reason, signum


def _next_steps(steps: int, seconds: float, target: float, room: int, least: int = 1) -> int:
    """Steps for the next chunk so that it takes about ``target`` seconds: at least ``least``, at most
    ``room``."""
    if seconds > 0:
        steps = int(steps * min(max(target / seconds, 0.25), 4.0))
    return max(1, min(max(steps, least), room))


class Loop:
    """The host side of a run: picks chunk sizes, tracks the epoch's loss, builds the history."""

    def __init__(self, run: Run, history: list, partial: dict, chunk_steps: int | None, chunk_seconds: float,
                 least: int = 1):
        self.run, self.history = run, list(history)
        self.loss_sum = float(partial.get("loss_sum", 0.0))
        self.epoch_seconds = float(partial.get("seconds", 0.0))
        self.fixed, self.target, self.least = chunk_steps, chunk_seconds, least
        self.steps = chunk_steps or max(8, least)  # a short first chunk measures the speed

    def partial(self) -> dict:
        return {"loss_sum": self.loss_sum, "seconds": self.epoch_seconds}

    def advance(self, state: TrainState, order) -> tuple[TrainState, np.ndarray, float]:
        run = self.run
        room = run.steps_per_epoch - int(state.step)
        steps = min(self.fixed, room) if self.fixed else _next_steps(self.steps, 0, self.target, room, self.least)
        t0 = time.perf_counter()
        new, losses = run.program(state, order, run.x, run.y, run.hparams, jnp.int32(steps))
        losses = np.asarray(to_host(losses))[:steps]  # waits for the device: honest timing
        seconds = time.perf_counter() - t0
        if not self.fixed:
            self.steps = _next_steps(steps, seconds, self.target, run.steps_per_epoch, self.least)
        self.loss_sum += loss_sum(losses, run.x.shape[0], run.spec.batch_size, int(state.step))
        self.epoch_seconds += seconds
        return new, losses, seconds

    def close_epoch(self, state: TrainState) -> dict:
        run = self.run
        record = {"epoch": int(state.epoch), "loss": self.loss_sum / run.x.shape[0], "seconds": self.epoch_seconds}
        if run.x_val is not None and run.y_val is not None:
            vl, va = evaluate(state.params, run.x_val, run.y_val, arch=run.config.arch)
            record.update(val_loss=vl, val_accuracy=va)
        self.history.append(record)
        self.loss_sum = self.epoch_seconds = 0.0
        return record


def advance(run: Run, state: TrainState, handlers: Sequence[Callable], *, history: Sequence = (),
            partial: dict | None = None, chunk_steps: int | None = None,
            chunk_seconds: float | None = None) -> tuple[TrainState, list, str]:
    """Advance ``state`` chunk by chunk to ``run.config.epochs``, calling every handler with an
    ``Event`` at the start, after each chunk, after each epoch and at the end. Returns (final state,
    history, reason). A handler's ``StopRun`` ends the run at that boundary; errors propagate after
    the "end" event (reason "diverged" for ``DivergenceError``)."""
    from .backend import choices

    loop = Loop(run, list(history), partial or {}, chunk_steps, chunk_seconds or choices().chunk_seconds,
                choices().min_chunk_steps)
    def emit(kind, new, old, losses=None, seconds=0.0, reason=""):
        event = Event(kind, run, new, old, np.zeros(0) if losses is None else losses, loop.history, seconds, reason,
                      loop.partial())
        for handler in handlers:
            handler(event)

    emit("start", state, state)
    order, reason, n, good = None, "done", run.x.shape[0], state
    try:
        while int(state.epoch) < run.config.epochs:
            if order is None:
                order = epoch_order(state.key, state.epoch, n)
            new, losses, seconds = loop.advance(state, order)
            good, state = state, new
            if int(state.step) == 0:  # the epoch ended: its record exists before any handler can stop
                order = None
                loop.close_epoch(state)
            emit("chunk", state, good, losses, seconds)
            if order is None:
                emit("epoch", state, state)
    except StopRun as stop:
        reason = stop.reason
    except DivergenceError:
        emit("end", good, good, reason="diverged")
        raise
    emit("end", state, state, reason=reason)
    return state, loop.history, reason


class FitResult(NamedTuple):
    params: Params
    opt_state: Any
    state: TrainState
    history: list           # [{"epoch", "loss", "seconds", (val_loss, val_accuracy)}]
    test_loss: float
    test_accuracy: float    # a fraction in [0, 1]
    train_seconds: float    # chunks only, compilation excluded
    compile_seconds: float
    stopped_early: bool


def fit(config: TrainConfig, data, *, handlers: Sequence[Callable] = (), resume: dict | None = None,
        mesh: Any = None, chunk_steps: int | None = None, divergence_rule: bool = True) -> FitResult:
    """Train ``config`` on ``data`` (a ``data.Dataset`` of uint8 arrays) and test it.

    handlers: callables given an ``Event`` around every chunk (see ``handlers.py``); the finiteness
    and divergence checks (``divergence_rule=False``: non-finite values only) and early stopping come
    first. resume: {"state", "history", "partial"} from
    ``load_run`` continues a run exactly. mesh: a ``jax.sharding.Mesh`` (``parallel.make_mesh``) to
    split every minibatch over its devices. A signal stop raises ``Interrupted`` after the handlers
    saw the "end" event; divergence raises ``DivergenceError``.
    """
    from .handlers import EarlyStopping, default_checks

    config.validate()
    resume = resume or {}
    with precision(config.dtype):
        run, state = setup(config, data, resume.get("state"), mesh)
        early = EarlyStopping(config.patience)
        state, history, reason = advance(run, state, [*default_checks(divergence_rule), early, *handlers],
                                            history=resume.get("history", ()), partial=resume.get("partial"),
                                            chunk_steps=chunk_steps)
        if reason.startswith("SIG"):
            raise Interrupted(int(signal.Signals[reason]), state)
        params = early.best_params if early.best_params is not None else state.params
        test_loss, test_acc = evaluate(params, run.x_test, run.y_test, arch=config.arch)
    train_seconds = sum(r["seconds"] for r in history[len(resume.get("history", ())):])
    return FitResult(params, state.opt_state, state, history, test_loss, test_acc, train_seconds,
                     run.compile_seconds, reason == "early-stop")
