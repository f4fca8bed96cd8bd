"""Tests for jaxmlp.optim: each optimizer vs a hand-written numpy reference, schedules vs
closed forms, jit/vmap, dtype keeping, freeze, and descent on a quadratic."""

import functools
import math

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from jaxmlp import optim

# float64 references throughout (see conftest's x64 fixture).
pytestmark = pytest.mark.usefixtures("x64")

SIZES = [(5, 4), (4, 3)]
N_STEPS = 6
# The references below use the same formulas in float64; only evaluation order (fused vs
# separate ops, pow via exp/log) differs, which costs a few ulps per step: rtol 1e-12 leaves
# a margin of ~1e3 over 6 steps while any formula slip (missing bias correction, wrong
# decay placement) shows up at the 1e-2..1e-4 level.
RTOL, ATOL = 1e-12, 1e-14


def make_params(rng, dtype=np.float64):
    return [{"W": rng.standard_normal(s).astype(dtype), "b": rng.standard_normal(s[1]).astype(dtype)}
            for s in SIZES]


def make_grads_seq(rng, n=N_STEPS):
    return [make_params(rng) for _ in range(n)]


def to_jax(tree):
    return jax.tree_util.tree_map(jnp.asarray, tree)


# ---------------------------------------------------------------- numpy references (per leaf)

def ref_sgd(p, gs, lr, wd=0.0):
    p = p.copy()
    for g in gs:
        p = p - lr * (g + wd * p)
    return p


def ref_momentum(p, gs, lr, beta, wd=0.0, nesterov=False):
    p, v = p.copy(), np.zeros_like(p)
    for g in gs:
        g = g + wd * p
        v = beta * v + g
        p = p - lr * ((g + beta * v) if nesterov else v)
    return p


def ref_adam(p, gs, lr, b1, b2, eps, decoupled_wd=0.0, coupled_wd=0.0):
    p, m, v = p.copy(), np.zeros_like(p), np.zeros_like(p)
    for t, g in enumerate(gs, start=1):
        g = g + coupled_wd * p
        m = b1 * m + (1 - b1) * g
        v = b2 * v + (1 - b2) * g ** 2
        m_hat = m / (1 - b1 ** t)
        v_hat = v / (1 - b2 ** t)
        p = p - lr * (m_hat / (np.sqrt(v_hat) + eps) + decoupled_wd * p)
    return p


CASES = {
    "sgd": (lambda: optim.sgd(0.1, weight_decay=0.01),
            lambda p, gs: ref_sgd(p, gs, 0.1, 0.01)),
    "momentum": (lambda: optim.momentum(0.05, momentum=0.9, weight_decay=0.01),
                 lambda p, gs: ref_momentum(p, gs, 0.05, 0.9, 0.01)),
    "nesterov": (lambda: optim.nesterov(0.05, momentum=0.8, weight_decay=0.02),
                 lambda p, gs: ref_momentum(p, gs, 0.05, 0.8, 0.02, nesterov=True)),
    "adam": (lambda: optim.adam(0.01, b1=0.9, b2=0.99, eps=1e-6),
             lambda p, gs: ref_adam(p, gs, 0.01, 0.9, 0.99, 1e-6)),
    "adamw": (lambda: optim.adamw(0.01, b1=0.8, b2=0.95, eps=1e-7, weight_decay=0.1),
              lambda p, gs: ref_adam(p, gs, 0.01, 0.8, 0.95, 1e-7, decoupled_wd=0.1)),
}


def descend(opt, grads, state, params):
    """One step in the optax protocol: the updates added to the params."""
    updates, state = opt.update(grads, state, params)
    return optim.apply_updates(params, updates), state


def run_steps(opt, params, grads_seq):
    state = opt.init(params)
    for g in grads_seq:
        params, state = descend(opt, g, state, params)
    return params, state


