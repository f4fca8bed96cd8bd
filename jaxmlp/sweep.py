"""Hyperparameter sweeps and seed ensembles: many models trained in one compiled program.

A configuration is a ``train.TrainConfig``. Configurations whose compiled programs would be identical
(same hidden sizes, batch size, optimizer, dtype, epochs, ...: see ``group_key``) form a *group*, and a
group trains as ONE program: ``train.epoch`` under ``jax.vmap``, the params, optimizer state, PRNG
keys and numeric hyperparameters (lr, momentum, ...) carrying a leading model axis of size K while the
dataset is shared. Learning rates and seeds are just that batch axis; the init scheme is too, because
params are drawn outside the program. Each member follows exactly the key stream of ``train.fit``
with its config, so a member equals the single run of its config up to float round-off.

When every member of a group has the same seed (an lr sweep), the shuffle key is passed *unbatched*:
all members then see the same minibatch, so the first layer's K matmuls ``x_b @ W_k`` become one wide
matmul. For plain SGD groups the first layer is then also *stored* side by side (``_wide_sgd_epoch``),
which saves XLA re-laying out the largest tensor twice per step.
"""
from __future__ import annotations

import dataclasses
import functools
import itertools
import math
import os
import time
from typing import Any, Callable, NamedTuple, Sequence

import jax
import jax.numpy as jnp
import numpy as np

from . import optim, train
from .losses import cross_entropy
from .model import log_softmax, relu
from .train import TrainConfig

SWEEP_AXES = ("lr", "batch_size", "hidden", "seed", "init")


# ---------------------------------------------------------------- building the configurations


def _check_axes(axes: dict) -> None:
    unknown = set(axes) - set(SWEEP_AXES)
    if unknown:
        raise ValueError(f"cannot sweep over {sorted(unknown)}; sweepable: {', '.join(SWEEP_AXES)}")
    for name, values in axes.items():
        if len(values) == 0:
            raise ValueError(f"--{name.replace('_', '-')}: give at least one value")


def grid(base: TrainConfig, **axes: Sequence) -> list[TrainConfig]:
    """Every combination of the given axes (``lr=[...], batch_size=[...], hidden=[(128, 64), ...],
    seed=[...], init=[...]``) over ``base``; axes not given keep ``base``'s value. Order: hidden,
    batch_size, init, seed, lr (lr varies fastest)."""
    _check_axes(axes)
    names = [n for n in ("hidden", "batch_size", "init", "seed", "lr") if n in axes]
    configs = []
    for values in itertools.product(*(axes[n] for n in names)):
        changes = dict(zip(names, values))
        if "hidden" in changes:
            changes["hidden"] = tuple(int(h) for h in changes["hidden"])
        configs.append(dataclasses.replace(base, **changes).validate())
    return configs


def random_search(base: TrainConfig, num_trials: int, *, seed: int = 0,
                  lr_range: tuple[float, float] | None = None, **choices: Sequence) -> list[TrainConfig]:
    """``num_trials`` random configurations: lr log-uniform in ``lr_range`` (if given), every other
    axis in ``choices`` drawn uniformly from its values. Reproducible from ``seed``."""
    _check_axes(choices)
    if num_trials < 1:
        raise ValueError(f"--random must be positive, got {num_trials}")
    if lr_range is not None:
        lo, hi = float(min(lr_range)), float(max(lr_range))
        if not lo > 0:
            raise ValueError(f"--lr values for a random search must be positive, got {lr_range}")
    rng = np.random.default_rng(seed)
    configs = []
    for _ in range(num_trials):
        changes = {name: values[int(rng.integers(len(values)))] for name, values in choices.items()}
        if lr_range is not None:
            changes["lr"] = float(np.exp(rng.uniform(math.log(lo), math.log(hi))))
        if "hidden" in changes:
            changes["hidden"] = tuple(int(h) for h in changes["hidden"])
        configs.append(dataclasses.replace(base, **changes).validate())
    return configs


