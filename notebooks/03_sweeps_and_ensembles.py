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
# # Sweeps and ensembles
#
# The original notebook tunes its network by hand: a helper `train_and_evaluate(learning_rate,
# hidden_size1, hidden_size2, batch_size, epochs)` runs four experiments one after another, and the
# text suggests grid search, random search and model ensembles as next steps. Each of those trains
# many networks that differ only in a few numbers. jaxmlp trains such networks *together*: the
# ones whose arrays have the same shapes become one compiled program, with the learning rate and
# the seed as a `vmap` batch axis.
#
# To run in about a minute on a laptop CPU, everything here trains for 2 epochs on the first
# 10,000 training images and tests on all 10,000 test images. The accuracies are therefore a few
# points below full-data runs (the README has those); the comparisons are the point.

# %%
import dataclasses
import time

import jax
import jax.numpy as jnp
import matplotlib.pyplot as plt
import numpy as np

import jaxmlp
from jaxmlp import members, sweep
from jaxmlp.config import TrainConfig
from jaxmlp.data import DataError
from jaxmlp.runs import fit, prepare

notebook_start = time.perf_counter()

try:
    # $JAXMLP_DATA_DIR, else jaxmlp's cache (downloaded there on first use)
    data = jaxmlp.load_dataset()
except DataError as err:  # offline, nothing cached: say what to do, not a traceback
    raise SystemExit(f"MNIST not found: {err}\nSet JAXMLP_DATA_DIR to a folder holding "
                     "MNIST's four IDX files, or fetch them once with `jaxmlp download "
                     "--mirror URL`, then run this notebook again.") from None
n_train = 10_000
small = data._replace(x_train=data.x_train[:n_train], y_train=data.y_train[:n_train])
print("training on", small.x_train.shape, "| testing on", small.x_test.shape, "|",
      jax.default_backend())

# %% [markdown]
# ## 1. Grid search
#
# A configuration is a `TrainConfig`, the same object `jaxmlp train` fills from its flags.
# `sweep.grid` takes a base configuration and lists of values, and returns every combination.
# Here: five learning rates, and the notebook's 128-64 network next to experiment 3's wider
# 256-128. We use He initialisation: with the notebook's `N(0, 1) * 0.01` weights, small learning rates spend
# more than two epochs on the loss plateau (notebook 04 shows why), and the plot would only say
# that.

# %%
base = TrainConfig(epochs=2, batch_size=32, init="he", seed=0)
lrs, hiddens = [0.003, 0.01, 0.03, 0.1, 0.3], [(128, 64), (256, 128)]
configs = sweep.grid(base, lr=lrs, hidden=hiddens)
print(len(configs), "configurations, e.g.",
      {k: getattr(configs[0], k) for k in sweep.SWEEP_AXES})

groups = sweep.group_by_shape(configs, n_train)
for g, group in enumerate(groups):
    shape = "-".join(map(str, configs[group[0]].hidden))
    print(f"program {g}: hidden {shape}, batch 32, {len(group)} models, lr",
          [configs[i].lr for i in group])

with_seeds = sweep.grid(base, lr=lrs, hidden=hiddens, seed=[0, 1, 2])
print(f"adding seed=[0, 1, 2]: {len(with_seeds)} configurations, still "
      f"{len(sweep.group_by_shape(with_seeds, n_train))} programs")

# %% [markdown]
# Two configurations can share a program when everything that fixes the program's shapes and
# structure agrees: hidden sizes, batch size, optimizer, epochs, dtype (`members.group_key`). The
# learning rate, the seed and the init scheme are just numbers fed to the program, so the models
# of a group get a leading axis on their params, optimizer state and keys, while the training
# images are shared. Each member still follows exactly the random stream `jaxmlp.fit` would use
# for its configuration: a group is `jax.vmap` of the engine's own compiled chunk, with the step
# counters shared. When all members have the same seed, as here, they also see the same
# minibatches. `run_sweep` trains each group and tests every member.

# %%
result = sweep.run_sweep(configs, small)
print(sweep.format_table(result.runs))
for g, info in enumerate(result.groups):
    print(f"program {g}: {len(info.members)} models, "
          f"compiled in {info.compile_seconds:.1f} s, "
          f"trained in {info.train_seconds:.1f} s")