@pytest.mark.parametrize("name", sorted(CASES))
def test_matches_numpy_reference(name):
    """Six steps with fresh random grads match an independent float64 numpy reference."""
    make_opt, ref = CASES[name]
    rng = np.random.default_rng(0)
    params = make_params(rng)
    grads_seq = make_grads_seq(rng)
    got, state = run_steps(make_opt(), to_jax(params), [to_jax(g) for g in grads_seq])
    assert int(state.step) == N_STEPS and state.step.dtype == jnp.int32
    for i, layer in enumerate(params):
        for k in ("W", "b"):
            want = ref(layer[k], [g[i][k] for g in grads_seq])
            assert got[i][k].dtype == jnp.float64
            np.testing.assert_allclose(np.asarray(got[i][k]), want, rtol=RTOL, atol=ATOL)
            # The step must actually move the params (guards a vacuous comparison).
            assert not np.allclose(want, layer[k])


def test_adam_coupled_weight_decay_matches_reference():
    """adam(weight_decay=wd) adds wd*p to the grads before the moments (PyTorch Adam)."""
    rng = np.random.default_rng(1)
    params = make_params(rng)
    grads_seq = make_grads_seq(rng)
    got, _ = run_steps(optim.adam(0.01, weight_decay=0.5), to_jax(params), [to_jax(g) for g in grads_seq])
    p = params[0]["W"].copy()
    m, v = np.zeros_like(p), np.zeros_like(p)
    for t, g in enumerate([g[0]["W"] for g in grads_seq], start=1):
        g = g + 0.5 * p
        m = 0.9 * m + 0.1 * g
        v = 0.999 * v + 0.001 * g * g
        p = p - 0.01 * (m / (1 - 0.9 ** t)) / (np.sqrt(v / (1 - 0.999 ** t)) + 1e-8)
    np.testing.assert_allclose(np.asarray(got[0]["W"]), p, rtol=RTOL, atol=ATOL)


def test_schedule_lr_is_evaluated_at_step_before_update():
    """With a schedule, update k (0-based) uses lr(k): sgd with lr(step)=0.1*(step+1)."""
    rng = np.random.default_rng(2)
    params = make_params(rng)
    grads_seq = make_grads_seq(rng, 4)
    opt = optim.sgd(lambda step: 0.1 * (step + 1))
    got, _ = run_steps(opt, to_jax(params), [to_jax(g) for g in grads_seq])
    want = params[1]["b"].copy()
    for k, g in enumerate(grads_seq):
        want = want - 0.1 * (k + 1) * g[1]["b"]
    np.testing.assert_allclose(np.asarray(got[1]["b"]), want, rtol=RTOL, atol=ATOL)


# ----------------------------------------------------------------------------- schedules

def test_schedules_match_closed_form():
    """Schedule values at chosen steps equal hand-computed numbers."""
    c = optim.constant(0.3)
    assert float(c(0)) == pytest.approx(0.3) and float(c(1000)) == pytest.approx(0.3)

    s = optim.step_decay(1.0, 0.5, 10)
    for step, want in [(0, 1.0), (9, 1.0), (10, 0.5), (25, 0.25), (30, 0.125)]:
        assert float(s(step)) == pytest.approx(want, rel=1e-12)

    cos = optim.cosine(1.0, 100, final_lr=0.1)
    for step, want in [(0, 1.0), (50, 0.55), (100, 0.1), (150, 0.1),
                       (25, 0.1 + 0.9 * 0.5 * (1 + math.cos(math.pi / 4)))]:
        assert float(cos(step)) == pytest.approx(want, rel=1e-12)

    wc = optim.warmup_cosine(2.0, 4, 14)
    # warmup: 2*(step+1)/4 for steps 0..3; cosine over the 10 remaining steps.
    for step, want in [(0, 0.5), (1, 1.0), (3, 2.0), (4, 2.0), (9, 1.0), (14, 0.0), (20, 0.0)]:
        assert float(wc(step)) == pytest.approx(want, rel=1e-12, abs=1e-15)


