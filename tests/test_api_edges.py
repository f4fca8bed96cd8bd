"""The public Python functions against bad input: one clear ValueError each, from the library's own check.

Wrong shapes, wrong dtypes, labels out of range or of the wrong length, one-hot labels where indices
are expected, empty inputs, Python lists, params of another architecture, a saved state of another
model, nonsense numbers. Each case asserts the error names the argument at fault and was raised by a
``jaxmlp`` frame (a check where the data enters), not from inside JAX or NumPy. Inputs that a user
would reasonably mean (labels as a Python list) must work instead, and give the same answer as arrays.
Everything is tiny (4x4 images, a few rows) and most cases fail before anything compiles.
"""
from __future__ import annotations

import dataclasses
from pathlib import Path

import jax
import jax.numpy as jnp
import numpy as np
import pytest

import jaxmlp
from jaxmlp import optim, steps
from jaxmlp.config import ConfigError, TrainConfig
from jaxmlp.data import Dataset
from jaxmlp.models import MLP
from jaxmlp.notebook import fit_notebook
from jaxmlp.runs import fit, init_model, make_optimizer, spec_for

D, C = 16, 10


def raises_here(fn, *args, match: str, **kwargs) -> str:
    """``fn(*args, **kwargs)`` raises one ValueError matching ``match`` whose innermost frame is jaxmlp's."""
    with pytest.raises(ValueError, match=match) as info:
        fn(*args, **kwargs)
    frames = [Path(str(entry.path)) for entry in info.traceback]
    assert "jaxmlp" in frames[-1].parts, f"raised from {frames[-1]}, not from a jaxmlp check: {info.value}"
    message = str(info.value)
    assert "\n" not in message.strip(), message
    return message


@pytest.fixture(scope="module")
def params():
    return jaxmlp.init_params(jax.random.PRNGKey(0), [D, 8, C], scheme="he")


@pytest.fixture(scope="module")
def x():
    return jnp.asarray(np.random.default_rng(0).uniform(size=(6, D)), jnp.float32)


def dataset(n_train: int = 32, n_test: int = 8, side: int = 4, **changes) -> Dataset:
    rng = np.random.default_rng(1)
    data = Dataset(rng.integers(0, 256, (n_train, side, side)).astype(np.uint8),
                   (np.arange(n_train) % C).astype(np.uint8),
                   rng.integers(0, 256, (n_test, side, side)).astype(np.uint8),
                   (np.arange(n_test) % C).astype(np.uint8))
    return data._replace(**changes)


CONFIG = TrainConfig(hidden=(8,), epochs=1, batch_size=8, init="he")


# ---------------------------------------------------------------- the model and its gradients


def test_wrong_input_width(params, x):
    bad = x[:, : D - 1]
    for fn in (jaxmlp.forward, jaxmlp.model.predict):
        raises_here(fn, params, bad, match=r"^x: expected shape \(N, 16\)")
    raises_here(jaxmlp.evaluate, MLP(), params, bad, jnp.zeros(6, jnp.int32), match="^x: ")
    raises_here(jaxmlp.predict_probs, MLP(), params, bad, match="^x: ")
    raises_here(steps.sgd_step, params, bad, jnp.zeros(6, jnp.int32), 0.1, match="^x: ")
    raises_here(jaxmlp.manual_grad, params, bad, jnp.zeros(6, jnp.int32), match="^x: ")
    raises_here(jaxmlp.loss, params, bad, jnp.zeros(6, jnp.int32), match="^x: ")


def test_params_of_another_architecture(params, x):
    """CNN params, a single layer dict, layers that do not chain: named as params."""
    from jaxmlp.cnn import init_cnn_params

    cnn = init_cnn_params(jax.random.PRNGKey(0), in_shape=(4, 4, 1), channels=(2,), hidden=4)
    broken = [params[0], {"W": params[1]["W"][:3], "b": params[1]["b"]}]
    for bad in (cnn, params[0], broken, []):
        for fn in (jaxmlp.forward, jaxmlp.model.predict):
            raises_here(fn, bad, x, match="^params: ")
        raises_here(jaxmlp.manual_grad, bad, x, jnp.zeros(6, jnp.int32), match="^params: ")
        raises_here(steps.sgd_step, bad, x, jnp.zeros(6, jnp.int32), 0.1, match="^params: ")
    raises_here(jaxmlp.evaluate, MLP(), params[0], x, jnp.zeros(6, jnp.int32), match="^params: ")


