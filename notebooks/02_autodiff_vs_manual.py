# ---
# jupyter:
#   jupytext:
#     formats: ipynb,py:percent
#   kernelspec:
#     display_name: Python 3
#     language: python
#     name: python3
# ---

# %% [markdown]
# # Autodiff vs manual backprop
#
# The original notebook derived its gradients by hand. JAX can derive them from the forward pass
# (`jax.grad`). Here we hold the two against each other and against a third witness that shares
# no code with either, central finite differences, all in float64. Then: the one place where
# "the derivative of ReLU" is a choice, networks of other depths, and what each costs at run time.

# %%
import time

import jax
import jax.numpy as jnp
import matplotlib.pyplot as plt
import numpy as np

jax.config.update("jax_enable_x64", True)
import jaxmlp
from jaxmlp import model
from jaxmlp.data import DataError

try:
    # $JAXMLP_DATA_DIR, else jaxmlp's cache (downloaded there on first use)
    data = jaxmlp.load_dataset()
except DataError as err:  # offline, nothing cached: say what to do, not a traceback
    raise SystemExit(f"MNIST not found: {err}\nSet JAXMLP_DATA_DIR to a folder holding "
                     "MNIST's four IDX files, or fetch them once with `jaxmlp download "
                     "--mirror URL`, then run this notebook again.") from None
# a batch of 64, float64:
x = jaxmlp.normalize(jaxmlp.flatten(data.x_train[:64]), jnp.float64)
y = jnp.asarray(data.y_train[:64], jnp.int32)
print(x.shape, x.dtype, y.shape)

# %% [markdown]
# ## 1. Three gradients, side by side
#
# He initialisation gives every layer gradients of a healthy size (the original's `* 0.01`
# weights make the first layers' gradients tiny). For each parameter we compute
#
# * **manual**: `jaxmlp.manual_grad`, the original's backprop recurrence,
# * **autodiff**: `jax.grad(jaxmlp.loss)`,
# * **finite differences**: `(L(p + eps) - L(p - eps)) / (2 eps)` with `eps = 1e-4`, on 20
#   random coordinates of each parameter (two forward passes per coordinate, so not all
#   109,386 of them),
#
# and report the worst relative error between each pair. `jaxmlp.backprop.gradcheck_mlp(params, x, y)` returns
# the same table in one call (its finite differences also re-step or skip any coordinate whose step
# would cross a ReLU kink, and count them), `jaxmlp.gradcheck(loss_fn, params, *args, grad_fn=...)`
# checks any loss and any hand-written gradient, and `jaxmlp gradcheck` prints the table from the
# command line.

# %%
manual_fn = jax.jit(jaxmlp.manual_grad)
autodiff_fn = jax.jit(jax.grad(jaxmlp.loss))

def compare(params, max_coords=20):
    """Rows (name, shape, manual vs autodiff, manual vs FD, autodiff vs FD) of max
    relative errors."""
    manual, auto = manual_fn(params, x, y), autodiff_fn(params, x, y)
    fd, mask = jaxmlp.backprop.finite_difference_grad(
        lambda p: jaxmlp.loss(p, x, y), params, eps=1e-4, max_coords=max_coords)
    rows = []
    for i in range(len(params)):
        for name in ("W", "b"):
            m, a = manual[i][name], auto[i][name]
            d, k = fd[i][name], mask[i][name]
            # Entries below 1e-8 are compared in absolute terms: there the finite
            # difference's own error (~1e-12) would dominate a ratio.
            rows.append((f"{name}{i + 1}", m.shape, jaxmlp.max_relative_error(m, a),
                         jaxmlp.max_relative_error(m, d, k, floor=1e-8),
                         jaxmlp.max_relative_error(a, d, k, floor=1e-8)))
    return rows

sizes = [784, 128, 64, 10]
params = jaxmlp.init_params(jax.random.PRNGKey(0), sizes, scheme="he",
                            dtype=jnp.float64)
rows = compare(params)
print(f"{'param':6s} {'shape':11s} {'manual vs autodiff':>19s} {'manual vs FD':>13s} "
      f"{'autodiff vs FD':>15s}")
for name, shape, ad, mfd, afd in rows:
    print(f"{name:6s} {str(shape):11s} {ad:19.1e} {mfd:13.1e} {afd:15.1e}")
worst_ad = max(r[2] for r in rows)
worst_fd = max(max(r[3], r[4]) for r in rows)
print(f"worst: manual vs autodiff {worst_ad:.1e}, "
      f"against finite differences {worst_fd:.1e}")