def test_schedules_work_on_traced_steps_and_batched_lr():
    """Schedules accept traced int steps (jit) and a traced lr (vmap)."""
    steps = jnp.arange(20, dtype=jnp.int32)
    for sched in [optim.constant(0.1), optim.step_decay(0.1, 0.5, 5), optim.cosine(0.1, 20),
                  optim.warmup_cosine(0.1, 3, 20)]:
        jitted = jax.jit(jax.vmap(sched))(steps)
        eager = np.array([float(sched(i)) for i in range(20)])
        np.testing.assert_allclose(np.asarray(jitted), eager, rtol=1e-12)
    lrs = jnp.array([0.1, 0.2])
    out = jax.vmap(lambda lr: optim.cosine(lr, 10)(jnp.int32(5)))(lrs)
    np.testing.assert_allclose(np.asarray(out), [0.05, 0.1], rtol=1e-12)


def test_schedule_by_name_and_errors():
    """schedule_by_name builds the four CLI schedules and rejects unknown names/bad steps."""
    assert float(optim.schedule_by_name("constant", 0.1, 100)(57)) == pytest.approx(0.1)
    assert float(optim.schedule_by_name("step", 0.1, 90, decay_rate=0.5)(30)) == pytest.approx(0.05)
    assert float(optim.schedule_by_name("cosine", 0.1, 100)(100)) == pytest.approx(0.0, abs=1e-15)
    wc = optim.schedule_by_name("warmup-cosine", 0.1, 100)  # warmup 5 steps by default
    assert float(wc(0)) == pytest.approx(0.02) and float(wc(5)) == pytest.approx(0.1)
    with pytest.raises(ValueError, match="schedule"):
        optim.schedule_by_name("linear", 0.1, 100)
    with pytest.raises(ValueError, match="warmup_steps"):
        optim.warmup_cosine(0.1, 10, 10)
    with pytest.raises(ValueError, match="total_steps"):
        optim.cosine(0.1, 0)


def test_by_name():
    """by_name maps CLI names/flags to the same optimizer as the constructor; unknown -> ValueError."""
    rng = np.random.default_rng(3)
    params = to_jax(make_params(rng))
    grads_seq = [to_jax(g) for g in make_grads_seq(rng, 3)]
    pairs = [
        (optim.by_name("sgd", 0.1, weight_decay=0.1), optim.sgd(0.1, 0.1)),
        (optim.by_name("momentum", 0.1, momentum=0.5), optim.momentum(0.1, momentum=0.5)),
        (optim.by_name("Nesterov", 0.1, momentum=0.7, beta1=0.3), optim.nesterov(0.1, momentum=0.7)),
        (optim.by_name("adam", 0.01, beta1=0.8, beta2=0.9), optim.adam(0.01, b1=0.8, b2=0.9)),
        (optim.by_name("adamw", 0.01), optim.adamw(0.01, weight_decay=1e-2)),
    ]
    for a, b in pairs:
        pa, _ = run_steps(a, params, grads_seq)
        pb, _ = run_steps(b, params, grads_seq)
        for x, y in zip(jax.tree_util.tree_leaves(pa), jax.tree_util.tree_leaves(pb)):
            np.testing.assert_array_equal(np.asarray(x), np.asarray(y))
    with pytest.raises(ValueError, match="optimizer: unknown"):
        optim.by_name("rmsprop", 0.1)


# ------------------------------------------------------------------- transformations

