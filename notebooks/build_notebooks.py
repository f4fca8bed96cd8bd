"""Write the tutorial notebooks from the cell lists below, execute them and store their outputs.

The cell lists here are the source of truth: tests/test_notebooks.py checks that the committed
.ipynb files hold exactly these cells, then executes them. After editing a cell, regenerate::

    JAXMLP_DATA_DIR=path/to/mnist python notebooks/build_notebooks.py            # all notebooks
    JAXMLP_DATA_DIR=path/to/mnist python notebooks/build_notebooks.py 02_autodiff_vs_manual

Execution runs the "python3" kernel with notebooks/ as its working directory and needs real MNIST
($JAXMLP_DATA_DIR, else ../../shared/data/mnist relative to notebooks/, else the jaxmlp cache).
"""
from __future__ import annotations

import re
import sys
import textwrap
from pathlib import Path

import nbformat

NOTEBOOK_DIR = Path(__file__).resolve().parent
KERNEL_NAME = "python3"
CELL_TIMEOUT_S = 300

# Stored outputs must not leak this machine's layout (absolute paths); relative ones are fine.
ABSOLUTE_PATH_RE = re.compile(r"(?<![\w.])(/home/|/Users/|/root/|/tmp/|/work/|/private/|[A-Za-z]:\\)")


def md(text: str) -> tuple[str, str]:
    return "markdown", textwrap.dedent(text).strip("\n")


def code(text: str) -> tuple[str, str]:
    return "code", textwrap.dedent(text).strip("\n")


# Both notebooks find the data the same way.
_FIND_DATA = '''
    # $JAXMLP_DATA_DIR wins; otherwise the repository's shared data folder, otherwise the jaxmlp cache
    # (~/.cache/jaxmlp/mnist; `jaxmlp download` fills it).
    shared = Path("..", "..", "shared", "data", "mnist")
    if "JAXMLP_DATA_DIR" not in os.environ and shared.is_dir():
        data_dir = shared
    else:
        data_dir = jaxmlp.resolve_data_dir(None)
    '''

# --------------------------------------------------------------------------- 01


