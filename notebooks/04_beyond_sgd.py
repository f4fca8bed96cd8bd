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
# # Beyond plain SGD
#
# The original notebook ends with a list of ways to do better than its 784-128-64-10 network
# trained by plain gradient descent: other optimizers, regularization, dropout, data
# augmentation, convolutional networks, transfer learning. jaxmlp implements each one as a small
# pure function. This notebook tries them, on subsets of MNIST and for a few epochs only, so that
# it runs in about a minute on a laptop CPU: the numbers show the effects, not the best accuracy
# each method can reach. The command line runs the full recipes.

# %%
import time
from typing import NamedTuple

import jax
import jax.numpy as jnp
import matplotlib.pyplot as plt
import numpy as np

import jaxmlp
from jaxmlp import augment, cnn, model, optim, transfer
from jaxmlp.data import DataError

notebook_start = time.perf_counter()

try:
    # $JAXMLP_DATA_DIR, else jaxmlp's cache (downloaded there on first use)
    data = jaxmlp.load_dataset()
except DataError as err:  # offline, nothing cached: say what to do, not a traceback
    raise SystemExit(f"MNIST not found: {err}\nSet JAXMLP_DATA_DIR to a folder holding "
                     "MNIST's four IDX files, or fetch them once with `jaxmlp download "
                     "--mirror URL`, then run this notebook again.") from None
# all 10,000 test images, float32:
x_test = jaxmlp.normalize(jaxmlp.flatten(data.x_test))
y_test = jnp.asarray(data.y_test, jnp.int32)
print("train", data.x_train.shape, "test", data.x_test.shape)

# %% [markdown]
# ## 1. Optimizers
#
# An optimizer in `jaxmlp.optim` is a pair of pure functions: `init(params) -> state` and
# `update(grads, state, params) -> (updates, state)`, the updates added to the params by
# `optim.apply_updates` (optax's protocol, so the two libraries' optimizers mix). The state
# (momentum buffers, Adam's moment estimates, a step counter) is an ordinary PyTree that goes in
# and comes out, like the params.
# So one training loop serves every optimizer, and nothing stops it from training several
# networks at once. The loop below compiles a whole epoch into one program with `lax.scan`, as
# `jaxmlp.engine.fused_epoch` does, and takes one step of every run on each minibatch. (It also
# knows dropout, for section 3.)

# %%
class Run(NamedTuple):
    """One network to train: its optimizer, its starting params, its dropout rate."""
    optimizer: optim.Optimizer
    params: list
    dropout: float = 0.0


def train(runs, x, y, *, epochs, key, batch_size=32):
    """Train every Run of the dict `runs` side by side, one step each on every
    minibatch. Returns ({name: params}, {name: per-step losses (steps,)}). The images
    left over when batch_size doesn't divide len(x) sit out that epoch."""
    @jax.jit
    def one_epoch(params, states, key, x, y):
        shuffle_key, dropout_key = jax.random.split(key)
        n = x.shape[0] // batch_size * batch_size
        order = jax.random.permutation(shuffle_key, x.shape[0])
        batches = order[:n].reshape(-1, batch_size)
        step_keys = jax.random.split(dropout_key, batches.shape[0])

        def step(carry, inputs):
            (params, states), (idx, step_key) = carry, inputs
            new_params, new_states, losses = {}, {}, {}
            for name, run in runs.items():
                # dropout bound now: the loop moves on to the next run
                def loss(p, dropout=run.dropout):
                    logits = jaxmlp.forward(p, x[idx], key=step_key, dropout=dropout)
                    return jaxmlp.cross_entropy(logits, y[idx])
                losses[name], grads = jax.value_and_grad(loss)(params[name])
                updates, new_states[name] = run.optimizer.update(grads, states[name],
                                                                 params[name])
                new_params[name] = optim.apply_updates(params[name], updates)
            return (new_params, new_states), losses

        (params, states), losses = jax.lax.scan(step, (params, states),
                                                (batches, step_keys))
        return params, states, losses

    params = {name: run.params for name, run in runs.items()}
    states = {name: run.optimizer.init(run.params) for name, run in runs.items()}
    curves = {name: [] for name in runs}
    for epoch_key in jax.random.split(key, epochs):
        params, states, losses = one_epoch(params, states, epoch_key, x, y)
        for name in runs:
            curves[name].append(np.asarray(losses[name]))
    return params, {name: np.concatenate(c) for name, c in curves.items()}

