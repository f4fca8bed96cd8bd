"""Tests for the composable gradient transformations of jaxmlp.optim (optax's protocol): each against
an independent float64 NumPy reference, the named optimizers as chains of transforms, and a user's
jitted step that compiles once."""

import functools

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from jaxmlp import optim
from jaxmlp.losses import loss
from jaxmlp.model import init_params

pytestmark = pytest.mark.usefixtures("x64")

# Same formulas in float64, different evaluation order: a few ulps a step (see test_optim).
RTOL, ATOL = 1e-12, 1e-14
SIZES = [(5, 4), (4, 3)]


def make_params(rng):
    return [{"W": rng.standard_normal(s), "b": rng.standard_normal(s[1])} for s in SIZES]


def to_jax(tree):
    return jax.tree_util.tree_map(jnp.asarray, tree)


def run(opt, params, grads_seq):
    state = opt.init(params)
    out = []
    for g in grads_seq:
        updates, state = opt.update(g, state, params)
        params = optim.apply_updates(params, updates)
        out.append(updates)
    return params, state, out


def assert_trees_close(a, b, rtol=RTOL, atol=ATOL):
    for x, y in zip(jax.tree_util.tree_leaves(a), jax.tree_util.tree_leaves(b)):
        np.testing.assert_allclose(np.asarray(x), np.asarray(y), rtol=rtol, atol=atol)


@pytest.fixture
def problem():
    rng = np.random.default_rng(0)
    return to_jax(make_params(rng)), [to_jax(make_params(rng)) for _ in range(6)]


def test_updates_are_what_is_added():
    """sgd's updates are -lr * g: apply_updates adds them (the optax convention)."""
    params = to_jax(make_params(np.random.default_rng(1)))
    grads = to_jax(make_params(np.random.default_rng(2)))
    updates, _ = optim.sgd(0.1).update(grads, optim.sgd(0.1).init(params), params)
    assert_trees_close(updates, jax.tree_util.tree_map(lambda g: -0.1 * g, grads))
    new = optim.apply_updates(params, updates)
    assert_trees_close(new, jax.tree_util.tree_map(lambda p, g: p - 0.1 * g, params, grads))


def test_adam_and_adamw_are_chains_of_transforms(problem):
    """adam == chain(scale_by_adam, scale_by_learning_rate); adamw puts decoupled decay between them."""
    params, grads = problem
    adam_chain = optim.chain(optim.scale_by_adam(0.8, 0.95, 1e-7), optim.scale_by_learning_rate(0.01))
    assert_trees_close(run(adam_chain, params, grads)[0], run(optim.adam(0.01, 0.8, 0.95, 1e-7), params, grads)[0])
    adamw_chain = optim.chain(optim.scale_by_adam(0.8, 0.95, 1e-7), optim.add_decayed_weights(0.1),
                              optim.scale_by_learning_rate(0.01))
    want = run(optim.adamw(0.01, 0.8, 0.95, 1e-7, weight_decay=0.1), params, grads)[0]
    assert_trees_close(run(adamw_chain, params, grads)[0], want)
    coupled = optim.chain(optim.add_decayed_weights(0.5), optim.sgd(0.1))
    assert_trees_close(run(coupled, params, grads)[0], run(optim.sgd(0.1, weight_decay=0.5), params, grads)[0])


def test_clip_by_global_norm_matches_reference(problem):
    """Updates whose global norm exceeds the limit are scaled to exactly the limit; smaller ones pass."""
    params, grads = problem
    g = grads[0]
    norm = np.sqrt(sum(np.sum(np.asarray(leaf) ** 2) for leaf in jax.tree_util.tree_leaves(g)))
    clip = optim.clip_by_global_norm(norm / 4)
    clipped, _ = clip.update(g, clip.init(params), params)
    assert_trees_close(clipped, jax.tree_util.tree_map(lambda x: x * (1 / 4), g))
    assert float(optim.global_norm(clipped)) == pytest.approx(norm / 4, rel=1e-12)
    loose = optim.clip_by_global_norm(norm * 2)
    assert_trees_close(loose.update(g, loose.init(params), params)[0], g, rtol=0, atol=0)


