"""Learning-rate schedules: pure functions of the (possibly traced) integer step.

Step counts and decay factors are python numbers fixed by the config; the peak ``lr`` may be traced (a
sweep vmaps over it). Each optimizer in :mod:`jaxmlp.optim` takes a schedule as its ``learning_rate``.
"""
from __future__ import annotations

import math
from collections.abc import Callable

import jax
import jax.numpy as jnp

Schedule = Callable[[jax.Array], jax.Array]

__all__ = ["constant", "step_decay", "cosine", "warmup_cosine", "schedule_by_name", "SCHEDULES", "Schedule"]



def _check_positive_int(value, what: str) -> None:
    if isinstance(value, (int, float)) and not (value > 0 and float(value).is_integer()):
        raise ValueError(f"{what} must be a positive integer, got {value!r}")


def constant(lr) -> Schedule:
    """``lr`` at every step.

    Args:
        lr: the learning rate, a number or a traced scalar.

    Returns:
        The schedule ``step -> lr`` (an array shaped like ``step``, default float dtype).
    """
    return lambda step: jnp.zeros(jnp.shape(step), jnp.result_type(float)) + lr


def step_decay(lr, decay_rate, decay_steps: int) -> Schedule:
    """Staircase decay: ``lr * decay_rate ** floor(step / decay_steps)``.

    Args:
        lr: the learning rate at step 0, a number or a traced scalar.
        decay_rate: the factor applied every ``decay_steps``.
        decay_steps: steps between decays, a positive integer.

    Returns:
        The schedule ``step -> lr``.
    """
    _check_positive_int(decay_steps, "decay_steps")

    def schedule(step):
        k = (jnp.asarray(step) // decay_steps).astype(jnp.result_type(float))
        return lr * decay_rate ** k

    return schedule


def cosine(lr, total_steps: int, final_lr=0.0) -> Schedule:
    """Cosine annealing from ``lr`` at step 0 to ``final_lr`` at ``total_steps`` (held after):
    ``final + (lr - final) * (1 + cos(pi * min(step/total, 1))) / 2``.

    Args:
        lr: the peak learning rate, a number or a traced scalar.
        total_steps: the step at which ``final_lr`` is reached, a positive integer.
        final_lr: the learning rate from ``total_steps`` on.

    Returns:
        The schedule ``step -> lr``.
    """
    _check_positive_int(total_steps, "total_steps")

    def schedule(step):
        frac = jnp.clip(jnp.asarray(step).astype(jnp.result_type(float)) / total_steps, 0.0, 1.0)
        return final_lr + (lr - final_lr) * 0.5 * (1.0 + jnp.cos(math.pi * frac))

    return schedule


def warmup_cosine(lr, warmup_steps: int, total_steps: int, final_lr=0.0) -> Schedule:
    """Linear warmup ``lr * (step+1) / warmup_steps`` for steps ``0..warmup_steps-1`` (so no
    update is wasted at lr 0 and step ``warmup_steps-1`` uses the peak), then cosine from
    ``lr`` at ``warmup_steps`` to ``final_lr`` at ``total_steps``. ``warmup_steps=0`` is plain
    :func:`cosine`.

    Args:
        lr: the peak learning rate, a number or a traced scalar.
        warmup_steps: the warmup's length, an integer in ``[0, total_steps)``.
        total_steps: the step at which ``final_lr`` is reached, a positive integer.
        final_lr: the learning rate from ``total_steps`` on.

    Returns:
        The schedule ``step -> lr``.
    """
    _check_positive_int(total_steps, "total_steps")
    if isinstance(warmup_steps, (int, float)) and isinstance(total_steps, (int, float)):
        if warmup_steps < 0 or warmup_steps >= total_steps or not float(warmup_steps).is_integer():
            raise ValueError(f"warmup_steps must be an integer in [0, total_steps={total_steps}), "
                             f"got {warmup_steps!r}")
    decay = cosine(lr, total_steps - warmup_steps, final_lr)

    def schedule(step):
        step = jnp.asarray(step)
        warm = lr * (step + 1).astype(jnp.result_type(float)) / max(warmup_steps, 1)
        return jnp.where(step < warmup_steps, warm, decay(step - warmup_steps))

    return schedule


SCHEDULES = ("constant", "step", "cosine", "warmup-cosine")


def schedule_by_name(name: str, lr, total_steps: int, *, decay_rate=0.1, decay_steps=None,
                     warmup_steps=None, final_lr=0.0) -> Schedule:
    """Build a schedule from a CLI name (``--schedule {constant,step,cosine,warmup-cosine}``).

    Args:
        name: one of ``SCHEDULES`` (underscores and case are accepted).
        lr: the peak learning rate, a number or a traced scalar.
        total_steps: the run's steps (unused by "constant").
        decay_rate: step decay's factor.
        decay_steps: step decay's interval; None: ``total_steps // 3``.
        warmup_steps: warmup-cosine's warmup; None: ``total_steps // 20`` (at least 1 when
            total_steps > 1).
        final_lr: where cosine and warmup-cosine end.

    Returns:
        The schedule ``step -> lr``. Raises ValueError for an unknown name.
    """
    key = name.strip().lower().replace("_", "-") if isinstance(name, str) else name
    if key not in SCHEDULES:
        raise ValueError(f"schedule_by_name: name: unknown schedule {name!r}; choose one of {', '.join(SCHEDULES)}")
    if key == "constant":
        return constant(lr)
    _check_positive_int(total_steps, "total_steps")
    if key == "step":
        return step_decay(lr, decay_rate, max(1, total_steps // 3) if decay_steps is None else decay_steps)
    if key == "cosine":
        return cosine(lr, total_steps, final_lr)
    if warmup_steps is None:
        warmup_steps = min(max(1, total_steps // 20), total_steps - 1)
    return warmup_cosine(lr, warmup_steps, total_steps, final_lr)