@pytest.mark.parametrize("name", sorted(CASES))
def test_jit_matches_eager(name):
    """A jitted update gives the same params as the eager one."""
    make_opt, _ = CASES[name]
    rng = np.random.default_rng(4)
    params = to_jax(make_params(rng))
    grads_seq = [to_jax(g) for g in make_grads_seq(rng, 3)]
    opt = make_opt()
    eager, _ = run_steps(opt, params, grads_seq)
    state = opt.init(params)
    update = jax.jit(functools.partial(descend, opt))
    p = params
    for g in grads_seq:
        p, state = update(g, state, p)
    for x, y in zip(jax.tree_util.tree_leaves(p), jax.tree_util.tree_leaves(eager)):
        np.testing.assert_allclose(np.asarray(x), np.asarray(y), rtol=1e-12, atol=1e-14)


@pytest.mark.parametrize("ctor", [optim.sgd, optim.momentum, optim.nesterov, optim.adam, optim.adamw,
                                  lambda lr: optim.adam(optim.warmup_cosine(lr, 1, 4))])
def test_vmap_over_lr_matches_separate_runs(ctor):
    """Constructing the optimizer inside jit(vmap) over a batch of lrs equals separate runs."""
    rng = np.random.default_rng(5)
    params = to_jax(make_params(rng))
    grads_seq = [to_jax(g) for g in make_grads_seq(rng, 3)]
    lrs = jnp.array([0.001, 0.01, 0.1])

    def run(lr):
        return run_steps(ctor(lr), params, grads_seq)[0]

    batched = jax.jit(jax.vmap(run))(lrs)
    for i, lr in enumerate([0.001, 0.01, 0.1]):
        single = run(lr)
        for x, y in zip(jax.tree_util.tree_leaves(batched), jax.tree_util.tree_leaves(single)):
            np.testing.assert_allclose(np.asarray(x[i]), np.asarray(y), rtol=1e-12, atol=1e-14)


@pytest.mark.parametrize("name", sorted(CASES))
def test_float32_params_stay_float32(name):
    """float32 params (and state) stay float32 under x64, with python-float and float64 lr."""
    rng = np.random.default_rng(6)
    params = to_jax(make_params(rng, np.float32))
    grads = to_jax(make_params(rng, np.float32))
    for opt in [CASES[name][0](), optim.by_name(name, jnp.float64(0.01))]:
        state = opt.init(params)
        p, state = jax.jit(functools.partial(descend, opt))(grads, state, params)
        p, state = descend(opt, grads, state, p)
        for leaf in jax.tree_util.tree_leaves(p):
            assert leaf.dtype == jnp.float32
        for leaf in jax.tree_util.tree_leaves(state)[1:]:
            assert leaf.dtype == jnp.float32
        assert state.step.dtype == jnp.int32


def test_state_carries_through_scan():
    """State is a valid lax.scan carry (dtypes/structure stable across steps)."""
    rng = np.random.default_rng(7)
    params = to_jax(make_params(rng, np.float32))
    grads = jax.tree_util.tree_map(lambda *xs: jnp.stack(xs),
                                   *[to_jax(make_params(rng, np.float32)) for _ in range(4)])
    opt = optim.adamw(optim.cosine(0.01, 4))

    def body(carry, g):
        p, s = descend(opt, g, carry[1], carry[0])
        return (p, s), None

    (p, s), _ = jax.lax.scan(body, (params, opt.init(params)), grads)
    assert int(s.step) == 4 and p[0]["W"].dtype == jnp.float32


# -------------------------------------------------------------------- freeze / l2 / descent

@pytest.mark.parametrize("name", sorted(CASES))
def test_freeze_keeps_frozen_leaves_bit_identical(name):
    """Frozen leaves are bit-identical after several jitted steps (even with weight decay),
    trainable ones move, and frozen leaves' params-shaped state never leaves zero."""
    rng = np.random.default_rng(8)
    params = to_jax(make_params(rng))
    mask = [{"W": False, "b": False}, {"W": True, "b": True}]
    opt = optim.freeze(CASES[name][0](), mask)
    state = opt.init(params)
    update = jax.jit(functools.partial(descend, opt))
    p = params
    for _ in range(5):
        p, state = update(to_jax(make_params(rng)), state, p)
    for k in ("W", "b"):
        assert np.array_equal(np.asarray(p[0][k]), np.asarray(params[0][k]))
        assert not np.allclose(np.asarray(p[1][k]), np.asarray(params[1][k]))
    for sub in state[1:]:
        assert not np.any(np.asarray(sub[0]["W"])) and np.any(np.asarray(sub[1]["W"]))
    assert int(state.step) == 5


