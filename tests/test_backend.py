"""Backend-dependent choices come from one switch, exercised here on the CPU for every platform."""
import jax
import jax.numpy as jnp
import numpy as np

from jaxmlp import backend, cnn


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
    GPU run computes what the CPU tests check."""
    params = cnn.init_cnn_params(jax.random.PRNGKey(0), (8, 8, 1), num_classes=3, channels=(2, 3), hidden=5)
    x = jax.random.uniform(jax.random.PRNGKey(1), (4, 64))
    convs = []
    real = jax.lax.conv_general_dilated
    monkeypatch.setattr(jax.lax, "conv_general_dilated", lambda *a, **k: convs.append(1) or real(*a, **k))
    monkeypatch.setattr(backend, "choices", lambda platform=None: backend.Choices("gpu", "xla", 0.25, 1, 1))
    as_gpu = cnn.cnn_forward(params, x)
    assert len(convs) == 2  # both conv layers went to XLA's convolution
    monkeypatch.setattr(backend, "choices", lambda platform=None: backend.Choices("cpu", "im2col", 0.25, 16, 4))
    as_cpu = cnn.cnn_forward(params, x)
    assert len(convs) == 2  # none more: im2col matmuls
    np.testing.assert_allclose(np.asarray(as_gpu), np.asarray(as_cpu), rtol=1e-5, atol=1e-6)
    assert as_cpu.dtype == jnp.float32
