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
# # MNIST from scratch, with jaxmlp
#
# This notebook retells the classic NumPy MNIST notebook (load the IDX files, preprocess, build a
# 784-128-64-10 network, forward pass, cross-entropy, hand-written backprop, SGD, training,
# evaluation) using jaxmlp's pure functions. Nothing is global: parameters go into a function and
# new parameters come out.
#
# Where we compare with numbers the original notebook printed we work in float64, as NumPy did;
# training runs in float32, the library's default.

# %%
import struct
import tempfile
from pathlib import Path

import jax
import jax.numpy as jnp
import matplotlib.pyplot as plt
import numpy as np
from IPython.display import Image, display

# float64 available; arrays stay float32 unless asked
jax.config.update("jax_enable_x64", True)
import jaxmlp
from jaxmlp import plots, steps
from jaxmlp.data import DataError
from jaxmlp.engine import (
    epoch_loss,
    epoch_order,
    init_state,
    run_chunk,
    steps_per_epoch,
)
from jaxmlp.evaluation import predict_labels
from jaxmlp.runs import TrainSpec, make_optimizer

print("jax", jax.__version__, "on", jax.default_backend(),
      "| jaxmlp", jaxmlp.__version__)

# %% [markdown]
# ## 1. Loading the data
#
# MNIST comes as four IDX files: training images and labels, test images and labels.
# `jaxmlp.load_dataset` finds them the way the `jaxmlp` command does: a folder given as its argument,
# else `$JAXMLP_DATA_DIR`, else jaxmlp's cache (`~/.cache/jaxmlp/mnist`), which it fills from a
# mirror on first use and checks against MNIST's published SHA-256 sums. It reads all four files and
# checks they belong together (matching counts, labels in range). Following the usual convention,
# inputs are `x` and labels `y`.

# %%
try:
    data = jaxmlp.load_dataset()
except DataError as err:  # offline, nothing cached: say what to do, not a traceback
    raise SystemExit(f"MNIST not found: {err}\nSet JAXMLP_DATA_DIR to a folder holding "
                     "MNIST's four IDX files, or fetch them once with `jaxmlp download "
                     "--mirror URL`, then run this notebook again.") from None
for name, array in data._asdict().items():
    print(f"{name:8s} {str(array.shape):16s} {array.dtype}")
print("MNIST loaded.")

# %% [markdown]
# An IDX file is a 16-byte header for the images (magic number, count, rows, columns, all big-endian
# uint32), 8 bytes for the labels, then the raw uint8 values; the files may be gzipped, which jaxmlp
# detects from the first two bytes. To see the header the original notebook unpacked with
# `struct.unpack(">IIII", ...)`, write the training images back out with `jaxmlp.data.write_idx`:
# `jaxmlp.data.read_idx` parses the header (and checks it against the file size) for us.

# %%
with tempfile.TemporaryDirectory() as tmp:
    images_file = Path(tmp) / "train-images.idx"
    jaxmlp.data.write_idx(images_file, data.x_train)
    with open(images_file, "rb") as f:
        magic, num, rows, cols = struct.unpack(">IIII", f.read(16))
    train_images = jaxmlp.data.read_idx(images_file)
print(f"magic 0x{magic:08X} (0x08 = uint8, 3 dimensions), "
      f"{num} images of {rows}x{cols}")
same = np.array_equal(train_images, data.x_train)
print("read_idx:", train_images.shape, train_images.dtype, "| the same images:", same)

# %% [markdown]
# ## 2. Preprocessing
#
# Three steps, each a pure function that returns a new array:
#
# * **flatten** each 28x28 image into a 784-vector,
# * **normalize** pixels from 0..255 to 0..1 (float32, bit-for-bit NumPy's `astype(float32) / 255`),
# * **one-hot** encode the labels: 7 becomes `[0 0 0 0 0 0 0 1 0 0]`.

# %%
x_train = jaxmlp.flatten(data.x_train)
x_test = jaxmlp.flatten(data.x_test)
print(x_train.shape)
print(x_test.shape)

# %%
x_train = jaxmlp.normalize(x_train)
x_test = jaxmlp.normalize(x_test)
print(x_train.dtype, float(x_train.min()), float(x_train.max()))
print(x_test.dtype, float(x_test.min()), float(x_test.max()))

# %%
y_train = jaxmlp.one_hot(data.y_train)
y_test = jaxmlp.one_hot(data.y_test)
print(y_train.shape)
print(y_test.shape)
print("label", data.y_test[0], "->", y_test[0])

# %% [markdown]
# ## 3. The network's parameters
#
# The parameters are a plain list with one `{"W": (fan_in, fan_out), "b": (fan_out,)}` dict per
# layer. Biases are 1-D and broadcast over the batch, where the original stored them as `(1, n)`.
#
# `init_params_numpy(42, sizes)` makes the original notebook's exact draw: `np.random.seed(42)`,
# then `np.random.randn(fan_in, fan_out) * 0.01` for W1, W2, W3 in that order, zero biases.