def test_freeze_rejects_mismatched_mask():
    """A mask whose structure differs from params raises ValueError."""
    params = to_jax(make_params(np.random.default_rng(9)))
    with pytest.raises(ValueError, match="mask"):
        optim.freeze(optim.sgd(0.1), [{"W": True, "b": True}]).init(params)


def test_l2_penalty_counts_weights_only():
    """l2_penalty = 0.5 * sum W^2 over layers; biases do not contribute."""
    params = make_params(np.random.default_rng(10))
    want = 0.5 * sum(np.sum(layer["W"] ** 2) for layer in params)
    np.testing.assert_allclose(float(optim.l2_penalty(to_jax(params))), want, rtol=1e-13)
    bumped = [dict(layer, b=layer["b"] + 100.0) for layer in params]
    np.testing.assert_allclose(float(optim.l2_penalty(to_jax(bumped))), want, rtol=1e-13)
    g = jax.grad(optim.l2_penalty)(to_jax(params))
    np.testing.assert_allclose(np.asarray(g[0]["W"]), params[0]["W"], rtol=1e-15)
    assert not np.any(np.asarray(g[0]["b"]))


@pytest.mark.parametrize("opt", [optim.sgd(0.1), optim.momentum(0.05), optim.nesterov(0.05),
                                 optim.adam(0.05), optim.adamw(0.05), optim.adam(optim.warmup_cosine(0.1, 5, 200))],
                         ids=["sgd", "momentum", "nesterov", "adam", "adamw", "adam-warmup-cosine"])
def test_decreases_quadratic(opt):
    """200 steps on f(p) = 0.5 * sum(a * (p - c)^2) reduce f by at least 100x."""
    rng = np.random.default_rng(11)
    a = jnp.asarray(rng.uniform(0.5, 2.0, size=(3, 2)))
    c = jnp.asarray(rng.standard_normal((3, 2)))

    def f(params):
        return 0.5 * jnp.sum(a * (params[0]["W"] - c) ** 2) + 0.5 * jnp.sum(params[0]["b"] ** 2)

    params = [{"W": jnp.zeros((3, 2)), "b": jnp.ones(2)}]
    state = opt.init(params)

    @jax.jit
    def step(params, state):
        return descend(opt, jax.grad(f)(params), state, params)

    f0 = float(f(params))
    for _ in range(200):
        params, state = step(params, state)
    assert float(f(params)) < f0 / 100


# ---------------------------------------------------------------- what mutation testing found unpinned
# (docs/mutation.md): schedules read through momentum and scale_by_learning_rate, by_name's weight decay,
# the placement of the zero state, the dtype of decayed gradients, frozen state inside chains.


def _sched(step):
    return 0.1 * (step + 1.0)  # 0.1, 0.2, 0.3, ...: each step's lr tells which step it was


@pytest.mark.parametrize("make", [lambda lr: optim.momentum(lr, momentum=0.0), optim.scale_by_learning_rate,
                                  optim.sgd], ids=["momentum", "scale_by_learning_rate", "sgd"])
def test_schedules_are_read_at_the_step_count(make):
    """A unit gradient three times: the updates are -lr(0), -lr(1), -lr(2) (momentum 0: no carry-over),
    so the step counter starts at 0, moves by one and is what the schedule sees."""
    opt = make(_sched)
    params = {"w": jnp.zeros((2,))}
    state = opt.init(params)
    seen = []
    for _ in range(3):
        updates, state = opt.update({"w": jnp.ones((2,))}, state, params)
        seen.append(float(updates["w"][0]))
    np.testing.assert_allclose(seen, [-0.1, -0.2, -0.3], rtol=1e-12)


