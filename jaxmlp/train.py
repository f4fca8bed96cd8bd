"""Training: the jitted SGD step, fused epochs, the epoch loop, evaluation.

Two ways to train, same math:

* ``sgd_step(params, x, y, lr) -> (params, loss)``: one jitted update, for notebooks and teaching;
  a Python loop over minibatches calls it (``train_epoch_loop``).
* ``run_epoch(...)``: a whole epoch as ONE compiled program: the shuffle is drawn on the device from a
  PRNG key, ``lax.scan`` runs the minibatches, the per-batch losses come back as an array. This is what
  ``fit`` and the CLI use; it is several times faster on a CPU because Python is out of the loop.

The last partial batch: when ``N % batch_size != 0`` the leftover ``N % batch_size`` examples form one
final, smaller batch inside the same compiled program (nothing is dropped, as in the notebook). Its
loss is weighted by its size in the epoch's mean loss.

Hyperparameters that are plain numbers (lr, momentum, betas, weight decay, L2) travel as a traced
``hparams`` dict, so changing them never recompiles and a sweep can ``vmap`` over them. Everything
that changes the program's structure (batch size, optimizer kind, dropout, augmentation, ...) lives
in the hashable, static ``TrainSpec``.
"""
from __future__ import annotations

import concurrent.futures
import dataclasses
import functools
import time
from typing import Any, Callable, NamedTuple

import jax
import jax.numpy as jnp
import numpy as np

from . import optim
from .backprop import manual_grad
from .losses import accuracy, cross_entropy, loss, notebook_cross_entropy
from .model import Params, forward, forward_intermediates, softmax


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

    The permutation comes from ``key``; the data is shuffled once, then sliced into contiguous
    minibatches. Returns params and per-batch losses (num_batches,). The short last batch compiles
    ``sgd_step`` once more for its shape (once per run, not per epoch).
    """
    perm = jax.random.permutation(key, x.shape[0])
    xs, ys = x[perm], y[perm]
    losses = []
    for s in batch_slices(x.shape[0], batch_size):
        params, value = sgd_step(params, xs[s], ys[s], lr)
        losses.append(value)
    return params, jnp.stack(losses)


# ---------------------------------------------------------------- fused epochs


@dataclasses.dataclass(frozen=True)
class TrainSpec:
    """The static part of training (changing it changes the compiled program).

    arch: "mlp" or "cnn". loss: "ce" (log-softmax from logits) or "notebook" (the seed's
    ``-sum(Y log(p + 1e-8)) / m``, reported only: its gradient is taken as softmax - Y, exactly the
    notebook's backprop). grad: "autodiff" (jax.grad) or "manual" (the notebook's backprop, MLP only).
    optimizer: a name from ``optim.by_name``; schedule: a name from ``optim.schedule_by_name``;
    total_steps: the schedule's horizon. dropout: hidden-unit drop rate during training.
    augment: None, "shift" or "affine" (on-device, fresh each step). image_side: for augmentation.
    batch_sharding: None, or a ``jax.sharding.Sharding`` each minibatch is constrained to (data
    parallelism: the batch axis split over a mesh, see ``parallel.py``; XLA reduces the gradients).
    frozen: indices of layers the optimizer leaves bit-identical (transfer learning; -1 is the head).
    """

    batch_size: int = 32
    arch: str = "mlp"
    loss: str = "ce"
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


DEFAULT_HPARAMS = {"lr": 0.1, "momentum": 0.9, "beta1": 0.9, "beta2": 0.999, "weight_decay": 0.0, "l2": 0.0}


def hparams_dict(dtype=jnp.float32, **overrides) -> dict:
    """The traced numeric hyperparameters, defaults filled in, as 0-d arrays of ``dtype``."""
    unknown = set(overrides) - set(DEFAULT_HPARAMS)
    if unknown:
        raise ValueError(f"unknown hyperparameters: {sorted(unknown)}")
    merged = {**DEFAULT_HPARAMS, **{k: v for k, v in overrides.items() if v is not None}}
    # Through NumPy: a host value copied to the device compiles nothing (a cast on the device would).
    return {k: jnp.asarray(np.asarray(v, jnp.dtype(dtype))) for k, v in merged.items()}


def apply_fn(arch: str) -> Callable:
    """The forward function ``(params, x, *, key=None, dropout=0.0) -> logits`` of an architecture."""
    if arch == "mlp":
        return forward
    if arch == "cnn":
        from .cnn import cnn_forward
        return cnn_forward
    raise ValueError(f"unknown architecture {arch!r}; choose mlp or cnn")


def make_optimizer(spec: TrainSpec, hparams: dict) -> "optim.Optimizer":
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
    """``(params, x, y, key, hparams) -> (loss, grads)`` for the spec's loss and gradient method."""
    if spec.grad == "manual":
        if spec.arch != "mlp" or spec.dropout or spec.augment:
            raise ValueError("manual gradients support the plain MLP only (no dropout, no augmentation)")

        def manual(params, x, y, key, hparams):
            del key
            cache = forward_intermediates(params, x)
            L = len(params)
            value = (notebook_cross_entropy(cache[f"A{L}"], y) if spec.loss == "notebook"
                     else cross_entropy(cache[f"Z{L}"], y))
            grads = manual_grad(params, x, y)
            return value, grads

        return manual

    fwd = apply_fn(spec.arch)

    def objective(params, x, y, key, hparams):
        logits = fwd(params, x, key=key, dropout=spec.dropout)
        value = cross_entropy(logits, y)
        # L2 is added to the objective (its gradient flows through jax.grad); decoupled weight
        # decay instead lives in the optimizer (AdamW).
        return value + hparams["l2"] * optim.l2_penalty(params), value

    def autodiff(params, x, y, key, hparams):
        (_, value), grads = jax.value_and_grad(objective, has_aux=True)(params, x, y, key, hparams)
        if spec.loss == "notebook":
            value = notebook_cross_entropy(softmax(fwd(params, x)), y)
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


