"""K models trained as one compiled program, and scored together.

A *group* is configurations whose compiled programs would be identical (``group_key``: the static
``TrainSpec``, the dtype, the epochs). It trains as ONE program on the training engine itself:
``engine.chunk`` under ``jax.vmap`` (``group_chunk``), over a ``TrainState`` whose params, optimizer
state and hyperparameters carry a leading member axis K while the dataset and the step counters are
shared. ``jaxmlp.groups`` runs a group's epochs (``train_group``); ``jaxmlp.sweep`` builds groups
from a grid or a random search and ensembles from seeds.

On a mesh with a ``"members"`` axis (``parallel.make_mesh(n, axis=parallel.MEMBER_AXIS)``, one process
or several) each device runs ``group_chunk`` on its slice of the members, the data replicated, in one
program. Nothing crosses devices and a member's arithmetic does not depend on how many share its
device: every device count gives every member the same bits (padding copies are in no result).
"""
from __future__ import annotations

import functools
import os
from collections.abc import Callable, Sequence
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
from jax.sharding import Mesh, PartitionSpec

from . import engine, models, parallel, runs
from ._compat import shard_map
from .config import TrainConfig, hparam_names, hparams
from .model import INIT_SCHEMES, log_softmax


def check_sweepable(config: TrainConfig) -> None:
    """ValueError unless ``config`` can be a member: sweeps and ensembles train fresh params on the
    whole training set, so no validation split, early stopping, fine-tuning or class subset."""
    if config.val_split or config.patience:
        raise ValueError("sweeps and ensembles train on the whole training set: "
                         "TrainConfig.val_split/TrainConfig.patience are not supported here")
    if config.finetune or config.classes is not None:
        raise ValueError("sweeps and ensembles start from fresh params on all classes: "
                         "TrainConfig.finetune/TrainConfig.classes are not supported here")


def group_key(config: TrainConfig, num_examples: int, image_side: int = 28) -> tuple:
    """What two configurations must share to train in one program: the static ``TrainSpec`` (batch
    size, optimizer, schedule horizon, ...), the architecture's shapes and the dtype. lr, seed, init
    scheme and the other numeric hyperparameters are left out: they batch.

    Args:
        config: the run's configuration.
        num_examples: N, the size of the training set.
        image_side: the images' side in pixels.
    """
    return runs.spec_for(config, num_examples, image_side), config.dtype, config.epochs


# ---------------------------------------------------------------- training a group


def member_state(config: TrainConfig, input_dim: int, num_classes: int,
                 spec: runs.TrainSpec) -> tuple[engine.TrainState, dict]:
    """(state, hparams) of ``config``'s run, built exactly as ``runs.setup`` builds them, so a member
    follows the key stream of its single ``runs.fit`` run (``init_members`` builds K of them at once).

    Args:
        config: the run's configuration.
        input_dim: D, the width of a flattened input.
        num_classes: C, the width of the output layer.
        spec: the group's ``TrainSpec`` (its optimizer builds the optimizer state).
    """
    hp = hparams(config, runs.dtype_of(config))
    init_key, run_key = jax.random.split(jax.random.PRNGKey(config.seed))
    params = runs.init_model(config, init_key, input_dim, num_classes)
    return engine.init_state(params, runs.make_optimizer(spec, hp), run_key), hp


def build_members(seeds: jax.Array, hp: dict, order: jax.Array | None, inverse: jax.Array | None, *,
                   model: tuple, schemes: tuple, spec: runs.TrainSpec, shared_key: bool) -> engine.TrainState:
    """K members' stacked ``TrainState``, each as ``member_state`` builds it, under one ``vmap``.

    Args:
        seeds: (K,) integer seeds, converted as ``jax.random.PRNGKey`` converts a Python int.
        hp: the members' stacked hparams, (K,) each.
        order: (K,) int32 member indices grouped by init scheme (None: one scheme); inverse: its inverse.
        model: (model value, dtype name, input_dim, num_classes), what every member shares (static).
        schemes: ((init scheme, members with it), ...) in the order of ``order`` (static).
        spec: the group's ``TrainSpec`` (static).
        shared_key: return the first member's run key (2,) instead of all of them (K, 2) (static).
    """
    net, dtype, input_dim, num_classes = model
    init_keys, run_keys = jnp.moveaxis(jax.vmap(lambda s: jax.random.split(jax.random.PRNGKey(s)))(seeds), 1, 0)
    grouped = init_keys if order is None else init_keys[order]
    parts, start = [], 0
    for scheme, count in schemes:  # one vmapped init per scheme present (an init sweep has up to three)
        init = functools.partial(net.init, input_shape=input_dim, num_classes=num_classes, scheme=scheme,
                                 dtype=runs.param_dtype(dtype))  # as runs.init_model draws
        parts.append(jax.vmap(init)(grouped[start:start + count]))
        start += count
    params = parts[0] if inverse is None else jax.tree_util.tree_map(
        lambda *leaves: jnp.concatenate(leaves)[inverse], *parts)
    opt_state = jax.vmap(lambda p, h: runs.make_optimizer(spec, h).init(p))(params, hp)
    zero = jnp.zeros((), jnp.int32)
    return engine.TrainState(params, opt_state, run_keys[0] if shared_key else run_keys, zero, zero)