NB01 = [
    md("""
    # MNIST from scratch, with jaxmlp

    This notebook retells the classic NumPy MNIST notebook (load the IDX files, preprocess, build a
    784-128-64-10 network, forward pass, cross-entropy, hand-written backprop, SGD, training,
    evaluation) using jaxmlp's pure functions. Nothing is global: parameters go into a function and
    new parameters come out.

    Where we compare with numbers the original notebook printed we work in float64, as NumPy did;
    training runs in float32, the library's default.
    """),
    code("""
    import gzip
    import os
    import struct
    import tempfile
    from pathlib import Path

    import jax
    import jax.numpy as jnp
    import matplotlib.pyplot as plt
    import numpy as np
    from IPython.display import Image, display

    jax.config.update("jax_enable_x64", True)  # float64 available; arrays stay float32 unless asked
    import jaxmlp
    from jaxmlp import plots
    from jaxmlp.train import TrainSpec, epoch_loss, hparams_dict, make_optimizer, predict_labels, run_epoch

    %matplotlib inline
    print("jax", jax.__version__, "on", jax.default_backend(), "| jaxmlp", jaxmlp.__version__)
    """),
    md("""
    ## 1. Loading the data

    MNIST comes as four IDX files: a 16-byte header for the images (magic number, count, rows,
    columns, all big-endian uint32), 8 bytes for the labels, then raw uint8 values. The files may
    be gzipped; jaxmlp detects that from the first two bytes.
    """),
    code(_FIND_DATA + '''
    print("IDX files found:", sorted(p.name for p in data_dir.glob("*-ubyte*")))
    '''),
    md("""
    The header is what the original notebook unpacked with `struct.unpack(">IIII", ...)`.
    `jaxmlp.read_idx` parses it (and checks it against the file size) for us.
    """),
    code("""
    images_file = data_dir / "train-images-idx3-ubyte.gz"
    with gzip.open(images_file, "rb") as f:
        magic, num, rows, cols = struct.unpack(">IIII", f.read(16))
    print(f"magic 0x{magic:08X} (0x08 = uint8, 3 dimensions), {num} images of {rows}x{cols}")

    train_images = jaxmlp.read_idx(images_file)
    print("read_idx:", train_images.shape, train_images.dtype)
    """),
    md("""
    `load_dataset` reads all four files and checks they belong together (matching counts, labels
    in range). Following the usual convention, inputs are `x` and labels `y`.
    """),
    code("""
    data = jaxmlp.load_dataset(data_dir)
    for name, array in data._asdict().items():
        print(f"{name:8s} {str(array.shape):16s} {array.dtype}")
    print("MNIST loaded.")
    """),
    md("""
    ## 2. Preprocessing

    Three steps, each a pure function that returns a new array:

    * **flatten** each 28x28 image into a 784-vector,
    * **normalize** pixels from 0..255 to 0..1 (float32, bit-for-bit NumPy's `astype(float32) / 255`),
    * **one-hot** encode the labels: 7 becomes `[0 0 0 0 0 0 0 1 0 0]`.
    """),
    code("""
    x_train = jaxmlp.flatten(data.x_train)
    x_test = jaxmlp.flatten(data.x_test)
    print(x_train.shape)
    print(x_test.shape)
    """),
    code("""
    x_train = jaxmlp.normalize(x_train)
    x_test = jaxmlp.normalize(x_test)
    print(x_train.dtype, float(x_train.min()), float(x_train.max()))
    print(x_test.dtype, float(x_test.min()), float(x_test.max()))
    """),
    code("""
    y_train = jaxmlp.one_hot(data.y_train)
    y_test = jaxmlp.one_hot(data.y_test)
    print(y_train.shape)
    print(y_test.shape)
    print("label", data.y_test[0], "->", y_test[0])
    """),
    md("""
    ## 3. The network's parameters

    The parameters are a plain list with one `{"W": (fan_in, fan_out), "b": (fan_out,)}` dict per
    layer. Biases are 1-D and broadcast over the batch, where the original stored them as `(1, n)`.

    `init_params_numpy(42, sizes)` makes the original notebook's exact draw: `np.random.seed(42)`,
    then `np.random.randn(fan_in, fan_out) * 0.01` for W1, W2, W3 in that order, zero biases.
    """),
    code("""
    sizes = [784, 128, 64, 10]
    params = jaxmlp.init_params_numpy(42, sizes)  # float64, like NumPy
    for i, layer in enumerate(params, start=1):
        print(f"W{i} shape: {layer['W'].shape}   b{i} shape: {layer['b'].shape}   dtype: {layer['W'].dtype}")
    """),
    md("""
    The JAX-native way draws from an explicit PRNG key instead of NumPy's global generator: the same
    key always gives the same parameters, and nothing else in the program can disturb the stream.
    """),
    code("""
    key_params = jaxmlp.init_params(jax.random.PRNGKey(42), sizes, scheme="notebook")
    print([layer["W"].shape for layer in key_params], key_params[0]["W"].dtype)
    print(f"std of W1: {float(jnp.std(key_params[0]['W'])):.5f} (scheme 'notebook' is N(0, 1) * 0.01)")
    """),
    md("""
    ## 4. Forward pass

    Each hidden layer computes `Z = A_prev @ W + b` then `A = relu(Z)`; the last layer's `Z` (the
    logits) goes through softmax to give probabilities. `jaxmlp.forward(params, x)` returns the
    logits. We feed the first five training images, cast to float64 so the numbers can be held
    against the original notebook's.
    """),
    code("""
    x5 = x_train[:5].astype(jnp.float64)
    y5 = y_train[:5].astype(jnp.float64)
    probs = jaxmlp.softmax(jaxmlp.forward(params, x5))
    print("Predictions (Softmax Output):\\n", np.asarray(probs))
    print("Sum of each row (should be 1):", np.asarray(jnp.sum(probs, axis=1)))
    """),
    md("""
    Every probability is close to 0.1: with weights this small the untrained network has no
    opinion yet.

    ## 5. Loss

    The original used `-sum(Y * log(p + 1e-8)) / m`; `jaxmlp.notebook_loss` is that formula.
    With the same data, the same initial weights and float64 it gives the original's printed value
    to the last digit. Training uses `jaxmlp.loss`, the same cross-entropy computed from the logits
    with log-softmax, which stays finite however confident the model gets.
    """),
    code("""
    seed_printed = 2.302670109823364  # the original notebook's output
    nb_loss = float(jaxmlp.notebook_loss(params, x5, y5))
    print("Cross-Entropy Loss:", nb_loss)
    print("same as the original notebook:", nb_loss == seed_printed)
    print("log-softmax loss:  ", float(jaxmlp.loss(params, x5, y5)))
    """),
    md("""
    ## 6. Backpropagation, by hand and by `jax.grad`

    The chain rule, layer by layer from the output back: `dZ_L = softmax - Y`,
    `dW = A_prev.T @ dZ / m`, `db = sum(dZ) / m`, `dZ_prev = (dZ @ W.T) * [Z_prev > 0]`.
    `jaxmlp.manual_grad` is exactly that recurrence, for any depth. `jax.grad(jaxmlp.loss)`
    derives the same gradient automatically from the forward pass. Both are pure functions of
    arrays, so `jax.jit` compiles either one. In float64 the two agree to round-off.
    """),
    code("""
    manual = jax.jit(jaxmlp.manual_grad)(params, x5, y5)
    auto = jax.jit(jax.grad(jaxmlp.loss))(params, x5, y5)
    worst = 0.0
    for i, (gm, ga) in enumerate(zip(manual, auto), start=1):
        for name in ("W", "b"):
            err = jaxmlp.max_relative_error(gm[name], ga[name])
            worst = max(worst, err)
            print(f"d{name}{i} shape: {str(gm[name].shape):11s} max relative error manual vs jax.grad: {err:.1e}")
    print(f"max relative error (manual vs jax.grad, float64): {worst:.3e}")
    """),
    md("""
    ## 7. One gradient-descent step

    `W <- W - lr * dL/dW` for every parameter. `jaxmlp.sgd_step` is that update, compiled with
    `jax.jit`; it returns new parameters (the old ones are untouched) and the batch's loss. The
    original notebook took one such step with lr 0.01 on the same five images and printed how much
    W1 moved.
    """),
    code("""
    new_params, batch_loss = jaxmlp.sgd_step(params, x5, y5, 0.01)
    change = float(jnp.sum(jnp.abs(new_params[0]["W"] - params[0]["W"])))
    print("W1 change:", change)
    print("original notebook printed: 0.020560581875656167")
    print("old params untouched:", bool(jnp.all(params[0]["W"] == jaxmlp.init_params_numpy(42, sizes)[0]["W"])))
    """),
    md("""
    ## 8. Training, compiled

    The original looped over minibatches in Python. Here a whole epoch is **one compiled program**
    (`jaxmlp.train.run_epoch`): the shuffle is drawn on the device from a PRNG key and `lax.scan`
    runs the 1875 minibatch updates, returning the per-batch losses. Training state (params,
    optimizer state, key) goes in and comes out, explicitly.

    We train the original's best experiment (SGD, lr 0.1, batch 32) in float32, but only for three
    epochs so the notebook stays quick; `jaxmlp train` runs the full ten.
    """),
    code("""
    epochs = 3
    spec = TrainSpec(batch_size=32)              # static: changing it recompiles
    hparams = hparams_dict(jnp.float32, lr=0.1)  # traced: changing it does not
    params = jaxmlp.init_params(jax.random.PRNGKey(42), sizes)  # float32
    opt_state = make_optimizer(spec, hparams).init(params)
    x, y = x_train, jnp.asarray(data.y_train, jnp.int32)  # integer labels work too

    key = jax.random.PRNGKey(0)
    batch_losses = []
    for e in range(epochs):
        key, epoch_key = jax.random.split(key)
        params, opt_state, losses = run_epoch(params, opt_state, epoch_key, x, y, hparams, spec=spec)
        batch_losses.append(np.asarray(losses))
        print(f"Epoch {e + 1}/{epochs} - Loss: {epoch_loss(losses, x.shape[0], spec.batch_size):.4f}")
    """),
    md("""
    ## 9. Evaluation

    `jaxmlp.evaluate` runs the forward pass over the 10,000 test images the model never saw and
    returns the mean loss and the accuracy.
    """),
    code("""
    test_loss, test_acc = jaxmlp.evaluate(params, x_test, jnp.asarray(data.y_test, jnp.int32))
    print(f"Test Loss: {test_loss:.4f}")
    print(f"Test Accuracy: {test_acc * 100:.2f}%")
    """),
    md("""
    ## 10. Pictures

    The loss of every minibatch (faint) and its running mean, then the first test digits with the
    model's guesses (red where wrong).
    """),
    code("""
    curve = np.concatenate(batch_losses)
    steps_per_epoch = len(batch_losses[0])
    window = 100
    smooth = np.convolve(curve, np.ones(window) / window, mode="valid")

    fig, ax = plt.subplots(figsize=(7, 3.2))
    ax.plot(np.arange(len(curve)) / steps_per_epoch, curve, alpha=0.25, lw=0.6, label="minibatch loss")
    ax.plot((np.arange(len(smooth)) + window - 1) / steps_per_epoch, smooth, label=f"mean of {window}")
    ax.set(xlabel="epoch", ylabel="cross-entropy", yscale="log", title="Training loss")
    ax.legend()
    plt.show()
    """),
    code("""
    preds = predict_labels(params, x_test)
    fig, axes = plt.subplots(2, 8, figsize=(9, 2.8))
    for i, ax in enumerate(axes.flat):
        ax.imshow(data.x_test[i], cmap="gray_r")
        wrong = preds[i] != data.y_test[i]
        ax.set_title(f"pred {preds[i]}" + (f"\\ntrue {data.y_test[i]}" if wrong else ""),
                     color="red" if wrong else "black", fontsize=9)
        ax.axis("off")
    fig.tight_layout()
    plt.show()
    """),
    md("""
    `jaxmlp.plots` draws the same pictures the CLI writes with `--plot-dir`, as PNG files. Here is
    the confusion matrix: rows are true digits, columns predictions.
    """),
    code("""
    with tempfile.TemporaryDirectory() as tmp:
        png = plots.plot_confusion(data.y_test, preds, Path(tmp) / "confusion.png")
        display(Image(filename=str(png), width=420))
    """),
    md("""
    ## 11. The same from the command line

    ```bash
    jaxmlp download                        # fetch and verify MNIST into ~/.cache/jaxmlp/mnist
    jaxmlp train                           # 784-128-64-10, SGD lr 0.1, batch 32, 10 epochs, float32
    jaxmlp train --plot-dir plots/         # also write curves, confusion matrix, mistakes, W1 pictures
    jaxmlp train --notebook-exact --lr 0.01 --replay-notebook-step
                                           # float64, NumPy's seed-42 weights and shuffles, the
                                           # original's loss formula and its one test step first
    jaxmlp gradcheck                       # manual backprop vs jax.grad vs finite differences
    ```

    `--notebook-exact` follows the original notebook's arithmetic step by step; the default mode
    trains the same model much faster. Notebook 02 looks closer at the gradients.
    """),
]

# --------------------------------------------------------------------------- 02