def test_add_decayed_weights_with_a_mask(problem):
    """Decay only where the mask says so: weights decayed, biases untouched."""
    params, grads = problem
    mask = [{"W": True, "b": False} for _ in SIZES]
    t = optim.add_decayed_weights(0.3, mask)
    out, _ = t.update(grads[0], t.init(params), params)
    for layer_out, g, p in zip(out, grads[0], params):
        np.testing.assert_allclose(np.asarray(layer_out["W"]), np.asarray(g["W"] + 0.3 * p["W"]), rtol=RTOL)
        np.testing.assert_array_equal(np.asarray(layer_out["b"]), np.asarray(g["b"]))


def test_masked_passes_unselected_updates_through(problem):
    """masked(adam, mask): masked-in leaves follow adam, the others get the raw gradients as updates."""
    params, grads = problem
    mask = [{"W": True, "b": True}, {"W": False, "b": False}]
    _, _, updates = run(optim.masked(optim.adam(0.01), mask), params, grads)
    _, _, adam_updates = run(optim.adam(0.01), params, grads)
    assert_trees_close(updates[-1][0], adam_updates[-1][0])
    assert_trees_close(updates[-1][1], grads[-1][1], rtol=0, atol=0)


def _np(tree):
    return jax.tree_util.tree_map(lambda leaf: np.asarray(leaf, np.float64), tree)


def test_masked_clips_by_the_norm_of_the_masked_leaves_only(problem):
    """masked(clip_by_global_norm(c), mask), optax's semantics: the masked leaves are clipped by their own
    global norm (not the norm of all leaves), the others pass through bit for bit; the inner transform's
    state holds the masked leaves alone."""
    params, grads = problem
    mask = [{"W": True, "b": False}, {"W": True, "b": False}]
    g = _np(grads[0])
    masked_norm = np.sqrt(sum(np.sum(layer["W"] ** 2) for layer in g))
    limit = masked_norm / 3  # below the masked norm, so the factor shows which norm was used
    t = optim.masked(optim.clip_by_global_norm(limit), mask)
    out, _ = t.update(grads[0], t.init(params), params)
    for layer_out, layer_g in zip(out, g):
        np.testing.assert_allclose(np.asarray(layer_out["W"]), layer_g["W"] * (limit / masked_norm), rtol=RTOL)
        np.testing.assert_array_equal(np.asarray(layer_out["b"]), layer_g["b"])
    assert float(np.sqrt(sum(np.sum(np.asarray(layer["W"]) ** 2) for layer in out))) == pytest.approx(limit)
    # A limit above the masked leaves' norm (but below the norm of all leaves) leaves everything alone.
    loose = optim.masked(optim.clip_by_global_norm(masked_norm * 1.01), mask)
    assert_trees_close(loose.update(grads[0], loose.init(params), params)[0], grads[0], rtol=0, atol=0)
    inner_state = optim.masked(optim.adam(0.01), mask).init(params)
    assert len(jax.tree_util.tree_leaves(inner_state.mu)) == 2  # the two W leaves, not the biases


def test_masked_without_params_passes_none_to_the_inner_transform(problem):
    """optax's masked hands the inner transform None for params: a stateless scale works without them,
    a decay says what is missing."""
    params, grads = problem
    mask = [{"W": True, "b": True}, {"W": False, "b": False}]
    scaled, _ = optim.masked(optim.scale(2.0), mask).update(grads[0], optim.EmptyState())
    assert_trees_close(scaled[0], jax.tree_util.tree_map(lambda x: 2 * x, grads[0][0]))
    assert_trees_close(scaled[1], grads[0][1], rtol=0, atol=0)
    decay = optim.masked(optim.add_decayed_weights(0.1), mask)
    with pytest.raises(ValueError, match=r"pass params: update\(grads, state, params\)"):
        decay.update(grads[0], decay.init(params))