def test_labels_of_the_wrong_length_or_shape(params, x):
    for fn in (jaxmlp.loss, jaxmlp.manual_grad):
        raises_here(fn, params, x, jnp.zeros(5, jnp.int32), match="^labels: 5 labels for 6 rows")
        raises_here(fn, params, x, jnp.zeros((6, 2, 2), jnp.int32), match="^labels: ")
    raises_here(jaxmlp.evaluate, MLP(), params, x, np.zeros(5, np.int32), match="^y: 5 labels for 6 examples")


def test_labels_out_of_range_and_wrong_dtypes(params, x):
    raises_here(jaxmlp.evaluate, MLP(), params, x, np.full(6, 12), match=r"^y: label 12 is out of range for 10 classes")
    raises_here(jaxmlp.evaluate, MLP(), params, x, np.full(6, -1), match="^y: label -1 is negative")
    raises_here(jaxmlp.evaluate, MLP(), params, x, np.full(6, 1.5), match="^y: expected integer class indices")
    raises_here(jaxmlp.evaluate, MLP(), params, (x * 255).astype(jnp.uint8), np.zeros(6, int),
                match="^x: expected float inputs scaled to")
    raises_here(jaxmlp.predict_labels, MLP(), params, np.zeros((6, D), np.uint8), match="^x: expected float inputs")


def test_empty_inputs(params, x):
    raises_here(jaxmlp.evaluate, MLP(), params, x[:0], jnp.zeros(0, jnp.int32), match="^x: no examples")
    raises_here(jaxmlp.predict_probs, MLP(), params, x[:0], match="^x: no examples")
    raises_here(jaxmlp.evaluate, MLP(), params, x, jnp.zeros(6, jnp.int32), chunk_size=0, match="^chunk_size: ")
    raises_here(steps.train_epoch_loop, params, x, jnp.zeros(6, jnp.int32), jax.random.PRNGKey(0), 0.1, 0,
                match="^batch_size: ")


def test_an_empty_batch_is_refused_not_nan(params, x):
    """The mean loss of no rows is 0/0: the losses refuse it (a shape check, free under jit)."""
    for fn in (jaxmlp.loss, jaxmlp.manual_grad):
        raises_here(fn, params, x[:0], jnp.zeros(0, jnp.int32), match=r"(?i)empty|no (rows|examples)")


def test_lists_work_as_arrays(params, x):
    """Python lists are what a user means by data: the same answers as arrays."""
    y = [0, 1, 2, 3, 4, 5]
    assert jaxmlp.evaluate(MLP(), params, x, y) == jaxmlp.evaluate(MLP(), params, x, np.asarray(y))
    assert np.array_equal(jaxmlp.predict_labels(MLP(), params, np.asarray(x).tolist()),
                          jaxmlp.predict_labels(MLP(), params, x))


def test_flatten_takes_a_batch_only():
    """flatten: (N, H, W) -> (N, H*W); a single (H, W) image or a flat (784,) vector is refused, not
    silently reshaped to the wrong thing."""
    assert jaxmlp.flatten(np.zeros((3, 4, 4), np.uint8)).shape == (3, 16)
    for bad in (np.zeros((784,), np.uint8), np.zeros((28, 28), np.uint8)):
        raises_here(jaxmlp.flatten, bad, match="flatten|images")


# ---------------------------------------------------------------- fit, train and the notebook's run


FIT_CASES = {
    "labels shorter than images": (dict(y_train=np.zeros(20, np.uint8)), r"^data\.y_train: 20 labels for 32 examples"),
    "a negative label": (dict(y_train=np.full(32, -1, np.int64)), r"^data\.y_train: label -1 is negative"),
    "one-hot labels": (dict(y_train=np.eye(C, dtype=np.float32)[np.arange(32) % C]),
                       r"^data\.y_train: expected class indices \(N,\), got one-hot"),
    "float labels": (dict(y_train=np.zeros(32, np.float32)), r"^data\.y_train: expected integer class indices"),
    "an empty training set": (dict(x_train=np.zeros((0, 4, 4), np.uint8), y_train=np.zeros(0, np.uint8)),
                              r"^data\.x_train: the training set is empty"),
    "an empty test set": (dict(x_test=np.zeros((0, 4, 4), np.uint8), y_test=np.zeros(0, np.uint8)),
                          r"^data\.x_test: the test set is empty"),
    "float pixels": (dict(x_train=np.zeros((32, 4, 4), np.float32)), r"^data\.x_train: expected uint8 pixels"),
    "test images of another size": (dict(x_test=np.zeros((8, 5, 5), np.uint8)), r"^data\.x_test: images of shape"),
}


@pytest.mark.parametrize("change,match", FIT_CASES.values(), ids=FIT_CASES.keys())
def test_fit_refuses_bad_data_before_any_work(change, match):
    raises_here(fit, CONFIG, dataset(**change), match=match)


