"""``jaxmlp.config`` on its own: value checks, cross-field rules, the settings a combination would ignore,
the traced hyperparameters and the flags derived from the fields. Written from what mutation testing
found unpinned (docs/mutation.md): the messages and rules were reached only through whole runs."""
import argparse
import dataclasses

import jax.numpy as jnp
import numpy as np
import pytest

from jaxmlp import config as cfg
from jaxmlp._compat import enable_x64
from jaxmlp.config import ConfigError, TrainConfig, hparam_names, hparams, unused_settings


def refused(message: str, **fields) -> None:
    """TrainConfig(**fields) raises ConfigError with exactly ``message``."""
    with pytest.raises(ConfigError) as err:
        TrainConfig(**fields)
    assert str(err.value) == message


def test_flags_and_fields_word_every_field_name():
    err = ConfigError("TrainConfig.warmup_epochs (3) must be less than TrainConfig.epochs (3)")
    assert err.flags() == "--warmup-epochs (3) must be less than --epochs (3)"
    assert err.fields() == "warmup_epochs (3) must be less than epochs (3)"


def test_number_and_text_checks():
    """Booleans are not numbers, integral floats are integers, other floats are not; each refusal quotes
    the value; text fields want text."""
    refused("TrainConfig.lr: expected a positive finite number, got True", lr=True)
    refused("TrainConfig.epochs: expected a positive integer, got 2.5", epochs=2.5)
    assert TrainConfig(epochs=3.0).epochs == 3 and isinstance(TrainConfig(epochs=3.0).epochs, int)
    refused("TrainConfig.epochs: expected a positive integer, got None", epochs=None)
    refused("TrainConfig.optimizer: expected text, got 3", optimizer=3)
    refused("TrainConfig.optimizer: unknown value 'lion'; choose one of sgd, momentum, nesterov, adam, adamw",
            optimizer="lion")


def test_hidden_sizes_from_any_spelling():
    assert cfg.hidden_sizes(["256,128"]) == cfg.hidden_sizes([256, 128]) == cfg.hidden_sizes("256, 128") == (256, 128)
    assert cfg.hidden_sizes(["8", " 4 ,"]) == (8, 4)
    with pytest.raises(argparse.ArgumentTypeError, match="got nothing"):
        cfg.hidden_sizes([","])


def test_from_dict_names_the_wrong_kind():
    with pytest.raises(ValueError) as err:
        TrainConfig.from_dict([1, 2], where="ck.npz: config")
    assert str(err.value) == "ck.npz: config: expected an object of settings, got list"
    with pytest.raises(ValueError) as err:
        TrainConfig.from_dict({"warmup_epochs": 4, "epochs": 2, "schedule": "warmup-cosine"})
    assert str(err.value) == "config: warmup_epochs (4) must be less than epochs (2)"


def test_cross_field_rules():
    """Each cross-field rule, its message in full, and its boundary."""
    assert TrainConfig(classes=[5, 3]).classes == (5, 3)
    refused("TrainConfig.classes: need two or more distinct non-negative labels, got [3, 3]", classes=(3, 3))
    refused("TrainConfig.new_head replaces the head of a trained model; it needs TrainConfig.finetune (a checkpoint)",
            new_head=True)
    refused("TrainConfig.warmup_epochs (3) must be less than TrainConfig.epochs (3)",
            schedule="warmup-cosine", warmup_epochs=3, epochs=3)
    assert TrainConfig(schedule="warmup-cosine", warmup_epochs=2, epochs=3).warmup_epochs == 2
    assert TrainConfig(schedule="cosine", epochs=3).epochs == 3  # no warmup: no rule
    refused("TrainConfig.patience (early stopping) needs a validation split (TrainConfig.val_split)", patience=2)
    refused("TrainConfig.grad manual computes in the params' dtype; TrainConfig.dtype bfloat16 (mixed precision) "
            "needs autodiff", grad="manual", dtype="bfloat16")
    refused("TrainConfig.grad manual is the MLP's hand-derived backprop; TrainConfig.arch cnn needs autodiff",
            grad="manual", arch="cnn")
    assert TrainConfig(grad="manual").grad == "manual"