NB02 = [
    md("""
    # Autodiff vs manual backprop

    The original notebook derived its gradients by hand. JAX can derive them from the forward pass
    (`jax.grad`). Here we hold the two against each other and against a third witness that shares
    no code with either, central finite differences, all in float64. Then: the one place where
    "the derivative of ReLU" is a choice, networks of other depths, and what each costs at run time.
    """),
    code("""
    import os
    import time
    from pathlib import Path

    import jax
    import jax.numpy as jnp
    import matplotlib.pyplot as plt
    import numpy as np

    jax.config.update("jax_enable_x64", True)
    import jaxmlp
    from jaxmlp import model

    %matplotlib inline
    """ + _FIND_DATA + """
    data = jaxmlp.load_dataset(data_dir)
    x = jaxmlp.normalize(jaxmlp.flatten(data.x_train[:64]), jnp.float64)  # a batch of 64, float64
    y = jnp.asarray(data.y_train[:64], jnp.int32)
    print(x.shape, x.dtype, y.shape)
    """),
    md("""
    ## 1. Three gradients, side by side

    He initialisation gives every layer gradients of a healthy size (the original's `* 0.01`
    weights make the first layers' gradients tiny). For each parameter we compute

    * **manual**: `jaxmlp.manual_grad`, the original's backprop recurrence,
    * **autodiff**: `jax.grad(jaxmlp.loss)`,
    * **finite differences**: `(L(p + eps) - L(p - eps)) / (2 eps)` with `eps = 1e-4`, on 20
      random coordinates of each parameter (two forward passes per coordinate, so not all
      109,386 of them),

    and report the worst relative error between each pair. `jaxmlp.gradcheck(params, x, y)` returns
    the same table in one call, and `jaxmlp gradcheck` prints it from the command line.
    """),
    code("""
    manual_fn = jax.jit(jaxmlp.manual_grad)
    autodiff_fn = jax.jit(jax.grad(jaxmlp.loss))

    def compare(params, max_coords=20):
        \"\"\"Rows (name, shape, manual vs autodiff, manual vs FD, autodiff vs FD) of max relative errors.\"\"\"
        manual, auto = manual_fn(params, x, y), autodiff_fn(params, x, y)
        fd, mask = jaxmlp.finite_difference_grad(lambda p: jaxmlp.loss(p, x, y), params, eps=1e-4,
                                                 max_coords=max_coords)
        rows = []
        for i in range(len(params)):
            for name in ("W", "b"):
                m, a, d, k = manual[i][name], auto[i][name], fd[i][name], mask[i][name]
                # Entries below 1e-8 are compared in absolute terms: there the finite difference's
                # own error (~1e-12) would dominate a ratio.
                rows.append((f"{name}{i + 1}", m.shape, jaxmlp.max_relative_error(m, a),
                             jaxmlp.max_relative_error(m, d, k, floor=1e-8),
                             jaxmlp.max_relative_error(a, d, k, floor=1e-8)))
        return rows

    sizes = [784, 128, 64, 10]
    params = jaxmlp.init_params(jax.random.PRNGKey(0), sizes, scheme="he", dtype=jnp.float64)
    rows = compare(params)
    print(f"{'param':6s} {'shape':11s} {'manual vs autodiff':>19s} {'manual vs FD':>13s} {'autodiff vs FD':>15s}")
    for name, shape, ad, mfd, afd in rows:
        print(f"{name:6s} {str(shape):11s} {ad:19.1e} {mfd:13.1e} {afd:15.1e}")
    worst_ad = max(r[2] for r in rows)
    worst_fd = max(max(r[3], r[4]) for r in rows)
    print(f"worst: manual vs autodiff {worst_ad:.1e}, against finite differences {worst_fd:.1e}")
    """),
    md("""
    Manual and autodiff agree to float64 round-off (1e-12 or better): the same arithmetic, at most
    done in a different order; once XLA has compiled and simplified both, they may even come out
    bit-for-bit identical. Finite differences agree to 1e-6 or better, which is their own accuracy:
    a truncation error of order `eps**2` plus round-off of order `1e-16 / eps` in the loss, about
    1e-12 in absolute terms, which shows up as a larger relative error on the smallest entries.

    A few individual entries, to see the digits:
    """),
    code("""
    manual = manual_fn(params, x, y)
    auto = autodiff_fn(params, x, y)
    loss_fn = jax.jit(jaxmlp.loss)

    def central_difference(layer, name, index, eps=1e-4):
        def shifted(delta):
            p = [dict(l) for l in params]
            p[layer][name] = p[layer][name].at[index].add(delta)
            return float(loss_fn(p, x, y))
        return (shifted(eps) - shifted(-eps)) / (2 * eps)

    pixel = int(np.argmax(np.asarray(x).sum(axis=0)))  # a pixel that is ink in many images
    print(f"{'entry':10s} {'manual':>22s} {'autodiff':>22s} {'finite difference':>22s}")
    for layer, name, index in [(0, "W", (pixel, 3)), (1, "b", (5,)), (2, "W", (7, 2))]:
        label = f"{name}{layer + 1}{list(index)}"
        m, a = float(manual[layer][name][index]), float(auto[layer][name][index])
        print(f"{label:10s} {m:22.15e} {a:22.15e} {central_difference(layer, name, index):22.15e}")
    """),
    md("""
    ## 2. ReLU at exactly zero

    ReLU has a kink at 0, so its derivative there is a convention. Three candidates:

    * `jnp.maximum(0, z)`: JAX splits a tie between the two arguments and gives **0.5**,
    * `jaxmlp.model.relu` (`jnp.where(z > 0, z, 0)`): **0**,
    * the original notebook's mask `Z > 0`: **0**.
    """),
    code("""
    z = jnp.array([-1.0, 0.0, 2.0])
    d_maximum = jax.grad(lambda v: jnp.sum(jnp.maximum(0.0, v)))(z)
    d_model = jax.grad(lambda v: jnp.sum(model.relu(v)))(z)
    d_mask = (z > 0).astype(z.dtype)
    print(f"{'z':>24s}: {np.asarray(z)}")
    print(f"{'jax.grad of jnp.maximum':>24s}: {np.asarray(d_maximum)}")
    print(f"{'jax.grad of model.relu':>24s}: {np.asarray(d_model)}")
    print(f"{'notebook mask Z > 0':>24s}: {np.asarray(d_mask)}")
    """),
    md("""
    Does it matter? Only when a pre-activation is exactly 0, which is rare with random weights but
    easy to provoke: an all-black image with zero biases makes every hidden `Z` exactly 0. The
    hand-derived gradient then says no hidden unit is active, so the hidden biases get no
    gradient. `jax.grad` through a `jnp.maximum` forward pass gives every such unit half a
    gradient, so `b1` and `b2` disagree completely; through `model.relu` everything agrees.
    """),
    code("""
    def loss_with_maximum(params, x, y):
        h = x
        for layer in params[:-1]:
            h = jnp.maximum(0.0, h @ layer["W"] + layer["b"])
        return jaxmlp.cross_entropy(h @ params[-1]["W"] + params[-1]["b"], y)

    blank, label = jnp.zeros((1, 784), jnp.float64), jnp.array([3])
    reference = manual_fn(params, blank, label)
    with_relu = autodiff_fn(params, blank, label)
    with_maximum = jax.jit(jax.grad(loss_with_maximum))(params, blank, label)
    print(f"{'param':6s} {'model.relu':>11s} {'jnp.maximum':>12s}   (max relative error vs manual_grad)")
    for i in range(len(params)):
        for name in ("W", "b"):
            ok = jaxmlp.max_relative_error(reference[i][name], with_relu[i][name])
            bad = jaxmlp.max_relative_error(reference[i][name], with_maximum[i][name])
            print(f"{name}{i + 1:<5d} {ok:11.1e} {bad:12.1e}")
    """),
    md("""
    ## 3. Any depth

    `manual_grad` runs the same recurrence for any number of layers, from one layer (softmax
    regression, no ReLU at all) to four. Each row checks a fresh network with the three-way
    comparison of section 1 (10 finite-difference coordinates per parameter).
    """),
    code("""
    print(f"{'layers':>6s}  {'sizes':26s} {'params':>7s} {'manual vs autodiff':>19s} {'vs FD':>8s}")
    for depth in range(1, 5):
        depth_sizes = [784] + [64] * (depth - 1) + [10]
        p = jaxmlp.init_params(jax.random.PRNGKey(depth), depth_sizes, scheme="he", dtype=jnp.float64)
        rows = compare(p, max_coords=10)
        count = sum(leaf.size for leaf in jax.tree_util.tree_leaves(p))
        ad = max(r[2] for r in rows)
        fd = max(max(r[3], r[4]) for r in rows)
        print(f"{depth:6d}  {str(depth_sizes):26s} {count:7d} {ad:19.1e} {fd:8.1e}")
    """),
    md("""
    ## 4. What each costs

    Both gradients compiled with `jax.jit` for the 784-128-64-10 network in float32 (the training
    dtype), timed after a warm-up call so compilation is excluded; each number is the best of
    15 repeats, the two functions taking turns. XLA sees two descriptions of nearly the same
    computation, so expect similar times; the exact numbers depend on the machine and its load
    when the notebook ran. The last column is the largest difference between the two float32
    gradients.
    """),
    code("""
    params32 = jax.tree_util.tree_map(lambda a: a.astype(jnp.float32), params)  # section 1's network
    x32 = jaxmlp.normalize(jaxmlp.flatten(data.x_train[:1024]))
    y32 = jnp.asarray(data.y_train[:1024], jnp.int32)
    grad_fns = {"manual": jax.jit(jaxmlp.manual_grad), "autodiff": jax.jit(jaxmlp.autodiff_grad)}

    def best_times(fns, xb, yb, repeats=15, target_s=0.02):
        \"\"\"Best-of-`repeats` seconds per call of each function; the functions take turns, so a
        burst of load on a shared machine hits both alike.\"\"\"
        calls = {}
        for name, f in fns.items():
            jax.block_until_ready(f(params32, xb, yb))  # warm-up (compiles on the first call)
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
    print(f"{'batch':>6s} {'manual (us)':>12s} {'autodiff (us)':>14s} {'ratio':>6s}  max |difference|")
    for bs in batch_sizes:
        xb, yb = x32[:bs], y32[:bs]
        for name, seconds in best_times(grad_fns, xb, yb).items():
            times[name].append(seconds * 1e6)
        diff = max(float(jnp.max(jnp.abs(a - b))) for a, b in zip(
            jax.tree_util.tree_leaves(grad_fns["manual"](params32, xb, yb)),
            jax.tree_util.tree_leaves(grad_fns["autodiff"](params32, xb, yb))))
        m, a = times["manual"][-1], times["autodiff"][-1]
        print(f"{bs:6d} {m:12.1f} {a:14.1f} {a / m:6.2f}  {diff:.1e}")
    """),
    code("""
    fig, ax = plt.subplots(figsize=(6, 3.2))
    width = 0.38
    pos = np.arange(len(batch_sizes))
    for k, (name, values) in enumerate(times.items()):
        per_example = np.array(values) / np.array(batch_sizes)  # comparable across batch sizes
        ax.bar(pos + (k - 0.5) * width, per_example, width, label=name)
    ax.set_xticks(pos, [str(b) for b in batch_sizes])
    ax.set(xlabel="batch size", ylabel="microseconds per example",
           title="Jitted gradient, 784-128-64-10, float32, CPU")
    ax.legend()
    plt.show()
    """),
    md("""
    The hand-derived backprop earns its place as a readable statement of the math and as a second
    opinion on `jax.grad`, not as a speed-up: once compiled, the two cost about the same.
    `jaxmlp train --grad manual` trains with it.
    """),
]