def epoch_with_perm(params: Params, opt_state: Any, key: jax.Array, perm: jax.Array, x: jax.Array,
                    y: jax.Array, hparams: dict, spec: TrainSpec) -> tuple[Params, Any, jax.Array]:
    """One epoch over ``x[perm]`` in minibatches: (params, opt_state, batch_losses (num_batches,)).

    Pure and traceable (jit it, vmap it). ``key`` drives dropout/augmentation only; the order is ``perm``.
    """
    n = perm.shape[0]
    bs = spec.batch_size
    num_full, rest = divmod(n, bs)
    opt = make_optimizer(spec, hparams)
    vg = value_and_grad_fn(spec)

    def step(carry, inputs):
        params, opt_state = carry
        idx, step_key = inputs
        aug_key, drop_key = jax.random.split(step_key)
        xb, yb = _augment(spec, aug_key, x[idx]), y[idx]
        if spec.batch_sharding is not None:
            xb = jax.lax.with_sharding_constraint(xb, spec.batch_sharding)
            yb = jax.lax.with_sharding_constraint(yb, spec.batch_sharding)
        value, grads = vg(params, xb, yb, drop_key, hparams)
        params, opt_state = opt.update(grads, opt_state, params)
        return (params, opt_state), value

    keys = jax.random.split(key, num_full + 1)
    (params, opt_state), losses = jax.lax.scan(
        step, (params, opt_state), (perm[: num_full * bs].reshape(num_full, bs), keys[:num_full]))
    if rest:
        (params, opt_state), last = step((params, opt_state), (perm[num_full * bs:], keys[num_full]))
        losses = jnp.concatenate([losses, last[None]])
    return params, opt_state, losses


def epoch(params: Params, opt_state: Any, key: jax.Array, x: jax.Array, y: jax.Array, hparams: dict,
          spec: TrainSpec) -> tuple[Params, Any, jax.Array]:
    """One epoch with a fresh shuffle drawn on the device from ``key``. Pure; see ``epoch_with_perm``."""
    perm_key, step_key = jax.random.split(key)
    perm = jax.random.permutation(perm_key, x.shape[0])
    return epoch_with_perm(params, opt_state, step_key, perm, x, y, hparams, spec)


# Compiled once per (shapes, spec): later epochs and later calls with the same shapes reuse the program.
# No buffer donation: callers keep the previous epoch's params (the last finite ones, for checkpoints).
run_epoch = jax.jit(epoch, static_argnames=("spec",))
run_epoch_with_perm = jax.jit(epoch_with_perm, static_argnames=("spec",))