def test_fit_takes_labels_as_a_python_list_and_any_label_count():
    """Labels as a list train exactly as the array; labels 0..13 make a 14-way model (the data says so)."""
    data = dataset()
    as_list = fit(CONFIG, data._replace(y_train=data.y_train.tolist(), y_test=data.y_test.tolist()))
    as_array = fit(CONFIG, data)
    assert as_list.test_loss == as_array.test_loss
    wide = fit(CONFIG, data._replace(y_train=(np.arange(32) % 14).astype(np.uint8)))
    assert wide.params[-1]["b"].shape == (14,)


def test_fit_refuses_a_state_of_another_model():
    """resume: a 16-8-8-10 state given to a 16-8-10 config is named, not trained."""
    other = dataclasses.replace(CONFIG, hidden=(8, 8))
    key = jax.random.PRNGKey(0)
    opt = make_optimizer(spec_for(other, 32), jaxmlp.config.hparams(other))
    state = jaxmlp.engine.init_state(init_model(other, key, D, C), opt, key)
    raises_here(fit, CONFIG, dataset(), resume=state, match=r"^resume: the state")
    wrong_dtype = jax.tree_util.tree_map(lambda a: a.astype(jnp.float16) if a.dtype == jnp.float32 else a, state)
    raises_here(fit, dataclasses.replace(CONFIG, hidden=(8, 8)), dataset(), resume=wrong_dtype,
                match=r"^resume: the state's .* is float16")


def test_fit_refuses_splits_that_leave_a_side_empty():
    raises_here(fit, dataclasses.replace(CONFIG, val_split=0.999), dataset(), match=r"val_split .* leaves none")
    raises_here(fit, dataclasses.replace(CONFIG, val_split=0.01), dataset(), match=r"val_split .* holds out none")


def test_jaxmlp_train_checks_its_arguments(params):
    x, y = np.random.default_rng(0).uniform(size=(8, D)).astype(np.float32), np.zeros(8, np.int32)
    opt = optim.sgd(0.1)
    for name, kwargs in (("batch_size", dict(batch_size=0)), ("epochs", dict(epochs=0)),
                         ("batch_size", dict(batch_size=True))):
        raises_here(jaxmlp.train, jaxmlp.loss, params, opt, (x, y), match=f"^{name}: ", **kwargs)
    raises_here(jaxmlp.train, jaxmlp.loss, params, opt, (x, y[:5]), match="^data: x and y need the same number")
    raises_here(jaxmlp.train, jaxmlp.loss, params, opt, (x[:0], y[:0]), match="^data: the training set is empty")
    raises_here(jaxmlp.train, jaxmlp.loss, params, opt, x, match="^data: expected a pair")
    bad = Dataset(np.zeros((8, 4, 4), np.uint8), np.zeros(5, np.uint8), np.zeros((2, 4, 4), np.uint8), np.zeros(2))
    raises_here(jaxmlp.train, jaxmlp.loss, params, opt, bad, match=r"^data\.y_train: 5 labels for 8")


NOTEBOOK_CASES = {
    "lr": (dict(lr=-1), "^lr: "), "batch_size": (dict(batch_size=0), "^batch_size: "),
    "epochs": (dict(epochs=0), "^epochs: "), "seed": (dict(seed=-3), "^seed: "),
    "hidden": (dict(hidden=["a"]), "^hidden: "),
}


@pytest.mark.parametrize("kwargs,match", NOTEBOOK_CASES.values(), ids=NOTEBOOK_CASES.keys())
def test_fit_notebook_checks_its_numbers(kwargs, match):
    raises_here(fit_notebook, dataset(), match=match, **kwargs)


def test_fit_notebook_refuses_labels_its_network_cannot_output():
    """The notebook's network has 10 outputs: label 12 (or -1) is refused, not wrapped or NaN."""
    raises_here(fit_notebook, dataset(y_train=np.full(32, 12, np.uint8)), match=r"^data\.y_train: label 12")
    raises_here(fit_notebook, dataset(y_test=np.full(8, -1, np.int64)), match=r"^data\.y_test: label -1")


# ---------------------------------------------------------------- the configuration


def test_config_errors_name_the_field_in_python_and_the_flag_on_the_command_line():
    with pytest.raises(ConfigError) as info:
        TrainConfig(optimizer="adma")
    assert str(info.value).startswith("TrainConfig.optimizer: unknown value 'adma'; choose one of sgd, momentum")
    assert info.value.flags().startswith("--optimizer: unknown value 'adma'")
    with pytest.raises(ConfigError, match=r"^TrainConfig\.batch_size: expected a positive integer, got 0"):
        TrainConfig(batch_size=0)
    with pytest.raises(ConfigError, match=r"^TrainConfig\.lr: "):
        dataclasses.replace(TrainConfig(), lr=-1.0)  # replace builds a new config: checked too
    with pytest.raises(ValueError, match=r"^ck\.npz: config: momentum would be ignored"):
        TrainConfig.from_dict({"momentum": 0.5}, where="ck.npz: config")