# --------------------------------------------------------------------------- 03

NB03 = [
    md("""
    # Sweeps and ensembles

    The original notebook tunes its network by hand: a helper `train_and_evaluate(learning_rate,
    hidden_size1, hidden_size2, batch_size, epochs)` runs four experiments one after another, and the
    text suggests grid search, random search and model ensembles as next steps. Each of those trains
    many networks that differ only in a few numbers. jaxmlp trains such networks *together*: the
    ones whose arrays have the same shapes become one compiled program, with the learning rate and
    the seed as a `vmap` batch axis.

    To run in about a minute on a laptop CPU, everything here trains for 2 epochs on the first
    10,000 training images and tests on all 10,000 test images. The accuracies are therefore a few
    points below full-data runs (the README has those); the comparisons are the point.
    """),
    code("""
    import dataclasses
    import os
    import time
    from pathlib import Path

    import jax
    import jax.numpy as jnp
    import matplotlib.pyplot as plt
    import numpy as np

    import jaxmlp
    from jaxmlp import sweep, train
    from jaxmlp.train import TrainConfig

    %matplotlib inline
    notebook_start = time.perf_counter()
    """ + _FIND_DATA + """
    data = jaxmlp.load_dataset(data_dir)
    n_train = 10_000
    small = data._replace(x_train=data.x_train[:n_train], y_train=data.y_train[:n_train])
    print("training on", small.x_train.shape, "| testing on", small.x_test.shape, "|", jax.default_backend())
    """),
    md("""
    ## 1. Grid search

    A configuration is a `TrainConfig`, the same object `jaxmlp train` fills from its flags.
    `sweep.grid` takes a base configuration and lists of values, and returns every combination.
    Here: five learning rates, and the notebook's 128-64 network next to experiment 3's wider
    256-128. We use He initialisation: with the notebook's `N(0, 1) * 0.01` weights, small learning rates spend
    more than two epochs on the loss plateau (notebook 04 shows why), and the plot would only say
    that.
    """),
    code("""
    base = TrainConfig(epochs=2, batch_size=32, init="he", seed=0)
    lrs, hiddens = [0.003, 0.01, 0.03, 0.1, 0.3], [(128, 64), (256, 128)]
    configs = sweep.grid(base, lr=lrs, hidden=hiddens)
    print(len(configs), "configurations, e.g.", {k: getattr(configs[0], k) for k in sweep.SWEEP_AXES})

    groups = sweep.group_by_shape(configs, n_train)
    for g, members in enumerate(groups):
        shape = "-".join(map(str, configs[members[0]].hidden))
        print(f"program {g}: hidden {shape}, batch 32, {len(members)} models, lr", [configs[i].lr for i in members])

    with_seeds = sweep.grid(base, lr=lrs, hidden=hiddens, seed=[0, 1, 2])
    print(f"adding seed=[0, 1, 2]: {len(with_seeds)} configurations, still "
          f"{len(sweep.group_by_shape(with_seeds, n_train))} programs")
    """),
    md("""
    Two configurations can share a program when everything that fixes the program's shapes and
    structure agrees: hidden sizes, batch size, optimizer, epochs, dtype (`sweep.group_key`). The
    learning rate, the seed and the init scheme are just numbers fed to the program, so the models
    of a group get a leading axis on their params, optimizer state and keys, while the training
    images are shared. Each member still follows exactly the random stream `train.fit` would use
    for its configuration. When all members have the same seed, as here, they also see the same
    minibatches, and their first layers become one wide matrix product. `run_sweep` trains each
    group and tests every member.
    """),
    code("""
    result = sweep.run_sweep(configs, small)
    print(sweep.format_table(result.runs))
    for g, info in enumerate(result.groups):
        print(f"program {g}: {len(info.members)} models, compiled in {info.compile_seconds:.1f} s, "
              f"trained in {info.train_seconds:.1f} s")
    """),
    code("""
    fig, ax = plt.subplots(figsize=(6.5, 4))
    for hidden in hiddens:
        runs = sorted((r for r in result.runs if r.config.hidden == hidden), key=lambda r: r.config.lr)
        ax.plot([r.config.lr for r in runs], [r.test_accuracy * 100 for r in runs], marker="o",
                label="-".join(map(str, hidden)))
    ax.set(xscale="log", xlabel="learning rate (SGD, batch 32)", ylabel="test accuracy (%)",
           title="Grid search: 2 epochs on 10,000 images, seed 0")
    ax.legend(title="hidden sizes")
    ax.grid(alpha=0.3)
    plt.show()
    """),
    md("""
    In two short epochs the learning rate matters far more than the width: accuracy climbs with the
    rate up to the largest one tried, and the wider network is about a point ahead at the good
    rates. With more epochs the small rates catch up and the best rate moves down (the notebook's
    10 full-data epochs favoured 0.1). One seed per configuration is not enough to trust a one-point
    gap, though: section 4 trains the 128-64 network at lr 0.1 with five seeds, and they alone
    spread over about three points. `seed=[0, 1, 2]` in the grid measures that spread for every
    configuration. (`plots.plot_sweep` draws this kind of picture from `jaxmlp sweep --metrics-out`
    records.)

    ## 2. Random search

    A grid spends most of its budget on values that turn out to be bad, and it tries only the few
    learning rates we thought of. Random search draws each configuration instead: `random_search`
    draws the learning rate log-uniformly (every factor of 10 equally likely) and picks the other
    axes from the lists given. The draws depend only on `seed`, so a search can be repeated.
    """),
    code("""
    drawn = sweep.random_search(base, 6, seed=0, lr_range=(0.003, 0.5), hidden=[(128, 64), (256, 128)])
    for c in drawn:
        print(f"lr {c.lr:.4f}  hidden {'-'.join(map(str, c.hidden))}")
    print("programs:", [len(members) for members in sweep.group_by_shape(drawn, n_train)], "models")
    """),
    md("""
    They group and train exactly like the grid (`sweep.run_sweep(drawn, small)`); we skip the run
    here to keep the notebook short.

    ## 3. What training together buys

    A group is one program: one compilation for all its models, one Python loop, the data on the
    device once. Whether it also makes each model-epoch cheaper depends on how much of the hardware
    one small network leaves idle. Below, the time per model and epoch of each sweep program next to
    one `train.fit` of a 128-64 network (compilation excluded in both), then the compile times.
    """),
    code("""
    single_config = dataclasses.replace(base, lr=0.1, hidden=(128, 64), seed=0)
    single = train.fit(single_config, small)
    per_single = single.train_seconds / single_config.epochs
    print(f"one 128-64 model, train.fit:  {per_single:.3f} s per model-epoch")
    for g, info in enumerate(result.groups):
        per_model = info.train_seconds / (len(info.members) * base.epochs)
        shape = "-".join(map(str, configs[info.members[0]].hidden))
        print(f"program {g} ({len(info.members)} x {shape}): {per_model:.3f} s per model-epoch")
    print(f"compiling: {single.compile_seconds:.1f} s for one model, {result.groups[0].compile_seconds:.1f} s "
          f"for the program of {len(result.groups[0].members)}")

    twin = next(r for r in result.runs if (r.config.lr, r.config.hidden, r.config.seed) == (0.1, (128, 64), 0))
    print(f"the same configuration, alone / in its group: test accuracy {single.test_accuracy:.2%} / "
          f"{twin.test_accuracy:.2%}")
    """),
    md("""
    On the busy 2-core CPU that saved this notebook, grouping did not make a model-epoch cheaper:
    one 128-64 network at batch 32 already keeps both cores occupied, so K networks cost at least
    K times one, and timings there swing with whatever else the machine runs. What a group saves on
    such a CPU is compiling and dispatching every model on its own. The per-model gain needs idle
    hardware: more cores, or a GPU, where one network this small uses a sliver of the device and the
    group's K models fill it. The numbers depend
    on the machine; `jaxmlp bench` is the benchmark (NumPy, jitted steps, fused epochs, a
    vmapped learning-rate sweep and large batches on the same data, with repeats). The last line
    above checks that grouping changes nothing but speed: the sweep member and the lone run of the
    same configuration reach the same test accuracy (float32 round-off could move the last digit).

    ## 4. Ensembles

    The notebook's last suggestion is a model ensemble: train several networks and average their
    predictions. `fit_ensemble` trains K copies of one configuration with seeds `seed, seed+1,
    ...` as one group, so they differ in their initial weights and in the order they see the
    images, and tests each member and the average of their predicted probabilities.
    """),
    code("""
    ens_config = dataclasses.replace(base, lr=0.1, hidden=(128, 64))
    ens = sweep.fit_ensemble(ens_config, small, members=5)
    for m in ens.members:
        print(f"member seed {m.config.seed}: test accuracy {m.test_accuracy:.2%}, test loss {m.test_loss:.4f}")
    member_accs = np.array([m.test_accuracy for m in ens.members])
    print(f"mean of the members:          {member_accs.mean():.2%}, test loss "
          f"{np.mean([m.test_loss for m in ens.members]):.4f}")
    print(f"ensemble of 5 (mean probs):   {ens.ensemble_accuracy:.2%}, test loss {ens.ensemble_loss:.4f}")
    print(f"members the ensemble beats: {int(np.sum(member_accs < ens.ensemble_accuracy))} of {len(member_accs)}")
    print(f"training: {ens.train_seconds / (5 * ens_config.epochs):.3f} s per model-epoch, each member with its "
          f"own shuffle (alone: {per_single:.3f} s)")
    """),
    md("""
    `ensemble_probs` gives each member's class probabilities, `(K, N, C)`, and `ensemble_accuracy`
    scores their average. To see where the gain comes from, we look at the test images on which the
    members do not all agree.
    """),
    code("""
    x_test = train.prepare(data.x_test, jnp.float32)
    probs = np.asarray(sweep.ensemble_probs(ens.params, x_test))       # (5, 10000, 10)
    print("ensemble_accuracy(probs, labels):", f"{sweep.ensemble_accuracy(probs, data.y_test):.2%}")

    votes = probs.argmax(axis=-1)                                     # (5, 10000) each member's label
    disputed = np.any(votes != votes[0], axis=0)
    avg_right = probs.mean(axis=0).argmax(axis=-1) == data.y_test
    members_right = (votes == data.y_test).mean(axis=0)
    print(f"images where the members disagree: {disputed.sum()} of {len(disputed)}")
    print(f"on those, a member is right {members_right[disputed].mean():.1%} of the time, "
          f"the averaged probabilities {avg_right[disputed].mean():.1%}")
    for k in range(1, len(probs) + 1):
        print(f"average of the first {k} members: {sweep.ensemble_accuracy(probs[:k], data.y_test):.2%}")
    """),
    md("""
    On the images every member gets right or every member gets wrong, averaging changes nothing;
    all of the gain is on the disputed ones. There the members' mistakes are partly independent
    (other initial weights, another image order), and a wrong answer is usually given with less
    confidence than the right answers it is averaged with, so the average lands on the right class
    more often than a typical member does. That is why the ensemble beats most or all of its
    members, and why its test loss is lower still: averaging probabilities also tempers the
    confident mistakes that cross-entropy punishes most. The price is K times the work at test
    time, and K times the training, done in one program (section 3).

    ## 5. From the command line

    ```
    jaxmlp sweep --lr 0.001 0.01 0.1 --hidden 128,64 256,128 --batch-size 32 128
    jaxmlp sweep --random 20 --lr 0.001 1 --hidden 128,64 256,128   # lr log-uniform in [0.001, 1]
    jaxmlp train --ensemble 5
    ```

    The first trains the 12 combinations as 4 programs (one per hidden size and batch size) on the
    full training set and prints the table; `--metrics-out sweep.json` also writes every run. The
    last trains seeds 42 to 46 together and prints each member and the ensemble.
    """),
    code("""
    print(f"notebook ran in {time.perf_counter() - notebook_start:.0f} s")
    """),
]