def test_chain_of_clip_and_sgd_matches_reference(problem):
    """chain(clip_by_global_norm(c), sgd(lr)) over six steps == a float64 NumPy loop that clips each step's
    gradients to global norm c (when above it) and then steps p - lr * g; some steps clip, some do not."""
    params, grads = problem
    norms = [np.sqrt(sum(np.sum(leaf ** 2) for leaf in jax.tree_util.tree_leaves(_np(g)))) for g in grads]
    limit = float(np.median(norms))
    got, _, _ = run(optim.chain(optim.clip_by_global_norm(limit), optim.sgd(0.1)), params, grads)
    want = _np(params)
    for g, norm in zip(grads, norms):
        factor = min(1.0, limit / norm)
        want = jax.tree_util.tree_map(lambda p, x, f=factor: p - 0.1 * (x * f), want, _np(g))
    assert any(n > limit for n in norms) and any(n < limit for n in norms)
    assert_trees_close(got, want)


@pytest.mark.parametrize("make", [lambda: optim.sgd(0.1, weight_decay=0.5), lambda: optim.momentum(0.1, 0.9, 0.5),
                                  lambda: optim.nesterov(0.1, 0.9, 0.5), lambda: optim.adam(0.1, weight_decay=0.5),
                                  lambda: optim.adamw(0.1), lambda: optim.add_decayed_weights(0.5),
                                  lambda: optim.chain(optim.clip_by_global_norm(1.0), optim.sgd(0.1, 0.5))],
                         ids=["sgd", "momentum", "nesterov", "adam", "adamw", "add_decayed_weights", "in-a-chain"])
def test_a_decay_without_params_is_an_error_that_names_the_fix(make, problem):
    """A weight decay reads the params: update(grads, state) without them raises (it used to drop the decay
    silently), eagerly and under jit, and the message says what to pass."""
    params, grads = problem
    opt = make()
    state = opt.init(params)
    for update in (opt.update, jax.jit(opt.update)):
        with pytest.raises(ValueError, match=r"^weight_decay needs the params; pass params: "
                                             r"update\(grads, state, params\)"):
            update(grads[0], state)


def test_a_traced_weight_decay_needs_params_and_a_python_zero_does_not(problem):
    """Whether a decay is zero is known only for a Python number: a traced weight_decay (a vmapped sweep)
    reads the params even when its value is 0; sgd(lr) with the default 0 steps without params."""
    params, grads = problem

    def step(wd):
        opt = optim.sgd(0.1, weight_decay=wd)
        return opt.update(grads[0], opt.init(params))[0]

    with pytest.raises(ValueError, match="weight_decay needs the params"):
        jax.jit(step)(jnp.asarray(0.0))
    assert_trees_close(step(0.0), jax.tree_util.tree_map(lambda g: -0.1 * g, grads[0]), rtol=0, atol=0)


def test_accumulate_steps_with_the_mean_every_k(problem):
    """accumulate(sgd, 3) over six micro-steps == two sgd steps on the means of each triple; the
    micro-steps in between give zero updates."""
    params, grads = problem
    got, _, updates = run(optim.accumulate(optim.sgd(0.1), 3), params, grads)
    want = params
    for k in (0, 3):
        mean = jax.tree_util.tree_map(lambda *g: sum(g) / 3, *grads[k:k + 3])
        want = jax.tree_util.tree_map(lambda p, g: p - 0.1 * g, want, mean)
    assert_trees_close(got, want)
    for i in (0, 1, 3, 4):
        assert all(not np.any(np.asarray(u)) for u in jax.tree_util.tree_leaves(updates[i]))
    with pytest.raises(ValueError, match="every"):
        optim.accumulate(optim.sgd(0.1), 0)