# %%
fig, ax = plt.subplots(figsize=(6.5, 4))
for hidden in hiddens:
    runs = sorted((r for r in result.runs if r.config.hidden == hidden),
                  key=lambda r: r.config.lr)
    ax.plot([r.config.lr for r in runs], [r.test_accuracy * 100 for r in runs],
            marker="o", label="-".join(map(str, hidden)))
ax.set(xscale="log", xlabel="learning rate (SGD, batch 32)", ylabel="test accuracy (%)",
       title="Grid search: 2 epochs on 10,000 images, seed 0")
ax.legend(title="hidden sizes")
ax.grid(alpha=0.3)
plt.show()

# %% [markdown]
# In two short epochs the learning rate matters far more than the width: accuracy climbs with the
# rate up to the largest one tried, and the two widths stay within a point of each other at every
# rate. With more epochs the small rates catch up and the best rate moves down (the notebook's
# 10 full-data epochs favoured 0.1). One seed per configuration is not enough to trust a gap that
# small, though: section 4 trains the 128-64 network at lr 0.1 with five seeds, and they alone
# spread over about a point. `seed=[0, 1, 2]` in the grid measures that spread for every
# configuration. (`plots.plot_sweep` draws this kind of picture from `jaxmlp sweep --metrics-out`
# records.)
#
# ## 2. Random search
#
# A grid spends most of its budget on values that turn out to be bad, and it tries only the few
# learning rates we thought of. Random search draws each configuration instead: `random_search`
# draws the learning rate log-uniformly (every factor of 10 equally likely) and picks the other
# axes from the lists given. The draws depend only on `seed`, so a search can be repeated.

# %%
drawn = sweep.random_search(base, 6, seed=0, lr_range=(0.003, 0.5),
                            hidden=[(128, 64), (256, 128)])
for c in drawn:
    print(f"lr {c.lr:.4f}  hidden {'-'.join(map(str, c.hidden))}")
print("programs:", [len(members) for members in sweep.group_by_shape(drawn, n_train)],
      "models")

# %% [markdown]
# They group and train exactly like the grid (`sweep.run_sweep(drawn, small)`); we skip the run
# here to keep the notebook short.
#
# ## 3. What training together buys
#
# A group is one program: one compilation for all its models, one Python loop, the data on the
# device once. Whether it also makes each model-epoch cheaper depends on how much of the hardware
# one small network leaves idle. Below, the time per model and epoch of each sweep program next to
# one `jaxmlp.fit` of a 128-64 network (compilation excluded in both), then the compile times.

# %%
single_config = dataclasses.replace(base, lr=0.1, hidden=(128, 64), seed=0)
single = fit(single_config, small)
per_single = single.train_seconds / single_config.epochs
print(f"one 128-64 model, fit:      {per_single:.3f} s per model-epoch")
for g, info in enumerate(result.groups):
    per_model = info.train_seconds / (len(info.members) * base.epochs)
    shape = "-".join(map(str, configs[info.members[0]].hidden))
    print(f"program {g} ({len(info.members)} x {shape}): "
          f"{per_model:.3f} s per model-epoch")
print(f"compiling: {single.compile_seconds:.1f} s for one model, "
      f"{result.groups[0].compile_seconds:.1f} s "
      f"for the program of {len(result.groups[0].members)}")

twin = next(r for r in result.runs
            if (r.config.lr, r.config.hidden, r.config.seed) == (0.1, (128, 64), 0))
print(f"the same configuration, alone / in its group: test accuracy "
      f"{single.test_accuracy:.2%} / {twin.test_accuracy:.2%}")