# --------------------------------------------------------------------------- 04

NB04 = [
    md("""
    # Beyond plain SGD

    The original notebook ends with a list of ways to do better than its 784-128-64-10 network
    trained by plain gradient descent: other optimizers, regularization, dropout, data
    augmentation, convolutional networks, transfer learning. jaxmlp implements each one as a small
    pure function. This notebook tries them, on subsets of MNIST and for a few epochs only, so that
    it runs in about a minute on a laptop CPU: the numbers show the effects, not the best accuracy
    each method can reach. The command line runs the full recipes.
    """),
    code("""
    import os
    import time
    from pathlib import Path
    from typing import NamedTuple

    import jax
    import jax.numpy as jnp
    import matplotlib.pyplot as plt
    import numpy as np

    import jaxmlp
    from jaxmlp import augment, cnn, model, optim, transfer

    %matplotlib inline
    notebook_start = time.perf_counter()
    """ + _FIND_DATA + """
    data = jaxmlp.load_dataset(data_dir)
    x_test = jaxmlp.normalize(jaxmlp.flatten(data.x_test))  # all 10,000 test images, float32
    y_test = jnp.asarray(data.y_test, jnp.int32)
    print("train", data.x_train.shape, "test", data.x_test.shape)
    """),
    md("""
    ## 1. Optimizers

    An optimizer in `jaxmlp.optim` is a pair of pure functions: `init(params) -> state` and
    `update(grads, state, params) -> (params, state)`. The state (momentum buffers, Adam's moment
    estimates, a step counter) is an ordinary PyTree that goes in and comes out, like the params.
    So one training loop serves every optimizer, and nothing stops it from training several
    networks at once. The loop below compiles a whole epoch into one program with `lax.scan`, as
    `jaxmlp.train.run_epoch` does, and takes one step of every run on each minibatch. (It also
    knows dropout, for section 3.)
    """),
    code("""
    class Run(NamedTuple):
        \"\"\"One network to train: its optimizer, its starting params, its dropout rate.\"\"\"
        optimizer: optim.Optimizer
        params: list
        dropout: float = 0.0


    def train(runs, x, y, *, epochs, key, batch_size=32):
        \"\"\"Train every Run of the dict `runs` side by side, one step each on every minibatch.
        Returns ({name: params}, {name: per-step losses (steps,)}). The images left over when
        batch_size doesn't divide len(x) sit out that epoch.\"\"\"
        @jax.jit
        def one_epoch(params, states, key, x, y):
            shuffle_key, dropout_key = jax.random.split(key)
            n = x.shape[0] // batch_size * batch_size
            batches = jax.random.permutation(shuffle_key, x.shape[0])[:n].reshape(-1, batch_size)
            step_keys = jax.random.split(dropout_key, batches.shape[0])

            def step(carry, inputs):
                (params, states), (idx, step_key) = carry, inputs
                new_params, new_states, losses = {}, {}, {}
                for name, run in runs.items():
                    def loss(p):
                        logits = jaxmlp.forward(p, x[idx], key=step_key, dropout=run.dropout)
                        return jaxmlp.cross_entropy(logits, y[idx])
                    losses[name], grads = jax.value_and_grad(loss)(params[name])
                    new_params[name], new_states[name] = run.optimizer.update(grads, states[name], params[name])
                return (new_params, new_states), losses

            (params, states), losses = jax.lax.scan(step, (params, states), (batches, step_keys))
            return params, states, losses

        params = {name: run.params for name, run in runs.items()}
        states = {name: run.optimizer.init(run.params) for name, run in runs.items()}
        curves = {name: [] for name in runs}
        for epoch_key in jax.random.split(key, epochs):
            params, states, losses = one_epoch(params, states, epoch_key, x, y)
            for name in runs:
                curves[name].append(np.asarray(losses[name]))
        return params, {name: np.concatenate(c) for name, c in curves.items()}
    """),
    md("""
    We train the notebook's network, with its own initialisation (`N(0, 1) * 0.01`), on the first
    12,800 training images for two epochs (800 steps of 32 images), once per optimizer, all from
    the same initial weights and on the same minibatches. Each gets a usual learning rate:
    0.1 for SGD (the notebook's best); 0.01 for momentum and Nesterov, because with `beta = 0.9`
    their steady step is `lr / (1 - beta) = 0.1`, the same as SGD's; 1e-3 for Adam and AdamW.
    """),
    code("""
    x_small = jaxmlp.normalize(jaxmlp.flatten(data.x_train[:12800]))
    y_small = jnp.asarray(data.y_train[:12800], jnp.int32)
    sizes = [784, 128, 64, 10]
    init = jaxmlp.init_params(jax.random.PRNGKey(0), sizes, scheme="notebook")

    settings = {"sgd": "lr 0.1", "momentum": "lr 0.01, beta 0.9", "nesterov": "lr 0.01, beta 0.9",
                "adam": "lr 1e-3", "adamw": "lr 1e-3, weight decay 0.01"}
    runs = {
        "sgd": Run(optim.sgd(0.1), init),
        "momentum": Run(optim.momentum(0.01, beta=0.9), init),
        "nesterov": Run(optim.nesterov(0.01, beta=0.9), init),
        "adam": Run(optim.adam(1e-3), init),
        "adamw": Run(optim.adamw(1e-3, weight_decay=0.01), init),
    }
    trained, curves = train(runs, x_small, y_small, epochs=2, key=jax.random.PRNGKey(1))
    print(f"{'optimizer':10s} {'settings':27s} {'loss, first 100 steps':>21s} {'last 100':>9s} {'test accuracy':>14s}")
    for name in runs:
        _, acc = jaxmlp.evaluate(trained[name], x_test, y_test)
        print(f"{name:10s} {settings[name]:27s} {curves[name][:100].mean():21.3f} {curves[name][-100:].mean():9.3f} "
              f"{acc:13.2%}")
    """),
    code("""
    window = 25
    fig, ax = plt.subplots(figsize=(7, 3.5))
    for name, curve in curves.items():
        smooth = np.convolve(curve, np.ones(window) / window, mode="valid")
        ax.plot(np.arange(window, len(curve) + 1), smooth, label=name, lw=1.4,
                ls="--" if name == "adamw" else "-")  # adamw lies on top of adam
    ax.set(xlabel="step (minibatch of 32)", ylabel="training loss (mean of 25 steps)", yscale="log",
           title="Five optimizers, same network, same data")
    ax.legend()
    plt.show()
    """),
    md("""
    With weights this small the first gradients are tiny too, so SGD and the two momentum methods
    spend about 300 steps on the `log(10) = 2.30` plateau, where the network still gives every class
    probability 0.1 (the original notebook's runs with lr 0.001 never left it). Adam divides each
    coordinate's step by a running estimate of that gradient's size, so its steps are about `lr`
    in size from the first update on, however small the gradients, and it leaves the plateau at
    once. After the plateau the others fall about as fast, but 800 steps are not enough to catch
    up. With He initialisation (section 3) SGD learns from the first step too. The command line
    takes the same choices: `jaxmlp train --optimizer adam --lr 1e-3`.

    ## 2. Learning-rate schedules

    A schedule is a function from the step number to a learning rate, and any optimizer accepts one
    in place of a number: `optim.sgd(optim.cosine(0.1, total_steps))`. Four of them over 1,000 steps:
    """),
    code("""
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
        print(f"{label:22s}", "  ".join(f"step {s:3d}: {float(schedule(s)):.4f}" for s in (0, 49, 500, 999)))
    """),
    md("""
    Decaying the rate lets the last epochs settle into a minimum instead of bouncing around it;
    a short warmup protects the first steps, when Adam's moment estimates are still noisy and the
    weights are far from anything sensible. In the CLI: `--schedule cosine`, or
    `--schedule warmup-cosine --warmup-epochs 1`.

    ## 3. Dropout

    During training, dropout sets each hidden activation to 0 with probability `rate` and multiplies
    the survivors by `1 / (1 - rate)` ("inverted" dropout), so that every activation keeps its
    expected value and the network needs no change at test time. Two properties to check first:
    with rate 0 the forward pass is unchanged, and on average dropout changes nothing.
    """),
    code("""
    params = trained["sgd"]
    key = jax.random.PRNGKey(2)
    same = jnp.array_equal(jaxmlp.forward(params, x_test[:256], key=key, dropout=0.0),
                           jaxmlp.forward(params, x_test[:256]))
    print("rate 0 gives the forward pass without dropout:", bool(same))

    hidden = model.relu(x_test[:64] @ params[0]["W"] + params[0]["b"])  # first hidden layer (64, 128)
    draws = jax.vmap(lambda k: model.inverted_dropout(k, hidden, 0.5))(jax.random.split(key, 1000))
    active = hidden > 0  # units that ReLU already set to 0 stay 0 either way
    print(f"fraction of active units dropped at rate 0.5: {float(jnp.mean(draws[:, active] == 0)):.3f}")
    print(f"mean activation over 1000 dropout masks / without dropout: {float(draws.mean() / hidden.mean()):.4f}")
    """),
    md("""
    Dropout is a regularizer: it makes memorising the training set harder. To see it work we need a
    network that can memorise, so we train the same 784-128-64-10 network (He initialisation this
    time) on only 2,048 images, with SGD (lr 0.1) for 10 epochs, at three dropout rates, side by
    side on the same minibatches. (The command line: `jaxmlp train --dropout 0.2`; in the library,
    dropout is a field of the static `TrainSpec` that `run_epoch` compiles.)
    """),
    code("""
    x_tiny = jaxmlp.normalize(jaxmlp.flatten(data.x_train[:2048]))
    y_tiny = jnp.asarray(data.y_train[:2048], jnp.int32)
    he_init = jaxmlp.init_params(jax.random.PRNGKey(3), sizes, scheme="he")
    rates = (0.0, 0.2, 0.5)
    runs = {rate: Run(optim.sgd(0.1), he_init, dropout=rate) for rate in rates}
    regularized, _ = train(runs, x_tiny, y_tiny, epochs=10, key=jax.random.PRNGKey(4))
    print(f"{'dropout':>7s} {'train accuracy':>15s} {'test accuracy':>14s} {'gap':>7s}")
    for rate, params in regularized.items():
        _, train_acc = jaxmlp.evaluate(params, x_tiny, y_tiny)
        _, test_acc = jaxmlp.evaluate(params, x_test, y_test)
        print(f"{rate:7.1f} {train_acc:15.2%} {test_acc:14.2%} {train_acc - test_acc:7.2%}")
    """),
    md("""
    Without dropout the network fits its 2,048 images almost perfectly and the gap to the test set
    is large. The higher the rate, the looser the fit to the training images and the smaller the
    gap. The test accuracy moves by a point at most, about what another random seed would do; at
    rate 0.5 the 64-unit second layer starts to underfit. Dropout pays off on longer runs of bigger
    networks (`jaxmlp train --dropout 0.2`).

    ## 4. Data augmentation

    A digit shifted by a pixel or two, or slightly rotated or rescaled, is still the same digit.
    `augment.random_shift` and `augment.random_affine` make such variants on the fly, each image
    with its own random transform drawn from a key, inside the compiled training step, so every
    epoch sees new images. Below: one test digit, then eight shifts (up to 2 pixels) and eight
    affine warps (rotation up to 10 degrees, scale 0.9 to 1.1, shift up to 2 pixels), the defaults
    of `--augment shift` and `--augment affine`.
    """),
    code("""
    digit = x_test[:1]  # a 7
    copies = jnp.repeat(digit, 8, axis=0)
    shifted = jax.jit(augment.random_shift)(jax.random.PRNGKey(5), copies)
    warped = jax.jit(augment.random_affine)(jax.random.PRNGKey(6), copies)

    fig, axes = plt.subplots(2, 9, figsize=(9, 2.4))
    for row, (label, images) in enumerate((("random_shift", shifted), ("random_affine", warped))):
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
    print("augmented pixels stay in [0, 1]:", bool(jnp.all((warped >= 0) & (warped <= 1))),
          "| shapes kept:", shifted.shape, warped.shape)
    """),
    md("""
    ## 5. L2 regularization and weight decay

    Both pull the weights towards zero. `--l2 c` adds `c * optim.l2_penalty(params)`, that is
    `c/2 * sum ||W||^2` over the weight matrices, to the loss; `--optimizer adamw --weight-decay c`
    instead shrinks every parameter by `lr * c * p` after Adam's step, outside the moment
    estimates (decoupled weight decay). With a zero gradient, one AdamW step is just that shrink.
    Over section 1's 800 steps it compounds to `0.99999 ** 800`, about 0.992: too little to move
    the loss curve, but the weights end up smaller than Adam's.
    """),
    code("""
    params = trained["adamw"]
    zero_grads = jax.tree_util.tree_map(jnp.zeros_like, params)
    decay = optim.adamw(1e-3, weight_decay=0.01)
    shrunk, _ = jax.jit(decay.update)(zero_grads, decay.init(params), params)
    ratio = shrunk[0]["W"] / params[0]["W"]
    print(f"W1 after / before: {float(ratio.min()):.7f} to {float(ratio.max()):.7f}"
          f"  (1 - lr * weight_decay = {1 - 1e-3 * 0.01:.7f})")
    print(f"l2_penalty after section 1: adam {float(optim.l2_penalty(trained['adam'])):.2f}, "
          f"adamw {float(optim.l2_penalty(trained['adamw'])):.2f}")
    """),
    md("""
    ## 6. A small convolutional network

    A convolution slides small filters over the image, so a stroke detector works wherever the
    stroke is, and pooling lets a digit move a little without changing the features. `jaxmlp.cnn`
    keeps the params format of the MLP (a list of `{"W", "b"}` dicts; convolution kernels are
    `(height, width, in_channels, out_channels)`), so optimizers, `l2_penalty` and checkpoints
    work unchanged. The default network, as `jax.eval_shape` reports it without drawing a single
    number:
    """),
    code("""
    shapes = jax.eval_shape(cnn.init_cnn_params, jax.random.PRNGKey(0))
    for i, layer in enumerate(shapes):
        kind = "conv 3x3 + relu + maxpool 2x2" if layer["W"].ndim == 4 else ("dense + relu" if i < len(shapes) - 1 else "dense (logits)")
        print(f"layer {i}: W {str(layer['W'].shape):18s} b {str(layer['b'].shape):8s} {kind}")
    print(f"{sum(leaf.size for leaf in jax.tree_util.tree_leaves(shapes)):,} parameters "
          f"(the MLP has {sum(leaf.size for leaf in jax.tree_util.tree_leaves(init)):,})")
    """),
    md("""
    Convolutions are slow on a CPU, so here we train a narrower copy (8 and 16 channels, 64 hidden
    units) for one epoch over section 1's 12,800 images, with Adam. XLA runs a convolution quickly
    at the top level of a compiled program but slowly inside `lax.scan` on a CPU, so this time each
    step is its own jitted call in a plain Python loop, with `conv_impl="xla"`. (The library's fused
    `run_epoch`, `TrainSpec(arch="cnn")`, switches to an im2col matrix product on the CPU instead.)
    """),
    code("""
    small_cnn = cnn.init_cnn_params(jax.random.PRNGKey(7), channels=(8, 16), hidden=64)
    cnn_opt = optim.adam(1e-3)

    @jax.jit
    def cnn_step(params, state, xb, yb):
        loss, grads = jax.value_and_grad(
            lambda p: jaxmlp.cross_entropy(cnn.cnn_forward(p, xb, conv_impl="xla"), yb))(params)
        params, state = cnn_opt.update(grads, state, params)
        return params, state, loss

    predict = jax.jit(lambda params, x: jnp.argmax(cnn.cnn_forward(params, x, conv_impl="xla"), axis=-1))

    t0 = time.perf_counter()
    params, state = small_cnn, cnn_opt.init(small_cnn)
    for i in range(0, x_small.shape[0], 32):  # one epoch, in order (the images are not sorted by label)
        params, state, loss = cnn_step(params, state, x_small[i:i + 32], y_small[i:i + 32])
    preds = np.concatenate([predict(params, x_test[i:i + 2000]) for i in range(0, 10000, 2000)])
    cnn_acc = np.mean(preds == data.y_test)
    print(f"{sum(leaf.size for leaf in jax.tree_util.tree_leaves(small_cnn)):,} parameters, one epoch on 12,800 images "
          f"in {time.perf_counter() - t0:.0f} s (compilation included)")
    print(f"CNN test accuracy: {cnn_acc:.2%}")
    """),
    md("""
    That is one short epoch of a small model, not the architecture's limit. `jaxmlp train --preset
    cnn` is the full recipe: the default 32/64-channel network on all 60,000 images, with Adam, a
    learning-rate schedule, dropout and random shifts (`jaxmlp presets` lists the exact flags). On
    a CPU an epoch of it takes minutes, on a GPU seconds.

    ## 7. Transfer learning

    A network trained on one task has learned features (its hidden layers) that may serve another.
    We train the notebook's network on digits 0-4 only, give it a new 5-way head for digits 5-9 with
    `transfer.replace_head`, freeze the two hidden layers with `optim.freeze` and
    `transfer.trainable_mask`, and train only the head on just 320 labelled images of 5-9.
    """),
    code("""
    def digits(images, labels, classes, limit=None):
        \"\"\"Inputs and labels 0..len(classes)-1 of the images whose label is in classes.\"\"\"
        keep = np.flatnonzero(np.isin(labels, classes))[:limit]
        return jaxmlp.normalize(jaxmlp.flatten(images[keep])), jnp.asarray(labels[keep] - classes[0], jnp.int32)

    x_04, y_04 = digits(data.x_train, data.y_train, [0, 1, 2, 3, 4], 6400)
    x_04_test, y_04_test = digits(data.x_test, data.y_test, [0, 1, 2, 3, 4])
    x_59, y_59 = digits(data.x_train, data.y_train, [5, 6, 7, 8, 9], 320)
    x_59_test, y_59_test = digits(data.x_test, data.y_test, [5, 6, 7, 8, 9])

    fresh = jaxmlp.init_params(jax.random.PRNGKey(9), [784, 128, 64, 5], scheme="he")
    pretrained = train({"0-4": Run(optim.adam(1e-3), fresh)}, x_04, y_04, epochs=2, key=jax.random.PRNGKey(10))[0]["0-4"]
    print(f"trained on 6,400 images of 0-4: test accuracy on 0-4 {jaxmlp.evaluate(pretrained, x_04_test, y_04_test)[1]:.2%}")

    new_head = transfer.replace_head(jax.random.PRNGKey(11), pretrained, num_classes=5)
    mask = transfer.trainable_mask(new_head, freeze=[0, 1])  # False for every leaf of layers 0 and 1
    print("trainable:", mask)
    """),
    md("""
    Fine-tuning on the 320 images of 5-9 for 10 epochs, side by side with two runs that train the
    whole network on the same data: one from scratch, one starting from the 0-4 body.
    """),
    code("""
    runs = {
        "frozen body, new head only": Run(optim.freeze(optim.adam(1e-2), mask), new_head),
        "whole network, from scratch": Run(optim.adam(1e-3), fresh),
        "whole network, from 0-4 body": Run(optim.adam(1e-3), new_head),
    }
    finetuned, _ = train(runs, x_59, y_59, epochs=10, key=jax.random.PRNGKey(12))
    for label in runs:
        params = finetuned[label]
        print(f"{label:30s} test accuracy on 5-9: {jaxmlp.evaluate(params, x_59_test, y_59_test)[1]:.2%}")

    head_only = finetuned["frozen body, new head only"]
    frozen_same = all(bool(jnp.array_equal(head_only[i][name], pretrained[i][name]))
                      for i in (0, 1) for name in ("W", "b"))
    head_moved = not bool(jnp.array_equal(head_only[2]["W"], new_head[2]["W"]))
    print("frozen layers bit-identical after fine-tuning:", frozen_same, "| head changed:", head_moved)
    """),
    md("""
    Freezing is cheap (only the head's 325 parameters learn) and cannot damage the body, but the
    body's features were shaped to tell 0-4 apart and do not fully serve 5-9. Starting from them
    and training everything does about as well as starting from scratch (within what another seed
    would change): MNIST is too easy for a 0-4 head start to matter. Transfer pays when the first
    task had far more data than the second, as with large pretrained image models.

    ## 8. Ensembles, and where to go next

    Averaging the predictions of several independently trained networks is another reliable gain;
    notebook 03 covers ensembles, which jaxmlp trains together in one vmapped program
    (`jaxmlp train --ensemble 5`).
    """),
    code("""
    print(f"notebook ran in {time.perf_counter() - notebook_start:.0f} s")
    """),
]