# The MLP's init is one barrier-protected program (model._init_program), so the whole build compiles as
# one program with the same bits. The CNN's init runs op by op in a single run; compiled, XLA would fold
# its scale into the sampler's constants and change the last bits, so its members are built op by op
# too (vmapped: a few dozen dispatches whatever K is).
_build_members_jit = jax.jit(build_members, static_argnames=("model", "schemes", "spec", "shared_key"))


def stacked_hparams(configs: Sequence[TrainConfig], dtype) -> dict:
    """The hparams of ``configs`` (K configurations; ``config.hparams`` of each), stacked on the host into
    (K,) arrays of ``dtype`` and copied to the device once each: nothing compiles, nothing is stacked on
    the device."""
    names = hparam_names()
    rows = [{**{n: getattr(c, n) for n in names}, "weight_decay": c.resolved_weight_decay} for c in configs]
    host = {n: np.asarray([row[n] for row in rows], jnp.dtype(dtype)) for n in names}
    return jax.device_put(host)


def member_inputs(configs: Sequence[TrainConfig], input_dim: int, num_classes: int, spec: runs.TrainSpec,
                   shared_key: bool) -> tuple[Callable, tuple, dict]:
    """(build, args, statics): ``build(*args, **statics)`` is ``init_members``'s state.

    Args:
        configs: K configurations of one shape group.
        input_dim: D, the width of a flattened input.
        num_classes: C, the width of the output layer.
        spec: the group's ``TrainSpec``.
        shared_key: every member trains on the first one's run key.
    """
    first = configs[0]
    hp = stacked_hparams(configs, runs.dtype_of(first))
    # As PRNGKey converts a Python int (int64; int32, wrapping, without x64), but on the host: nothing compiles.
    seeds = np.asarray([c.seed for c in configs], np.int64).astype(jax.dtypes.canonicalize_dtype(np.int64))
    inits = [runs.init_scheme(c) for c in configs]
    present = [s for s in INIT_SCHEMES if s in inits]
    order = inverse = None
    if len(present) > 1:
        order = np.argsort([present.index(s) for s in inits], kind="stable").astype(np.int32)
        inverse = np.argsort(order).astype(np.int32)
    statics = dict(model=(spec.model, first.dtype, int(input_dim), int(num_classes)),
                   schemes=tuple((s, inits.count(s)) for s in present), spec=spec, shared_key=bool(shared_key))
    build = build_members if getattr(spec.model, "eager_init", False) else _build_members_jit
    return build, (seeds, hp, order, inverse), statics


def init_members(configs: Sequence[TrainConfig], input_dim: int, num_classes: int, spec: runs.TrainSpec,
                 shared_key: bool = False, mesh: Mesh | None = None) -> tuple[engine.TrainState, dict]:
    """The group's stacked ``TrainState`` and hparams, every member exactly as ``member_state`` builds
    it, all built by one vmapped program over the members' seeds, init schemes and hparams.

    Args:
        configs: K configurations of one shape group (``group_key``).
        input_dim: D, the width of a flattened input.
        num_classes: C, the width of the output layer.
        spec: the group's ``TrainSpec``.
        shared_key: every member trains on the first one's run key (one seed, or ``share_order``).
        mesh: None, or a mesh with a ``"members"`` axis whose size divides K: the members are built on
            this process's first device, then placed on it as ``member_specs`` says.

    Returns (state, hparams): params, optimizer state and hparams with a leading model axis K; the run
    keys (K, 2), or one (2,) key when ``shared_key``; ``epoch``/``step`` unbatched (the members move in
    step). Call inside ``engine.precision`` for float64.
    """
    build, args, statics = member_inputs(configs, input_dim, num_classes, spec, shared_key)
    state, hp = build(*args, **statics), args[1]
    if mesh is None:
        return state, hp
    check_mesh(mesh, len(configs))
    return parallel.place((state, hp), mesh, (member_specs(shared_key), PartitionSpec(parallel.MEMBER_AXIS)))