def _check_sweepable(config: TrainConfig) -> None:
    if config.notebook_exact:
        raise ValueError("--notebook-exact draws from NumPy's global RNG and cannot be batched; "
                         "train those runs one by one with `jaxmlp train`")
    if config.val_split or config.patience:
        raise ValueError("sweeps and ensembles train on the whole training set: --val-split/--patience "
                         "are not supported here")


def _dtype(config: TrainConfig):
    return jnp.float64 if config.dtype == "float64" else jnp.float32


def group_key(config: TrainConfig, num_examples: int, image_side: int = 28) -> tuple:
    """What two configurations must share to train in one program: the static ``TrainSpec`` (batch
    size, optimizer, schedule horizon, ...), the architecture's shapes and the dtype. lr, seed, init
    scheme and the other numeric hyperparameters are left out: they batch."""
    return (train.spec_for(config, num_examples, image_side), config.arch, tuple(int(h) for h in config.hidden),
            config.dtype, config.epochs)


def group_by_shape(configs: Sequence[TrainConfig], num_examples: int, image_side: int = 28,
                   max_group: int | None = None) -> list[list[int]]:
    """Indices of ``configs`` grouped by ``group_key`` (groups in order of first appearance), each
    group cut into pieces of at most ``max_group`` members to bound memory."""
    groups: dict[tuple, list[int]] = {}
    for i, c in enumerate(configs):
        groups.setdefault(group_key(c, num_examples, image_side), []).append(i)
    out = []
    for members in groups.values():
        step = max_group or len(members)
        out.extend(members[i:i + step] for i in range(0, len(members), step))
    return out


# ---------------------------------------------------------------- training a group


def _member_epoch(params, opt_state, key, hparams, x, y, spec):
    # The key bookkeeping of train.fit_epochs, so a member replays its single run.
    key, sub = jax.random.split(key)
    params, opt_state, losses = train.epoch(params, opt_state, sub, x, y, hparams, spec)
    return params, opt_state, key, losses


def widens(spec: train.TrainSpec, shared_key: bool) -> bool:
    """Whether a group trains with the side-by-side first layer (see ``_wide_sgd_epoch``): plain MLP,
    SGD at a constant lr, no dropout or augmentation, one shuffle for all members."""
    return (shared_key and spec.arch == "mlp" and spec.optimizer == "sgd" and spec.schedule == "constant"
            and not spec.dropout and spec.augment is None and spec.loss == "ce" and spec.batch_sharding is None)


