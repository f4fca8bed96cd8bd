"""Training a group of members (``jaxmlp.members``): the epoch loop, its stops and its resumption.

``train_group`` runs a group's epochs as chunks of steps of its one compiled program, on one device or
a ``"members"`` mesh. Between chunks it may be stopped (``stop``, a signal agreed by every process:
``GroupStopped``), and between epochs it may hand out its position (``on_progress``, a checkpoint's
content). That position is a ``GroupProgress``: the K members' stacked state without padding, the
epochs' losses, which members diverged, their divergence references, and the running epoch's step
losses. A group resumed from it, on any number of devices or processes, goes on with the bits it would
have had unstopped, because nothing it reports depends on where a chunk ended: an epoch's loss and
its divergence verdict are taken from all of its step losses, at its end.
"""
from __future__ import annotations

import functools
import math
import time
from collections.abc import Callable, Sequence
from typing import Any, NamedTuple

import jax
import jax.numpy as jnp
import numpy as np
from jax.sharding import Mesh, PartitionSpec

from . import engine, members, parallel, runs
from .config import TrainConfig
from .divergence import reference_loss


class GroupResult(NamedTuple):
    """What ``train_group`` returns.

    Attributes:
        params: the members' final params, stacked (leading axis K), on this process's first device.
        opt_state: their optimizer states, stacked.
        history: (K, epochs) float epoch losses, NaN from the epoch a member diverged in.
        compile_seconds: the group program's compile time.
        train_seconds: the epochs' time, compilation excluded.
        shared_key: one run key for all members (one shuffle, the same minibatches).
        state: the stacked final ``TrainState`` (see ``members.init_members``).
        diverged: (K,) bool, which members diverged (``members.diverged_members``).
    """

    params: Any                 # stacked, leading axis K
    opt_state: Any
    history: np.ndarray         # (K, epochs) epoch losses (NaN from the epoch a member diverged in)
    compile_seconds: float
    train_seconds: float        # epochs only, compilation excluded
    shared_key: bool            # one key for all members: one shuffle, the same minibatches
    state: engine.TrainState     # the stacked final state (see init_members)
    diverged: Any = None        # (K,) bool: the member diverged (``diverged_members``)


class GroupProgress(NamedTuple):
    """Where a group's training stands: what ``train_group(resume=...)`` continues from exactly.

    Attributes:
        state: the K members' stacked ``TrainState`` (no padding; ``epoch``/``step`` say where).
        history: (K, epochs) float64 epoch losses so far (NaN where not run, or diverged).
        dead: (K,) bool, the members that diverged.
        start: (K,) float64 divergence references (``divergence.reference_loss``; NaN before the first
            epoch ended).
        losses: (K, steps) float64 step losses of the running epoch, zero from ``state.step`` on.
        train_seconds: the training time so far, compilation excluded.
    """

    state: engine.TrainState
    history: Any                # np.ndarray (or its shape, in progress_shapes)
    dead: Any
    start: Any
    losses: Any
    train_seconds: float


class GroupStopped(Exception):
    """``train_group``'s ``stop`` asked it to end between two chunks.

    Attributes:
        signum: what ``stop()`` returned (a signal's number).
        progress: the group's ``GroupProgress`` at the stop, the same in every process.
    """

    def __init__(self, signum: int, progress: GroupProgress):
        super().__init__(signum)
        self.signum, self.progress = signum, progress


def fresh_progress(state: engine.TrainState, num_members: int, epochs: int, steps: int) -> GroupProgress:
    """The ``GroupProgress`` of a group that has not trained: ``state`` (K members) and empty records.

    Args:
        state: the members' stacked state, as ``members.init_members`` builds it.
        num_members: K.
        epochs: the group's epochs.
        steps: its steps per epoch.
    """
    return GroupProgress(state, np.full((num_members, epochs), np.nan), np.zeros(num_members, bool),
                         np.full(num_members, np.nan), np.zeros((num_members, steps)), 0.0)