def member_axes(shared_key: bool) -> engine.TrainState:
    """``vmap`` axes of a group's ``TrainState``: the step counters are unbatched, so the engine's
    short-batch ``lax.cond`` stays a branch (a batched predicate would run both sides every step).
    ``shared_key``: the run key is one unbatched (2,) key rather than (K, 2)."""
    return engine.TrainState._make([0, 0, None if shared_key else 0, None, None])


def member_specs(shared_key: bool) -> engine.TrainState:
    """Where a group's ``TrainState`` lives on a members mesh (``parallel.place``'s specs): what
    ``member_axes(shared_key)`` batches split over the ``"members"`` axis, the rest whole everywhere."""
    split, whole = PartitionSpec(parallel.MEMBER_AXIS), PartitionSpec()
    return engine.TrainState._make([whole if axis is None else split for axis in member_axes(shared_key)])


def check_mesh(mesh: Mesh, num_members: int) -> None:
    """ValueError unless ``mesh`` has the ``"members"`` axis and its size divides ``num_members``."""
    if parallel.MEMBER_AXIS not in mesh.axis_names:
        raise ValueError(f"mesh: a sweep's mesh needs an axis named 'members', got {mesh.axis_names} "
                         f"(parallel.make_mesh(n, axis=parallel.MEMBER_AXIS))")
    if num_members % mesh.devices.size:
        raise ValueError(f"mesh: {num_members} members do not split over {mesh.devices.size} devices")


