"""The divergence rule, written once: when the losses of a stretch of training mean the run blew up.

A chunk of training diverged when one of its losses is not finite, when the params it produced are not
finite, or (the factor rule) when its mean loss passes ``factor`` (10) times the run's *reference*:
``max(the run's first recorded loss, a floor)``, the floor being chance level (ln C for C classes) where
the loss is a cross-entropy. Healthy training never gets there: its loss starts near chance and falls;
``--lr 1e4`` ends near loss 4000 at 10% accuracy with every number finite.

The reference is the run's start, taken before any update and kept across resume (``engine.advance``
carries it in a checkpoint's ``partial`` as ``first_loss``), never the first loss of a resumed chunk. A
reference at or below zero (a loss of unknown scale that starts there) leaves only the finiteness checks.

Every judge calls ``diverged``: ``handlers.check_finite`` and ``handlers.DivergenceRule`` (a run's chunk),
``members.diverged_members`` (the members of a group, vectorised), and ``notebook`` (the notebook's epochs).
"""
from __future__ import annotations

import numpy as np

__all__ = ["DIVERGENCE_FACTOR", "HEALTHY", "NON_FINITE_LOSS", "NON_FINITE_PARAMS", "ROSE", "reference_loss",
           "diverged", "message"]

DIVERGENCE_FACTOR = 10.0
HEALTHY, NON_FINITE_LOSS, NON_FINITE_PARAMS, ROSE = "", "non-finite loss", "non-finite params", "rose"


def reference_loss(first_loss, floor: float = 0.0) -> np.ndarray:
    """The rule's reference, ``max(first_loss, floor)`` elementwise, float64.

    Args:
        first_loss: () or (K,): the run's (or each member's) first recorded loss.
        floor: the least reference: chance level ``ln C`` for a C-class cross-entropy, 0.0 when unknown.

    Returns:
        A float64 array of ``first_loss``'s shape.
    """
    return np.maximum(np.asarray(first_loss, np.float64), floor)


def diverged(losses, reference, factor: float = DIVERGENCE_FACTOR, *, rule: bool = True,
             params_finite=True) -> np.ndarray:
    """Whether, and why, each run's chunk of losses means it diverged.

    Args:
        losses: (steps,) one run's per-step losses, or (K, steps) those of K members.
        reference: () or (K,): each run's ``reference_loss``.
        factor: the factor rule's multiple of the reference.
        rule: apply the factor rule (False: only non-finite losses or params count).
        params_finite: () or (K,) bool: the params after the chunk are all finite.

    Returns:
        A () or (K,) array of str: ``HEALTHY`` (""), ``NON_FINITE_LOSS``, ``NON_FINITE_PARAMS`` or
        ``ROSE`` (the mean loss passed ``factor`` x ``reference``), checked in that order.
    """
    losses = np.asarray(losses, np.float64)
    reference = np.asarray(reference, np.float64)
    with np.errstate(invalid="ignore", over="ignore"):
        rose = bool(rule) & (reference > 0) & (np.mean(losses, axis=-1) > factor * reference)
    return np.where(~np.all(np.isfinite(losses), axis=-1), NON_FINITE_LOSS,
                    np.where(~np.asarray(params_finite, bool), NON_FINITE_PARAMS, np.where(rose, ROSE, HEALTHY)))


def message(reason: str, where: str, mean: float = float("nan"), reference: float = float("nan"),
            factor: float = DIVERGENCE_FACTOR) -> str:
    """The one-line ``DivergenceError`` text for a ``diverged`` reason.

    Args:
        reason: ``NON_FINITE_LOSS``, ``NON_FINITE_PARAMS`` or ``ROSE``.
        where: where it happened, e.g. "in epoch 3" or "at epoch 2, step 7".
        mean: the chunk's mean loss (``ROSE``).
        reference: the run's reference loss (``ROSE``).
        factor: the factor rule's multiple (``ROSE``).

    Returns:
        The message, one line.
    """
    if reason == NON_FINITE_LOSS:
        return f"the loss became non-finite {where}; training stopped (try a lower learning rate)"
    if reason == NON_FINITE_PARAMS:
        return f"the parameters became non-finite {where}; training stopped (try a lower learning rate)"
    return (f"the loss rose to {mean:.4g} {where}, over {factor:g}x its start ({reference:.4g}): the run diverged; "
            f"training stopped (try a lower learning rate, or divergence=False)")
