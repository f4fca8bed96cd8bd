"""Runs described by a ``TrainConfig``: the built-in MLP and CNN on the engine, as the CLI trains them.

* ``TrainSpec``: the static part of a configured step (architecture, gradient method, optimizer and
  schedule names, dropout, augmentation, frozen layers); it follows the engine's step protocol, so
  ``engine.chunk`` runs it as it runs a user's ``FunctionTask``. The numbers (lr, momentum, l2, ...)
  travel beside it as traced ``hparams`` (``config.hparams``): changing them never recompiles.
* ``setup`` / ``fit``: data to the device, params (fresh, fine-tuned or resumed), the compiled chunk,
  then ``engine.advance`` with the checks (finiteness, divergence, early stopping) and the caller's
  handlers; then the test set.
* ``load_run`` / ``load_model``: checkpoints restored against the template their config implies.
"""
from __future__ import annotations

import concurrent.futures
import dataclasses
import functools
import math
import signal
from collections.abc import Callable, Sequence
from typing import Any, NamedTuple

import jax
import jax.numpy as jnp
import numpy as np

from . import optim
from .backprop import manual_grad
from .config import TrainConfig, hparams
from .engine import (
    DivergenceError,
    Interrupted,
    Run,
    TrainState,
    advance,
    build_run,
    compile_program,
    init_state,
    precision,
    run_chunk,
    steps_per_epoch,
)
from .evaluation import _default_chunk, _eval_chunk_jit, apply_fn, evaluate
from .losses import cross_entropy, l2_penalty
from .memory import check_fits
from .model import Params, forward, inverted_dropout
from .parallel import to_host

__all__ = ["TrainSpec", "spec_for", "make_optimizer", "fit", "FitResult", "setup", "load_run", "load_model",
           "init_model", "state_template", "dtype_of", "prepare", "precision", "DivergenceError", "Interrupted",
           "Prepared"]


@dataclasses.dataclass(frozen=True)
class TrainSpec:
    """The static part of training (changing it changes the compiled program).

    Args:
        batch_size: examples per step.
        arch: "mlp" or "cnn".
        grad: "autodiff" (``jax.grad``) or "manual" (the notebook's backprop, MLP only).
        optimizer: an optimizer name from ``optim.OPTIMIZERS``.
        schedule: a schedule name from ``optim.SCHEDULES``.
        total_steps: the schedule's horizon in steps (0 for "constant").
        warmup_steps: the schedule's warmup in steps.
        dropout: hidden-unit drop rate.
        input_dropout: input-pixel drop rate (inverted dropout on each training minibatch, after augmentation).
        augment: None, "shift", "affine" or "elastic".
        image_side: the images' side in pixels, for augmentation.
        batch_sharding: None or the ``jax.sharding.Sharding`` each minibatch is constrained to (data
            parallelism, see ``parallel.py``).
        frozen: layer indices the optimizer leaves bit-identical.
        activation: the hidden layers' activation, a name from ``model.ACTIVATIONS``.
        elastic_sigma: the elastic fields' smoothing in pixels (read only by "elastic").
        elastic_alpha: the elastic fields' scale in pixels (read only by "elastic").
        max_norm: None or the largest norm of a unit's incoming weights (``optim.max_norm``).
        compute_dtype: None, or "bfloat16" for mixed precision: the forward pass (its matmuls) runs on
            bfloat16 copies of the params and inputs; the params, the loss and the updates stay float32.
    """

    batch_size: int = 32
    arch: str = "mlp"
    grad: str = "autodiff"
    optimizer: str = "sgd"
    schedule: str = "constant"
    total_steps: int = 0
    warmup_steps: int = 0
    dropout: float = 0.0
    input_dropout: float = 0.0
    augment: str | None = None
    image_side: int = 28
    batch_sharding: Any = None
    frozen: tuple = ()
    activation: str = "relu"
    elastic_sigma: float = 4.0
    elastic_alpha: float = 34.0
    max_norm: float | None = None
    compute_dtype: str | None = None
    has_aux = False  # the built-in loss reports no aux

    def value_and_grad(self, params, x, y, key, hparams):
        """((loss, {}), grads) of one minibatch: the engine's step protocol (see ``engine``)."""
        value, grads = value_and_grad_fn(self)(params, x, y, key, hparams)
        return (value, {}), grads

    def optimizer_for(self, hparams: dict) -> optim.Optimizer:
        """The optimizer, its numbers taken from the traced ``hparams``."""
        return make_optimizer(self, hparams)

    def augment_batch(self, key: jax.Array, x: jax.Array) -> jax.Array:
        """The minibatch x (B, D), augmented with ``key`` when the spec asks for it."""
        return _augment(self, key, x)