def test_by_name_passes_weight_decay_and_refuses_non_strings():
    """An explicit weight_decay reaches adam and adamw (their defaults differ from it); a name that is
    not a string is a ValueError naming the choices, not an AttributeError."""
    params = {"w": jnp.ones((2,))}
    grads = {"w": jnp.zeros((2,))}
    for name in ("adam", "adamw"):
        outs = []
        for wd in (None, 0.5):
            opt = optim.by_name(name, 0.1, weight_decay=wd)
            outs.append(np.asarray(opt.update(grads, opt.init(params), params)[0]["w"]))
        assert not np.array_equal(outs[0], outs[1]), name
    with pytest.raises(ValueError, match="optimizer: unknown optimizer 3; choose one of sgd"):
        optim.by_name(3, 0.1)


def test_stateless_transforms_have_an_empty_state_and_max_norm_names_itself():
    """identity, scale, clip and max_norm keep optax's EmptyState; max_norm without params says so."""
    params = {"W": jnp.ones((2, 2))}
    for t in (optim.identity(), optim.scale(2.0), optim.clip_by_global_norm(1.0), optim.max_norm(1.0)):
        assert isinstance(t.init(params), optim.EmptyState)
    with pytest.raises(ValueError, match="^max_norm needs the params"):
        optim.max_norm(1.0).update(params, optim.EmptyState())


def test_zero_state_lives_where_a_committed_leaf_lives():
    """Momentum's velocity of a leaf committed to a device is committed there too (same sharding); an
    uncommitted leaf's stays uncommitted, so a jitted step sees one placement for both."""
    device = jax.devices()[0]
    committed = {"w": jax.device_put(jnp.ones((3,)), device)}
    velocity = optim.momentum(0.1).init(committed).velocity["w"]
    assert velocity.committed and velocity.sharding == committed["w"].sharding
    assert not optim.momentum(0.1).init({"w": np.ones((3,))}).velocity["w"].committed


def test_decayed_gradients_keep_the_params_dtype_under_x64():
    """float32 params and gradients with a weight decay, in x64 mode: the updates stay float32."""
    params = {"w": jnp.ones((3,), jnp.float32)}
    grads = {"w": jnp.full((3,), 0.5, jnp.float32)}
    for opt in (optim.sgd(0.1, weight_decay=0.1), optim.momentum(0.1, weight_decay=0.1)):
        updates, _ = opt.update(grads, opt.init(params), params)
        assert updates["w"].dtype == jnp.float32


@pytest.mark.parametrize("wrap", [lambda o: o, optim.chain], ids=["bare", "in-a-chain"])
def test_frozen_leaves_keep_their_state_even_when_decay_moves_it(wrap):
    """Weight decay would put wd * p into a frozen leaf's velocity (its gradient is zeroed, not its
    decay): freeze keeps the old (zero) velocity, for a one-leaf mask and inside a chain's tuple state."""
    for params, mask in (({"w": jnp.ones((2,))}, {"w": False}),
                         ({"w": jnp.ones((2,)), "b": jnp.ones((2,))}, {"w": False, "b": True})):
        opt = optim.freeze(wrap(optim.momentum(0.1, weight_decay=0.5)), mask)
        state = opt.init(params)
        grads = jax.tree_util.tree_map(jnp.ones_like, params)
        updates, state = opt.update(grads, state, params)
        velocity = (state[0] if isinstance(state, tuple) and not hasattr(state, "_fields") else state).velocity
        assert not np.any(np.asarray(velocity["w"])) and not np.any(np.asarray(updates["w"]))
        if "b" in velocity:
            np.testing.assert_allclose(np.asarray(velocity["b"]), 1.5)