# %% [markdown]
# On a CPU with few cores, grouping does not make a model-epoch cheaper: one 128-64 network at
# batch 32 already keeps two cores occupied, so K networks cost at least K times one, and the
# timings move with whatever else the machine runs. What a group saves on such a CPU is
# compiling and dispatching every model on its own. The per-model gain needs idle hardware: more
# cores, or a GPU, where one network this small uses a sliver of the device and the group's K
# models fill it. The numbers above are those of the machine that runs the cell; run it again to
# see yours. `jaxmlp bench` is the benchmark (NumPy, jitted steps, fused epochs, a vmapped
# learning-rate sweep and large batches on the same data, with repeats). The last line above
# checks that grouping changes nothing but speed: the sweep member and the lone run of the same
# configuration reach the same test accuracy (float32 round-off could move the last digit).
#
# ## 4. Ensembles
#
# The notebook's last suggestion is a model ensemble: train several networks and average their
# predictions. `fit_ensemble` trains K copies of one configuration with seeds `seed, seed+1,
# ...` as one group, so they differ in their initial weights and in the order they see the
# images, and tests each member and the average of their predicted probabilities.

# %%
ens_config = dataclasses.replace(base, lr=0.1, hidden=(128, 64))
ens = sweep.fit_ensemble(ens_config, small, members=5)
for m in ens.members:
    print(f"member seed {m.config.seed}: test accuracy {m.test_accuracy:.2%}, "
          f"test loss {m.test_loss:.4f}")
member_accs = np.array([m.test_accuracy for m in ens.members])
print(f"mean of the members:          {member_accs.mean():.2%}, test loss "
      f"{np.mean([m.test_loss for m in ens.members]):.4f}")
print(f"ensemble of 5 (mean probs):   {ens.ensemble_accuracy:.2%}, "
      f"test loss {ens.ensemble_loss:.4f}")
print(f"members the ensemble beats: "
      f"{int(np.sum(member_accs < ens.ensemble_accuracy))} of {len(member_accs)}")
print(f"training: {ens.train_seconds / (5 * ens_config.epochs):.3f} s per model-epoch, "
      f"each member with its own shuffle (alone: {per_single:.3f} s)")

# %% [markdown]
# `ensemble_probs` gives each member's class probabilities, `(K, N, C)`, and `ensemble_accuracy`
# scores their average. To see where the gain comes from, we look at the test images on which the
# members do not all agree.

# %%
x_test = prepare(data.x_test, jnp.float32)
model = jaxmlp.models.from_config(ens_config)   # the members' model, one value
probs = np.asarray(members.ensemble_probs(model, ens.params, x_test))  # (5, 10000, 10)
print("ensemble_accuracy(probs, labels):",
      f"{members.ensemble_accuracy(probs, data.y_test):.2%}")

votes = probs.argmax(axis=-1)                   # (5, 10000) each member's label
disputed = np.any(votes != votes[0], axis=0)
avg_right = probs.mean(axis=0).argmax(axis=-1) == data.y_test
members_right = (votes == data.y_test).mean(axis=0)
print(f"images where the members disagree: {disputed.sum()} of {len(disputed)}")
print(f"on those, a member is right {members_right[disputed].mean():.1%} of the time, "
      f"the averaged probabilities {avg_right[disputed].mean():.1%}")
for k in range(1, len(probs) + 1):
    print(f"average of the first {k} members: "
          f"{members.ensemble_accuracy(probs[:k], data.y_test):.2%}")

# %% [markdown]
# On the images every member gets right or every member gets wrong, averaging changes nothing;
# all of the gain is on the disputed ones. There the members' mistakes are partly independent
# (other initial weights, another image order), and a wrong answer is usually given with less
# confidence than the right answers it is averaged with, so the average lands on the right class
# more often than a typical member does. That is why the ensemble beats most or all of its
# members, and why its test loss is lower still: averaging probabilities also tempers the
# confident mistakes that cross-entropy punishes most. The price is K times the work at test
# time, and K times the training, done in one program (section 3).
#
# ## 5. From the command line
#
# ```
# jaxmlp sweep --lr 0.001 0.01 0.1 --hidden 128,64 256,128 --batch-size 32 128
# jaxmlp sweep --random 20 --lr 0.001 1 --hidden 128,64 256,128  # lr log-uniform
# jaxmlp train --ensemble 5
# ```
#
# The first trains the 12 combinations as 4 programs (one per hidden size and batch size) on the
# full training set and prints the table; `--metrics-out sweep.json` also writes every run. The
# last trains seeds 42 to 46 together and prints each member and the ensemble.

# %%
print(f"notebook ran in {time.perf_counter() - notebook_start:.0f} s")