UNUSED = {  # settings a run would not use: refused rather than recorded as if they mattered
    "momentum with sgd": dict(momentum=0.5), "beta1 with sgd": dict(beta1=0.5),
    "beta2 with momentum": dict(optimizer="momentum", beta2=0.5),
    "warmup without warmup-cosine": dict(warmup_epochs=1, epochs=3, schedule="cosine"),
    "hidden with the CNN": dict(arch="cnn", hidden=(16,)), "init with the CNN": dict(arch="cnn", init="glorot"),
    "activation with the CNN": dict(arch="cnn", activation="tanh"),
    "matmul precision in float64": dict(dtype="float64", matmul_precision="highest"),
    "init of a fine-tuned model": dict(finetune="ck.npz", init="glorot"),
    "manual gradients of the CNN": dict(arch="cnn", grad="manual"),
}


@pytest.mark.parametrize("kwargs", UNUSED.values(), ids=UNUSED.keys())
def test_config_refuses_what_the_run_would_ignore(kwargs):
    with pytest.raises(ConfigError, match=r"^TrainConfig\.\w+"):
        TrainConfig(**kwargs)


def test_manual_gradients_cover_l2_dropout_augmentation_and_activations():
    """--grad manual is accepted with the regularisers and activations its backprop derives."""
    for kwargs in (dict(l2=0.1), dict(dropout=0.2), dict(augment="shift"), dict(activation="gelu")):
        assert TrainConfig(grad="manual", **kwargs).grad == "manual"


# ---------------------------------------------------------------- errors name Python arguments, not flags


def refused_in_python(fn, *args, match: str, **kwargs) -> str:
    """``raises_here``, and the message names no command-line flag (the CLI words it so; test_cli.py)."""
    message = raises_here(fn, *args, match=match, **kwargs)
    assert "--" not in message, message
    return message


def test_argument_errors_name_the_python_argument_not_a_flag(params):
    """Each library function's refusal names its own argument as a Python caller wrote it."""
    from jaxmlp import backend, memory, parallel, sweep
    from jaxmlp.data import select_classes
    from jaxmlp.presets import preset_config
    from jaxmlp.transfer import trainable_mask

    refused_in_python(parallel.make_mesh, 0, match=r"^make_mesh: num_devices must be a positive integer, got 0$")
    refused_in_python(parallel.initialize, "localhost:1234", 2, None,
                      match=r"^initialize: coordinator, num_processes and process_id go together")
    refused_in_python(parallel.initialize, "localhost", 2, 0, match=r"^initialize: coordinator must be HOST:PORT")
    refused_in_python(sweep.fit_ensemble, TrainConfig(), dataset(), 0,
                      match=r"^fit_ensemble: members must be positive, got 0$")
    refused_in_python(sweep.fit_ensemble, TrainConfig(val_split=0.1), dataset(), 2,
                      match=r"TrainConfig\.val_split/TrainConfig\.patience are not supported")
    refused_in_python(sweep.random_search, TrainConfig(), 0, match=r"^random_search: num_trials must be positive")
    for bad in ([3], [5, 5], [5, -1], [5, 9.5]):
        refused_in_python(select_classes, dataset(), bad, match=r"^select_classes: classes: need two or more")
    refused_in_python(select_classes, dataset(y_train=np.full(32, 1, np.uint8)), [1, 2],
                      match=r"^select_classes: classes: no training example is labelled 2$")
    refused_in_python(preset_config, "fast-99", match=r"^preset_config: name: unknown preset 'fast-99'")
    refused_in_python(optim.schedule_by_name, "linear", 0.1, 100,
                      match=r"^schedule_by_name: name: unknown schedule 'linear'")
    refused_in_python(backend.matmul_precision, "tf32", match=r"^matmul_precision: setting: unknown value 'tf32'")
    refused_in_python(trainable_mask, params, [5],
                      match=r"^trainable_mask: freeze: layer index 5 out of range for 2 layers")
    with pytest.raises(MemoryError) as info:
        memory.check_fits(TrainConfig(), 60000, 784, 10, available=1, params=100_000)
    assert "choose a smaller TrainConfig.hidden or TrainConfig.batch_size" in str(info.value)
    assert "--" not in str(info.value)