# %% [markdown]
# Manual and autodiff agree to float64 round-off (1e-12 or better): the same arithmetic, at most
# done in a different order; once XLA has compiled and simplified both, they may even come out
# bit-for-bit identical. Finite differences agree to 1e-6 or better, which is their own accuracy:
# a truncation error of order `eps**2` plus round-off of order `1e-16 / eps` in the loss, about
# 1e-12 in absolute terms, which shows up as a larger relative error on the smallest entries.
#
# A few individual entries, to see the digits:

# %%
manual = manual_fn(params, x, y)
auto = autodiff_fn(params, x, y)
loss_fn = jax.jit(jaxmlp.loss)

def central_difference(layer, name, index, eps=1e-4):
    def shifted(delta):
        p = [dict(layer_params) for layer_params in params]
        p[layer][name] = p[layer][name].at[index].add(delta)
        return float(loss_fn(p, x, y))
    return (shifted(eps) - shifted(-eps)) / (2 * eps)

pixel = int(np.argmax(np.asarray(x).sum(axis=0)))  # a pixel that is ink in many images
print(f"{'entry':10s} {'manual':>22s} {'autodiff':>22s} {'finite difference':>22s}")
for layer, name, index in [(0, "W", (pixel, 3)), (1, "b", (5,)), (2, "W", (7, 2))]:
    label = f"{name}{layer + 1}{list(index)}"
    m, a = float(manual[layer][name][index]), float(auto[layer][name][index])
    estimate = central_difference(layer, name, index)
    print(f"{label:10s} {m:22.15e} {a:22.15e} {estimate:22.15e}")

# %% [markdown]
# ## 2. ReLU at exactly zero
#
# ReLU has a kink at 0, so its derivative there is a convention. Three candidates:
#
# * `jnp.maximum(0, z)`: JAX splits a tie between the two arguments and gives **0.5**,
# * `jaxmlp.model.relu` (`jnp.where(z > 0, z, 0)`): **0**,
# * the original notebook's mask `Z > 0`: **0**.

# %%
z = jnp.array([-1.0, 0.0, 2.0])
d_maximum = jax.grad(lambda v: jnp.sum(jnp.maximum(0.0, v)))(z)
d_model = jax.grad(lambda v: jnp.sum(model.relu(v)))(z)
d_mask = (z > 0).astype(z.dtype)
print(f"{'z':>24s}: {np.asarray(z)}")
print(f"{'jax.grad of jnp.maximum':>24s}: {np.asarray(d_maximum)}")
print(f"{'jax.grad of model.relu':>24s}: {np.asarray(d_model)}")
print(f"{'notebook mask Z > 0':>24s}: {np.asarray(d_mask)}")

# %% [markdown]
# Does it matter? Only when a pre-activation is exactly 0, which is rare with random weights but
# easy to provoke: an all-black image with zero biases makes every hidden `Z` exactly 0. The
# hand-derived gradient then says no hidden unit is active, so the hidden biases get no
# gradient. `jax.grad` through a `jnp.maximum` forward pass gives every such unit half a
# gradient, so `b1` and `b2` disagree completely; through `model.relu` everything agrees.

# %%
def loss_with_maximum(params, x, y):
    h = x
    for layer in params[:-1]:
        h = jnp.maximum(0.0, h @ layer["W"] + layer["b"])
    return jaxmlp.cross_entropy(h @ params[-1]["W"] + params[-1]["b"], y)

blank, label = jnp.zeros((1, 784), jnp.float64), jnp.array([3])
reference = manual_fn(params, blank, label)
with_relu = autodiff_fn(params, blank, label)
with_maximum = jax.jit(jax.grad(loss_with_maximum))(params, blank, label)
print(f"{'param':6s} {'model.relu':>11s} {'jnp.maximum':>12s}   "
      "(max relative error vs manual_grad)")
for i in range(len(params)):
    for name in ("W", "b"):
        ok = jaxmlp.max_relative_error(reference[i][name], with_relu[i][name])
        bad = jaxmlp.max_relative_error(reference[i][name], with_maximum[i][name])
        print(f"{name}{i + 1:<5d} {ok:11.1e} {bad:12.1e}")

# %% [markdown]
# ## 3. Any depth
#
# `manual_grad` runs the same recurrence for any number of layers, from one layer (softmax
# regression, no ReLU at all) to four. Each row checks a fresh network with the three-way
# comparison of section 1 (10 finite-difference coordinates per parameter).