def _wide_loss(wide, xb, yb, l2, num_models: int):
    """Sum over the K members of (cross-entropy + l2 * 0.5 * sum W^2), and the K cross-entropies.

    ``wide[0]`` holds the first layer of all members side by side, W (D, K*H1) and b (K*H1,), so the
    first matmul is ONE (B, D) @ (D, K*H1) product; later layers are stacked (K, fan_in, fan_out).
    Members share no parameters, so the gradient of the sum is each member's own gradient.
    """
    b = xb.shape[0]
    h = jnp.transpose((xb @ wide[0]["W"] + wide[0]["b"]).reshape(b, num_models, -1), (1, 0, 2))
    for layer in wide[1:]:
        h = jnp.einsum("kbi,kio->kbo", relu(h), layer["W"]) + layer["b"][:, None, :]
    values = jax.vmap(cross_entropy, in_axes=(0, None))(h, yb)                     # (K,)
    l2_cols = jnp.repeat(l2, wide[0]["W"].shape[1] // num_models)
    penalty = jnp.sum(l2_cols * jnp.square(wide[0]["W"])) + sum(
        jnp.sum(l2[:, None, None] * jnp.square(layer["W"])) for layer in wide[1:])
    return jnp.sum(values) + 0.5 * penalty, values


def _wide_sgd_epoch(params, opt_state, key, hparams, x, y, spec):
    """``_member_epoch`` for every member at once, for groups where ``widens`` holds.

    Same keys, same minibatches, same update ``p - lr * (g + weight_decay * p)`` per member as
    ``optim.sgd``; only the layout differs. Under ``vmap`` XLA keeps the K first-layer matrices as a
    (K, D, H1) batch and re-lays them out (D, K*H1) for the matmul every step, then transposes the
    gradient back: two full copies of the largest tensor per step. Here they live side by side
    throughout, so each step is one wide matmul forward and one backward, and no copies.
    """
    key, sub = jax.random.split(key)
    perm_key, _ = jax.random.split(sub)  # the second half drives dropout/augmentation: none here
    perm = jax.random.permutation(perm_key, x.shape[0])
    k, d, h1 = params[0]["W"].shape
    wide = [{"W": jnp.transpose(params[0]["W"], (1, 0, 2)).reshape(d, k * h1), "b": params[0]["b"].reshape(k * h1)},
            *params[1:]]
    lr, wd, l2 = hparams["lr"], hparams["weight_decay"], hparams["l2"]
    per_member = [jnp.repeat(lr, h1)] + [lr[:, None, None]] * (len(params) - 1)
    per_member_b = [jnp.repeat(lr, h1)] + [lr[:, None]] * (len(params) - 1)
    decay = [jnp.repeat(wd, h1)] + [wd[:, None, None]] * (len(params) - 1)
    decay_b = [jnp.repeat(wd, h1)] + [wd[:, None]] * (len(params) - 1)

    def step(wide, idx):
        (_, values), grads = jax.value_and_grad(_wide_loss, has_aux=True)(wide, x[idx], y[idx], l2, k)
        new = [{"W": p["W"] - lr_w * (g["W"] + wd_w * p["W"]), "b": p["b"] - lr_b * (g["b"] + wd_b * p["b"])}
               for p, g, lr_w, lr_b, wd_w, wd_b in zip(wide, grads, per_member, per_member_b, decay, decay_b)]
        return new, values

    n, bs = perm.shape[0], spec.batch_size
    num_full, rest = divmod(n, bs)
    wide, losses = jax.lax.scan(step, wide, perm[: num_full * bs].reshape(num_full, bs))
    if rest:
        wide, last = step(wide, perm[num_full * bs:])
        losses = jnp.concatenate([losses, last[None]])
    params = [{"W": jnp.transpose(wide[0]["W"].reshape(d, k, h1), (1, 0, 2)), "b": wide[0]["b"].reshape(k, h1)},
              *wide[1:]]
    return params, optim.SgdState(opt_state.step + losses.shape[0]), key, losses.T


def _chain_epoch(params, opt_state, key, hparams, x, y, spec, shared_key):
    if widens(spec, shared_key):
        return _wide_sgd_epoch(params, opt_state, key, hparams, x, y, spec)
    key_axis = None if shared_key else 0
    run = jax.vmap(functools.partial(_member_epoch, spec=spec), in_axes=(0, 0, key_axis, 0, None, None),
                   out_axes=(0, 0, key_axis, 0))
    return run(params, opt_state, key, hparams, x, y)


@functools.partial(jax.jit, static_argnames=("spec", "shared_key", "chains"))
def group_epoch(params, opt_state, key, hparams, x, y, *, spec: train.TrainSpec, shared_key: bool = False,
                chains: int = 1):
    """One epoch of K models in one program.

    params, opt_state, hparams: PyTrees with a leading model axis K; key: (K, 2) keys, or one key when
    ``shared_key`` (all members shuffle alike); x (N, D), y (N,) shared. Returns (params, opt_state,
    key to continue from, batch losses (K, num_batches)). Compiled once per (shapes, spec, shared_key,
    chains).

    ``chains`` > 1 cuts the members into that many independent scans inside the one program. XLA's CPU
    runtime executes independent operations concurrently, so the chains spread over the cores, where a
    single chain of small matmuls would keep one core busy; smaller chains also keep each one's weights
    in cache. The math per member is unchanged.
    """
    k = jax.tree_util.tree_leaves(params)[0].shape[0]
    chains = max(1, min(int(chains), k))
    if chains == 1:
        return _chain_epoch(params, opt_state, key, hparams, x, y, spec, shared_key)
    bounds = np.linspace(0, k, chains + 1).astype(int)
    part = lambda tree, a, b: jax.tree_util.tree_map(lambda leaf: leaf[a:b], tree)  # noqa: E731
    outs = [_chain_epoch(part(params, a, b), part(opt_state, a, b), key if shared_key else key[a:b],
                         part(hparams, a, b), x, y, spec, shared_key)
            for a, b in zip(bounds[:-1], bounds[1:])]
    join = lambda i: jax.tree_util.tree_map(lambda *leaves: jnp.concatenate(leaves), *(o[i] for o in outs))  # noqa: E731
    return join(0), join(1), outs[0][2] if shared_key else join(2), join(3)


def default_chains(num_models: int) -> int:
    """How many independent chains ``group_epoch`` should use: on a CPU about two models per chain,
    at least two chains per core, at most 16 (each chain adds compile time); 1 on accelerators,
    where one wide program is what keeps the device busy."""
    if jax.default_backend() != "cpu":
        return 1
    cores = os.cpu_count() or 1
    return max(1, min(num_models, 16, max(2 * cores, -(-num_models // 2))))


def stack(trees: Sequence[Any]) -> Any:
    """A list of same-structured PyTrees -> one PyTree with a new leading axis."""
    return jax.tree_util.tree_map(lambda *leaves: jnp.stack(leaves), *trees)


def unstack(tree: Any, index: int) -> Any:
    """Member ``index`` of a stacked PyTree."""
    return jax.tree_util.tree_map(lambda leaf: leaf[index], tree)


class GroupResult(NamedTuple):
    params: Any                 # stacked, leading axis K
    opt_state: Any
    history: np.ndarray         # (K, epochs) epoch losses (NaN once a member diverged)
    compile_seconds: float
    train_seconds: float        # epochs only, compilation excluded
    shared_key: bool            # one shuffle for all members
    wide: bool                  # trained with the side-by-side first layer (see widens)


def init_members(configs: Sequence[TrainConfig], input_dim: int, num_classes: int, spec: train.TrainSpec):
    """Stacked (params, opt_state, keys (K, 2), hparams) for configs that share ``spec``, each member
    initialised exactly as ``train.fit`` would with its config."""
    params, states, keys, hps = [], [], [], []
    for c in configs:
        dtype = _dtype(c)
        hp = train.hparams_dict(dtype, lr=c.lr, momentum=c.momentum, beta1=c.beta1, beta2=c.beta2,
                                weight_decay=c.weight_decay, l2=c.l2)
        key, init_key = jax.random.split(jax.random.PRNGKey(c.seed))
        p = train.init_model(c, init_key, input_dim, num_classes)
        params.append(p)
        states.append(train.make_optimizer(spec, hp).init(p))
        keys.append(key)
        hps.append(hp)
    return stack(params), stack(states), jnp.stack(keys), stack(hps)


def train_group(configs: Sequence[TrainConfig], x: jax.Array, y: jax.Array, num_classes: int = 10, *,
                image_side: int = 28, chains: int | None = None,
                on_epoch: Callable[[int, np.ndarray], None] | None = None) -> GroupResult:
    """Train configurations that share a ``group_key`` together, all epochs, one compiled program.

    x (N, D) float, y (N,) int32, already on the device. ``chains``: see ``group_epoch`` (default:
    ``default_chains``). ``on_epoch(epoch, losses (K,))`` after each epoch. A diverging member does
    not stop the others: its losses become NaN.
    """
    keys = {group_key(c, x.shape[0], image_side) for c in configs}
    if len(keys) != 1:
        raise ValueError("train_group needs configurations of one shape group (see group_by_shape)")
    for c in configs:
        _check_sweepable(c)
    first = configs[0]
    n = x.shape[0]
    spec = train.spec_for(first, n, image_side)
    params, opt_state, member_keys, hparams = init_members(configs, x.shape[1], num_classes, spec)
    shared = len({c.seed for c in configs}) == 1
    key = member_keys[0] if shared else member_keys
    chains = default_chains(len(configs)) if chains is None else chains

    t0 = time.perf_counter()
    compiled = group_epoch.lower(params, opt_state, key, hparams, x, y, spec=spec, shared_key=shared,
                                 chains=chains).compile()
    compile_seconds = time.perf_counter() - t0
    history = np.full((len(configs), first.epochs), np.nan)
    train_seconds = 0.0
    for e in range(first.epochs):
        t0 = time.perf_counter()
        params, opt_state, key, losses = compiled(params, opt_state, key, hparams, x, y)
        losses = np.asarray(losses)  # waits for the device
        train_seconds += time.perf_counter() - t0
        history[:, e] = [train.epoch_loss(row, n, spec.batch_size) for row in losses]
        if on_epoch is not None:
            on_epoch(e + 1, history[:, e])
    return GroupResult(params, opt_state, history, compile_seconds, train_seconds, shared, widens(spec, shared))


# ---------------------------------------------------------------- evaluating many models


@functools.partial(jax.jit, static_argnames=("arch",))
def _members_eval_chunk(params, x, y, arch: str):
    logits = jax.vmap(lambda p: train.apply_fn(arch)(p, x))(params)          # (K, n, C)
    logp = log_softmax(logits)
    picked = jnp.take_along_axis(logp, jnp.broadcast_to(y[None, :, None], (logp.shape[0], y.shape[0], 1)), axis=2)
    nll = -jnp.sum(picked[..., 0], axis=1)                                  # (K,)
    correct = jnp.sum(jnp.argmax(logits, axis=-1) == y[None, :], axis=1)    # (K,)
    mean_probs = jnp.mean(jnp.exp(logp), axis=0)                            # (n, C): the ensemble
    ens_nll = -jnp.sum(jnp.log(jnp.take_along_axis(mean_probs, y[:, None], axis=1)))
    ens_correct = jnp.sum(jnp.argmax(mean_probs, axis=-1) == y)
    return nll, correct, ens_nll, ens_correct


def evaluate_members(params: Any, x: jax.Array, y: jax.Array, *, arch: str = "mlp",
                     chunk_size: int = 5000) -> tuple[np.ndarray, np.ndarray, float, float]:
    """Stacked models on (x, y): per-member mean losses (K,) and accuracies (K,), then the ensemble's
    loss and accuracy, the ensemble predicting ``argmax`` of the members' *averaged probabilities*."""
    n = x.shape[0]
    if n == 0:
        raise ValueError("cannot evaluate on an empty set")
    nll = correct = 0.0
    ens_nll = ens_correct = 0.0
    for s in train.batch_slices(n, chunk_size):
        a, b, c, d = _members_eval_chunk(params, x[s], y[s], arch)
        nll, correct = nll + np.asarray(a, np.float64), correct + np.asarray(b, np.float64)
        ens_nll, ens_correct = ens_nll + float(c), ens_correct + float(d)
    return nll / n, correct / n, ens_nll / n, ens_correct / n


def ensemble_probs(params: Any, x: jax.Array, *, arch: str = "mlp") -> jax.Array:
    """Each stacked model's class probabilities on x: (K, N, C)."""
    from .model import softmax

    return jax.vmap(lambda p: softmax(train.apply_fn(arch)(p, x)))(params)


def ensemble_accuracy(probs, labels) -> float:
    """Accuracy of the averaged-probability ensemble: probs (K, N, C) per member, labels int (N,)."""
    probs = np.asarray(probs, dtype=np.float64)
    labels = np.asarray(labels)
    if probs.ndim != 3 or probs.shape[1] != labels.shape[0]:
        raise ValueError(f"probs must be (K, N, C) with N = len(labels), got {probs.shape} and {labels.shape}")
    return float(np.mean(np.argmax(probs.mean(axis=0), axis=-1) == labels))


# ---------------------------------------------------------------- sweeps and ensembles end to end


class RunResult(NamedTuple):
    config: TrainConfig
    history: list           # the epoch losses
    test_loss: float
    test_accuracy: float    # a fraction in [0, 1]
    diverged: bool          # a non-finite loss appeared
    group: int              # index into SweepResult.groups


class GroupInfo(NamedTuple):
    members: list           # indices into the configurations
    compile_seconds: float
    train_seconds: float
    shared_key: bool
    wide: bool


class SweepResult(NamedTuple):
    runs: list              # RunResult per configuration, in the given order
    groups: list            # GroupInfo per compiled program
    wall_seconds: float


def _prepared(data, configs):
    """(x, y, x_test, y_test, num_classes, side) on the device in the configurations' dtype."""
    dtypes = {c.dtype for c in configs}
    if len(dtypes) != 1:
        raise ValueError(f"one dtype per sweep, got {sorted(dtypes)}")
    dtype = _dtype(configs[0])
    if dtype == jnp.float64 and not jax.config.jax_enable_x64:
        jax.config.update("jax_enable_x64", True)
    num_classes = max(int(max(data.y_train.max(), data.y_test.max())) + 1, 10)  # as train.fit
    x = train.prepare(data.x_train, dtype)
    y = jnp.asarray(data.y_train, jnp.int32)
    x_test = train.prepare(data.x_test, dtype)
    y_test = jnp.asarray(data.y_test, jnp.int32)
    return x, y, x_test, y_test, num_classes, int(data.x_train.shape[1])


def run_sweep(configs: Sequence[TrainConfig], data, *, max_group: int | None = None,
              on_group: Callable[[int, list[int]], None] | None = None,
              on_epoch: Callable[[int, int, np.ndarray], None] | None = None) -> SweepResult:
    """Train and test every configuration on ``data`` (a ``data.Dataset``), one program per shape group.

    ``on_group(group_index, member_indices)`` before a group starts; ``on_epoch(group_index, epoch,
    losses (K,))`` after each of its epochs. Returns results in the order of ``configs``.
    """
    if not configs:
        raise ValueError("a sweep needs at least one configuration")
    for c in configs:
        c.validate()
        _check_sweepable(c)
    started = time.perf_counter()
    x, y, x_test, y_test, num_classes, side = _prepared(data, configs)
    runs: list[RunResult | None] = [None] * len(configs)
    groups = []
    for g, members in enumerate(group_by_shape(configs, x.shape[0], side, max_group)):
        if on_group is not None:
            on_group(g, members)
        cb = None if on_epoch is None else functools.partial(on_epoch, g)
        res = train_group([configs[i] for i in members], x, y, num_classes, image_side=side, on_epoch=cb)
        losses, accs, _, _ = evaluate_members(res.params, x_test, y_test, arch=configs[members[0]].arch)
        for k, i in enumerate(members):
            hist = res.history[k]
            runs[i] = RunResult(configs[i], [float(v) for v in hist], float(losses[k]), float(accs[k]),
                                bool(not np.all(np.isfinite(hist))), g)
        groups.append(GroupInfo(list(members), res.compile_seconds, res.train_seconds, res.shared_key, res.wide))
    return SweepResult(runs, groups, time.perf_counter() - started)


class EnsembleResult(NamedTuple):
    members: list           # RunResult per member (seeds seed, seed + 1, ...)
    ensemble_loss: float    # mean -log of the averaged probability of the true class
    ensemble_accuracy: float
    params: Any             # stacked, leading axis K
    compile_seconds: float
    train_seconds: float


def fit_ensemble(config: TrainConfig, data, members: int, *,
                 on_epoch: Callable[[int, np.ndarray], None] | None = None) -> EnsembleResult:
    """Train ``members`` copies of ``config`` with seeds ``seed, seed + 1, ...`` together (one vmapped
    program) and test each member and their averaged-probability ensemble."""
    if members < 1:
        raise ValueError(f"--ensemble must be positive, got {members}")
    config.validate()
    _check_sweepable(config)
    configs = [dataclasses.replace(config, seed=config.seed + i) for i in range(members)]
    x, y, x_test, y_test, num_classes, side = _prepared(data, configs)
    res = train_group(configs, x, y, num_classes, image_side=side, on_epoch=on_epoch)
    losses, accs, ens_loss, ens_acc = evaluate_members(res.params, x_test, y_test, arch=config.arch)
    runs = [RunResult(c, [float(v) for v in res.history[k]], float(losses[k]), float(accs[k]),
                      bool(not np.all(np.isfinite(res.history[k]))), 0) for k, c in enumerate(configs)]
    return EnsembleResult(runs, float(ens_loss), float(ens_acc), res.params, res.compile_seconds, res.train_seconds)


# ---------------------------------------------------------------- reporting (strings and dicts; no printing)


def _finite(v):
    """JSON has no NaN: non-finite numbers become null."""
    return float(v) if v is not None and np.isfinite(v) else None


def run_record(run: RunResult) -> dict:
    """One run as a JSON-ready dict: its ``config``, ``test_accuracy`` and the rest."""
    return {"config": run.config.to_dict(), "test_accuracy": _finite(run.test_accuracy),
            "test_loss": _finite(run.test_loss), "final_loss": _finite(run.history[-1] if run.history else None),
            "history": [_finite(v) for v in run.history], "diverged": run.diverged, "group": run.group}


def sweep_record(result: SweepResult) -> dict:
    """The sweep as a JSON-ready dict: ``runs`` (one per configuration, best test accuracy first) and
    ``groups`` (one per compiled program, with its compile and train seconds)."""
    return {
        "runs": [run_record(r) for r in sorted_runs(result.runs)],
        "groups": [{"members": len(g.members), "config_indices": g.members, "compile_seconds": g.compile_seconds,
                    "train_seconds": g.train_seconds, "shared_shuffle": g.shared_key, "wide_first_layer": g.wide}
                   for g in result.groups],
        "num_configs": len(result.runs),
        "wall_seconds": result.wall_seconds,
    }


def sorted_runs(runs: Sequence[RunResult]) -> list[RunResult]:
    """Best test accuracy first; diverged runs last."""
    return sorted(runs, key=lambda r: (r.diverged, -(r.test_accuracy if np.isfinite(r.test_accuracy) else -1)))


def format_table(runs: Sequence[RunResult], varying: Sequence[str] | None = None) -> str:
    """A text table of runs sorted by test accuracy; ``varying`` picks the config columns (default: the
    sweepable fields that differ between runs, else lr)."""
    if varying is None:
        varying = [a for a in SWEEP_AXES if len({str(getattr(r.config, a)) for r in runs}) > 1] or ["lr"]
    header = ["rank", *varying, "final loss", "test acc"]
    rows = []
    for rank, r in enumerate(sorted_runs(runs), start=1):
        cells = [str(rank)]
        for a in varying:
            v = getattr(r.config, a)
            cells.append("-".join(str(h) for h in v) if a == "hidden" else f"{v:g}" if a == "lr" else str(v))
        loss = r.history[-1] if r.history else float("nan")
        cells.append("diverged" if r.diverged else f"{loss:.4f}")
        cells.append(f"{r.test_accuracy * 100:.2f}%")
        rows.append(cells)
    widths = [max(len(h), *(len(row[i]) for row in rows)) for i, h in enumerate(header)]
    fmt = lambda cells: "  ".join(c.rjust(w) for c, w in zip(cells, widths))  # noqa: E731
    return "\n".join([fmt(header), fmt(["-" * w for w in widths]), *map(fmt, rows)])