NOTEBOOKS: dict[str, list[tuple[str, str]]] = {
    "01_mnist_from_scratch": NB01,
    "02_autodiff_vs_manual": NB02,
    "03_sweeps_and_ensembles": NB03,
    "04_beyond_sgd": NB04,
}


def build(name: str) -> nbformat.NotebookNode:
    """The notebook ``name`` with its cells and no outputs (stable cell ids, so rebuilds diff cleanly)."""
    nb = nbformat.v4.new_notebook()
    nb.metadata["kernelspec"] = {"name": KERNEL_NAME, "display_name": "Python 3", "language": "python"}
    nb.metadata["language_info"] = {"name": "python"}
    for i, (kind, source) in enumerate(NOTEBOOKS[name]):
        cell = nbformat.v4.new_markdown_cell(source) if kind == "markdown" else nbformat.v4.new_code_cell(source)
        cell.id = f"{name[:2]}-{i:02d}"
        nb.cells.append(cell)
    return nb


def execute(nb: nbformat.NotebookNode, timeout: int = CELL_TIMEOUT_S) -> nbformat.NotebookNode:
    """Run every cell in a fresh "python3" kernel with notebooks/ as the working directory.

    The kernel inherits this process's environment (so $JAXMLP_DATA_DIR reaches it). A cell that
    raises stops execution with nbclient's CellExecutionError.
    """
    from nbclient import NotebookClient

    client = NotebookClient(nb, kernel_name=KERNEL_NAME, timeout=timeout, record_timing=False,
                            resources={"metadata": {"path": str(NOTEBOOK_DIR)}})
    client.execute()
    return nb