def progress_shapes(configs: Sequence[TrainConfig], input_dim: int, num_classes: int, spec: runs.TrainSpec,
                    shared: bool, steps: int) -> GroupProgress:
    """The ``GroupProgress`` of ``configs`` as shapes (``jax.ShapeDtypeStruct`` leaves; ``train_seconds``
    0.0): what a checkpoint's group must hold. Arguments as ``members.init_members``'s; ``steps``: steps
    per epoch. Call inside ``engine.precision`` for float64."""
    build, args, statics = members.member_inputs(configs, input_dim, num_classes, spec, shared)
    state = jax.eval_shape(functools.partial(members.build_members, **statics), *args)
    k, f64 = len(configs), jnp.dtype("float64")
    shape = lambda *dims, dtype=f64: jax.ShapeDtypeStruct(dims, dtype)  # noqa: E731
    return GroupProgress(state, shape(k, configs[0].epochs), shape(k, dtype=jnp.dtype(bool)), shape(k),
                         shape(k, steps), 0.0)


def _padded_state(state: engine.TrainState, total: int, shared: bool) -> engine.TrainState:
    """``state`` (K members) with its last member copied to ``total`` members, as ``members.padded``
    pads configurations (the copies are in no result)."""
    def pad(axis, sub):
        if axis is None:
            return sub
        return jax.tree_util.tree_map(
            lambda a: np.concatenate([np.asarray(a), np.repeat(np.asarray(a)[-1:], total - a.shape[0], 0)]), sub)
    return jax.tree_util.tree_map(pad, members.member_axes(shared), state, is_leaf=lambda a: a is None)


def _start_group(configs: Sequence[TrainConfig], x: jax.Array, y: jax.Array, num_classes: int, spec: runs.TrainSpec,
                 shared: bool, chains: int, mesh: Mesh | None,
                 resumed: engine.TrainState | None) -> tuple[engine.TrainState, dict, Callable, float]:
    """(state, hparams, the compiled group chunk, its compile seconds): the chunk compiles on a second
    thread from the members' shapes (and, on a mesh, their shardings) while this one builds the members
    (``engine.compile_aside``, as ``runs.setup`` overlaps a single run's), or pads and places
    ``resumed``'s. Arguments as ``train_group``'s; on a mesh, x and y are already placed on it and K
    (``configs``, padded) is a multiple of its size."""
    build, args, statics = members.member_inputs(configs, x.shape[1], num_classes, spec, shared)
    shapes = jax.eval_shape(functools.partial(members.build_members, **statics), *args)
    n, steps = x.shape[0], engine.steps_per_epoch(x.shape[0], spec.batch_size)
    order = jax.ShapeDtypeStruct((n,) if shared else (len(configs), n), jnp.int32)
    hp, count = args[1], jax.ShapeDtypeStruct((), jnp.int32)
    if mesh is not None:
        specs = members.member_specs(shared)
        shapes, order, count = parallel.place((shapes, order, count), mesh, (specs, specs.key, PartitionSpec()))
        hp = parallel.place(hp, mesh, PartitionSpec(parallel.MEMBER_AXIS))
    pending = engine.compile_aside(members.run_group_chunk, {"spec": spec, "capacity": steps, "shared_key": shared,
                                                              "chains": chains, "mesh": mesh},
                                   shapes, order, x, y, hp, count, options=members.group_options(jax.default_backend()))
    if resumed is None:
        state = build(*args, **statics)
    else:
        state = jax.device_put(_padded_state(parallel.to_host(resumed), len(configs), shared))
    if mesh is not None:
        state = parallel.place(state, mesh, members.member_specs(shared))
    members.group_order(state.key, state.epoch, n, shared)  # compiled here, not in the first epoch's time
    program, seconds = pending.result()
    return state, hp, program, seconds


def _gathered(state: engine.TrainState, num_members: int, shared: bool) -> engine.TrainState:
    """A members mesh's ``state`` gathered from every device and process (a collective: every process
    calls it), its first ``num_members`` members (no padding) on this process's first device."""
    cut = lambda axis, sub: sub if axis is None else jax.tree_util.tree_map(lambda a: a[:num_members], sub)  # noqa: E731
    host = jax.tree_util.tree_map(cut, members.member_axes(shared), parallel.to_host(state),
                                  is_leaf=lambda a: a is None)
    return jax.device_put(host)


