"""--notebook-exact on the real MNIST reproduces the seed notebook's printed numbers.

The seed printed its results to 2 decimals (accuracy in %, i.e. 1 test image = 0.01 pp) and its losses
to 4 decimals; float64 JAX and NumPy differ only in summation order, which stays far below that.
These tests need the real data (mandatory in CI) and take ~1 minute together.
"""
import jax.numpy as jnp
import numpy as np
import pytest

from jaxmlp.backprop import manual_grad
from jaxmlp.losses import notebook_loss
from jaxmlp.model import forward, init_params_numpy, softmax
from jaxmlp.notebook import fit_notebook
from jaxmlp.runs import prepare

pytestmark = [pytest.mark.realdata, pytest.mark.slow, pytest.mark.usefixtures("x64")]

# (lr, batch size, seed's test accuracy %, seed's printed epoch losses or None). The lr-0.01 run (93.83%;
# the seed printed 93.82 after one extra step, see the replay test) and the batch-128 run (75.48%) are
# checked once, by test_reproduce's seed table: its units run fit_notebook's program (fit_notebook is a
# group of one; the lr-0.01 row's group gives the single run's accuracy).
SEED_TABLE = [
    (0.1, 32, 97.09, [0.8316, 0.1798, 0.1163, 0.0883, 0.0713, 0.0585, 0.0483, 0.0400, 0.0334, 0.0288]),
    (0.001, 32, 11.35, [2.3024, 2.3019, 2.3015, 2.3012, 2.3009, 2.3007, 2.3004, 2.3001, 2.2996, 2.2991]),
]


def test_first_five_images_loss_and_update(mnist):
    """Cells 225-232: seed-42 weights give the printed loss on the first 5 images, and one lr-0.01 update
    moves W1 by the printed sum of absolute changes."""
    params = init_params_numpy(42, [784, 128, 64, 10])
    x = prepare(mnist.x_train[:5], jnp.float64)
    y = jnp.asarray(mnist.y_train[:5])
    probs = softmax(forward(params, x))
    np.testing.assert_allclose(probs[0, :3], [0.09999784, 0.1000113, 0.09999249], atol=5e-9)
    assert float(notebook_loss(params, x, y)) == pytest.approx(2.302670109823364, abs=1e-13)
    g = manual_grad(params, x, y)
    change = float(jnp.abs(0.01 * g[0]["W"]).sum())
    assert change == pytest.approx(0.020560581875656167, rel=1e-10)


@pytest.mark.parametrize("lr,batch_size,expected,losses", SEED_TABLE)
def test_seed_experiments(mnist, lr, batch_size, expected, losses):
    """Each of the seed's experiments gives its test accuracy to 0.01 pp (and its epoch losses to 4 decimals)."""
    state = np.random.get_state()[1].copy()
    result = fit_notebook(mnist, lr=lr, batch_size=batch_size)
    assert (np.random.get_state()[1] == state).all(), "NumPy's global RNG must be left alone"
    assert round(result.test_accuracy * 100, 2) == pytest.approx(expected, abs=1e-9)
    if losses is not None:
        assert [round(h["loss"], 4) for h in result.history] == pytest.approx(losses, abs=1e-9)
    assert result.params[0]["W"].dtype == jnp.float64


def test_replaying_the_seeds_extra_step_gives_93_82(mnist):
    """The seed's first run followed one test update on 5 images; replaying it reproduces its 93.82%, loss 0.2150."""
    result = fit_notebook(mnist, lr=0.01, replay_step=True)
    assert round(result.test_accuracy * 100, 2) == pytest.approx(93.82, abs=1e-9)
    assert round(result.test_loss, 4) == pytest.approx(0.2150, abs=1e-9)
    assert [round(h["loss"], 4) for h in result.history][:3] == pytest.approx([2.3009, 2.1733, 0.9216], abs=1e-9)