def padded(configs: Sequence[TrainConfig], num_devices: int) -> list[TrainConfig]:
    """``configs`` and copies of its last one, to a multiple of ``num_devices`` members, at least two a
    device when there are several (see ``group_chunk``); the copies train like any member."""
    per_device = max(-(-len(configs) // num_devices), 2 if len(configs) > 1 else 1)
    return [*configs, *[configs[-1]] * (per_device * num_devices - len(configs))]


@functools.cache
def group_options(backend: str) -> dict | None:
    """The XLA compiler options of a group's program on ``backend`` (``jax.default_backend()``).

    On a CPU, YNNPACK for the matrix products only: XLA hands it large reductions, summed in another
    order than small ones (a member's bias gradients would depend on how many share its chain or
    device), and XLA's own products split sums by a device's threads. None elsewhere, or unknown."""
    if backend != "cpu":
        return None
    options: dict = {"xla_cpu_experimental_ynn_fusion_type": "LIBRARY_FUSION_TYPE_INDIVIDUAL_DOT"}
    try:
        jax.jit(lambda a: a + 1).lower(np.float32(0)).compile(options)
    except Exception:  # noqa: BLE001  (an unknown option: XLA's own error type, which differs by version)
        return None
    return options


def group_chunk(state: engine.TrainState, order: jax.Array, x: jax.Array, y: jax.Array, hparams: dict,
                num_steps: jax.Array, *, spec: runs.TrainSpec, capacity: int, shared_key: bool = False,
                chains: int = 1, mesh: Mesh | None = None) -> tuple[engine.TrainState, jax.Array]:
    """``engine.chunk`` for K members at once (``jax.vmap``; the dataset x (N, D), y (N,) is shared).

    state: stacked as ``init_members`` builds it; order: ``group_order`` (one (N,) order when
    ``shared_key``, else (K, N)); hparams: stacked; num_steps: int32 scalar, the steps to run (shared);
    spec: the group's ``TrainSpec`` (static). Returns the new state and losses (K, capacity).

    ``chains`` > 1 cuts the members into that many independent vmapped chunks, of at least two members
    each, inside the one program. XLA's CPU runtime runs independent operations concurrently, so the
    chains spread over the cores where one chain of small matmuls keeps a core waiting; compiled with
    ``group_options``, the math per member is unchanged (a one-member chain would not be: XLA drops
    its member axis and may then order a product's sums otherwise).

    On a CPU, members that share an order (``shared_key``) each gather their own copy of a minibatch:
    given one shared operand XLA folds them into one product as wide as their count, whose sums are
    blocked by its width. Elsewhere they share one operand (bits may then move with the count).

    ``mesh``: a members mesh (static): each device runs this function, chains and all, on its slice of
    the members (``shard_map``; state, order, hparams placed as ``member_specs`` says, the rest whole).
    """
    if mesh is not None:
        specs = member_specs(shared_key)
        split, whole = PartitionSpec(parallel.MEMBER_AXIS), PartitionSpec()
        local = functools.partial(group_chunk, spec=spec, capacity=capacity, shared_key=shared_key, chains=chains)
        return shard_map(local, mesh=mesh, in_specs=(specs, specs.key, whole, whole, split, whole),
                         out_specs=(specs, split))(state, order, x, y, hparams, num_steps)
    k = jax.tree_util.tree_leaves(state.params)[0].shape[0]
    bounds = np.linspace(0, k, max(1, min(int(chains), k // 2)) + 1).astype(int)  # chains of 2 or more
    axes, key_axis = member_axes(shared_key), None if shared_key else 0
    order_axis = key_axis
    if shared_key and jax.default_backend() == "cpu":  # each member its own copy of the shared rows
        order, order_axis = jnp.broadcast_to(order, (k, *order.shape)), 0
    run = jax.vmap(functools.partial(engine.chunk, spec=spec, capacity=capacity),
                   in_axes=(axes, order_axis, None, None, 0, None), out_axes=(axes, 0))
    if len(bounds) == 2:
        return run(state, order, x, y, hparams, num_steps)
    part = lambda tree, a, b, axis=0: tree if axis is None else jax.tree_util.tree_map(  # noqa: E731
        lambda leaf: leaf[a:b], tree)
    outs = [run(engine.TrainState(part(state.params, a, b), part(state.opt_state, a, b),
                                 part(state.key, a, b, key_axis), state.epoch, state.step),
                part(order, a, b, order_axis), x, y, part(hparams, a, b), num_steps)
            for a, b in zip(bounds[:-1], bounds[1:])]
    join = lambda *trees: jax.tree_util.tree_map(lambda *leaves: jnp.concatenate(leaves), *trees)  # noqa: E731
    new = [o[0] for o in outs]
    return (engine.TrainState(join(*(s.params for s in new)), join(*(s.opt_state for s in new)),
                             new[0].key if shared_key else join(*(s.key for s in new)), new[0].epoch, new[0].step),
            join(*(o[1] for o in outs)))


run_group_chunk = jax.jit(group_chunk, static_argnames=("spec", "capacity", "shared_key", "chains", "mesh"))


def default_chains(num_models: int, devices: int = 1) -> int:
    """How many chains ``group_chunk`` should use for ``num_models`` members on each of ``devices``
    devices of this process: on a CPU two per core, the cores shared by the devices (forced host
    devices), at most ``num_models`` and 8 (each chain adds compile time; on 2 cores a 16-lr sweep
    measured 1.1-1.3x a single run per model-epoch with one chain, 0.7-1.0x with 2 and 0.68-0.92x with
    4); 1 on accelerators, where one wide program is what keeps the device busy."""
    if jax.default_backend() != "cpu":
        return 1
    return max(1, min(num_models, 2 * (os.cpu_count() or 1) // max(1, devices), 8))


@functools.partial(jax.jit, static_argnames=("num_examples", "shared_key"))
def group_order(key: jax.Array, epoch: jax.Array, num_examples: int, shared_key: bool = False) -> jax.Array:
    """The members' order of examples in epoch ``epoch``: ``engine.epoch_order`` of each key."""
    if shared_key:
        return engine.epoch_order(key, epoch, num_examples)
    return jax.vmap(engine.epoch_order, in_axes=(0, None, None))(key, epoch, num_examples)


def stack(trees: Sequence[Any]) -> Any:
    """``trees``, a list of K same-structured PyTrees -> one PyTree with a new leading axis K."""
    return jax.tree_util.tree_map(lambda *leaves: jnp.stack(leaves), *trees)


def unstack(tree: Any, index: int) -> Any:
    """Member ``index`` of ``tree``, a stacked PyTree (leading axis K)."""
    return jax.tree_util.tree_map(lambda leaf: leaf[index], tree)


@jax.jit
def members_finite(params: Any) -> jax.Array:
    """(K,) bool: every leaf of member k's params is finite. params: stacked (leading axis K)."""
    leaves = jax.tree_util.tree_leaves(params)
    return jnp.all(jnp.stack([jnp.all(jnp.isfinite(leaf.reshape(leaf.shape[0], -1)), axis=1) for leaf in leaves]),
                   axis=0)


def diverged_members(losses: np.ndarray, start: np.ndarray, finite: np.ndarray, rule: bool = True) -> np.ndarray:
    """(K,) bool: which members of a chunk diverged, by the rule a single run's chunk is judged by
    (``divergence.diverged``).

    Args:
        losses: (K, steps) the chunk's per-step losses of each member.
        start: (K,) each member's reference loss: max(its first loss, ln C) (``divergence.reference_loss``).
        finite: (K,) bool, each member's params are all finite after the chunk.
        rule: apply the 10x rule (False: only non-finite losses or params count, ``--no-divergence-check``).
    """
    from .divergence import HEALTHY, diverged

    return diverged(losses, start, rule=rule, params_finite=finite) != HEALTHY


# ---------------------------------------------------------------- evaluating many models


@functools.partial(jax.jit, static_argnums=0)
def _members_eval_chunk(model, params, x, y):
    """Sums over one chunk of examples: per-member -log p(y) (K,) and correct counts (K,), then the
    averaged-probability ensemble's. params: stacked (leading K); x (n, D); y (n,) int32."""
    apply = models.as_apply(model)
    logits = jax.vmap(lambda p: apply(p, x))(params)          # (K, n, C)
    logp = log_softmax(logits)
    picked = jnp.take_along_axis(logp, jnp.broadcast_to(y[None, :, None], (logp.shape[0], y.shape[0], 1)), axis=2)
    nll = -jnp.sum(picked[..., 0], axis=1)                                  # (K,)
    correct = jnp.sum(jnp.argmax(logits, axis=-1) == y[None, :], axis=1)    # (K,)
    mean_probs = jnp.mean(jnp.exp(logp), axis=0)                            # (n, C): the ensemble
    ens_nll = -jnp.sum(jnp.log(jnp.take_along_axis(mean_probs, y[:, None], axis=1)))
    ens_correct = jnp.sum(jnp.argmax(mean_probs, axis=-1) == y)
    return nll, correct, ens_nll, ens_correct


def evaluate_members(model: Any, params: Any, x: jax.Array, y: jax.Array, *,
                     chunk_size: int = 5000) -> tuple[np.ndarray, np.ndarray, float, float]:
    """Stacked models on (x, y): per-member mean losses (K,) and accuracies (K,), then the ensemble's
    loss and accuracy, the ensemble predicting ``argmax`` of the members' *averaged probabilities*.

    Args:
        model: the members' model value (``jaxmlp.MLP(...)``) or ``apply(params, x) -> logits``.
        params: K models' params, stacked (leading axis K).
        x: (N, D) inputs; y: (N,) int32 labels.
        chunk_size: examples per compiled call (bounds the (K, chunk, width) activations).

    Every chunk is dispatched before any result is read; one ``device_get`` brings all of them back,
    and the chunks' sums are added on the host in float64.
    """
    n = x.shape[0]
    if n == 0:
        raise ValueError("cannot evaluate on an empty set")
    models.as_apply(model)  # a TypeError here, not inside the compiled chunk
    sums = jax.device_get([_members_eval_chunk(model, params, x[s], y[s]) for s in engine.batch_slices(n, chunk_size)])
    nll, correct, ens_nll, ens_correct = (np.sum([np.asarray(part[i], np.float64) for part in sums], axis=0)
                                          for i in range(4))
    return nll / n, correct / n, float(ens_nll) / n, float(ens_correct) / n


def ensemble_probs(model: Any, params: Any, x: jax.Array) -> jax.Array:
    """Each stacked model's class probabilities on x (N, D): (K, N, C). model: the members' model value
    or apply function; params: K models' params, stacked (leading axis K)."""
    from .model import softmax

    apply = models.as_apply(model)
    return jax.vmap(lambda p: softmax(apply(p, x)))(params)


def ensemble_accuracy(probs, labels) -> float:
    """Accuracy of the averaged-probability ensemble: probs (K, N, C) per member, labels int (N,)."""
    probs = np.asarray(probs, dtype=np.float64)
    labels = np.asarray(labels)
    if probs.ndim != 3 or probs.shape[1] != labels.shape[0]:
        raise ValueError(f"probs must be (K, N, C) with N = len(labels), got {probs.shape} and {labels.shape}")
    return float(np.mean(np.argmax(probs.mean(axis=0), axis=-1) == labels))