def test_accumulate_every_one_is_the_optimizer_itself():
    """every=1: each call is a real step, the same updates as the wrapped optimizer's; 0 is refused."""
    params, grads = {"w": jnp.ones((2,))}, {"w": jnp.full((2,), 0.5)}
    plain, acc = optim.sgd(0.1), optim.accumulate(optim.sgd(0.1), 1)
    np.testing.assert_array_equal(np.asarray(acc.update(grads, acc.init(params), params)[0]["w"]),
                                  np.asarray(plain.update(grads, plain.init(params), params)[0]["w"]))
    with pytest.raises(ValueError, match="every must be a positive integer, got 0"):
        optim.accumulate(optim.sgd(0.1), 0)


# ---------------------------------------------------------------- weight decay, coupled and decoupled


DECAYED = {
    "sgd": (lambda: optim.sgd(0.05, weight_decay=0.3), lambda p, gs: ref_sgd(p, gs, 0.05, 0.3)),
    "momentum": (lambda: optim.momentum(0.05, momentum=0.8, weight_decay=0.3),
                 lambda p, gs: ref_momentum(p, gs, 0.05, 0.8, 0.3)),
    "nesterov": (lambda: optim.nesterov(0.05, momentum=0.8, weight_decay=0.3),
                 lambda p, gs: ref_momentum(p, gs, 0.05, 0.8, 0.3, nesterov=True)),
    "adam": (lambda: optim.adam(0.05, b1=0.8, b2=0.9, eps=1e-6, weight_decay=0.3),
             lambda p, gs: ref_adam(p, gs, 0.05, 0.8, 0.9, 1e-6, coupled_wd=0.3)),
    "adamw": (lambda: optim.adamw(0.05, b1=0.8, b2=0.9, eps=1e-6, weight_decay=0.3),
              lambda p, gs: ref_adam(p, gs, 0.05, 0.8, 0.9, 1e-6, decoupled_wd=0.3)),
}


@pytest.mark.parametrize("name", sorted(DECAYED))
def test_weight_decay_is_coupled_except_for_adamw(name):
    """Six steps with weight decay 0.3 match the float64 reference: sgd, momentum, nesterov and adam add
    wd * p to the gradient (coupled L2), adamw subtracts lr * wd * p after Adam's direction (decoupled);
    and the decay matters (the same run without it lands elsewhere)."""
    make_opt, ref = DECAYED[name]
    rng = np.random.default_rng(12)
    params = make_params(rng)
    grads_seq = make_grads_seq(rng)
    got, _ = run_steps(make_opt(), to_jax(params), [to_jax(g) for g in grads_seq])
    for i, layer in enumerate(params):
        for k in ("W", "b"):
            gs = [g[i][k] for g in grads_seq]
            want = ref(layer[k], gs)
            np.testing.assert_allclose(np.asarray(got[i][k]), want, rtol=RTOL, atol=ATOL)
    undecayed, _ = run_steps(optim.by_name(name, 0.05, momentum=0.8, beta1=0.8, beta2=0.9, eps=1e-6, weight_decay=0.0),
                             to_jax(params), [to_jax(g) for g in grads_seq])
    assert not np.allclose(np.asarray(undecayed[0]["W"]), np.asarray(got[0]["W"]), rtol=1e-6)


def test_coupled_and_decoupled_decay_differ_for_adam():
    """adam(weight_decay) and adamw(weight_decay) are different rules: the coupled decay goes through the
    moment estimates (and is normalised by them), the decoupled one does not."""
    rng = np.random.default_rng(13)
    params, grads_seq = to_jax(make_params(rng)), [to_jax(g) for g in make_grads_seq(rng)]
    coupled, _ = run_steps(optim.adam(0.05, weight_decay=0.3), params, grads_seq)
    decoupled, _ = run_steps(optim.adamw(0.05, weight_decay=0.3), params, grads_seq)
    assert not np.allclose(np.asarray(coupled[0]["W"]), np.asarray(decoupled[0]["W"]), rtol=1e-4)


