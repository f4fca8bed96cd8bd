"""Backend-dependent choices come from one switch, exercised here on the CPU for every platform."""
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from jaxmlp import backend, cnn, runs
from jaxmlp.config import TrainConfig
from jaxmlp.model import init_params


def test_choices_per_platform():
    """CPUs get im2col convolutions and several sweep chains; accelerators XLA's convolutions and one
    wide program; the default is the running backend's."""
    cpu, gpu, tpu = backend.choices("cpu"), backend.choices("gpu"), backend.choices("tpu")
    assert (cpu.conv_impl, gpu.conv_impl, tpu.conv_impl) == ("im2col", "xla", "xla")
    assert cpu.max_sweep_chains >= 1 and gpu.max_sweep_chains == 1
    assert 0 < cpu.chunk_seconds <= 1 and 0 < gpu.chunk_seconds <= 1
    assert backend.choices() == backend.choices(jax.default_backend())


def test_the_cnn_follows_the_switch(monkeypatch):
    """conv_impl="auto" uses what the switch says, and both implementations give the same logits, so a
    GPU run computes what the CPU tests check. Compared at full float32 ("highest"): at a GPU's default
    (TF32) the convolution and the im2col matmul round their inputs in their own ways (the policy in
    ``jaxmlp.backend``), which is the precision setting's difference, not the implementations'."""
    params = cnn.init_cnn_params(jax.random.PRNGKey(0), (8, 8, 1), num_classes=3, channels=(2, 3), hidden=5)
    x = jax.random.uniform(jax.random.PRNGKey(1), (4, 64))
    convs = []
    real = jax.lax.conv_general_dilated
    monkeypatch.setattr(jax.lax, "conv_general_dilated", lambda *a, **k: convs.append(1) or real(*a, **k))
    monkeypatch.setattr(backend, "choices", lambda platform=None: backend.Choices("gpu", "xla", 0.25, 1, 1))
    with backend.matmul_precision("highest"):
        as_gpu = cnn.cnn_forward(params, x)
    assert len(convs) == 2  # both conv layers went to XLA's convolution
    monkeypatch.setattr(backend, "choices", lambda platform=None: backend.Choices("cpu", "im2col", 0.25, 16, 4))
    with backend.matmul_precision("highest"):
        as_cpu = cnn.cnn_forward(params, x)
    assert len(convs) == 2  # none more: im2col matmuls
    np.testing.assert_allclose(np.asarray(as_gpu), np.asarray(as_cpu), rtol=1e-5, atol=1e-6)
    assert as_cpu.dtype == jnp.float32


# ---------------------------------------------------------------- the matmul-precision policy


def test_the_policy_in_numbers():
    """float32 matmuls: full float32 on CPUs whatever the setting; TF32 (2**-11) on GPUs unless "highest";
    one bfloat16 pass on TPUs by default. Unknown settings are refused naming the flag."""
    assert backend.matmul_epsilon("default", "cpu") == backend.matmul_epsilon("highest", "cpu") == 2.0 ** -24
    assert backend.matmul_epsilon("default", "gpu") == backend.matmul_epsilon("high", "gpu") == 2.0 ** -11
    assert backend.matmul_epsilon("highest", "gpu") == 2.0 ** -24
    assert backend.matmul_epsilon("default", "tpu") == 2.0 ** -8
    with backend.matmul_precision("highest"):  # None: the setting in force
        assert backend.matmul_epsilon(None, "gpu") == 2.0 ** -24
    assert backend.matmul_epsilon(None, "gpu") == 2.0 ** -11
    with pytest.raises(ValueError, match="^matmul_precision: setting: unknown value 'tf32'"):
        backend.matmul_precision("tf32")
    with pytest.raises(ValueError, match="matmul.precision"):
        TrainConfig(matmul_precision="fast").validate()


def _fit_programs(data, setting):
    """(fit's result, its compiled chunk program) of a small float32 MLP run at ``setting``."""
    seen = []
    config = TrainConfig(hidden=(16,), epochs=1, batch_size=64, init="he", matmul_precision=setting)
    result = runs.fit(config, data, handlers=[lambda event: seen.append(event.run.program)])
    return result, seen[0]


