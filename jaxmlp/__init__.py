"""jaxmlp: the classic NumPy MNIST MLP notebook as a small, fast, tested JAX library.

The functional core (params in, params out; keys passed explicitly)::

    import jax, jaxmlp
    data = jaxmlp.load_dataset("path/to/mnist")            # uint8 arrays
    x = jaxmlp.normalize(jaxmlp.flatten(data.x_train))     # (60000, 784) float32 in [0, 1]
    model = jaxmlp.MLP(hidden=(128, 64))                   # a model is one value
    params = model.init(jax.random.PRNGKey(0), 784, 10)    # [{"W", "b"}, ...]
    logits = model.apply(params, x[:32])                   # (32, 10)
    grads = jax.grad(jaxmlp.loss)(params, x[:32], data.y_train[:32])
    same = jaxmlp.manual_grad(params, x[:32], data.y_train[:32])   # the notebook's backprop

and the engine, for any pure loss, params PyTree and optimizer (``init``/``update``, optax's protocol)::

    result = jaxmlp.train(loss_fn, params, jaxmlp.optim.adam(1e-3), (x, y), epochs=5, batch_size=128)
    test_loss, test_accuracy = jaxmlp.evaluate(model, result.params, x_test, y_test)

``jaxmlp.__all__`` is the front door a notebook needs; everything else stays in its module
(``jaxmlp.sweep``, ``jaxmlp.handlers``, ``jaxmlp.checkpoint``, ...).
"""
from . import optim
from ._version import __version__ as __version__
from .backprop import gradcheck, manual_grad, max_relative_error
from .checkpoint import load_params
from .config import TrainConfig
from .data import Dataset, flatten, load_dataset, normalize, one_hot
from .engine import TrainResult, TrainState, train
from .evaluation import evaluate, predict_labels, predict_probs
from .events import DivergenceError, Event, Interrupted, StopRun
from .losses import accuracy, cross_entropy, loss
from .model import forward, init_params
from .models import CNN, MLP
from .runs import fit, load_model

__all__ = [
    # data
    "Dataset", "load_dataset", "normalize", "flatten", "one_hot",
    # models and the functional core
    "MLP", "CNN", "init_params", "forward", "loss", "cross_entropy", "accuracy",
    # gradients
    "manual_grad", "gradcheck", "max_relative_error",
    # optimizers
    "optim",
    # training, evaluation, checkpoints
    "train", "TrainResult", "TrainState", "TrainConfig", "fit", "evaluate", "predict_labels", "predict_probs",
    "load_model", "load_params",
    # what handlers see and raise
    "Event", "StopRun", "DivergenceError", "Interrupted",
]
