"""Models as values (``jaxmlp.models``) and the one place each concept lives.

A model is a small, immutable, hashable value with ``init`` and ``apply``: equal descriptions are
equal values (one compiled program), ``apply`` computes exactly what the pure functions compute, a
checkpoint's record reads back as the same value, and the architecture's name is read in the
registry only. Activations are one table of function and derivative.
"""
from __future__ import annotations

import dataclasses
import pathlib
import re

import jax
import jax.numpy as jnp
import numpy as np
import pytest

import jaxmlp
from jaxmlp import activations, models
from jaxmlp.backprop import _derivative, manual_grad
from jaxmlp.cnn import cnn_forward, init_cnn_params
from jaxmlp.config import ConfigError, TrainConfig
from jaxmlp.model import forward, init_params


def test_a_model_is_an_immutable_hashable_value():
    a, b = jaxmlp.MLP(hidden=[128, 64], activation="tanh"), jaxmlp.MLP(hidden=(128, 64), activation="tanh")
    assert a == b and hash(a) == hash(b) and a.hidden == (128, 64)
    assert a != jaxmlp.MLP(hidden=(128, 64)) and jaxmlp.CNN() == jaxmlp.CNN()
    with pytest.raises(dataclasses.FrozenInstanceError):
        a.activation = "relu"  # type: ignore[misc]


@pytest.mark.parametrize("kwargs, match", [
    ({"activation": "swish"}, r"^activation: unknown 'swish'; choose one of relu, tanh, sigmoid, gelu$"),
    ({"hidden": (128, 0)}, r"^hidden: expected positive layer widths"),
    ({"dropout": 1.0}, r"^dropout: expected a rate in \[0, 1\)"),
])
def test_a_bad_model_is_refused_when_built(kwargs, match):
    with pytest.raises(ValueError, match=match):
        jaxmlp.MLP(**kwargs)


def test_mlp_init_and_apply_are_the_pure_functions():
    """``MLP.init`` draws ``init_params``' bits and ``apply`` is ``forward`` with the model's activation,
    dropout only when training with a key."""
    key, x = jax.random.PRNGKey(0), jax.random.uniform(jax.random.PRNGKey(1), (5, 12))
    model = jaxmlp.MLP(hidden=(7, 6), activation="gelu", dropout=0.25)
    params = model.init(key, 12, 3, scheme="he")
    ref = init_params(key, [12, 7, 6, 3], scheme="he")
    assert all(np.array_equal(p, r) for p, r in zip(jax.tree_util.tree_leaves(params), jax.tree_util.tree_leaves(ref)))
    assert np.array_equal(model.apply(params, x), forward(params, x, activation="gelu"))
    assert np.array_equal(model.apply(params, x, key=key), forward(params, x, activation="gelu"))  # eval: no dropout
    assert np.array_equal(model.apply(params, x, key=key, train=True),
                          forward(params, x, key=key, dropout=0.25, activation="gelu"))
    assert model.init(key, (3, 4), 3)[0]["W"].shape == (12, 7)  # an image shape is flattened


def test_mlp_manual_grad_is_backprops_with_its_activation(x64):
    key, x = jax.random.PRNGKey(2), jax.random.uniform(jax.random.PRNGKey(3), (6, 5), jnp.float64)
    model = jaxmlp.MLP(hidden=(4,), activation="sigmoid")
    params = model.init(key, 5, 3, dtype=jnp.float64)
    y = jnp.arange(6) % 3
    got = model.manual_grad(params, x, y, l2=0.1)
    want = manual_grad(params, x, y, activation="sigmoid", l2=0.1)
    assert all(np.array_equal(a, b) for a, b in zip(jax.tree_util.tree_leaves(got), jax.tree_util.tree_leaves(want)))


def test_cnn_init_and_apply_are_the_pure_functions():
    key, x = jax.random.PRNGKey(4), jax.random.uniform(jax.random.PRNGKey(5), (2, 64))
    model = jaxmlp.CNN(channels=(4,), hidden=8, conv_impl="im2col")
    params = model.init(key, 64, 10)
    ref = init_cnn_params(key, in_shape=(8, 8, 1), channels=(4,), hidden=8)
    assert all(np.array_equal(p, r) for p, r in zip(jax.tree_util.tree_leaves(params), jax.tree_util.tree_leaves(ref)))
    assert np.array_equal(model.apply(params, x), cnn_forward(params, x, conv_impl="im2col"))
    assert not hasattr(model, "manual_grad")
    with pytest.raises(ValueError, match="^scheme: the CNN's init is He's"):
        model.init(key, 64, 10, scheme="glorot")
    with pytest.raises(ValueError, match="not square one-channel images"):
        model.init(key, 60, 10)


@pytest.mark.parametrize("model", [jaxmlp.MLP(), jaxmlp.MLP(hidden=(16,), activation="tanh", dropout=0.1),
                                   jaxmlp.CNN(), jaxmlp.CNN(channels=(8, 16), hidden=32, dropout=0.5)])
def test_a_checkpoint_record_reads_back_as_the_same_model(model):
    record = models.to_dict(model)
    assert record["name"] == model.name and models.from_dict(record) == model
    import json
    assert models.from_dict(json.loads(json.dumps(record))) == model


