"""Tests for jaxmlp.transfer: replace_head shapes/identity, trainable_mask structure, and the
mask driving optim.freeze."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from jaxmlp import optim, transfer


def make_params(sizes=(12, 8, 6, 4), dtype=jnp.float32):
    rng = np.random.default_rng(0)
    return [{"W": jnp.asarray(rng.standard_normal((m, n)), dtype), "b": jnp.asarray(rng.standard_normal(n), dtype)}
            for m, n in zip(sizes[:-1], sizes[1:])]


@pytest.mark.parametrize("scheme", ["he", "glorot", "notebook"])
def test_replace_head_shapes_and_untouched_body(scheme):
    """New head is (fan_in, num_classes) in the old dtype with zero bias; other layers are the
    same objects; the input list is not modified."""
    params = make_params()
    old_head = params[-1]
    new = transfer.replace_head(jax.random.PRNGKey(0), params, 7, scheme=scheme)
    assert len(new) == len(params)
    for a, b in zip(new[:-1], params[:-1]):
        assert a is b
    assert new[-1]["W"].shape == (6, 7) and new[-1]["b"].shape == (7,)
    assert new[-1]["W"].dtype == jnp.float32 and new[-1]["b"].dtype == jnp.float32
    assert not np.any(np.asarray(new[-1]["b"])) and np.any(np.asarray(new[-1]["W"]))
    assert params[-1] is old_head and params[-1]["W"].shape == (6, 4)


@pytest.mark.usefixtures("x64")  # the new head keeps float64 params float64
def test_replace_head_he_scale_and_errors():
    """he init has std ~ sqrt(2/fan_in); bad num_classes / empty params raise ValueError."""
    params = make_params((10, 400, 300), jnp.float64)
    W = np.asarray(transfer.replace_head(jax.random.PRNGKey(1), params, 200)[-1]["W"])
    assert W.dtype == np.float64
    assert np.std(W) == pytest.approx(np.sqrt(2 / 400), rel=0.05)  # 80k samples: ~0.3% std error
    with pytest.raises(ValueError):
        transfer.replace_head(jax.random.PRNGKey(1), params, 0)
    with pytest.raises(ValueError):
        transfer.replace_head(jax.random.PRNGKey(1), [], 3)


def test_trainable_mask_structure():
    """Mask matches params' tree structure; listed layers (negative allowed) are False."""
    params = make_params()
    mask = transfer.trainable_mask(params, [0, -1])
    assert jax.tree_util.tree_structure(mask) == jax.tree_util.tree_structure(params)
    assert mask == [{"W": False, "b": False}, {"W": True, "b": True}, {"W": False, "b": False}]
    assert transfer.trainable_mask(params, []) == [{"W": True, "b": True}] * 3
    assert transfer.trainable_mask(params, [np.int64(1), 1]) == \
        [{"W": True, "b": True}, {"W": False, "b": False}, {"W": True, "b": True}]
    for bad in ([3], [-4], [0.5], ["0"]):
        with pytest.raises(ValueError, match="^trainable_mask: freeze: layer index"):
            transfer.trainable_mask(params, bad)


def test_mask_with_freeze_trains_only_the_head():
    """replace_head + trainable_mask(freeze=[0, 1]) + optim.freeze: body bit-identical after
    jitted adamw steps, head changes."""
    params = transfer.replace_head(jax.random.PRNGKey(2), make_params(), 3)
    opt = optim.freeze(optim.adamw(0.01, weight_decay=0.1), transfer.trainable_mask(params, [0, 1]))
    state = opt.init(params)
    x = jnp.asarray(np.random.default_rng(3).standard_normal((5, 12)), jnp.float32)

    def loss(p):
        h = x
        for layer in p[:-1]:
            h = jax.nn.relu(h @ layer["W"] + layer["b"])
        return jnp.sum((h @ p[-1]["W"] + p[-1]["b"]) ** 2)

    @jax.jit
    def step(p, s):
        updates, s = opt.update(jax.grad(loss)(p), s, p)
        return optim.apply_updates(p, updates), s

    p = params
    for _ in range(3):
        p, state = step(p, state)
    for i in (0, 1):
        for k in ("W", "b"):
            assert np.array_equal(np.asarray(p[i][k]), np.asarray(params[i][k]))
    assert not np.allclose(np.asarray(p[2]["W"]), np.asarray(params[2]["W"]))