# %% [markdown]
# We train the notebook's network, with its own initialisation (`N(0, 1) * 0.01`), on the first
# 12,800 training images for two epochs (800 steps of 32 images), once per optimizer, all from
# the same initial weights and on the same minibatches. Each gets a usual learning rate:
# 0.1 for SGD (the notebook's best); 0.01 for momentum and Nesterov, because with `beta = 0.9`
# their steady step is `lr / (1 - beta) = 0.1`, the same as SGD's; 1e-3 for Adam and AdamW.

# %%
x_small = jaxmlp.normalize(jaxmlp.flatten(data.x_train[:12800]))
y_small = jnp.asarray(data.y_train[:12800], jnp.int32)
sizes = [784, 128, 64, 10]
init = jaxmlp.init_params(jax.random.PRNGKey(0), sizes, scheme="notebook")
# the model these params belong to: evaluate scores them through it
mlp = jaxmlp.MLP(hidden=(128, 64))

settings = {"sgd": "lr 0.1", "momentum": "lr 0.01, beta 0.9",
            "nesterov": "lr 0.01, beta 0.9", "adam": "lr 1e-3",
            "adamw": "lr 1e-3, weight decay 0.01"}
runs = {
    "sgd": Run(optim.sgd(0.1), init),
    "momentum": Run(optim.momentum(0.01, momentum=0.9), init),
    "nesterov": Run(optim.nesterov(0.01, momentum=0.9), init),
    "adam": Run(optim.adam(1e-3), init),
    "adamw": Run(optim.adamw(1e-3, weight_decay=0.01), init),
}
trained, curves = train(runs, x_small, y_small, epochs=2, key=jax.random.PRNGKey(1))
print(f"{'optimizer':10s} {'settings':27s} {'loss, first 100 steps':>21s} "
      f"{'last 100':>9s} {'test accuracy':>14s}")
for name in runs:
    _, acc = jaxmlp.evaluate(mlp, trained[name], x_test, y_test)
    print(f"{name:10s} {settings[name]:27s} {curves[name][:100].mean():21.3f} "
          f"{curves[name][-100:].mean():9.3f} {acc:13.2%}")

# %%
window = 25
fig, ax = plt.subplots(figsize=(7, 3.5))
for name, curve in curves.items():
    smooth = np.convolve(curve, np.ones(window) / window, mode="valid")
    ax.plot(np.arange(window, len(curve) + 1), smooth, label=name, lw=1.4,
            ls="--" if name == "adamw" else "-")  # adamw lies on top of adam
ax.set(xlabel="step (minibatch of 32)", ylabel="training loss (mean of 25 steps)",
       yscale="log", title="Five optimizers, same network, same data")
ax.legend()
plt.show()

# %% [markdown]
# With weights this small the first gradients are tiny too, so SGD and the two momentum methods
# spend about 300 steps on the `log(10) = 2.30` plateau, where the network still gives every class
# probability 0.1 (the original notebook's runs with lr 0.001 never left it). Adam divides each
# coordinate's step by a running estimate of that gradient's size, so its steps are about `lr`
# in size from the first update on, however small the gradients, and it leaves the plateau at
# once. After the plateau the others fall about as fast, but 800 steps are not enough to catch
# up. With He initialisation (section 3) SGD learns from the first step too. The command line
# takes the same choices: `jaxmlp train --optimizer adam --lr 1e-3`.
#
# ## 2. Learning-rate schedules
#
# A schedule is a function from the step number to a learning rate, and any optimizer accepts one
# in place of a number: `optim.sgd(optim.cosine(0.1, total_steps))`. Four of them over 1,000 steps:

# %%
total = 1000
steps = jnp.arange(total)
schedules = {
    "constant": optim.constant(0.1),
    "step (x0.1 every 333)": optim.step_decay(0.1, decay_rate=0.1, decay_steps=333),
    "cosine": optim.cosine(0.1, total_steps=total),
    "warmup 50 + cosine": optim.warmup_cosine(0.1, warmup_steps=50, total_steps=total),
}
fig, ax = plt.subplots(figsize=(7, 3.2))
for label, schedule in schedules.items():
    ax.plot(steps, schedule(steps), label=label)
ax.set(xlabel="step", ylabel="learning rate", title="Learning-rate schedules, peak 0.1")
ax.legend()
plt.show()
for label, schedule in schedules.items():
    print(f"{label:22s}", "  ".join(f"step {s:3d}: {float(schedule(s)):.4f}"
                                    for s in (0, 49, 500, 999)))

# %% [markdown]
# Decaying the rate lets the last epochs settle into a minimum instead of bouncing around it;
# a short warmup protects the first steps, when Adam's moment estimates are still noisy and the
# weights are far from anything sensible. In the CLI: `--schedule cosine`, or
# `--schedule warmup-cosine --warmup-epochs 1`.
#
# ## 3. Dropout
#
# During training, dropout sets each hidden activation to 0 with probability `rate` and multiplies
# the survivors by `1 / (1 - rate)` ("inverted" dropout), so that every activation keeps its
# expected value and the network needs no change at test time. Two properties to check first:
# with rate 0 the forward pass is unchanged, and on average dropout changes nothing.

# %%
params = trained["sgd"]
key = jax.random.PRNGKey(2)
same = jnp.array_equal(jaxmlp.forward(params, x_test[:256], key=key, dropout=0.0),
                       jaxmlp.forward(params, x_test[:256]))
print("rate 0 gives the forward pass without dropout:", bool(same))

# the first hidden layer, (64, 128):
hidden = model.relu(x_test[:64] @ params[0]["W"] + params[0]["b"])
draws = jax.vmap(lambda k: model.inverted_dropout(k, hidden, 0.5))(
    jax.random.split(key, 1000))
active = hidden > 0  # units that ReLU already set to 0 stay 0 either way
print(f"fraction of active units dropped at rate 0.5: "
      f"{float(jnp.mean(draws[:, active] == 0)):.3f}")
print(f"mean activation over 1000 dropout masks / without dropout: "
      f"{float(draws.mean() / hidden.mean()):.4f}")

# %% [markdown]
# Dropout is a regularizer: it makes memorising the training set harder. To see it work we need a
# network that can memorise, so we train the same 784-128-64-10 network (He initialisation this
# time) on only 2,048 images, with SGD (lr 0.1) for 10 epochs, at three dropout rates, side by
# side on the same minibatches. (The command line: `jaxmlp train --dropout 0.2`; in the library,
# dropout is a field of the static `TrainSpec` that `run_chunk` compiles.)

# %%
x_tiny = jaxmlp.normalize(jaxmlp.flatten(data.x_train[:2048]))
y_tiny = jnp.asarray(data.y_train[:2048], jnp.int32)
he_init = jaxmlp.init_params(jax.random.PRNGKey(3), sizes, scheme="he")
rates = (0.0, 0.2, 0.5)
runs = {rate: Run(optim.sgd(0.1), he_init, dropout=rate) for rate in rates}
regularized, _ = train(runs, x_tiny, y_tiny, epochs=10, key=jax.random.PRNGKey(4))
print(f"{'dropout':>7s} {'train accuracy':>15s} {'test accuracy':>14s} {'gap':>7s}")
for rate, params in regularized.items():
    _, train_acc = jaxmlp.evaluate(mlp, params, x_tiny, y_tiny)
    _, test_acc = jaxmlp.evaluate(mlp, params, x_test, y_test)
    print(f"{rate:7.1f} {train_acc:15.2%} {test_acc:14.2%} {train_acc - test_acc:7.2%}")