def output_text(nb: nbformat.NotebookNode) -> str:
    """Every text the code cells printed or returned (stream, plain-text results, tracebacks)."""
    parts = []
    for cell in nb.cells:
        for out in cell.get("outputs", []):
            if "text" in out:
                parts.append(out["text"])
            if "data" in out and "text/plain" in out["data"]:
                parts.append(out["data"]["text/plain"])
            if "traceback" in out:
                parts.extend(out["traceback"])
    return "\n".join(parts)


def absolute_paths(nb: nbformat.NotebookNode) -> list[str]:
    """Lines of the outputs that show an absolute path (they would leak this machine's layout)."""
    return [line for line in output_text(nb).splitlines() if ABSOLUTE_PATH_RE.search(line)]


def main(argv: list[str]) -> int:
    names = [a.removesuffix(".ipynb") for a in argv] or list(NOTEBOOKS)
    unknown = [n for n in names if n not in NOTEBOOKS]
    if unknown:
        print(f"build_notebooks: unknown notebook(s) {unknown}; known: {list(NOTEBOOKS)}", file=sys.stderr)
        return 2
    for name in names:
        nb = execute(build(name))
        leaks = absolute_paths(nb)
        if leaks:
            print(f"build_notebooks: {name} prints absolute paths, not saved:\n  " + "\n  ".join(leaks),
                  file=sys.stderr)
            return 1
        path = NOTEBOOK_DIR / f"{name}.ipynb"
        nbformat.write(nb, path)
        print(f"wrote {path.relative_to(NOTEBOOK_DIR.parent)}")
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