# %%
sizes = [784, 128, 64, 10]
params = jaxmlp.model.init_params_numpy(42, sizes)  # float64, like NumPy
for i, layer in enumerate(params, start=1):
    print(f"W{i} shape: {layer['W'].shape}   b{i} shape: {layer['b'].shape}   "
          f"dtype: {layer['W'].dtype}")

# %% [markdown]
# The JAX-native way draws from an explicit PRNG key instead of NumPy's global generator: the same
# key always gives the same parameters, and nothing else in the program can disturb the stream.

# %%
key_params = jaxmlp.init_params(jax.random.PRNGKey(42), sizes, scheme="notebook")
print([layer["W"].shape for layer in key_params], key_params[0]["W"].dtype)
print(f"std of W1: {float(jnp.std(key_params[0]['W'])):.5f} "
      "(scheme 'notebook' is N(0, 1) * 0.01)")

# %% [markdown]
# ## 4. Forward pass
#
# Each hidden layer computes `Z = A_prev @ W + b` then `A = relu(Z)`; the last layer's `Z` (the
# logits) goes through softmax to give probabilities. `jaxmlp.forward(params, x)` returns the
# logits. We feed the first five training images, cast to float64 so the numbers can be held
# against the original notebook's.

# %%
x5 = x_train[:5].astype(jnp.float64)
y5 = y_train[:5].astype(jnp.float64)
probs = jaxmlp.model.softmax(jaxmlp.forward(params, x5))
print("Predictions (Softmax Output):\n", np.asarray(probs))
print("Sum of each row (should be 1):", np.asarray(jnp.sum(probs, axis=1)))

# %% [markdown]
# Every probability is close to 0.1: with weights this small the untrained network has no
# opinion yet.
#
# ## 5. Loss
#
# The original used `-sum(Y * log(p + 1e-8)) / m`; `jaxmlp.losses.notebook_loss` is that formula.
# With the same data, the same initial weights and float64 it gives the original's printed value
# to the last digit. Training uses `jaxmlp.loss`, the same cross-entropy computed from the logits
# with log-softmax, which stays finite however confident the model gets.

# %%
seed_printed = 2.302670109823364  # the original notebook's output
nb_loss = float(jaxmlp.losses.notebook_loss(params, x5, y5))
print("Cross-Entropy Loss:", nb_loss)
print("same as the original notebook:", nb_loss == seed_printed)
print("log-softmax loss:  ", float(jaxmlp.loss(params, x5, y5)))

# %% [markdown]
# ## 6. Backpropagation, by hand and by `jax.grad`
#
# The chain rule, layer by layer from the output back: `dZ_L = softmax - Y`,
# `dW = A_prev.T @ dZ / m`, `db = sum(dZ) / m`, `dZ_prev = (dZ @ W.T) * [Z_prev > 0]`.
# `jaxmlp.manual_grad` is exactly that recurrence, for any depth. `jax.grad(jaxmlp.loss)`
# derives the same gradient automatically from the forward pass. Both are pure functions of
# arrays, so `jax.jit` compiles either one. In float64 the two agree to round-off.

# %%
manual = jax.jit(jaxmlp.manual_grad)(params, x5, y5)
auto = jax.jit(jax.grad(jaxmlp.loss))(params, x5, y5)
worst = 0.0
for i, (gm, ga) in enumerate(zip(manual, auto), start=1):
    for name in ("W", "b"):
        err = jaxmlp.max_relative_error(gm[name], ga[name])
        worst = max(worst, err)
        print(f"d{name}{i} shape: {str(gm[name].shape):11s} "
              f"max relative error manual vs jax.grad: {err:.1e}")
print(f"max relative error (manual vs jax.grad, float64): {worst:.3e}")

# %% [markdown]
# ## 7. One gradient-descent step
#
# `W <- W - lr * dL/dW` for every parameter. `jaxmlp.steps.sgd_step` is that update, compiled with
# `jax.jit`; it returns new parameters (the old ones are untouched) and the batch's loss. The
# original notebook took one such step with lr 0.01 on the same five images and printed how much
# W1 moved.

# %%
new_params, batch_loss = steps.sgd_step(params, x5, y5, 0.01)
change = float(jnp.sum(jnp.abs(new_params[0]["W"] - params[0]["W"])))
print("W1 change:", change)
print("original notebook printed: 0.020560581875656167")
fresh = jaxmlp.model.init_params_numpy(42, sizes)
print("old params untouched:", bool(jnp.all(params[0]["W"] == fresh[0]["W"])))

