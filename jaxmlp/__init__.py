"""jaxmlp: the classic NumPy MNIST MLP notebook as a small, fast, tested JAX library.

The functional core (params in, params out; keys passed explicitly)::

    import jax, jaxmlp
    data = jaxmlp.load_dataset("path/to/mnist")            # uint8 arrays
    x = jaxmlp.normalize(jaxmlp.flatten(data.x_train))     # (60000, 784) float32 in [0, 1]
    params = jaxmlp.init_params(jax.random.PRNGKey(0), [784, 128, 64, 10])
    logits = jaxmlp.forward(params, x[:32])                # (32, 10)
    grads = jax.grad(jaxmlp.loss)(params, x[:32], data.y_train[:32])
    same = jaxmlp.manual_grad(params, x[:32], data.y_train[:32])   # the notebook's backprop

and the engine, for any pure loss, params PyTree and optimizer (``init``/``update``, optax's protocol)::

    result = jaxmlp.train(loss_fn, params, jaxmlp.optim.adam(1e-3), (x, y), epochs=5, batch_size=128)
"""
from importlib.metadata import PackageNotFoundError as _NotFound, version as _version

from . import optim
from .backprop import (
    GradCheckResult,
    GradCheckRow,
    autodiff_grad,
    finite_difference_grad,
    gradcheck,
    gradcheck_mlp,
    manual_grad,
    max_relative_error,
)
from .config import TrainConfig, hparams
from .data import (
    Dataset,
    download,
    ensure_dataset,
    flatten,
    load_dataset,
    normalize,
    one_hot,
    read_idx,
    resolve_data_dir,
    write_idx,
)
from .engine import DivergenceError, Interrupted, TrainResult, TrainState, chunk, fused_epoch, train
from .evaluation import evaluate, predict_labels, predict_probs
from .losses import accuracy, cross_entropy, l2_penalty, loss, notebook_cross_entropy, notebook_loss
from .model import (
    ACTIVATIONS,
    forward,
    forward_intermediates,
    init_layer,
    init_params,
    init_params_numpy,
    log_softmax,
    predict,
    relu,
    softmax,
)
from .runs import FitResult, TrainSpec, fit, load_model, load_run
from .steps import sgd_step, train_epoch_loop

try:
    __version__ = _version("jaxmlp")
except _NotFound:  # running from a source tree that was never installed
    __version__ = "0.0.0+unknown"

__all__ = [
    "Dataset", "DivergenceError", "FitResult", "Interrupted", "TrainConfig", "TrainSpec", "TrainState", "accuracy",
    "autodiff_grad", "chunk", "cross_entropy", "download", "ensure_dataset", "evaluate", "finite_difference_grad",
    "fit", "flatten", "forward", "forward_intermediates", "fused_epoch", "gradcheck", "hparams", "init_layer",
    "init_params", "init_params_numpy", "load_dataset", "log_softmax", "loss", "manual_grad", "max_relative_error",
    "normalize", "notebook_cross_entropy", "notebook_loss", "one_hot", "predict", "read_idx", "relu",
    "load_model", "load_run", "resolve_data_dir", "sgd_step", "softmax", "train_epoch_loop", "write_idx",
    "train", "TrainResult", "predict_labels", "predict_probs", "optim", "gradcheck_mlp", "GradCheckResult",
    "GradCheckRow", "ACTIVATIONS", "l2_penalty",
]