class _Loop:
    """One group's epochs in chunks: the compiled program, its inputs and the records it keeps."""

    def __init__(self, program: Callable, data: tuple, spec: runs.TrainSpec, k: int, shared: bool,
                 mesh: Mesh | None, divergence: bool, on_epoch: Callable | None):
        self.program, (self.x, self.y, self.hp, self.num_classes) = program, data
        self.spec, self.k, self.shared, self.mesh = spec, k, shared, mesh
        self.divergence, self.on_epoch = divergence, on_epoch
        self.n = self.x.shape[0]
        self.steps = engine.steps_per_epoch(self.n, spec.batch_size)
        self._counts: dict[int, jax.Array] = {}

    def count(self, num: int) -> jax.Array:
        """The int32 step count ``num``, on the device (replicated over a mesh) once for each value."""
        if num not in self._counts:
            self._counts[num] = (jnp.int32(num) if self.mesh is None else
                                 parallel.replicate(jnp.int32(num), self.mesh))
        return self._counts[num]

    def chunk(self, state: engine.TrainState, order: jax.Array, num: int) -> tuple[engine.TrainState, np.ndarray]:
        """``num`` steps of every member: the new state and the (K, num) step losses (K: no padding)."""
        state, losses = self.program(state, order, self.x, self.y, self.hp, self.count(num))
        return state, np.asarray(parallel.to_host(losses), np.float64)[:self.k, :num]  # waits for the devices

    def judge(self, p: GroupProgress, state: engine.TrainState, epoch: int) -> GroupProgress:
        """``p`` after epoch ``epoch`` (0-based) ended in ``state``: its loss recorded, divergence judged
        on all of its step losses (as ``members.diverged_members``), ``on_epoch`` told."""
        losses = p.losses
        start = reference_loss(losses[:, 0], math.log(self.num_classes)) if epoch == 0 else p.start
        finite = np.asarray(parallel.to_host(members.members_finite(state.params)))[:self.k]
        dead = p.dead | members.diverged_members(losses, start, finite, self.divergence)
        history = p.history.copy()
        history[:, epoch] = [np.nan if d else engine.epoch_loss(row, self.n, self.spec.batch_size)
                             for row, d in zip(losses, dead)]
        if self.on_epoch is not None:
            self.on_epoch(epoch + 1, history[:, epoch])
        return p._replace(history=history, dead=dead, start=np.asarray(start, np.float64),
                          losses=np.zeros_like(losses))

    def progress(self, p: GroupProgress, state: engine.TrainState, seconds: float) -> GroupProgress:
        """``p`` holding ``state``'s K members (gathered from a mesh: a collective, every process calls it)."""
        members_only = state if self.mesh is None else _gathered(state, self.k, self.shared)
        return p._replace(state=members_only, losses=p.losses.copy(), train_seconds=seconds)


def _run(loop: _Loop, state: engine.TrainState, p: GroupProgress, at: tuple[int, int], per_call: int,
         stop: Callable[[], int] | None, on_progress: Callable[[GroupProgress], None] | None
         ) -> tuple[engine.TrainState, GroupProgress]:
    """The epochs from ``at`` = (epoch, step) on (see ``train_group``); returns the final state (padded,
    on the mesh) and progress."""
    (epoch, step), epochs = at, p.history.shape[1]
    seconds, order = p.train_seconds, None
    while epoch < epochs and not p.dead.all():
        t0 = time.perf_counter()
        if order is None or step == 0:
            order = members.group_order(state.key, state.epoch, loop.n, loop.shared)
        num = min(per_call, loop.steps - step)
        state, losses = loop.chunk(state, order, num)
        seconds += time.perf_counter() - t0
        p.losses[:, step:step + num] = losses
        step += num
        if step == loop.steps:
            p, epoch, step = loop.judge(p, state, epoch), epoch + 1, 0
            if on_progress is not None:
                on_progress(loop.progress(p, state, seconds))
        if stop is not None and epoch < epochs and not p.dead.all():
            signum = stop()  # every process asks at every chunk: with several, a collective
            if signum:
                raise GroupStopped(signum, loop.progress(p, state, seconds))
    return state, p._replace(train_seconds=seconds)