def spec_for(config: TrainConfig, num_examples: int, image_side: int = 28) -> TrainSpec:
    """The ``TrainSpec`` of ``config`` for a training set of ``num_examples`` images of side
    ``image_side`` pixels."""
    steps_per_epoch = -(-num_examples // config.batch_size)
    scheduled = config.schedule != "constant"  # without a schedule, runs of any length share a program
    return TrainSpec(
        batch_size=config.batch_size, arch=config.arch, grad=config.grad, optimizer=config.optimizer,
        schedule=config.schedule, total_steps=steps_per_epoch * config.epochs if scheduled else 0,
        warmup_steps=steps_per_epoch * config.warmup_epochs if scheduled else 0, dropout=float(config.dropout),
        input_dropout=float(config.input_dropout),
        augment=None if config.augment == "none" else config.augment, image_side=image_side,
        frozen=tuple(config.freeze), activation=getattr(config, "activation", "relu"),
        compute_dtype="bfloat16" if config.dtype == "bfloat16" else None, **_elastic_and_max_norm(config))


def _elastic_and_max_norm(config: TrainConfig) -> dict:
    """The spec's elastic numbers (only an elastic run's differ from the defaults) and max-norm limit."""
    out = {"max_norm": None if config.max_norm is None else float(config.max_norm)}
    if config.augment == "elastic":
        out.update(elastic_sigma=float(config.elastic_sigma), elastic_alpha=float(config.elastic_alpha))
    return out


def make_optimizer(spec: TrainSpec, hparams: dict) -> optim.Optimizer:
    """The optimizer named by ``spec``, its lr (or lr schedule) and constants taken from ``hparams``."""
    lr = hparams["lr"]
    if spec.schedule != "constant":
        lr = optim.schedule_by_name(spec.schedule, lr, total_steps=max(spec.total_steps, 2),
                                    warmup_steps=spec.warmup_steps or None)
    opt = optim.by_name(spec.optimizer, lr=lr, momentum=hparams["momentum"], beta1=hparams["beta1"],
                        beta2=hparams["beta2"], weight_decay=hparams["weight_decay"])
    if spec.max_norm is not None:  # last, so the step lands on the constrained weights (then frozen layers stay)
        opt = optim.chain(opt, optim.max_norm(spec.max_norm))
    if not spec.frozen:
        return opt
    from .transfer import trainable_mask

    # The mask needs the params' structure, known only when init/update see them.
    frozen = lambda params: optim.freeze(opt, trainable_mask(params, spec.frozen))  # noqa: E731
    return optim.Optimizer(lambda params: frozen(params).init(params),
                           lambda grads, state, params=None: frozen(params).update(grads, state, params))


def value_and_grad_fn(spec: TrainSpec) -> Callable:
    """``(params, x, y, key, hparams) -> (loss, grads)`` for the spec's gradient method."""
    if spec.grad == "manual":
        def manual(params, x, y, key, hparams):
            value = cross_entropy(forward(params, x, key=key, dropout=spec.dropout, activation=spec.activation), y)
            return value, manual_grad(params, x, y, activation=spec.activation, l2=hparams["l2"],
                                      dropout=spec.dropout, key=key)

        return manual
    fwd = apply_fn(spec.arch, spec.activation)
    if spec.compute_dtype is not None:
        fwd = _mixed(fwd, jnp.dtype(spec.compute_dtype))

    def objective(params, x, y, key, hparams):
        value = cross_entropy(fwd(params, x, key=key, dropout=spec.dropout), y)
        # L2 joins the objective (its gradient flows through jax.grad); decoupled decay is the optimizer's.
        return value + hparams["l2"] * l2_penalty(params), value

    def autodiff(params, x, y, key, hparams):
        (_, value), grads = jax.value_and_grad(objective, has_aux=True)(params, x, y, key, hparams)
        return value, grads

    return autodiff


def _mixed(fwd: Callable, compute) -> Callable:
    """``fwd`` in mixed precision: params and inputs cast to ``compute`` for the forward pass, the logits
    back to the params' dtype, so the cross-entropy, the L2 term and (through the casts) the gradients
    are float32. No loss scaling: bfloat16 has float32's exponent range."""
    def apply(params, x, **kwargs):
        low = jax.tree_util.tree_map(lambda p: p.astype(compute), params)
        out_dtype = jax.tree_util.tree_leaves(params)[0].dtype
        return fwd(low, x.astype(compute), **kwargs).astype(out_dtype)
    return apply


def _augment(spec: TrainSpec, key: jax.Array, x: jax.Array) -> jax.Array:
    """The training minibatch x (B, D): distorted (``spec.augment``), then its pixels dropped
    (``spec.input_dropout``)."""
    x = _distort(spec, key, x)
    if spec.input_dropout > 0:
        # A key of its own (folded in): the distortions drawn from ``key`` are the same with or without it.
        x = inverted_dropout(jax.random.fold_in(key, 1), x, spec.input_dropout)
    return x


def _distort(spec: TrainSpec, key: jax.Array, x: jax.Array) -> jax.Array:
    if spec.augment is None:
        return x
    from . import augment

    if spec.augment == "shift":
        return augment.random_shift(key, x, side=spec.image_side)
    if spec.augment == "affine":
        return augment.random_affine(key, x, side=spec.image_side)
    if spec.augment == "elastic":
        return augment.random_elastic(key, x, spec.elastic_sigma, spec.elastic_alpha, side=spec.image_side)
    raise ValueError(f"unknown augmentation {spec.augment!r}; choose shift, affine or elastic")



# ---------------------------------------------------------------- setting a run up


def dtype_of(config: TrainConfig):
    """The float dtype of ``config``'s params and inputs: ``jnp.float64`` for ``config.dtype == "float64"``,
    else ``jnp.float32`` (bfloat16 runs keep float32 params: only their forward pass is bfloat16)."""
    return jnp.float64 if config.dtype == "float64" else jnp.float32


def prepare(images: np.ndarray, dtype, arch: str = "mlp") -> jax.Array:
    """uint8 images (N, H, W) -> float inputs (N, H*W) of ``dtype`` in [0, 1] on the device; ``arch`` is
    ignored (the CNN reshapes its inputs itself)."""
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
    """Fresh params for ``config``, drawn from ``key``: the MLP ``input_dim-hidden...-num_classes`` or
    the CNN (square images of ``input_dim`` pixels)."""
    from .model import init_params

    if config.arch == "cnn":
        from .cnn import init_cnn_params
        side = int(round(np.sqrt(input_dim)))
        return init_cnn_params(key, in_shape=(side, side, 1), num_classes=num_classes, dtype=dtype_of(config))
    return init_params(key, [input_dim, *config.hidden, num_classes], scheme=config.init, dtype=dtype_of(config))


def state_template(config: TrainConfig, input_dim: int, num_classes: int) -> TrainState:
    """The shapes and dtypes (``jax.ShapeDtypeStruct``) of the state of a run of ``config`` on
    ``input_dim`` inputs and ``num_classes`` classes: what its checkpoint must hold."""
    spec = spec_for(config, 1)

    def build(key):
        return init_state(init_model(config, key, input_dim, num_classes),
                          make_optimizer(spec, hparams(config, dtype_of(config))), key)

    with precision(config.dtype):
        return jax.eval_shape(build, jax.random.PRNGKey(0))


def _num_classes(config: TrainConfig, data) -> int:
    if config.classes is not None:
        return len(config.classes)
    return max(int(max(data.y_train.max(), data.y_test.max())) + 1, 10)


def _start_params(config, key, input_dim, num_classes):
    if config.finetune:
        return finetune_params(config, key, input_dim, num_classes)
    return init_model(config, key, input_dim, num_classes)


def param_count(config: TrainConfig, input_dim: int, num_classes: int) -> int:
    """Parameters of ``config``'s model, from shapes alone (nothing is allocated)."""
    shapes = jax.eval_shape(lambda k: init_model(config, k, input_dim, num_classes), jax.random.PRNGKey(0))
    return sum(math.prod(leaf.shape) for leaf in jax.tree_util.tree_leaves(shapes))


def _compile_chunk(spec, capacity, state, n, input_dim, dtype, hp, matmul: str = "default"):
    """The chunk program compiled from shapes alone (callable from a second thread: x64 and the matmul
    precision are per thread)."""
    with precision(jnp.dtype(dtype).name, matmul):
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


class Prepared(NamedTuple):
    """The arrays of a configured run on the device; the test set stays apart from the ``Run``.

    Attributes:
        x_test: (N_test, D) test inputs, in the run's dtype.
        y_test: (N_test,) int32 test labels (relabelled 0..k-1 under ``classes``).
        num_classes: the model's number of outputs.
    """

    x_test: jax.Array
    y_test: jax.Array
    num_classes: int


def setup(config: TrainConfig, data, state: TrainState | None = None,
          mesh: Any = None) -> tuple[Run, TrainState, Prepared]:
    """The ``Run``, the starting state (``state`` to resume; else fresh or fine-tuned params) and the
    test arrays.

    The chunk program compiles on a second thread from shapes alone while this one initialises and
    copies the data to the device, so a cold start's largest compile overlaps the rest. Call it inside
    ``precision(config.dtype, config.matmul_precision)``, as ``fit`` does.

    Args:
        config: the run's ``TrainConfig``.
        data: a ``data.Dataset`` of uint8 images and integer labels.
        state: a ``TrainState`` to resume from (None: fresh or, with ``config.finetune``, fine-tuned params).
        mesh: None, or a ``jax.sharding.Mesh`` to split every minibatch over its devices.
    """
    from .checks import check_dataset, check_split, check_state

    data = check_dataset(data)  # values, on the host, before any work
    if config.classes is not None:
        from .data import select_classes
        data = select_classes(data, config.classes)
    dtype, num_classes = dtype_of(config), _num_classes(config, data)
    input_dim = int(np.prod(data.x_train.shape[1:]))
    n = check_split(len(data.y_train), config.val_split)[0]
    if state is not None:
        check_state(state, state_template(config, input_dim, num_classes))
    check_fits(config, len(data.y_train), input_dim, num_classes, len(data.y_test),
               params=param_count(config, input_dim, num_classes))  # refuse before any work
    spec, hp = spec_for(config, n, int(data.x_train.shape[1])), hparams(config, dtype)
    capacity = steps_per_epoch(n, config.batch_size)
    if state is None:
        init_key, run_key = jax.random.split(jax.random.PRNGKey(config.seed))
        state = init_state(_start_params(config, init_key, input_dim, num_classes), make_optimizer(spec, hp), run_key)
    x, y, x_val, y_val, x_test, y_test = _arrays(config, data, dtype)
    extra: dict[str, Any] = dict(loss_floor=math.log(num_classes), config=config,
                 validate=None if x_val is None else functools.partial(_validate, x_val, y_val, config),
                 save=functools.partial(_save, config, int(x.shape[1]), num_classes, capacity))
    if mesh is not None:
        run, state = build_run(spec, state, x, y, config.epochs, hp, mesh=mesh, **extra)
    else:
        with concurrent.futures.ThreadPoolExecutor(1) as pool:
            pending = pool.submit(_compile_chunk, spec, capacity, jax.eval_shape(lambda s: s, state), n,
                                  input_dim, dtype, hp, config.matmul_precision)
            chunk_size = min(_default_chunk(config.arch), x_test.shape[0])  # the test program, meanwhile
            _eval_chunk_jit(state.params, x_test[:chunk_size], y_test[:chunk_size], config.arch, _act(config))
            program, seconds = pending.result()
        run = Run(spec, hp, x, y, config.epochs, capacity, program, capacity, seconds, **extra)
    return run, state, Prepared(x_test, y_test, num_classes)


def _act(config: TrainConfig) -> str:
    return getattr(config, "activation", "relu")


def _validate(x_val, y_val, config: TrainConfig, params) -> dict:
    loss_value, acc = evaluate(params, x_val, y_val, arch=config.arch, activation=_act(config))
    return {"val_loss": loss_value, "val_accuracy": acc}


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


def run_meta(config: TrainConfig, input_dim: int, num_classes: int, history: list,
             partial: dict | None = None) -> dict:
    """What a checkpoint stores beside the state: enough to rebuild its template and continue."""
    return {"config": config.to_dict(), "history": history, "input_dim": int(input_dim),
            "num_classes": int(num_classes), "partial": partial or {}}


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
    """(config, state, meta) of the checkpoint at ``path`` from ``jaxmlp train --save``, restored
    strictly against the template its config implies (a float64 run's arrays come back as float64)."""
    from .checkpoint import CheckpointError, load_state, read_meta

    config, meta = _checked_meta(path, read_meta(path))
    template = state_template(config, meta["input_dim"], meta["num_classes"])
    with precision(config.dtype):
        state = load_state(path, template)
    if not 0 <= int(state.epoch) <= config.epochs or not 0 <= int(state.step) < meta.get("steps_per_epoch", 1 << 31):
        raise CheckpointError(f"{path}: member 'state/epoch' or 'state/step' is out of range")
    return config, state, meta


def load_model(path) -> tuple[Params, TrainConfig, dict]:
    """(params, config, meta) of the checkpoint at ``path``, for evaluation, prediction and fine-tuning."""
    config, state, meta = load_run(path)
    return state.params, config, meta


def _save(config: TrainConfig, input_dim: int, num_classes: int, steps: int, path, state: TrainState,
          history: list, partial: dict | None = None):
    """Atomically write ``state`` and the run's meta to ``path`` (``checkpoint.save_checkpoint``)."""
    from .checkpoint import save_checkpoint

    meta = {**run_meta(config, input_dim, num_classes, history, partial), "steps_per_epoch": steps}
    return save_checkpoint(path, to_host(state), meta)


# ---------------------------------------------------------------- fit


class FitResult(NamedTuple):
    """What ``fit`` returns: the trained model, its state and history, and its test scores.

    Attributes:
        params: the model's params: the best validation epoch's under early stopping, else the final ones.
        opt_state: the final optimizer state.
        state: the whole final ``TrainState``.
        history: one record per epoch: ``{"epoch", "loss", "seconds"}`` (and "val_loss", "val_accuracy").
        test_loss: mean cross-entropy of ``params`` on the test set.
        test_accuracy: accuracy of ``params`` on the test set, a fraction in [0, 1].
        train_seconds: wall time of this call's epochs, compilation excluded.
        compile_seconds: the time spent compiling the chunk program.
        stopped_early: whether early stopping ended the run.
    """

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
    """Train ``config`` on ``data`` (a ``data.Dataset`` of uint8 arrays) and test it: the command line's
    path, a thin layer over the engine (``engine.advance``, the loop ``jaxmlp.train`` runs too).

    Args:
        config: the run's ``TrainConfig``.
        data: a ``data.Dataset`` of uint8 images and integer labels.
        handlers: callables given an ``Event`` around every chunk (see ``handlers.py``); the finiteness
            and divergence checks and early stopping come first.
        resume: {"state", "history", "partial"} from ``load_run``: continues a run exactly.
        mesh: a ``jax.sharding.Mesh`` (``parallel.make_mesh``) to split every minibatch over its devices.
        chunk_steps: steps per compiled chunk (None: sized to take about a quarter second).
        divergence_rule: stop when the loss passes 10x its start (False: on non-finite values only).

    A signal stop raises ``Interrupted`` after the handlers saw the "end" event; divergence raises
    ``DivergenceError``.
    """
    from .handlers import EarlyStopping, default_checks

    config.validate()
    resume = resume or {}
    with precision(config.dtype, config.matmul_precision):
        run, state, test = setup(config, data, resume.get("state"), mesh)
        early = EarlyStopping(config.patience)
        state, history, reason = advance(run, state, [*default_checks(divergence_rule), early, *handlers],
                                            history=resume.get("history", ()), partial=resume.get("partial"),
                                            chunk_steps=chunk_steps)
        if reason.startswith("SIG"):
            raise Interrupted(int(signal.Signals[reason]), state)
        params = early.best_params if early.best_params is not None else state.params
        test_loss, test_acc = evaluate(params, test.x_test, test.y_test, arch=config.arch, activation=_act(config))
    train_seconds = sum(r["seconds"] for r in history[len(resume.get("history", ())):])
    return FitResult(params, state.opt_state, state, history, test_loss, test_acc, train_seconds,
                     run.compile_seconds, reason == "early-stop")