# %%
print(f"{'layers':>6s}  {'sizes':26s} {'params':>7s} {'manual vs autodiff':>19s} "
      f"{'vs FD':>8s}")
for depth in range(1, 5):
    depth_sizes = [784] + [64] * (depth - 1) + [10]
    p = jaxmlp.init_params(jax.random.PRNGKey(depth), depth_sizes, scheme="he",
                           dtype=jnp.float64)
    rows = compare(p, max_coords=10)
    count = sum(leaf.size for leaf in jax.tree_util.tree_leaves(p))
    ad = max(r[2] for r in rows)
    fd = max(max(r[3], r[4]) for r in rows)
    print(f"{depth:6d}  {str(depth_sizes):26s} {count:7d} {ad:19.1e} {fd:8.1e}")

# %% [markdown]
# ## 4. What each costs
#
# Both gradients compiled with `jax.jit` for the 784-128-64-10 network in float32 (the training
# dtype), timed after a warm-up call so compilation is excluded; each number is the best of
# 15 repeats, the two functions taking turns. XLA sees two descriptions of nearly the same
# computation, so expect similar times; the numbers are those of the machine that runs the cell,
# and they move with its load. The last column is the largest difference between the two float32
# gradients.

# %%
# section 1's network, in float32:
params32 = jax.tree_util.tree_map(lambda a: a.astype(jnp.float32), params)
x32 = jaxmlp.normalize(jaxmlp.flatten(data.x_train[:1024]))
y32 = jnp.asarray(data.y_train[:1024], jnp.int32)
grad_fns = {"manual": jax.jit(jaxmlp.manual_grad),
            "autodiff": jax.jit(jaxmlp.backprop.autodiff_grad)}

def best_times(fns, xb, yb, repeats=15, target_s=0.02):
    """Best-of-`repeats` seconds per call of each function; the functions take turns,
    so a burst of load on a shared machine hits both alike."""
    calls = {}
    for name, f in fns.items():
        jax.block_until_ready(f(params32, xb, yb))  # warm-up (compiles the first time)
        t0 = time.perf_counter()
        jax.block_until_ready(f(params32, xb, yb))
        calls[name] = max(1, int(target_s / (time.perf_counter() - t0)))
    best = {name: float("inf") for name in fns}
    for _ in range(repeats):
        for name, f in fns.items():
            t0 = time.perf_counter()
            for _ in range(calls[name]):
                out = f(params32, xb, yb)
            jax.block_until_ready(out)
            best[name] = min(best[name], (time.perf_counter() - t0) / calls[name])
    return best

batch_sizes = [32, 256, 1024]
times = {name: [] for name in grad_fns}
print(f"{'batch':>6s} {'manual (us)':>12s} {'autodiff (us)':>14s} {'ratio':>6s}  "
      "max |difference|")
for bs in batch_sizes:
    xb, yb = x32[:bs], y32[:bs]
    for name, seconds in best_times(grad_fns, xb, yb).items():
        times[name].append(seconds * 1e6)
    diff = max(float(jnp.max(jnp.abs(a - b))) for a, b in zip(
        jax.tree_util.tree_leaves(grad_fns["manual"](params32, xb, yb)),
        jax.tree_util.tree_leaves(grad_fns["autodiff"](params32, xb, yb))))
    m, a = times["manual"][-1], times["autodiff"][-1]
    print(f"{bs:6d} {m:12.1f} {a:14.1f} {a / m:6.2f}  {diff:.1e}")

# %%
fig, ax = plt.subplots(figsize=(6, 3.2))
width = 0.38
pos = np.arange(len(batch_sizes))
for k, (name, values) in enumerate(times.items()):
    # per example: comparable across batch sizes
    per_example = np.array(values) / np.array(batch_sizes)
    ax.bar(pos + (k - 0.5) * width, per_example, width, label=name)
ax.set_xticks(pos, [str(b) for b in batch_sizes])
ax.set(xlabel="batch size", ylabel="microseconds per example",
       title="Jitted gradient, 784-128-64-10, float32, CPU")
ax.legend()
plt.show()

# %% [markdown]
# The hand-derived backprop earns its place as a readable statement of the math and as a second
# opinion on `jax.grad`, not as a speed-up: once compiled, the two cost about the same.
# `jaxmlp train --grad manual` trains with it.