def test_the_setting_reaches_the_compiled_program_and_its_cache_key(synthetic):
    """--matmul-precision highest compiles the chunk with HIGHEST operand precision (its own program,
    not the default one from the cache), and the flag reaches the config."""
    from jaxmlp.cli import build_parser
    from jaxmlp.cli.train import config_from_args

    default, default_program = _fit_programs(synthetic, "default")
    highest, highest_program = _fit_programs(synthetic, "highest")
    assert highest_program is not default_program
    # operand_precision={highest,highest} on dots (XLA:CPU), "HIGHEST" in cuBLAS calls' configs (XLA:GPU)
    marks = [program.as_text().lower().count("highest") for program in (default_program, highest_program)]
    assert marks[1] > marks[0]
    args = build_parser().parse_args(["train", "--matmul-precision", "highest"])
    assert config_from_args(args).matmul_precision == "highest"
    if jax.default_backend() == "cpu":  # the policy: every setting is full float32 on a CPU
        assert [h["loss"] for h in highest.history] == [h["loss"] for h in default.history]
        assert highest.test_loss == default.test_loss
        for a, b in zip(jax.tree_util.tree_leaves(highest.params), jax.tree_util.tree_leaves(default.params)):
            assert np.array_equal(np.asarray(a), np.asarray(b))


def test_bfloat16_mixed_precision_gradients(x64):
    """dtype bfloat16: float32 params give float32 gradients computed through bfloat16 matmuls. Against
    the float64 gradient of the same params each leaf is within 2**-4 of its largest entry: a handful of
    bfloat16 roundings (2**-9 each: inputs, params and each matmul output, forward and back) stacked
    over three layers; the float32 path is at 1e-5, and the bfloat16 one is visibly further (> 2**-12),
    so the casts are really there. Jitted, as training runs them (and XLA could drop a cast only there):
    one compile per function instead of one per eager op."""
    k1, k2, k3 = jax.random.split(jax.random.PRNGKey(0), 3)
    params64 = init_params(k1, [20, 16, 12, 10], scheme="he", dtype=jnp.float64)
    params64 = [{"W": layer["W"], "b": 0.1 * jax.random.normal(k3, layer["b"].shape, jnp.float64)}
                for layer in params64]
    x64_ = jax.random.uniform(k2, (32, 20), jnp.float64)
    y = jnp.arange(32) % 10
    params32 = jax.tree_util.tree_map(lambda a: a.astype(jnp.float32), params64)
    hp = {"l2": jnp.float32(0.01)}
    grads64 = jax.jit(runs.value_and_grad_fn(runs.TrainSpec()))(params64, x64_, y, None, {"l2": 0.01})[1]
    ref = [np.asarray(r) for r in jax.tree_util.tree_leaves(grads64)]
    assert {r.dtype for r in ref} == {np.dtype(np.float64)}
    errors = {}
    for compute in (None, "bfloat16"):
        value, grads = jax.jit(runs.value_and_grad_fn(runs.TrainSpec(compute_dtype=compute)))(
            params32, x64_.astype(jnp.float32), y, None, hp)
        assert value.dtype == jnp.float32
        assert {g.dtype for g in jax.tree_util.tree_leaves(grads)} == {jnp.dtype(jnp.float32)}
        # In NumPy float64 (float32 -> float64 is exact): the same numbers without an eager compile per leaf.
        errors[compute] = max(float(np.max(np.abs(np.asarray(g, np.float64) - r)) / np.max(np.abs(r)))
                              for g, r in zip(jax.tree_util.tree_leaves(grads), ref))
    assert errors[None] < 1e-5
    assert 2.0 ** -12 < errors["bfloat16"] < 2.0 ** -4, errors


def test_a_bfloat16_run_trains_float32_params(synthetic):
    """fit with dtype bfloat16 keeps float32 params, learns the synthetic classes as float32 does, and is
    not the float32 run (the forward pass really is bfloat16); --grad manual and --matmul-precision with it
    are refused, naming the setting."""
    config = TrainConfig(hidden=(32,), epochs=3, init="he", dtype="bfloat16")
    mixed = runs.fit(config, synthetic)
    plain = runs.fit(TrainConfig(hidden=(32,), epochs=3, init="he"), synthetic)
    assert {p.dtype for p in jax.tree_util.tree_leaves(mixed.params)} == {jnp.dtype(jnp.float32)}
    assert mixed.test_accuracy >= 0.95 and abs(mixed.test_accuracy - plain.test_accuracy) < 0.03
    assert mixed.history[-1]["loss"] != plain.history[-1]["loss"]
    with pytest.raises(ValueError, match="TrainConfig.grad manual .* bfloat16"):
        TrainConfig(dtype="bfloat16", grad="manual").validate()
    with pytest.raises(ValueError, match="matmul_precision"):
        TrainConfig(dtype="bfloat16", matmul_precision="highest").validate()