# %% [markdown]
# Without dropout the network fits its 2,048 images almost perfectly and the gap to the test set
# is large. The higher the rate, the looser the fit to the training images and the smaller the
# gap. The test accuracy moves by a point at most, about what another random seed would do; at
# rate 0.5 the 64-unit second layer starts to underfit. Dropout pays off on longer runs of bigger
# networks (`jaxmlp train --dropout 0.2`).
#
# ## 4. Data augmentation
#
# A digit shifted by a pixel or two, slightly rotated or rescaled, or written with a slightly
# wobbly hand, is still the same digit. `augment.random_shift`, `augment.random_affine` and
# `augment.random_elastic` make such variants on the fly, each image with its own random
# transform drawn from a key, inside the compiled training step, so every epoch sees new images.
# Below: one test digit, then eight shifts (up to 2 pixels), eight affine warps (rotation up to
# 10 degrees, scale 0.9 to 1.1, shift up to 2 pixels) and eight elastic distortions (Simard et
# al. 2003: a random displacement field smoothed by a Gaussian of sigma 4 pixels, scaled by
# alpha 34), the defaults of `--augment shift`, `--augment affine` and `--augment elastic`.

# %%
digit = x_test[:1]  # a 7
copies = jnp.repeat(digit, 8, axis=0)
shifted = jax.jit(augment.random_shift)(jax.random.PRNGKey(5), copies)
warped = jax.jit(augment.random_affine)(jax.random.PRNGKey(6), copies)
wobbly = jax.jit(augment.random_elastic)(jax.random.PRNGKey(7), copies)

fig, axes = plt.subplots(3, 9, figsize=(9, 3.6))
rows = (("random_shift", shifted), ("random_affine", warped),
        ("random_elastic", wobbly))
for row, (label, images) in enumerate(rows):
    axes[row, 0].imshow(np.asarray(digit).reshape(28, 28), cmap="gray_r")
    axes[row, 0].set_title("original", fontsize=8)
    for j in range(8):
        axes[row, j + 1].imshow(np.asarray(images[j]).reshape(28, 28), cmap="gray_r")
        axes[row, j + 1].set_title(label if j == 0 else "", fontsize=8, loc="left")
for ax in axes.flat:  # keep the frame: it shows where the image edges are
    ax.set_xticks([])
    ax.set_yticks([])
fig.tight_layout()
plt.show()
print("augmented pixels stay in [0, 1]:",
      bool(all(jnp.all((images >= 0) & (images <= 1))
               for images in (shifted, warped, wobbly))),
      "| shapes kept:", shifted.shape, warped.shape, wobbly.shape)

# %% [markdown]
# ## 5. L2 regularization and weight decay
#
# Both pull the weights towards zero. `--l2 c` adds `c * optim.l2_penalty(params)`, that is
# `c/2 * sum ||W||^2` over the weight matrices, to the loss; `--optimizer adamw --weight-decay c`
# instead shrinks every parameter by `lr * c * p` after Adam's step, outside the moment
# estimates (decoupled weight decay). With a zero gradient, one AdamW step is just that shrink.
# Over section 1's 800 steps it compounds to `0.99999 ** 800`, about 0.992: too little to move
# the loss curve, but the weights end up smaller than Adam's.

# %%
params = trained["adamw"]
zero_grads = jax.tree_util.tree_map(jnp.zeros_like, params)
decay = optim.adamw(1e-3, weight_decay=0.01)
updates, _ = jax.jit(decay.update)(zero_grads, decay.init(params), params)
shrunk = optim.apply_updates(params, updates)
ratio = shrunk[0]["W"] / params[0]["W"]
print(f"W1 after / before: {float(ratio.min()):.7f} to {float(ratio.max()):.7f}"
      f"  (1 - lr * weight_decay = {1 - 1e-3 * 0.01:.7f})")
