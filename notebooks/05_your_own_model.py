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
# # Your own model, loss and optimizer
#
# The command line trains the networks a `TrainConfig` can name. From Python, `jaxmlp.train` trains
# anything written as pure functions: a loss `loss_fn(params, x, y, key)`, params in any PyTree, and
# an optimizer with `init`/`update` in the ecosystem's protocol (this library's `optim`, or optax's).
# It gives such a model what the built-in MLP gets: compiled chunks of steps, progress inside the
# epoch, Ctrl-C at the exact step, checkpoints with bit-exact resume, and the divergence checks.
#
# Below: a small residual network whose params are a dict, a label-smoothed loss that also reports
# its accuracy, a chained optimizer (clipping, AdamW, a cosine schedule), a checkpoint and a resume,
# and a finite-difference check of a gradient written by hand.

# %%
import tempfile
import time
from pathlib import Path

import jax
import jax.numpy as jnp
import matplotlib.pyplot as plt
import numpy as np

import jaxmlp
from jaxmlp import optim
from jaxmlp.data import DataError

try:
    data = jaxmlp.load_dataset()  # $JAXMLP_DATA_DIR, else the cache (downloaded once)
except DataError as err:  # offline, nothing cached: say what to do, not a traceback
    raise SystemExit(f"MNIST not found: {err}\nSet JAXMLP_DATA_DIR to a folder holding "
                     "the four MNIST files, or run `jaxmlp download --mirror URL` once."
                     ) from None
x = jaxmlp.normalize(jaxmlp.flatten(data.x_train[:20000]))
y = jnp.asarray(data.y_train[:20000].astype(np.int32))
x_test = jaxmlp.normalize(jaxmlp.flatten(data.x_test))
y_test = jnp.asarray(data.y_test.astype(np.int32))
print(x.shape, y.shape, x_test.shape)

# %% [markdown]
# ## 1. A model is params plus a function
#
# A residual block adds a small MLP's output to its input: `h + W2 relu(W1 h)`. The params are a
# dict with a list of blocks inside: any nesting of dicts, lists and tuples is a PyTree, and
# `jax.grad`, the optimizers and the checkpoints all walk it the same way.

# %%
def init_resnet(key, width=128, blocks=2, num_classes=10):
    """{"embed", "blocks": [{"W1", "W2"}...], "head"} for
    784 -> width -> ... -> num_classes."""
    keys = jax.random.split(key, 2 + 2 * blocks)
    glorot = jax.nn.initializers.glorot_normal()
    return {
        "embed": {"W": glorot(keys[0], (784, width)), "b": jnp.zeros(width)},
        "blocks": [{"W1": glorot(keys[2 + 2 * i], (width, width)),
                    "W2": 0.1 * glorot(keys[3 + 2 * i], (width, width))}
                   for i in range(blocks)],
        "head": {"W": glorot(keys[1], (width, num_classes)),
                 "b": jnp.zeros(num_classes)},
    }


def resnet(params, x):
    """Logits (N, 10) for inputs x (N, 784)."""
    h = jax.nn.relu(x @ params["embed"]["W"] + params["embed"]["b"])
    for block in params["blocks"]:
        h = h + jax.nn.relu(h @ block["W1"]) @ block["W2"]
    return h @ params["head"]["W"] + params["head"]["b"]


params = init_resnet(jax.random.PRNGKey(0))
print(jax.tree_util.tree_map(jnp.shape, params))

# %% [markdown]
# ## 2. A loss that reports more than itself
#
# Label smoothing trains against `0.9 * one_hot + 0.01`, which keeps the logits from growing without
# bound. With `has_aux=True` the loss returns `(loss, aux)`; the engine averages each aux scalar over
# the epoch's steps into the history, beside the loss.

# %%
def smoothed_loss(params, x, y, key):
    del key  # no dropout here; the engine passes each step its own key
    logits = resnet(params, x)
    targets = 0.9 * jax.nn.one_hot(y, 10) + 0.01
    return (jaxmlp.cross_entropy(logits, targets),
            {"accuracy": jaxmlp.accuracy(logits, y)})

# %% [markdown]
# ## 3. A chained optimizer
#
# `chain` applies transforms in order to the gradients: here clipping to a global norm of 1, then
# AdamW with a cosine schedule over the run. Each piece is a pair of pure functions, so the chain is
# too, and its state is a PyTree the checkpoint saves like the params.