def test_max_norm_bounds_each_units_incoming_weights(problem):
    """After a max-norm step every column of each W has norm <= the limit; columns within it are the
    plain step's; biases are never touched."""
    params, grads = problem
    big = jax.tree_util.tree_map(lambda g: 10 * g, grads[0])
    opt = optim.chain(optim.sgd(1.0), optim.max_norm(1.5))
    new, _, _ = run(opt, params, [big])
    plain, _, _ = run(optim.sgd(1.0), params, [big])
    for layer, ref in zip(new, plain):
        norms = np.linalg.norm(np.asarray(layer["W"]), axis=0)
        ref_norms = np.linalg.norm(np.asarray(ref["W"]), axis=0)
        assert np.all(norms <= 1.5 + 1e-12) and np.any(ref_norms > 1.5)
        scaled = np.asarray(ref["W"]) * np.minimum(1.0, 1.5 / ref_norms)
        np.testing.assert_allclose(np.asarray(layer["W"]), scaled, rtol=1e-12)
        np.testing.assert_allclose(np.asarray(layer["b"]), np.asarray(ref["b"]), rtol=0, atol=1e-15)


def test_freeze_zeroes_updates_and_keeps_state(problem):
    """freeze: frozen leaves get zero updates even with decoupled decay."""
    params, grads = problem
    mask = [{"W": False, "b": False}, {"W": True, "b": True}]
    new, _, _ = run(optim.freeze(optim.adamw(0.01, weight_decay=0.5), mask), params, grads)
    np.testing.assert_array_equal(np.asarray(new[0]["W"]), np.asarray(params[0]["W"]))
    assert not np.allclose(np.asarray(new[1]["W"]), np.asarray(params[1]["W"]))


def test_transforms_jit_and_vmap_over_lr(problem):
    """A chain is pure: jitted it equals eager; vmapped over lr each member equals its own run."""
    params, grads = problem

    def final(lr):
        opt = optim.chain(optim.clip_by_global_norm(1.0), optim.adam(lr))
        return run(opt, params, grads[:3])[0]

    batched = jax.jit(jax.vmap(final))(jnp.asarray([1e-3, 1e-2]))
    for i, lr in enumerate((1e-3, 1e-2)):
        assert_trees_close(jax.tree_util.tree_map(lambda leaf: leaf[i], batched), final(lr))


def test_an_optax_optimizer_is_interchangeable(problem):
    """Where optax is installed, its adam equals ours step for step, and each applies the other's updates."""
    optax = pytest.importorskip("optax")
    params, grads = problem
    ours = run(optim.adam(0.01, 0.9, 0.99, 1e-6), params, grads)[0]
    theirs = run(optax.adam(0.01, 0.9, 0.99, 1e-6), params, grads)[0]
    assert_trees_close(ours, theirs, rtol=1e-10, atol=1e-12)


def _count_compiles():
    events = []
    jax.monitoring.register_event_duration_secs_listener(
        lambda name, *a, **k: events.append(name) if "backend_compile" in name else None)
    return events


def test_a_users_jitted_step_compiles_once():
    """A step built from init_params and optim.adam compiles on its first call only: the optimizer's
    zeros are placed like the params (uncommitted), so the second call's inputs look the same."""
    params = init_params(jax.random.PRNGKey(0), [6, 5, 3], dtype=jnp.float32)
    opt = optim.adam(1e-2)
    state = opt.init(params)
    x = jnp.asarray(np.random.default_rng(3).standard_normal((4, 6)), jnp.float32)
    y = jnp.asarray([0, 1, 2, 1])

    @functools.partial(jax.jit)
    def step(params, state, x, y):
        updates, state = opt.update(jax.grad(loss)(params, x, y), state, params)
        return optim.apply_updates(params, updates), state

    events = _count_compiles()
    params, state = step(params, state, x, y)
    first = len(events)
    assert first >= 1, "the compile listener saw nothing, so this test would prove nothing"
    for _ in range(3):
        params, state = step(params, state, x, y)
    assert len(events) == first
    assert params[0]["W"].dtype == jnp.float32 and state.mu[0]["W"].dtype == jnp.float32