print(f"l2_penalty after section 1: "
      f"adam {float(optim.l2_penalty(trained['adam'])):.2f}, "
      f"adamw {float(optim.l2_penalty(trained['adamw'])):.2f}")

# %% [markdown]
# ## 6. A small convolutional network
#
# A convolution slides small filters over the image, so a stroke detector works wherever the
# stroke is, and pooling lets a digit move a little without changing the features. `jaxmlp.cnn`
# keeps the params format of the MLP (a list of `{"W", "b"}` dicts; convolution kernels are
# `(height, width, in_channels, out_channels)`), so optimizers, `l2_penalty` and checkpoints
# work unchanged. The default network, as `jax.eval_shape` reports it without drawing a single
# number:

# %%
shapes = jax.eval_shape(cnn.init_cnn_params, jax.random.PRNGKey(0))
for i, layer in enumerate(shapes):
    if layer["W"].ndim == 4:
        kind = "conv 3x3 + relu + maxpool 2x2"
    else:
        kind = "dense + relu" if i < len(shapes) - 1 else "dense (logits)"
    print(f"layer {i}: W {str(layer['W'].shape):18s} b {str(layer['b'].shape):8s} "
          f"{kind}")
print(f"{sum(leaf.size for leaf in jax.tree_util.tree_leaves(shapes)):,} parameters "
      f"(the MLP has {sum(leaf.size for leaf in jax.tree_util.tree_leaves(init)):,})")

# %% [markdown]
# Convolutions are slow on a CPU, so here we train a narrower copy (8 and 16 channels, 64 hidden
# units) for one epoch over section 1's 12,800 images, with Adam. XLA runs a convolution quickly
# at the top level of a compiled program but slowly inside `lax.scan` on a CPU, so this time each
# step is its own jitted call in a plain Python loop, with `conv_impl="xla"`. (The library's fused
# `run_chunk`, `TrainSpec(model=jaxmlp.CNN())`, switches to an im2col matrix product on the CPU instead.)

# %%
small_cnn = cnn.init_cnn_params(jax.random.PRNGKey(7), channels=(8, 16), hidden=64)
cnn_opt = optim.adam(1e-3)

@jax.jit
def cnn_step(params, state, xb, yb):
    loss, grads = jax.value_and_grad(
        lambda p: jaxmlp.cross_entropy(cnn.cnn_forward(p, xb, conv_impl="xla"), yb)
    )(params)
    updates, state = cnn_opt.update(grads, state, params)
    params = optim.apply_updates(params, updates)
    return params, state, loss

predict = jax.jit(lambda params, x: jnp.argmax(
    cnn.cnn_forward(params, x, conv_impl="xla"), axis=-1))

t0 = time.perf_counter()
params, state = small_cnn, cnn_opt.init(small_cnn)
# one epoch, in order (the images are not sorted by label)
for i in range(0, x_small.shape[0], 32):
    params, state, loss = cnn_step(params, state, x_small[i:i + 32],
                                   y_small[i:i + 32])
preds = np.concatenate([predict(params, x_test[i:i + 2000])
                        for i in range(0, 10000, 2000)])
cnn_acc = np.mean(preds == data.y_test)
n_params = sum(leaf.size for leaf in jax.tree_util.tree_leaves(small_cnn))
print(f"{n_params:,} parameters, one epoch on 12,800 images "
      f"in {time.perf_counter() - t0:.0f} s (compilation included)")
print(f"CNN test accuracy: {cnn_acc:.2%}")