_COMPILED: dict = {}


def _arg_signature(v) -> tuple:
    """(shape, dtype, placement) of an argument, the same for an array on the default device and for
    an abstract ``jax.ShapeDtypeStruct`` (which lowers for that device), so a program compiled from
    shapes alone (``fit``'s background compile) is found again when the arrays arrive."""
    sharding = getattr(v, "sharding", None)
    if sharding is None:
        sharding = ("single", jax.devices()[0])
    elif isinstance(sharding, jax.sharding.SingleDeviceSharding):
        sharding = ("single", next(iter(sharding.device_set)))
    return tuple(jnp.shape(v)), jnp.result_type(v), sharding


def compile_epoch(fn, spec: TrainSpec, *args) -> tuple[Callable, float]:
    """The ahead-of-time compiled ``fn(*args, spec=spec)`` and the seconds spent compiling it (0.0 when
    an executable for the same function, spec and argument shapes/dtypes was compiled earlier in this
    process: later runs with the same shapes never recompile)."""
    if spec.schedule == "constant":
        # The horizon only matters to schedules; without one, runs of different lengths share a program.
        spec = dataclasses.replace(spec, total_steps=0, warmup_steps=0)
    leaves, treedef = jax.tree_util.tree_flatten(args)
    signature = (fn, spec, treedef, tuple(map(_arg_signature, leaves)))
    if signature in _COMPILED:
        return _COMPILED[signature], 0.0
    t0 = time.perf_counter()
    compiled = fn.lower(*args, spec=spec).compile()
    seconds = time.perf_counter() - t0
    _COMPILED[signature] = compiled
    return compiled, seconds