# %%
epochs, batch_size = 3, 128
steps = epochs * -(-x.shape[0] // batch_size)
opt = optim.chain(optim.clip_by_global_norm(1.0),
                  optim.adamw(optim.cosine(3e-3, steps), weight_decay=1e-4))

# %% [markdown]
# ## 4. Train, stop, resume
#
# The first call trains one epoch and checkpoints it; the second continues the same run to epoch 3
# from the file. Resuming is exact: the data order of every epoch and every step's key are functions
# of the run's key and the step, so the continued run ends where one uninterrupted run would.

# %%
folder = Path(tempfile.mkdtemp())
key = jax.random.PRNGKey(1)
t0 = time.perf_counter()
first = jaxmlp.train(smoothed_loss, params, opt, (x, y), epochs=1,
                     batch_size=batch_size, key=key, has_aux=True, progress=True,
                     checkpoint=str(folder / "resnet.npz"))
resumed = jaxmlp.train(smoothed_loss, params, opt, (x, y), epochs=epochs,
                       batch_size=batch_size, key=key, has_aux=True, progress=True,
                       resume=str(folder / "resnet.npz"))
print(f"trained in {time.perf_counter() - t0:.1f} s")
for record in resumed.history:
    print(f"epoch {record['epoch']}: loss {record['loss']:.4f}, "
          f"train accuracy {record['accuracy']:.2%}")

whole = jaxmlp.train(smoothed_loss, params, opt, (x, y), epochs=epochs,
                     batch_size=batch_size, key=key, has_aux=True)
same = all(np.array_equal(a, b)
           for a, b in zip(jax.tree_util.tree_leaves(whole.params),
                           jax.tree_util.tree_leaves(resumed.params)))
print("resumed run equals the uninterrupted one bit for bit:", same)
print(f"test accuracy: "
      f"{float(jaxmlp.accuracy(resnet(resumed.params, x_test), y_test)):.2%}")

# %% [markdown]
# The history holds the aux metric beside the loss, epoch by epoch, across the stop and the resume.

# %%
fig, (left, right) = plt.subplots(1, 2, figsize=(8, 3))
epoch_axis = [r["epoch"] for r in resumed.history]
left.plot(epoch_axis, [r["loss"] for r in resumed.history], marker="o")
left.set(xlabel="epoch", ylabel="label-smoothed loss", xticks=epoch_axis)
right.plot(epoch_axis, [100 * r["accuracy"] for r in resumed.history], marker="o",
           color="tab:green")
right.set(xlabel="epoch", ylabel="train accuracy (%)", xticks=epoch_axis)
fig.tight_layout()
plt.show()

# %% [markdown]
# ## 5. Checking a gradient written by hand
#
# For the last layer alone the gradient of the plain cross-entropy has a closed form: with
# `p = softmax(h W + b)`, `dW = h^T (p - Y) / N` and `db = mean(p - Y)`. `jaxmlp.gradcheck` holds
# such a function against `jax.grad` and against central finite differences (in float64), on any
# params PyTree; a coordinate whose finite-difference step would cross a kink (a ReLU switching) is
# re-stepped or skipped, and counted, rather than reported as a wrong gradient.

# %%
with jaxmlp.engine.precision("float64"):
    features = jax.nn.relu(jnp.asarray(x[:64], jnp.float64)
                           @ jnp.asarray(resumed.params["embed"]["W"], jnp.float64))
    head = jax.tree_util.tree_map(lambda a: jnp.asarray(a, jnp.float64),
                                  resumed.params["head"])

    def head_loss(head, h, y):
        return jaxmlp.cross_entropy(h @ head["W"] + head["b"], y)

    def head_grad(head, h, y):
        delta = jax.nn.softmax(h @ head["W"] + head["b"]) - jax.nn.one_hot(y, 10)
        return {"W": h.T @ delta / h.shape[0], "b": jnp.mean(delta, axis=0)}

    report = jaxmlp.gradcheck(head_loss, head, features, y[:64], grad_fn=head_grad)
print(f"gradient check passed: {report.passed} ({report.checked} coordinates compared "
      f"with finite differences, {report.restepped} re-stepped, "
      f"{report.skipped} skipped)")
for row in report.rows:
    print(f"{row.name:6} {str(row.shape):10} "
          f"hand-written vs jax.grad {row.manual_vs_autodiff:.1e}, "
          f"vs finite differences {row.manual_vs_fd:.1e}")