def test_unused_settings_of_each_combination():
    """What each combination would ignore, and why (a config or a dict of fields gives the same)."""
    plain = unused_settings(TrainConfig())
    assert set(plain) == {"momentum", "beta1", "beta2", "warmup_epochs", "elastic_sigma", "elastic_alpha"}
    assert plain["momentum"] == "only momentum and nesterov use it; TrainConfig.optimizer is sgd"
    assert plain["beta1"] == "only adam and adamw use it; TrainConfig.optimizer is sgd"
    assert plain["warmup_epochs"] == "only the warmup-cosine schedule warms up; TrainConfig.schedule is constant"
    assert plain["elastic_sigma"] == "only the elastic augmentation reads it; TrainConfig.augment is none"
    assert unused_settings({"optimizer": "adam"}) == unused_settings(TrainConfig(optimizer="adam"))
    adam = unused_settings({"optimizer": "adam"})
    assert "beta1" not in adam and "momentum" in adam
    assert "warmup_epochs" not in unused_settings({"schedule": "warmup-cosine"})
    assert "elastic_sigma" not in unused_settings({"augment": "elastic"})
    cnn = unused_settings({"arch": "cnn"})
    why = "the CNN's layers are fixed (conv32-conv64-dense128, He init, ReLU); TrainConfig.arch is cnn"
    assert cnn["hidden"] == cnn["activation"] == unused_settings({"arch": "cnn", "init": "glorot"})["init"] == why
    assert "init" not in cnn  # the default init is He's, the CNN's own
    assert unused_settings({"finetune": "ck.npz"})["init"] == (
        "the params come from TrainConfig.finetune; only a new head (TrainConfig.new_head) is drawn")
    assert "init" not in unused_settings({"finetune": "ck.npz", "new_head": True})
    for dtype in ("float64", "bfloat16"):
        assert unused_settings({"dtype": dtype})["matmul_precision"] == (
            f"it sets the precision of float32 matmuls; TrainConfig.dtype is {dtype}")
    assert "matmul_precision" not in plain


def test_an_ignored_setting_is_refused_naming_it():
    refused("TrainConfig.momentum would be ignored: only momentum and nesterov use it; TrainConfig.optimizer is sgd",
            momentum=0.5)
    assert TrainConfig(optimizer="momentum", momentum=0.5).momentum == 0.5


def test_hparams_are_the_traced_fields():
    names = hparam_names()
    assert names == ("lr", "momentum", "beta1", "beta2", "weight_decay", "l2")
    hp = hparams()
    assert set(hp) == set(names) and all(v.dtype == jnp.float32 and v.shape == () for v in hp.values())
    assert float(hp["lr"]) == pytest.approx(0.1) and float(hp["weight_decay"]) == 0.0
    assert float(hparams(TrainConfig(optimizer="adamw"))["weight_decay"]) == pytest.approx(0.01)
    with enable_x64(True):
        custom = hparams(TrainConfig(lr=0.5), jnp.float64, momentum=0.7, beta1=None)
    assert custom["lr"].dtype == np.float64 and float(custom["lr"]) == 0.5
    assert float(custom["momentum"]) == pytest.approx(0.7) and float(custom["beta1"]) == pytest.approx(0.9)
    with enable_x64(True):  # float32 asked for stays float32 where Python floats would be float64
        assert {v.dtype for v in hparams(TrainConfig(), jnp.float32).values()} == {np.dtype(np.float32)}
    with pytest.raises(ValueError) as err:
        hparams(lr=0.1, speed=2, colour=1)
    assert str(err.value) == "unknown hyperparameters: ['colour', 'speed']"


def test_flags_follow_the_fields():
    """Booleans are switches, checked fields parse and refuse through their check, choices are enforced,
    and the help shows the default of the config given."""
    parser = argparse.ArgumentParser(exit_on_error=False)
    cfg.add_flags(parser, defaults_from=TrainConfig(lr=0.3))
    args = parser.parse_args(["--lr", "0.5", "--hidden", "8,4", "--dtype", "bfloat16", "--new-head"])
    assert args.lr == 0.5 and args.hidden == ["8,4"] and args.dtype == "bfloat16" and args.new_head is True
    assert parser.parse_args([]).lr is None  # "not given" stays visible to presets and resume
    with pytest.raises(argparse.ArgumentError):
        parser.parse_args(["--dtype", "float16"])
    with pytest.raises(argparse.ArgumentError):
        parser.parse_args(["--lr", "-1"])
    helps = {a.dest: a.help for a in parser._actions}
    assert helps["lr"].endswith("(default: 0.3)") and "(default" not in helps["new_head"]
    assert [f.name for f in dataclasses.fields(TrainConfig) if f.metadata["flag"]] == [
        a.dest for a in parser._actions if a.dest != "help"]