# %% [markdown]
# ## 8. Training, compiled
#
# The original looped over minibatches in Python. Here the whole state of a run is one PyTree,
# `TrainState(params, opt_state, key, epoch, step)`, and a **compiled chunk** (`jaxmlp.train.run_chunk`)
# advances it by up to a few hundred minibatch updates with `lax.fori_loop`, returning the
# per-batch losses. Epoch `e`'s order is a pure function of the run's key and `e`, so any step can
# be addressed (this is how `jaxmlp train` stops on Ctrl-C at a chunk boundary and resumes bit
# for bit). State goes in and comes out, explicitly.
#
# We train the original's best experiment (SGD, lr 0.1, batch 32) in float32, but only for three
# epochs so the notebook stays quick; `jaxmlp train` runs the full ten.

# %%
epochs = 3
spec = TrainSpec(batch_size=32)               # static: changing it recompiles
hparams = jaxmlp.config.hparams(None, lr=0.1)        # traced: changing it does not
params = jaxmlp.init_params(jax.random.PRNGKey(42), sizes)  # float32
state = init_state(params, make_optimizer(spec, hparams), jax.random.PRNGKey(0))
x, y = x_train, jnp.asarray(data.y_train, jnp.int32)  # integer labels work too
steps = steps_per_epoch(x.shape[0], spec.batch_size)  # 1875
chunk = 625                                           # three chunks per epoch

batch_losses = []
while int(state.epoch) < epochs:
    order = epoch_order(state.key, state.epoch, x.shape[0])
    losses = []
    for _ in range(steps // chunk):
        state, out = run_chunk(state, order, x, y, hparams, jnp.int32(chunk),
                               spec=spec, capacity=chunk)
        losses.append(np.asarray(out))
    batch_losses.append(np.concatenate(losses))
    mean = epoch_loss(batch_losses[-1], x.shape[0], 32)
    print(f"Epoch {int(state.epoch)}/{epochs} - Loss: {mean:.4f}")
params = state.params

# %% [markdown]
# ## 9. Evaluation
#
# `jaxmlp.evaluate` runs the forward pass over the 10,000 test images the model never saw and
# returns the mean loss and the accuracy.

# %%
test_loss, test_acc = jaxmlp.evaluate(jaxmlp.MLP(), params, x_test,
                                      jnp.asarray(data.y_test, jnp.int32))
print(f"Test Loss: {test_loss:.4f}")
print(f"Test Accuracy: {test_acc * 100:.2f}%")

# %% [markdown]
# ## 10. Pictures
#
# The loss of every minibatch (faint) and its running mean, then the first test digits with the
# model's guesses (red where wrong).

# %%
curve = np.concatenate(batch_losses)
steps_per_epoch = len(batch_losses[0])
window = 100
smooth = np.convolve(curve, np.ones(window) / window, mode="valid")

fig, ax = plt.subplots(figsize=(7, 3.2))
ax.plot(np.arange(len(curve)) / steps_per_epoch, curve, alpha=0.25, lw=0.6,
        label="minibatch loss")
ax.plot((np.arange(len(smooth)) + window - 1) / steps_per_epoch, smooth,
        label=f"mean of {window}")
ax.set(xlabel="epoch", ylabel="cross-entropy", yscale="log", title="Training loss")
ax.legend()
plt.show()

# %%
preds = predict_labels(jaxmlp.MLP(), params, x_test)
fig, axes = plt.subplots(2, 8, figsize=(9, 2.8))
for i, ax in enumerate(axes.flat):
    ax.imshow(data.x_test[i], cmap="gray_r")
    wrong = preds[i] != data.y_test[i]
    ax.set_title(f"pred {preds[i]}" + (f"\ntrue {data.y_test[i]}" if wrong else ""),
                 color="red" if wrong else "black", fontsize=9)
    ax.axis("off")
fig.tight_layout()
plt.show()

# %% [markdown]
# `jaxmlp.plots` draws the same pictures the CLI writes with `--plot-dir`, as PNG files. Here is
# the confusion matrix: rows are true digits, columns predictions.

# %%
with tempfile.TemporaryDirectory() as tmp:
    png = plots.plot_confusion(data.y_test, preds, Path(tmp) / "confusion.png")
    display(Image(filename=str(png), width=420))

# %% [markdown]
# ## 11. The same from the command line
#
# ```bash
# jaxmlp download                 # fetch and verify MNIST into ~/.cache/jaxmlp/mnist
# jaxmlp train                    # 784-128-64-10, SGD lr 0.1, batch 32, 10 epochs
# jaxmlp train --plot-dir plots/  # also curves, confusion matrix, mistakes, W1 images
# jaxmlp train --notebook-exact --lr 0.01 --replay-notebook-step
#                                 # float64, NumPy's seed-42 weights and shuffles, the
#                                 # original's loss formula and its one test step first
# jaxmlp gradcheck                # manual backprop vs jax.grad vs finite differences
# ```
#
# `--notebook-exact` follows the original notebook's arithmetic step by step; the default mode
# trains the same model much faster. Notebook 02 looks closer at the gradients.