@pytest.mark.parametrize("record, match", [
    ({"name": "rnn"}, "^arch: unknown architecture 'rnn'; choose one of mlp, cnn$"),
    ({"name": "mlp", "width": 3}, "^model: unknown field 'width' for mlp$"),
    ({"hidden": [3]}, "^model: expected an object with a 'name'"),
    ({"name": "mlp", "activation": "swish"}, "^activation: unknown 'swish'"),
])
def test_a_bad_model_record_is_one_value_error(record, match):
    with pytest.raises(ValueError, match=match):
        models.from_dict(record)


def test_a_config_describes_its_model():
    assert models.from_config(TrainConfig(hidden=(32,), activation="tanh", dropout=0.2)) == \
        jaxmlp.MLP(hidden=(32,), activation="tanh", dropout=0.2)
    assert models.from_config(TrainConfig(arch="cnn", dropout=0.5)) == jaxmlp.CNN(dropout=0.5)
    with pytest.raises(ConfigError, match="TrainConfig.arch cnn needs autodiff"):
        TrainConfig(arch="cnn", grad="manual")


def test_finetuning_compatibility_is_decided_by_the_models():
    assert models.finetune_mismatch(jaxmlp.MLP(), jaxmlp.MLP(activation="tanh", dropout=0.3)) is None
    assert models.finetune_mismatch(jaxmlp.MLP(hidden=(8,)), jaxmlp.MLP()) == \
        "has hidden sizes [8], the run asks for [128, 64]"
    assert models.finetune_mismatch(jaxmlp.CNN(), jaxmlp.MLP()) == "holds a cnn model, but the run's arch is mlp"


def test_an_unknown_activation_has_no_derivative():
    """``backprop._derivative("swish")`` once returned GELU's derivative; every lookup is the table's now."""
    z = jnp.linspace(-2, 2, 9)
    with pytest.raises(ValueError, match=r"^activation: unknown 'swish'; choose one of relu, tanh, sigmoid, gelu$"):
        _derivative("swish", z)
    for name in activations.NAMES:
        assert np.array_equal(_derivative(name, z), activations.get(name).derivative(z))
    assert jaxmlp.model.ACTIVATIONS == activations.NAMES == tuple(TrainConfig.__dataclass_fields__["activation"]
                                                                  .metadata["choices"])


@pytest.mark.parametrize("name", activations.NAMES)
def test_each_derivative_is_the_functions_derivative(name, x64):
    z = jnp.linspace(-3.0, 3.0, 13, dtype=jnp.float64) + 0.01  # off the ReLU kink
    act = activations.get(name)
    autodiff = jax.vmap(jax.grad(act.fn))(z)
    assert np.allclose(act.derivative(z), autodiff, rtol=1e-12, atol=1e-15)


def test_the_architecture_is_chosen_in_the_registry_only():
    """No module outside ``jaxmlp/models`` compares an architecture's name."""
    root = pathlib.Path(jaxmlp.__file__).parent
    hits = [f"{p.relative_to(root)}:{i}" for p in root.rglob("*.py") if "models" not in p.parts
            for i, line in enumerate(p.read_text().splitlines(), 1) if re.search(r"arch\s*[!=]=", line)]
    assert hits == []


def test_config_is_frozen_and_hashable():
    config = TrainConfig(hidden=[64, "32"])
    assert config.hidden == (64, 32) and hash(config) == hash(TrainConfig(hidden=(64, 32)))
    with pytest.raises(dataclasses.FrozenInstanceError):
        config.lr = 0.5  # type: ignore[misc]
    assert config.validate() is config
    assert dataclasses.replace(config, epochs=3).epochs == 3
    with pytest.raises(ConfigError, match="^TrainConfig.epochs: expected a positive integer"):
        dataclasses.replace(config, epochs=0)


def test_the_front_door_is_small_and_speaks_one_language():
    """``jaxmlp.__all__`` holds what a notebook researcher uses (handlers' Event and StopRun included);
    one keyword for one idea across it (``divergence``, ``resume``, ``key``, keyword-only
    ``activation``); checkpoints come back as named tuples with the model first."""
    import inspect

    from jaxmlp.model import forward_intermediates, predict
    from jaxmlp.runs import LoadedModel, LoadedRun

    assert len(jaxmlp.__all__) <= 30 and len(set(jaxmlp.__all__)) == len(jaxmlp.__all__)
    assert {"Event", "StopRun", "MLP", "CNN", "train", "evaluate", "load_model"} <= set(jaxmlp.__all__)
    assert all(hasattr(jaxmlp, name) for name in jaxmlp.__all__)
    train, fit = inspect.signature(jaxmlp.train).parameters, inspect.signature(jaxmlp.fit).parameters
    assert {"divergence", "resume"} <= set(train) & set(fit) and "divergence_rule" not in fit
    assert "key" in train and "seed" not in train
    for fn in (jaxmlp.forward, forward_intermediates, predict):
        assert inspect.signature(fn).parameters["activation"].kind is inspect.Parameter.KEYWORD_ONLY
    assert LoadedModel._fields[:2] == ("model", "params") and LoadedRun._fields[:2] == ("model", "state")
    assert jaxmlp.evaluate.__annotations__["return"] in ("Evaluation", jaxmlp.evaluation.Evaluation)