# ---------------------------------------------------------------- the registry: one table of optimizers


def _final_params(name, **hparams):
    """Two steps of the optimizer ``name`` built by by_name from TrainConfig-named hyperparameters."""
    rng = np.random.default_rng(14)
    params, grads_seq = to_jax(make_params(rng)), [to_jax(g) for g in make_grads_seq(rng, 2)]
    return np.concatenate([np.ravel(leaf) for leaf in
                           jax.tree_util.tree_leaves(run_steps(optim.by_name(name, **hparams), params, grads_seq)[0])])


def test_the_registry_is_the_one_table():
    """OPTIMIZERS are the registry's names; each entry's keywords are its constructor's parameters and
    each TrainConfig hyperparameter it names is a TrainConfig hparam (eps aside, which only by_name takes)."""
    import inspect

    from jaxmlp.config import hparam_names
    from jaxmlp.optim.registry import REGISTRY

    assert optim.OPTIMIZERS == tuple(REGISTRY)
    for name, entry in REGISTRY.items():
        assert getattr(optim, name) is entry.make
        parameters = inspect.signature(entry.make).parameters
        assert list(parameters)[0] == "learning_rate" and entry.reads["lr"] == "learning_rate"
        assert set(entry.reads.values()) <= set(parameters), name
        assert set(entry.reads) - {"eps"} <= set(hparam_names()), name


@pytest.mark.parametrize("name", optim.OPTIMIZERS)
def test_unused_settings_are_exactly_the_hyperparameters_the_optimizer_ignores(name):
    """The hand-off from optimizer to config: a TrainConfig hyperparameter changes the optimizer's steps
    exactly when the registry says it reads it and the config does not refuse it as unused; the refusal
    reads as the tests of config pin it."""
    from jaxmlp.config import TrainConfig, unused_settings
    from jaxmlp.optim.registry import readers

    base = dict(lr=0.05, momentum=0.9, beta1=0.9, beta2=0.999, weight_decay=0.01)
    unused = unused_settings({"optimizer": name})
    for hparam, other in (("lr", 0.02), ("momentum", 0.5), ("beta1", 0.5), ("beta2", 0.9), ("weight_decay", 0.2)):
        moved = not np.array_equal(_final_params(name, **base), _final_params(name, **{**base, hparam: other}))
        assert moved == (name in readers(hparam)) == (hparam not in unused), (name, hparam)
        if not moved:
            users = " and ".join(readers(hparam))
            assert unused[hparam] == f"only {users} use it; TrainConfig.optimizer is {name}"
    assert TrainConfig(optimizer=name).resolved_weight_decay == (0.01 if name == "adamw" else 0.0)


@pytest.mark.parametrize("name", optim.OPTIMIZERS)
def test_memory_slots_are_the_state_size_over_the_params_size(name):
    """The memory estimate's optimizer buffers per param equal what the optimizer's init allocates for a
    real params tree (an MLP's list of W/b dicts), counted by jax.eval_shape without computing anything:
    sgd 0, momentum and nesterov 1 (velocity), adam and adamw 2 (mu, nu)."""
    from jaxmlp import memory
    from jaxmlp.model import init_params

    params = jax.eval_shape(lambda: init_params(jax.random.PRNGKey(0), [784, 128, 64, 10]))
    state = jax.eval_shape(optim.by_name(name, 0.1).init, params)
    n_params = sum(leaf.size for leaf in jax.tree_util.tree_leaves(params))
    buffers = [leaf for leaf in jax.tree_util.tree_leaves(state) if leaf.shape]  # the step counter aside
    assert sum(leaf.size for leaf in buffers) % n_params == 0
    assert memory.slots(name) == sum(leaf.size for leaf in buffers) // n_params
    assert memory.slots(name) == {"sgd": 0, "adam": 2, "adamw": 2}.get(name, 1)