def epoch_loss(batch_losses: np.ndarray, num_examples: int, batch_size: int, notebook: bool = False) -> float:
    """The epoch's reported loss from its per-batch losses.

    Default: the example-weighted mean (the short last batch counts by its size). Notebook:
    ``sum(batch losses) / (N // batch_size)``, the seed's formula, short batch included in the sum.
    """
    batch_losses = np.asarray(batch_losses, dtype=np.float64)
    if notebook:
        return float(batch_losses.sum() / max(num_examples // batch_size, 1))
    sizes = np.full(len(batch_losses), batch_size, dtype=np.float64)
    sizes[-1] = num_examples - batch_size * (len(batch_losses) - 1)
    return float((batch_losses * sizes).sum() / num_examples)


# ---------------------------------------------------------------- evaluation


def _eval_chunk(params, x, y, arch: str, notebook: bool):
    logits = apply_fn(arch)(params, x)
    value = notebook_cross_entropy(softmax(logits), y) if notebook else cross_entropy(logits, y)
    return value * x.shape[0], accuracy(logits, y) * x.shape[0]


_eval_chunk_jit = jax.jit(_eval_chunk, static_argnames=("arch", "notebook"))


def _default_chunk(arch: str) -> int:
    # The CNN's im2col patches take ~0.2 MB per image; 1000 images keep a chunk near 200 MB.
    return 1000 if arch == "cnn" else 10000


def evaluate(params: Params, x: jax.Array, y: jax.Array, *, arch: str = "mlp", notebook: bool = False,
             chunk_size: int | None = None) -> tuple[float, float]:
    """``(mean loss, accuracy in [0, 1])`` of the model on (x, y), in chunks to bound memory.

    ``notebook=True`` reports the seed's epsilon cross-entropy instead of the log-softmax one.
    """
    n = x.shape[0]
    if n == 0:
        raise ValueError("cannot evaluate on an empty set")
    total_loss = total_acc = 0.0
    for s in batch_slices(n, chunk_size or _default_chunk(arch)):
        l, a = _eval_chunk_jit(params, x[s], y[s], arch, notebook)
        total_loss += float(l)
        total_acc += float(a)
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


# ---------------------------------------------------------------- the epoch loop


class DivergenceError(ArithmeticError):
    """Training produced a non-finite loss."""


class EpochResult(NamedTuple):
    epoch: int              # 1-based
    loss: float             # the epoch's training loss (see epoch_loss)
    seconds: float          # wall time of the epoch, compilation excluded
    params: Params
    opt_state: Any
    key: jax.Array          # the key to continue from
    compile_seconds: float  # time spent compiling the epoch program (same for every epoch of a run)


def fit_epochs(params: Params, opt_state: Any, key: jax.Array, x: jax.Array, y: jax.Array, hparams: dict,
               spec: TrainSpec, epochs: int, *, start_epoch: int = 0,
               perms: Callable[[int], np.ndarray] | None = None, notebook_loss: bool = False):
    """Generator over epochs ``start_epoch + 1 .. epochs``: yields an ``EpochResult`` after each.

    The caller decides what happens between epochs (print, log, validate, checkpoint, stop), which
    keeps this loop free of side effects. The epoch program is compiled ahead of time, once, and the
    same executable runs every epoch, so nothing can recompile. ``perms(epoch_index)`` replaces the
    on-device shuffle with host-made permutations (the notebook-exact mode's ``np.random.permutation``).
    A non-finite epoch loss raises ``DivergenceError``; the last yielded result holds finite params.
    """
    n = x.shape[0]
    if perms is None:
        compiled, compile_seconds = compile_epoch(run_epoch, spec, params, opt_state, key, x, y, hparams)
    else:
        perm0 = jnp.zeros((n,), jnp.int32)
        compiled, compile_seconds = compile_epoch(run_epoch_with_perm, spec, params, opt_state, key, perm0, x, y,
                                                  hparams)
    for e in range(start_epoch, epochs):
        t0 = time.perf_counter()
        key, sub = jax.random.split(key)
        if perms is None:
            params, opt_state, losses = compiled(params, opt_state, sub, x, y, hparams)
        else:
            perm = jnp.asarray(perms(e), dtype=jnp.int32)
            params, opt_state, losses = compiled(params, opt_state, sub, perm, x, y, hparams)
        losses = np.asarray(losses)  # waits for the device, so the timing is honest
        value = epoch_loss(losses, n, spec.batch_size, notebook=notebook_loss)
        seconds = time.perf_counter() - t0
        if not np.isfinite(value):
            bad = int(np.argmin(np.isfinite(losses)))
            raise DivergenceError(
                f"epoch {e + 1}: the loss became non-finite ({value}) at batch {bad + 1} of {len(losses)}; "
                f"training stopped (try a lower --lr)")
        yield EpochResult(e + 1, value, seconds, params, opt_state, key, compile_seconds)


# ---------------------------------------------------------------- the whole run


@dataclasses.dataclass
class TrainConfig:
    """Everything ``jaxmlp train`` can set. Defaults: the notebook's architecture and its best
    experiment (784-128-64-10, SGD lr 0.1, batch 32, 10 epochs, seed 42, N(0,1)*0.01 init)."""

    dataset: str = "mnist"
    arch: str = "mlp"
    hidden: tuple = (128, 64)
    epochs: int = 10
    batch_size: int = 32
    lr: float = 0.1
    seed: int = 42
    init: str = "notebook"
    dtype: str = "float32"
    optimizer: str = "sgd"
    momentum: float = 0.9
    beta1: float = 0.9
    beta2: float = 0.999
    weight_decay: float | None = None  # None: the optimizer's default (AdamW 1e-2, as PyTorch; others 0)
    l2: float = 0.0
    schedule: str = "constant"
    warmup_epochs: int = 0
    dropout: float = 0.0
    augment: str | None = None
    val_split: float = 0.0
    patience: int = 0
    grad: str = "autodiff"
    notebook_exact: bool = False
    replay_notebook_step: bool = False
    preset: str | None = None  # the recipe these values started from (a record; it changes nothing)
    finetune: str | None = None  # a checkpoint whose params the run starts from (transfer learning)
    freeze: tuple = ()           # layer indices kept fixed (-1: the head)
    new_head: bool = False       # replace the checkpoint's output layer by a fresh one sized to the labels
    classes: tuple | None = None  # train and test on these labels only, relabelled 0..k-1

    def to_dict(self) -> dict:
        d = dataclasses.asdict(self)
        d["hidden"] = list(self.hidden)
        d["freeze"] = list(self.freeze)
        d["classes"] = None if self.classes is None else list(self.classes)
        return d

    def validate(self) -> "TrainConfig":
        """Check every field (ValueError naming the flag) and fill in optimizer-dependent defaults."""
        if self.weight_decay is None:
            self.weight_decay = 1e-2 if self.optimizer == "adamw" else 0.0
        self.freeze = tuple(int(i) for i in self.freeze)  # lists from JSON compare equal after this
        if self.classes is not None:
            from .data import check_classes
            self.classes = tuple(check_classes(self.classes))
        if self.new_head and not self.finetune:
            raise ValueError("--new-head replaces the head of a trained model; it needs --finetune CHECKPOINT")
        if self.schedule == "warmup-cosine" and self.warmup_epochs >= self.epochs:
            raise ValueError(f"--warmup-epochs ({self.warmup_epochs}) must be less than --epochs ({self.epochs})")
        def positive(name):
            if not getattr(self, name) > 0:
                raise ValueError(f"--{name.replace('_', '-')} must be positive, got {getattr(self, name)}")
        for name in ("epochs", "batch_size", "lr"):
            positive(name)
        if not np.isfinite(self.lr):
            raise ValueError(f"--lr must be finite, got {self.lr}")
        if any(int(h) <= 0 for h in self.hidden):
            raise ValueError(f"--hidden sizes must be positive, got {list(self.hidden)}")
        if not 0 <= self.dropout < 1:
            raise ValueError(f"--dropout must lie in [0, 1), got {self.dropout}")
        if not 0 <= self.val_split < 1:
            raise ValueError(f"--val-split must lie in [0, 1), got {self.val_split}")
        if self.patience and not self.val_split:
            raise ValueError("--patience (early stopping) needs a validation split (--val-split)")
        if self.dtype not in ("float32", "float64"):
            raise ValueError(f"--dtype must be float32 or float64, got {self.dtype!r}")
        if self.notebook_exact:
            clash = [n for n, default in (("arch", "mlp"), ("optimizer", "sgd"), ("dropout", 0.0),
                                          ("augment", None), ("val_split", 0.0), ("l2", 0.0),
                                          ("weight_decay", 0.0), ("schedule", "constant"), ("finetune", None),
                                          ("freeze", ()), ("classes", None))
                     if getattr(self, n) != default]
            if clash:
                raise ValueError(f"--notebook-exact reproduces the notebook's plain SGD; it cannot be combined "
                                 f"with --{clash[0].replace('_', '-')}")
        return self


class FitResult(NamedTuple):
    params: Params
    opt_state: Any
    key: jax.Array
    history: list           # [{"epoch", "loss", "seconds", (val_loss, val_accuracy)}]
    test_loss: float
    test_accuracy: float    # a fraction in [0, 1]
    train_seconds: float    # epochs only, compilation excluded
    compile_seconds: float
    stopped_early: bool


def prepare(images: np.ndarray, dtype, arch: str = "mlp") -> jax.Array:
    """uint8 images (N, H, W) -> float inputs in [0, 1] on the device: (N, H*W) for both archs
    (the CNN reshapes internally)."""
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
    """Fresh params for ``config`` (the notebook-exact mode draws with NumPy's global RNG instead)."""
    from .model import init_params, init_params_numpy

    dtype = jnp.float64 if config.dtype == "float64" or config.notebook_exact else jnp.float32
    sizes = [input_dim, *[int(h) for h in config.hidden], num_classes]
    if config.notebook_exact:
        return init_params_numpy(config.seed, sizes, dtype)
    if config.arch == "cnn":
        from .cnn import init_cnn_params
        side = int(round(np.sqrt(input_dim)))
        return init_cnn_params(key, in_shape=(side, side, 1), num_classes=num_classes, dtype=dtype)
    return init_params(key, sizes, scheme=config.init, dtype=dtype)


def spec_for(config: TrainConfig, num_examples: int, image_side: int = 28) -> TrainSpec:
    steps_per_epoch = -(-num_examples // config.batch_size)
    return TrainSpec(
        batch_size=config.batch_size, arch=config.arch,
        loss="notebook" if config.notebook_exact else "ce",
        grad="manual" if config.notebook_exact else config.grad,
        optimizer=config.optimizer, schedule=config.schedule,
        total_steps=steps_per_epoch * config.epochs, warmup_steps=steps_per_epoch * config.warmup_epochs,
        dropout=float(config.dropout), augment=config.augment, image_side=image_side, frozen=tuple(config.freeze))


def finetune_params(config: TrainConfig, key: jax.Array, input_dim: int, num_classes: int) -> Params:
    """The params of checkpoint ``config.finetune`` to start from, in the run's dtype; with
    ``config.new_head`` the output layer is replaced by a fresh ``num_classes``-way one drawn from
    ``key``. ValueError (naming --finetune) when the model does not fit the config or the data."""
    from .checkpoint import load_model
    from .transfer import replace_head

    path = config.finetune
    params, saved = load_model(path)
    arch = saved.get("arch", "mlp")
    if arch != config.arch:
        raise ValueError(f"--finetune: {path} holds a {arch} model, but the run's --arch is {config.arch}")
    if arch == "mlp":
        sizes = [int(layer["W"].shape[0]) for layer in params]
        if sizes[0] != input_dim:
            raise ValueError(f"--finetune: {path} takes {sizes[0]} inputs, the data has {input_dim}")
        if tuple(sizes[1:]) != tuple(int(h) for h in config.hidden):
            raise ValueError(f"--finetune: {path} has hidden sizes {sizes[1:]}, the run asks for "
                             f"{list(config.hidden)}")
    dtype = jnp.float64 if config.dtype == "float64" else jnp.float32
    params = jax.tree_util.tree_map(lambda a: jnp.asarray(a, dtype), params)
    outputs = int(params[-1]["W"].shape[-1])
    if config.new_head:
        return replace_head(key, params, num_classes, scheme="he" if config.init == "notebook" else config.init)
    if outputs != num_classes:
        raise ValueError(f"--finetune: {path} has {outputs} outputs but the data has {num_classes} classes; "
                         f"add --new-head")
    return params


def fit(config: TrainConfig, data, *, on_epoch: Callable[[EpochResult, dict], None] | None = None,
        resume: dict | None = None, mesh: Any = None) -> FitResult:
    """Train ``config`` on ``data`` (a ``data.Dataset`` of uint8 arrays) and evaluate on its test set.

    ``on_epoch(result, record)`` is called after every epoch (printing, logging, checkpointing live
    there); ``record`` is the history entry. ``resume`` = {"params", "opt_state", "key", "epoch",
    "history"} continues a run exactly where it stopped. Raises DivergenceError on a non-finite loss.
    ``mesh`` (a 1-D ``jax.sharding.Mesh``, see ``parallel.make_mesh``) trains data-parallel: each
    minibatch split over its devices, params replicated; the same numbers as one device up to round-off.
    """
    config.validate()
    if config.notebook_exact and resume is not None:
        raise ValueError("--notebook-exact runs cannot be resumed (NumPy's global RNG is not checkpointed)")
    dtype = jnp.float64 if config.dtype == "float64" or config.notebook_exact else jnp.float32
    if dtype == jnp.float64 and not jax.config.jax_enable_x64:
        jax.config.update("jax_enable_x64", True)
    if config.classes is not None:
        from .data import select_classes
        data = select_classes(data, config.classes)
        num_classes = len(config.classes)
    else:
        num_classes = max(int(max(data.y_train.max(), data.y_test.max())) + 1, 10)
    side = int(data.x_train.shape[1])

    train_idx = np.arange(len(data.y_train))
    val_idx = np.arange(0)
    if config.val_split:
        train_idx, val_idx = split_validation(len(data.y_train), config.val_split, config.seed)
    input_dim = int(np.prod(data.x_train.shape[1:]))
    spec = spec_for(config, len(train_idx), side)
    hparams = hparams_dict(dtype, lr=config.lr, momentum=config.momentum, beta1=config.beta1,
                           beta2=config.beta2, weight_decay=config.weight_decay, l2=config.l2)
    key = jax.random.PRNGKey(config.seed)
    if resume is not None:
        key = resume["key"]
    else:
        key, init_key = jax.random.split(key)
    start = None  # fine-tuning's params, loaded first: a bad checkpoint fails before any work
    if resume is None and config.finetune:
        start = finetune_params(config, init_key, input_dim, num_classes)
    with concurrent.futures.ThreadPoolExecutor(1) as pool:
        background = None
        if mesh is None and not config.notebook_exact:
            # XLA compiles the epoch program from shapes alone on a second thread while this one
            # initialises and copies the data to the device: a cold start's largest compile overlaps.
            abstract_params = resume["params"] if resume is not None else start if start is not None else (
                jax.eval_shape(lambda k: init_model(config, k, input_dim, num_classes), init_key))
            background = pool.submit(
                compile_epoch, run_epoch, spec, abstract_params,
                jax.eval_shape(make_optimizer(spec, hparams).init, abstract_params), key,
                jax.ShapeDtypeStruct((len(train_idx), input_dim), dtype),
                jax.ShapeDtypeStruct((len(train_idx),), jnp.int32), hparams)
        x = prepare(data.x_train[train_idx], dtype, config.arch)
        y = jnp.asarray(data.y_train[train_idx].astype(np.int32))
        x_val = prepare(data.x_train[val_idx], dtype, config.arch) if len(val_idx) else None
        y_val = jnp.asarray(data.y_train[val_idx].astype(np.int32)) if len(val_idx) else None
        perms = None
        if resume is not None:
            params, opt_state = resume["params"], resume["opt_state"]
            start_epoch = int(resume["epoch"])
            history = list(resume.get("history", []))
        else:
            params = start if start is not None else init_model(config, init_key, input_dim, num_classes)
            opt_state = make_optimizer(spec, hparams).init(params)
            start_epoch, history = 0, []
        x_test = prepare(data.x_test, dtype, config.arch)
        y_test = jnp.asarray(data.y_test.astype(np.int32))
        if background is not None:
            # While the epoch program compiles: the test evaluation's program, compiled by running it
            # on the first chunk (at most one chunk's work; the final evaluate then finds it cached).
            chunk = min(_default_chunk(config.arch), x_test.shape[0])
            _eval_chunk_jit(params, x_test[:chunk], y_test[:chunk], config.arch, config.notebook_exact)
        background_compile_seconds = background.result()[1] if background is not None else 0.0
        if config.notebook_exact and config.replay_notebook_step:
            # The seed notebook ran one test update (lr 0.01) on the first 5 images before training.
            params = jax.tree_util.tree_map(lambda p, g: p - 0.01 * g, params,
                                            manual_grad(params, x[:5], y[:5]))
    if config.notebook_exact:
        # Permutations continue NumPy's global stream right after the weight draws, as in the notebook.
        perms = lambda e: np.random.permutation(x.shape[0])  # noqa: E731
    if mesh is not None:
        from .parallel import distribute
        spec, (params, opt_state, key, x, y) = distribute(mesh, spec, (params, opt_state, key, x, y))

    best = None  # (val_accuracy, epoch, params) for early stopping
    stopped_early = False
    compile_seconds = train_seconds = 0.0
    for result in fit_epochs(params, opt_state, key, x, y, hparams, spec, config.epochs,
                             start_epoch=start_epoch, perms=perms, notebook_loss=config.notebook_exact):
        params, opt_state, key = result.params, result.opt_state, result.key
        # 0.0 from fit_epochs when the background compile (or an earlier run) built the program.
        compile_seconds = result.compile_seconds or background_compile_seconds
        train_seconds += result.seconds
        record = {"epoch": result.epoch, "loss": result.loss, "seconds": result.seconds}
        if x_val is not None:
            vl, va = evaluate(params, x_val, y_val, arch=config.arch)
            record.update(val_loss=vl, val_accuracy=va)
            if best is None or va > best[0]:
                best = (va, result.epoch, params)
        history.append(record)
        if on_epoch is not None:
            on_epoch(result, record)
        if config.patience and best is not None and result.epoch - best[1] >= config.patience:
            stopped_early = True
            break
    if best is not None and config.patience:
        params = best[2]  # early stopping keeps the best validation params, not the last ones
    test_loss, test_acc = evaluate(params, x_test, y_test, arch=config.arch, notebook=config.notebook_exact)
    return FitResult(params, opt_state, key, history, test_loss, test_acc, train_seconds,
                     compile_seconds, stopped_early)