# %% [markdown]
# That is one short epoch of a small model, not the architecture's limit. `jaxmlp train --preset
# cnn` is the full recipe: the default 32/64-channel network on all 60,000 images, with Adam, a
# learning-rate schedule, dropout and random shifts (`jaxmlp presets` lists the exact flags). On
# a CPU an epoch of it takes minutes, on a GPU seconds.
#
# ## 7. Transfer learning
#
# A network trained on one task has learned features (its hidden layers) that may serve another.
# We train the notebook's network on digits 0-4 only, give it a new 5-way head for digits 5-9 with
# `transfer.replace_head`, freeze the two hidden layers with `optim.freeze` and
# `transfer.trainable_mask`, and train only the head on just 320 labelled images of 5-9.

# %%
def digits(images, labels, classes, limit=None):
    """Inputs and labels 0..len(classes)-1 of the images whose label is in classes."""
    keep = np.flatnonzero(np.isin(labels, classes))[:limit]
    return (jaxmlp.normalize(jaxmlp.flatten(images[keep])),
            jnp.asarray(labels[keep] - classes[0], jnp.int32))

x_04, y_04 = digits(data.x_train, data.y_train, [0, 1, 2, 3, 4], 6400)
x_04_test, y_04_test = digits(data.x_test, data.y_test, [0, 1, 2, 3, 4])
x_59, y_59 = digits(data.x_train, data.y_train, [5, 6, 7, 8, 9], 320)
x_59_test, y_59_test = digits(data.x_test, data.y_test, [5, 6, 7, 8, 9])

fresh = jaxmlp.init_params(jax.random.PRNGKey(9), [784, 128, 64, 5], scheme="he")
pretrained = train({"0-4": Run(optim.adam(1e-3), fresh)}, x_04, y_04, epochs=2,
                   key=jax.random.PRNGKey(10))[0]["0-4"]
base_accuracy = jaxmlp.evaluate(mlp, pretrained, x_04_test, y_04_test)[1]
print(f"trained on 6,400 images of 0-4: test accuracy on 0-4 {base_accuracy:.2%}")

new_head = transfer.replace_head(jax.random.PRNGKey(11), pretrained, num_classes=5)
# False for every leaf of layers 0 and 1:
mask = transfer.trainable_mask(new_head, freeze=[0, 1])
print("trainable:", mask)

# %% [markdown]
# Fine-tuning on the 320 images of 5-9 for 10 epochs, side by side with two runs that train the
# whole network on the same data: one from scratch, one starting from the 0-4 body.

# %%
runs = {
    "frozen body, new head only": Run(optim.freeze(optim.adam(1e-2), mask), new_head),
    "whole network, from scratch": Run(optim.adam(1e-3), fresh),
    "whole network, from 0-4 body": Run(optim.adam(1e-3), new_head),
}
finetuned, _ = train(runs, x_59, y_59, epochs=10, key=jax.random.PRNGKey(12))
for label in runs:
    params = finetuned[label]
    accuracy = jaxmlp.evaluate(mlp, params, x_59_test, y_59_test)[1]
    print(f"{label:30s} test accuracy on 5-9: {accuracy:.2%}")

head_only = finetuned["frozen body, new head only"]
frozen_same = all(bool(jnp.array_equal(head_only[i][name], pretrained[i][name]))
                  for i in (0, 1) for name in ("W", "b"))
head_moved = not bool(jnp.array_equal(head_only[2]["W"], new_head[2]["W"]))
print("frozen layers bit-identical after fine-tuning:", frozen_same,
      "| head changed:", head_moved)

# %% [markdown]
# Freezing is cheap (only the head's 325 parameters learn) and cannot damage the body, but the
# body's features were shaped to tell 0-4 apart and do not fully serve 5-9. Starting from them
# and training everything does about as well as starting from scratch (within what another seed
# would change): MNIST is too easy for a 0-4 head start to matter. Transfer pays when the first
# task had far more data than the second, as with large pretrained image models.
#
# ## 8. Ensembles, and where to go next
#
# Averaging the predictions of several independently trained networks is another reliable gain;
# notebook 03 covers ensembles, which jaxmlp trains together in one vmapped program
# (`jaxmlp train --ensemble 5`).

# %%
print(f"notebook ran in {time.perf_counter() - notebook_start:.0f} s")
