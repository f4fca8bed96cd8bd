"""Tests for jaxmlp.plots: each picture is a real PNG; the pure helpers count exactly."""
from __future__ import annotations

import struct
import sys

import numpy as np
import pytest

pytest.importorskip("matplotlib")

from jaxmlp import plots  # noqa: E402

PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"


def png_size(path) -> tuple[int, int]:
    """(width, height) of a PNG, after checking its signature and that it is more than a blank stub."""
    data = path.read_bytes()
    assert data[:8] == PNG_SIGNATURE
    assert data[12:16] == b"IHDR"
    # A blank figure of this size compresses to ~2-3 kB; real content is larger.
    assert len(data) > 4000, len(data)
    return struct.unpack(">II", data[16:24])


@pytest.fixture(scope="module")
def fake_run():
    """Small synthetic 'digits' (bright blob at a class-dependent spot), labels and imperfect preds."""
    rng = np.random.default_rng(0)
    n = 200
    labels = rng.integers(0, 10, n)
    images = rng.random((n, 28, 28)) * 0.2
    for i, c in enumerate(labels):
        r, col = 4 + 2 * (c // 5) * 5, 3 + 5 * (c % 5)
        images[i, r:r + 6, col:col + 4] = 1.0
    preds = labels.copy()
    wrong = rng.random(n) < 0.15
    preds[wrong] = (labels[wrong] + 1 + rng.integers(0, 9, wrong.sum())) % 10
    history = [{"epoch": e, "loss": 1.0 / e, "val_loss": 1.1 / e, "train_accuracy": 1 - 0.2 / e,
                "val_accuracy": 1 - 0.25 / e} for e in range(1, 6)]
    params = [{"W": rng.standard_normal((784, 20)), "b": np.zeros(20)},
              {"W": rng.standard_normal((20, 10)), "b": np.zeros(10)}]
    return images, labels, preds, history, params


def test_confusion_matrix_matches_hand_count():
    """Rows are true classes, columns predictions; counts match a hand tally."""
    labels = [0, 0, 1, 2, 2, 2, 1]
    preds = [0, 1, 1, 2, 0, 2, 1]
    # true 0 -> pred 0 once, pred 1 once; true 1 -> pred 1 twice; true 2 -> pred 2 twice, pred 0 once.
    expected = np.array([[1, 1, 0],
                         [0, 2, 0],
                         [1, 0, 2]])
    cm = plots.confusion_matrix(labels, preds, 3)
    np.testing.assert_array_equal(cm, expected)
    assert np.issubdtype(cm.dtype, np.integer)
    # An absent class still gets its (zero) row and column.
    np.testing.assert_array_equal(plots.confusion_matrix(labels, preds, 4)[:3, :3], expected)
    assert plots.confusion_matrix(labels, preds, 4)[3].sum() == 0


def test_confusion_matrix_rejects_bad_input():
    """Out-of-range classes and length mismatches raise ValueError."""
    with pytest.raises(ValueError, match=r"\[0, 3\)"):
        plots.confusion_matrix([0, 3], [0, 1], 3)
    with pytest.raises(ValueError, match="labels but"):
        plots.confusion_matrix([0, 1], [0], 3)


def test_curves_png(tmp_path, fake_run):
    """plot_curves writes a PNG with loss+accuracy panels, and a loss-only one for a minimal history."""
    history = fake_run[3]
    w_full, _ = png_size(plots.plot_curves(history, tmp_path / "c.png"))
    minimal = [{"epoch": 1, "loss": 0.9}, {"epoch": 2, "loss": 0.5}]
    w_loss, _ = png_size(plots.plot_curves(minimal, tmp_path / "c1.png"))
    assert w_full > w_loss  # the accuracy panel widens the figure
    # A test accuracy only at the last epoch is drawn without error.
    png_size(plots.plot_curves(history + [{"epoch": 6, "loss": 0.1, "test_accuracy": 0.97}], tmp_path / "c2.png"))
    with pytest.raises(ValueError):
        plots.plot_curves([], tmp_path / "empty.png")


def _legend(ax) -> list[str]:
    return [text.get_text() for text in ax.get_legend().get_texts()]


def _visible_ticks(ax) -> list[float]:
    lo, hi = ax.get_xlim()
    return [tick for tick in ax.get_xticks() if lo <= tick <= hi]


def test_curves_panels_labels_and_integer_epoch_ticks():
    """Loss (train, validation, test) beside accuracy (validation, test, train), each series in the
    legend under its split's name, axes labelled, and only whole epochs on the x-axis."""
    history = [{"epoch": e, "loss": 1 / e, "val_loss": 1.1 / e, "test_loss": 1.2 / e, "val_accuracy": 1 - 0.25 / e,
                "test_accuracy": 1 - 0.3 / e, "train_accuracy": 1 - 0.2 / e} for e in range(1, 8)]
    fig = plots.curves_figure(history)
    fig.canvas.draw()
    loss_ax, acc_ax = fig.axes
    assert _legend(loss_ax) == ["train (mean over the epoch's batches)", "validation", "test"]
    assert _legend(acc_ax) == ["validation", "test", "train"]
    assert (loss_ax.get_title(), loss_ax.get_xlabel(), loss_ax.get_ylabel()) == ("Loss", "epoch", "cross-entropy loss")
    assert (acc_ax.get_title(), acc_ax.get_xlabel(), acc_ax.get_ylabel()) == ("Accuracy", "epoch", "accuracy")
    for ax in fig.axes:
        ticks = _visible_ticks(ax)
        assert len(ticks) >= 2 and all(float(tick).is_integer() for tick in ticks), ticks
    # Accuracy is a fraction shown as a percentage, and never given room above 100%.
    assert acc_ax.get_ylim()[1] <= 1.005
    assert acc_ax.yaxis.get_major_formatter().format_ticks([0.5])[0].endswith("%")
    # Each split keeps its colour in both panels.
    colors = {ax: {line.get_label(): line.get_color() for line in ax.get_lines()} for ax in fig.axes}
    assert colors[loss_ax]["validation"] == colors[acc_ax]["validation"]
    assert colors[loss_ax]["test"] == colors[acc_ax]["test"]


def test_curves_one_epoch_and_final_test_numbers():
    """A one-epoch run gets the single tick 1 (not 0.8, 1.0, 1.2); a history with the training loss only,
    given the final test numbers, shows them as one labelled point each at the last epoch."""
    one = plots.curves_figure([{"epoch": 1, "loss": 0.9}])
    one.canvas.draw()
    assert len(one.axes) == 1 and _visible_ticks(one.axes[0]) == [1.0]

    fig = plots.curves_figure([{"epoch": e, "loss": 1 / e} for e in (1, 2, 3)], test_loss=0.2, test_accuracy=0.97)
    loss_ax, acc_ax = fig.axes
    assert _legend(loss_ax) == ["train (mean over the epoch's batches)", "test (end of training)"]
    assert _legend(acc_ax) == ["test (end of training)"]
    (star,) = acc_ax.get_lines()
    assert list(star.get_xdata()) == [3.0] and list(star.get_ydata()) == [0.97]
    assert [text.get_text() for text in acc_ax.texts] == ["97.00%"]
    # A history that already has per-epoch test values is drawn as is; the final numbers add nothing.
    per_epoch = plots.curves_figure([{"epoch": 1, "loss": 1.0, "test_accuracy": 0.9}], test_accuracy=0.9)
    assert _legend(per_epoch.axes[1]) == ["test"]


def test_save_training_plots_curves_show_test_accuracy_from_preds(tmp_path, fake_run, monkeypatch):
    """save_training_plots hands plot_curves the test accuracy its preds give (and test_loss when passed)."""
    images, labels, preds, _, params = fake_run
    seen = {}
    real = plots.plot_curves

    def spy(history, path, **kwargs):
        seen.update(kwargs)
        return real(history, path, **kwargs)

    monkeypatch.setattr(plots, "plot_curves", spy)
    plots.save_training_plots(tmp_path, history=[{"epoch": 1, "loss": 0.5}], params=params,
                              x_test_images=images, y_test=labels, preds=preds, test_loss=0.3)
    assert seen == {"test_loss": 0.3, "test_accuracy": pytest.approx(float(np.mean(labels == preds)))}


def test_confusion_png(tmp_path, fake_run):
    """plot_confusion writes a PNG, with or without class names."""
    _, labels, preds, _, _ = fake_run
    out = plots.plot_confusion(labels, preds, tmp_path / "sub" / "cm.png")
    assert out == tmp_path / "sub" / "cm.png"
    png_size(out)
    names = ["zero", "one", "two", "three", "four", "five", "six", "seven", "eight", "nine"]
    png_size(plots.plot_confusion(labels, preds, tmp_path / "cm2.png", class_names=names))


def test_misclassified_selection_and_png(tmp_path, fake_run):
    """The grid shows the first max_images wrong predictions; both image layouts are accepted."""
    images, labels, preds, _, _ = fake_run
    idx = plots.misclassified_indices(labels, preds, max_images=5)
    assert len(idx) == 5 and np.all(labels[idx] != preds[idx])
    assert np.all(np.diff(idx) > 0) and idx[0] == np.flatnonzero(labels != preds)[0]
    png_size(plots.plot_misclassified(images, labels, preds, tmp_path / "m.png", max_images=9))
    png_size(plots.plot_misclassified(images.reshape(-1, 784), labels, preds, tmp_path / "m2.png", max_images=4))
    with pytest.raises(ValueError, match="images"):
        plots.plot_misclassified(images.reshape(-1, 28 * 28)[:, :780], labels, preds, tmp_path / "bad.png")


def test_misclassified_with_none_wrong(tmp_path, fake_run):
    """With every prediction right the function still writes a (message) PNG instead of failing."""
    images, labels, _, _, _ = fake_run
    path = tmp_path / "none.png"
    data_ok = plots.plot_misclassified(images, labels, labels, path)
    assert path.read_bytes()[:8] == PNG_SIGNATURE and data_ok == path
    assert plots.misclassified_indices(labels, labels).size == 0


def test_first_layer_png(tmp_path, fake_run):
    """First-layer weights (784, H) render as 28x28 tiles; non-square fan_in is refused."""
    W1 = fake_run[4][0]["W"]
    png_size(plots.plot_first_layer(W1, tmp_path / "w.png", max_units=16))
    with pytest.raises(ValueError, match="square"):
        plots.plot_first_layer(np.zeros((785, 4)), tmp_path / "bad.png")


def _runs(grid):
    rng = np.random.default_rng(1)
    return [{"config": {**cfg, "epochs": 3}, "test_accuracy": 0.9 + 0.05 * rng.random()} for cfg in grid]


def test_varying_hyperparameters():
    """Only keys that differ are reported: numeric with most values first, categorical later, seed last."""
    runs = _runs([{"lr": lr, "optimizer": o, "seed": s, "hidden": [64]}
                  for lr in (0.1, 0.01, 0.001) for o in ("sgd", "adam") for s in (0, 1)])
    assert plots.varying_hyperparameters(runs) == ["lr", "optimizer", "seed"]
    assert plots.varying_hyperparameters(_runs([{"lr": 0.1}, {"lr": 0.1}])) == []


@pytest.mark.parametrize("grid", [
    [{"lr": lr} for lr in (1e-3, 1e-2, 1e-1)],                                   # one varying, log x
    [{"batch_size": b, "lr": 0.1} for b in (32, 64, 128)],                      # one varying, linear x
    [{"lr": lr, "hidden": h} for lr in (1e-3, 1e-2) for h in (32, 128)],         # two varying
    [{"lr": lr, "optimizer": o} for lr in (1e-3, 1e-2) for o in ("sgd", "adam")],  # numeric + categorical
    [{"lr": lr, "hidden": h, "optimizer": o, "seed": s}                          # many -> panels
     for lr in (1e-3, 1e-2) for h in (32, 64) for o in ("sgd", "adam") for s in (0, 1)],
    [{"lr": 0.1}, {"lr": 0.1}],                                                  # nothing varies
])
def test_sweep_png(tmp_path, grid):
    """plot_sweep writes a PNG for 0, 1, 2 and more varying hyperparameters."""
    png_size(plots.plot_sweep(_runs(grid), tmp_path / "s.png"))


def test_sweep_says_what_its_lines_are():
    """The title says a line is the mean test accuracy of the runs at each value (with how many), the
    legend names the line and the dots, the y-axis is test accuracy and the x-axis the swept key."""
    runs = _runs([{"lr": lr, "seed": s} for lr in (1e-3, 1e-2, 1e-1) for s in (0, 1, 2)])
    (ax,) = plots.sweep_figure(runs).axes
    assert ax.get_title() == ("Sweep: test accuracy vs lr (9 runs)\n"
                              "line: mean test accuracy of the 3 runs at each point; dots: single runs")
    assert _legend(ax) == ["mean of the runs at each lr", "single runs"]
    assert (ax.get_xlabel(), ax.get_ylabel(), ax.get_xscale()) == ("lr", "test accuracy", "log")
    (line,) = ax.get_lines()
    accs = np.array([r["test_accuracy"] for r in runs]).reshape(3, 3)
    np.testing.assert_allclose(line.get_ydata(), accs.mean(axis=1))

    # One run per value: no mean and no dots to speak of.
    (ax,) = plots.sweep_figure(_runs([{"lr": lr} for lr in (1e-3, 1e-2)])).axes
    assert ax.get_title().endswith("\nline: test accuracy of the one run at each point")
    assert _legend(ax) == ["one run at each lr"]

    # Two keys: one line per value of the second, named in the legend.
    (ax,) = plots.sweep_figure(_runs([{"lr": lr, "hidden": h} for lr in (1e-3, 1e-2) for h in (32, 128)])).axes
    assert _legend(ax) == ["hidden=32", "hidden=128"]
    assert "one line per hidden" in ax.get_title()

    # More keys: one panel each, pooling the other settings, which the title says.
    fig = plots.sweep_figure(_runs([{"lr": lr, "hidden": h, "optimizer": o} for lr in (1e-3, 1e-2)
                                    for h in (32, 64) for o in ("sgd", "adam")]))
    assert [ax.get_xlabel() for ax in fig.axes] == ["lr", "hidden", "optimizer"]
    assert "(the other settings pooled): mean test accuracy of the 4 runs at each point" in fig._suptitle.get_text()


def test_sweep_without_results_is_an_error(tmp_path):
    """Runs that all lack a test accuracy give a ValueError, not an empty picture."""
    with pytest.raises(ValueError, match="test_accuracy"):
        plots.plot_sweep([{"config": {"lr": 0.1}, "test_accuracy": None}], tmp_path / "s.png")


def test_save_training_plots(tmp_path, fake_run):
    """The four training PNGs land in a new folder and are returned in order."""
    images, labels, preds, history, params = fake_run
    out = plots.save_training_plots(tmp_path / "plots" / "run1", history=history, params=params,
                                    x_test_images=images.reshape(-1, 784), y_test=labels, preds=preds)
    assert [p.name for p in out] == ["curves.png", "confusion.png", "misclassified.png", "first_layer.png"]
    for p in out:
        assert p.parent == tmp_path / "plots" / "run1"
        png_size(p)


def test_missing_matplotlib_gives_install_hint(tmp_path, monkeypatch):
    """Without matplotlib the error is an ImportError that says how to install the extra."""
    # A None entry in sys.modules makes the import fail as if the package were absent.
    monkeypatch.setitem(sys.modules, "matplotlib.figure", None)
    with pytest.raises(ImportError, match=r"pip install 'jaxmlp\[plots\]'") as info:
        plots.plot_curves([{"epoch": 1, "loss": 1.0}], tmp_path / "c.png")
    assert isinstance(info.value, plots.PlotsUnavailableError)
    assert not (tmp_path / "c.png").exists()