def _check_group(configs: Sequence[TrainConfig], num_examples: int, image_side: int, chunk_steps: Any) -> None:
    """ValueError unless ``configs`` make one group of sweepable members and ``chunk_steps`` is valid."""
    if len({members.group_key(c, num_examples, image_side) for c in configs}) != 1:
        raise ValueError("train_group needs configurations of one shape group (see group_by_shape)")
    for c in configs:
        members.check_sweepable(c)
    if chunk_steps is not None and (not isinstance(chunk_steps, (int, np.integer)) or chunk_steps < 1):
        raise ValueError(f"chunk_steps must be a positive integer or None, got {chunk_steps!r}")


def train_group(configs: Sequence[TrainConfig], x: jax.Array, y: jax.Array, num_classes: int = 10, *,
                image_side: int = 28, chains: int | None = None, share_order: bool = False,
                on_epoch: Callable[[int, np.ndarray], None] | None = None, divergence: bool = True,
                mesh: Mesh | None = None, chunk_steps: int | None = None, resume: GroupProgress | None = None,
                stop: Callable[[], int] | None = None,
                on_progress: Callable[[GroupProgress], None] | None = None) -> GroupResult:
    """Train ``configs`` (K configurations that share a ``members.group_key``) together, all epochs,
    one compiled program.

    x (N, D) float, y (N,) int32, already on the device (call inside ``engine.precision`` for float64);
    num_classes: C, the width of the output layer; image_side: the images' side in pixels.
    ``chains``: see ``members.group_chunk`` (default: ``members.default_chains``, per device).
    ``share_order``: every member uses the first one's run key (see the ``members`` docstring); members
    of one seed share it anyway. ``on_epoch(epoch, losses (K,))`` after each epoch. A member diverges
    as a single run does (a non-finite loss or params, or with ``divergence`` its epoch's mean loss past
    10x max(its first loss, ln C)); it does not stop the others: its losses become NaN from that epoch
    on and ``diverged`` marks it. When all diverged, the remaining epochs are skipped.

    ``mesh``: None (one device), or a mesh with a ``"members"`` axis, which may span processes (each
    then calls ``train_group`` alike): the members (``members.padded``) split over its devices, x and y
    replicated, each member the bits it has on one device. The result holds the K members only, on
    this process's first device, in every process.

    ``chunk_steps``: steps per call of the program (None: a whole epoch); where chunks end changes no
    bit. ``stop()`` is asked after every chunk but an epoch's last of the group: a non-zero answer (the
    same in every process) raises ``GroupStopped`` with the group's ``GroupProgress``.
    ``on_progress(progress)`` after every epoch (every process calls it; ``progress.state`` is gathered).
    ``resume``: a ``GroupProgress`` of these configurations to continue from, on any mesh.
    """
    _check_group(configs, x.shape[0], image_side, chunk_steps)
    k, devices = len(configs), parallel.device_count(mesh)
    if mesh is not None:
        members.check_mesh(mesh, devices)
        x, y = parallel.replicate((x, y), mesh)
    padded = members.padded(configs, devices)
    spec = runs.spec_for(configs[0], x.shape[0], image_side)
    shared = share_order or len({c.seed for c in configs}) == 1
    steps = engine.steps_per_epoch(x.shape[0], spec.batch_size)
    if chains is None:
        chains = members.default_chains(len(padded) // devices, 1 if mesh is None else len(mesh.local_devices))
    state, hp, program, compile_seconds = _start_group(padded, x, y, num_classes, spec, shared, chains, mesh,
                                                       None if resume is None else resume.state)
    if resume is None:
        p, at = fresh_progress(state, k, configs[0].epochs, steps), (0, 0)
    else:
        p = resume._replace(losses=np.array(resume.losses, np.float64), history=np.array(resume.history, np.float64),
                            dead=np.array(resume.dead, bool), start=np.array(resume.start, np.float64))
        at = (int(resume.state.epoch), int(resume.state.step))
    loop = _Loop(program, (x, y, hp, num_classes), spec, k, shared, mesh, divergence, on_epoch)
    state, p = _run(loop, state, p, at, steps if chunk_steps is None else int(chunk_steps), stop, on_progress)
    state = _gathered(state, k, shared) if mesh is not None else state
    return GroupResult(state.params, state.opt_state, p.history, compile_seconds, p.train_seconds, shared, state,
                       p.dead)
