"""The tutorial notebooks: kept as percent-format scripts, paired with stored .ipynb, and still running.

``notebooks/NN_name.py`` holds the cells; the committed ``.ipynb`` files are their executed output
(``python notebooks/sync.py --execute`` regenerates them). Executing needs real MNIST (the
``mnist_dir`` fixture: skipped locally without it, a failure in CI) and a Jupyter kernel named
"python3" (ipykernel in the test environment).
"""
from __future__ import annotations

import importlib.util
import re
from pathlib import Path

import pytest

nbformat = pytest.importorskip("nbformat")

REPO = Path(__file__).resolve().parents[1]
NOTEBOOK_DIR = REPO / "notebooks"


def _load_sync():
    spec = importlib.util.spec_from_file_location("notebook_sync", NOTEBOOK_DIR / "sync.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


sync = _load_sync()
NAMES = sync.NAMES
# A cell may wait on a first JIT compile on a loaded 2-core machine; a hung kernel still fails.
CELL_TIMEOUT_S = 300


def _read(name: str):
    return nbformat.read(NOTEBOOK_DIR / f"{name}.ipynb", as_version=4)


def _png_count(nb) -> int:
    return sum("image/png" in out.get("data", {}) for cell in nb.cells for out in cell.get("outputs", []))


def _errors(nb) -> list[str]:
    return [f"{out.get('ename')}: {out.get('evalue')}" for cell in nb.cells for out in cell.get("outputs", [])
            if out.get("output_type") == "error"]


def _number(pattern: str, text: str) -> float:
    match = re.search(pattern, text)
    assert match, f"no output matches {pattern!r}"
    return float(match.group(1))


def test_every_notebook_has_its_script():
    """Each .ipynb is paired with a .py script and the other way round: none is orphaned."""
    assert NAMES == ["01_mnist_from_scratch", "02_autodiff_vs_manual", "03_sweeps_and_ensembles", "04_beyond_sgd",
                     "05_your_own_model"]
    assert sorted(p.stem for p in NOTEBOOK_DIR.glob("*.ipynb")) == NAMES


@pytest.mark.parametrize("name", NAMES)
def test_committed_notebook_matches_its_script(name):
    """The committed .ipynb holds exactly its .py script's cells (kind and source), in order, so an edit
    to one without regenerating the other is caught; the script is plain Python with the jupytext
    header, and writing it back from the cells gives the same file."""
    committed = _read(name)
    script = (NOTEBOOK_DIR / f"{name}.py").read_text()
    assert sync.cells(committed) == sync.parse_script(script)
    assert committed.metadata["kernelspec"]["name"] == "python3"
    compile(script, f"{name}.py", "exec")
    assert sync.format_script(sync.parse_script(script)) == script


def test_percent_format_round_trip():
    """Markdown lines become '# ' comments (blank ones '#'), code stays as is, and parsing undoes it;
    a script with code before its first marker or an uncommented markdown line is refused."""
    cells = [("markdown", "# Title\n\nSome *text*.\n  indented"), ("code", "x = 1\n\n\nprint(x)  # %% not a marker"),
             ("markdown", "one line"), ("code", "def f():\n    return 2")]
    script = sync.format_script(cells)
    assert "# %% [markdown]\n# # Title\n#\n# Some *text*.\n#   indented\n\n# %%\nx = 1\n" in script
    assert sync.parse_script(script) == cells
    with pytest.raises(ValueError, match="line 1"):
        sync.parse_script("x = 1\n# %%\ny = 2\n")
    with pytest.raises(ValueError, match="line 2"):
        sync.parse_script("# %% [markdown]\nnot a comment\n")


@pytest.mark.parametrize("name", NAMES)
def test_committed_notebook_has_clean_outputs(name):
    """Every code cell was executed, in order, without errors; pictures are stored inline as PNG; no
    output shows an absolute path of the machine that ran it."""
    nb = _read(name)
    code_cells = [c for c in nb.cells if c.cell_type == "code"]
    assert [c.execution_count for c in code_cells] == list(range(1, len(code_cells) + 1))
    assert _errors(nb) == []
    assert _png_count(nb) >= 1
    assert sync.absolute_paths(nb) == []
    assert str(REPO) not in sync.output_text(nb)
    assert str(Path.home()) + "/" not in sync.output_text(nb)


@pytest.fixture
def run_notebook(mnist_dir, monkeypatch):
    """Execute a committed notebook afresh in a "python3" kernel (cwd notebooks/) and return it.

    The kernel inherits os.environ, so JAXMLP_DATA_DIR points it at the fixture's MNIST.
    """
    pytest.importorskip("nbclient")
    pytest.importorskip("ipykernel")
    monkeypatch.setenv("JAXMLP_DATA_DIR", str(mnist_dir))

    def run(name: str):
        nb = _read(name)
        for cell in nb.cells:
            if cell.cell_type == "code":
                cell.outputs, cell.execution_count = [], None
        return sync.execute(nb, timeout=CELL_TIMEOUT_S)

    return run


@pytest.mark.realdata
@pytest.mark.slow
def test_notebook_01_runs_and_reproduces_the_seed(run_notebook):
    """Notebook 01 runs without errors and shows the seed's numbers: the first five images' loss
    2.302670109823364 exactly, the one-step W1 change, manual backprop equal to jax.grad, and a
    few epochs of training that learn (falling loss, high test accuracy), with its pictures."""
    nb = run_notebook("01_mnist_from_scratch")
    assert _errors(nb) == []
    text = sync.output_text(nb)
    assert "Cross-Entropy Loss: 2.302670109823364\n" in text
    assert "same as the original notebook: True" in text
    # float64 round-off only: the two gradients are the same arithmetic in another order (~1e-12).
    assert _number(r"max relative error \(manual vs jax\.grad, float64\): (\S+)", text) < 1e-10
    # The seed printed 0.020560581875656167; another summation order may move the last digit or two.
    assert _number(r"W1 change: (\S+)", text) == pytest.approx(0.020560581875656167, rel=1e-12)
    losses = [float(v) for v in re.findall(r"Epoch \d+/3 - Loss: (\d+\.\d+)", text)]
    assert len(losses) == 3 and losses[0] > losses[1] > losses[2]
    # Three SGD epochs at lr 0.1 reach ~96.5% (the seed's first epoch alone gives ~91%).
    assert _number(r"Test Accuracy: (\S+)%", text) > 93.0
    assert _png_count(nb) >= 3


@pytest.mark.realdata
@pytest.mark.slow
def test_notebook_02_runs_and_gradients_agree(run_notebook):
    """Notebook 02 runs without errors; manual backprop, jax.grad and finite differences agree
    (per parameter and for depths 1-4); the ReLU tie-breaking demo shows 0.5 vs 0 and its effect on
    b1/b2; the timing table and bar chart are produced."""
    nb = run_notebook("02_autodiff_vs_manual")
    assert _errors(nb) == []
    text = sync.output_text(nb)
    # float64: manual vs autodiff is round-off (~1e-12); central differences with eps 1e-4 carry
    # ~1e-12 absolute error, i.e. up to ~1e-6 relative on the smallest entries above the 1e-8 floor.
    assert _number(r"worst: manual vs autodiff (\S+),", text) < 1e-10
    assert _number(r"against finite differences (\S+)", text) < 1e-5
    assert re.search(r"jax\.grad of jnp\.maximum: \[0\.\s+0\.5\s+1\.\s*\]", text)
    assert re.search(r"jax\.grad of model\.relu: \[0\.\s+0\.\s+1\.\s*\]", text)
    relu_rows = dict(re.findall(r"^(b[12])\s+(\S+\s+\S+)$", text, re.M))
    for name in ("b1", "b2"):
        ok, bad = map(float, relu_rows[name].split())
        assert ok == 0.0 and bad == 1.0
    depth_rows = re.findall(r"^\s+([1-4])\s+\[[\d, ]+\]\s+\d+\s+(\S+)\s+(\S+)$", text, re.M)
    assert [int(d) for d, _, _ in depth_rows] == [1, 2, 3, 4]
    assert all(float(ad) < 1e-10 and float(fd) < 1e-5 for _, ad, fd in depth_rows)
    timing_rows = re.findall(r"^\s+(\d+)\s+(\d+\.\d)\s+(\d+\.\d)\s+\d+\.\d\d\s+(\S+)$", text, re.M)
    assert [int(r[0]) for r in timing_rows] == [32, 256, 1024]
    # float32 gradients of the same math: any difference is a few float32 ulps of O(1) values.
    assert all(float(m) > 0 and float(a) > 0 and float(d) < 1e-5 for _, m, a, d in timing_rows)
    assert _png_count(nb) >= 1


@pytest.mark.realdata
@pytest.mark.slow
def test_notebook_03_runs_and_shows_sweeps_and_ensembles(run_notebook):
    """Notebook 03 runs without errors; the lr x hidden grid makes one program per architecture (seeds
    add none), its table ranks all 10 runs by test accuracy, random search draws lrs inside its range,
    a sweep member matches its lone run, the 5-seed ensemble beats its average member, and the
    averaged probabilities win on the images the members dispute; with its picture."""
    nb = run_notebook("03_sweeps_and_ensembles")
    assert _errors(nb) == []
    text = sync.output_text(nb)
    assert re.findall(r"^program \d: hidden (\S+), batch 32, 5 models", text, re.M) == ["128-64", "256-128"]
    assert "adding seed=[0, 1, 2]: 30 configurations, still 2 programs" in text
    table = re.findall(r"^\s+(\d+)\s+(\d\.\d+)\s+(\d+-\d+)\s+\d\.\d{4}\s+(\d+\.\d\d)%$", text, re.M)
    assert [int(rank) for rank, *_ in table] == list(range(1, 11))
    accs = [float(acc) for *_, acc in table]
    assert accs == sorted(accs, reverse=True)
    # Two epochs on 10,000 images with He init: measured 77.4% (lr 0.003) to 93.9% (lr 0.3, 256-128).
    assert accs[-1] > 60.0 and accs[0] > 90.0
    drawn = [float(v) for v in re.findall(r"^lr (\d\.\d{4})  hidden", text, re.M)]
    assert len(drawn) == 6 and all(0.003 <= v <= 0.5 for v in drawn)
    alone, grouped = re.search(r"alone / in its group: test accuracy (\S+)% / (\S+)%", text).groups()
    # Same keys and math in another layout: float32 round-off may flip a prediction or two (0.01% each).
    assert float(alone) == pytest.approx(float(grouped), abs=0.1)
    assert _number(r"s per model-epoch, each member with its own shuffle \(alone: (\S+) s\)", text) > 0
    members = [float(v) for v in re.findall(r"^member seed \d: test accuracy (\S+)%", text, re.M)]
    assert len(members) == 5
    ensemble = _number(r"ensemble of 5 \(mean probs\):\s+(\S+)%", text)
    # Measured 93.44% against members 89.8-92.8% (mean 91.6%).
    assert ensemble > sum(members) / 5 and ensemble >= sorted(members)[2]
    assert _number(r"ensemble_accuracy\(probs, labels\): (\S+)%", text) == ensemble
    member_rate, avg_rate = re.search(r"a member is right (\S+)% of the time, the averaged probabilities (\S+)%",
                                      text).groups()
    assert float(avg_rate) > float(member_rate)
    assert _png_count(nb) >= 1


@pytest.mark.realdata
@pytest.mark.slow
def test_notebook_04_runs_and_shows_each_method(run_notebook):
    """Notebook 04 runs without errors and shows each method's effect: from the seed's tiny weights
    SGD/momentum/Nesterov sit on the 2.30 plateau while Adam leaves it at once, and all of them learn;
    the schedules take their closed-form values; dropout at rate 0 is the identity, keeps the mean, and
    narrows the train/test gap; shifted, affine and elastic pixels stay in [0, 1]; a zero-gradient AdamW
    step scales W by 1 - lr*wd; the CNN has its documented shapes and learns; frozen layers stay bit-identical while the
    new head learns; and the pictures are there."""
    nb = run_notebook("04_beyond_sgd")
    assert _errors(nb) == []
    text = sync.output_text(nb)

    rows = {name: (float(first), float(last), float(acc)) for name, first, last, acc in re.findall(
        r"^(sgd|momentum|nesterov|adam|adamw) .* (\d+\.\d{3})\s+(\d+\.\d{3})\s+(\d+\.\d{2})%$", text, re.M)}
    assert list(rows) == ["sgd", "momentum", "nesterov", "adam", "adamw"]
    # Uniform predictions cost log(10) = 2.3026; the plateau measured 2.302 for the first 100 steps,
    # Adam 1.50 over the same steps.
    assert all(rows[name][0] > 2.25 for name in ("sgd", "momentum", "nesterov"))
    assert all(rows[name][0] < 2.0 for name in ("adam", "adamw"))
    # Everybody learns in 800 steps (last-100 losses 0.32-0.59, test accuracy 83-90% measured).
    assert all(last < 1.0 and acc > 75.0 for _, last, acc in rows.values())

    def schedule(label: str) -> dict:
        line = next(line for line in text.splitlines() if line.startswith(label + " "))
        return {int(s): float(v) for s, v in re.findall(r"step\s+(\d+): (\d\.\d{4})", line)}

    # Closed forms printed to 4 decimals: constant 0.1; staircase x0.1 at 333 and 666; cosine half-way
    # at 500 and ~0 at the end; linear warmup starts at 0.1/50 and peaks at step 49.
    assert schedule("constant") == {0: 0.1, 49: 0.1, 500: 0.1, 999: 0.1}
    assert schedule("step (x0.1 every 333)")[500] == 0.01
    assert schedule("cosine")[500] == 0.05 and schedule("cosine")[999] == 0.0
    warm = schedule("warmup 50 + cosine")
    assert warm[0] == 0.002 and warm[49] == 0.1 and warm[999] == 0.0

    assert "rate 0 gives the forward pass without dropout: True" in text
    # 1000 masks over a few thousand active units: the sampling error is ~1e-3 on both numbers.
    assert _number(r"fraction of active units dropped at rate 0.5: (\S+)", text) == pytest.approx(0.5, abs=0.01)
    assert _number(r"over 1000 dropout masks / without dropout: (\S+)", text) == pytest.approx(1.0, abs=0.01)
    gaps = {float(rate): (float(train), float(test), float(gap)) for rate, train, test, gap in re.findall(
        r"^\s+(0\.\d)\s+(\d+\.\d\d)%\s+(\d+\.\d\d)%\s+(-?\d+\.\d\d)%$", text, re.M)}
    assert sorted(gaps) == [0.0, 0.2, 0.5]
    # Measured gaps 8.6, 7.5, 5.5 points: rate 0.5 must fit the training set less and narrow the gap.
    assert gaps[0.5][0] < gaps[0.0][0] and gaps[0.5][2] < gaps[0.0][2] - 1.0

    assert "augmented pixels stay in [0, 1]: True | shapes kept: (8, 784) (8, 784) (8, 784)" in text
    # float32 p * (1 - 1e-5) divided by p: the ratio is exact up to a couple of ulps (6e-8 each).
    lo, hi = map(float, re.search(r"W1 after / before: (\S+) to (\S+)", text).groups())
    assert lo == pytest.approx(1 - 1e-5, abs=3e-7) and hi == pytest.approx(1 - 1e-5, abs=3e-7)
    l2 = re.search(r"l2_penalty after section 1: adam (\S+), adamw (\S+)", text)
    assert float(l2.group(2)) < float(l2.group(1))

    assert "layer 1: W (3, 3, 32, 64)" in text and "421,642 parameters (the MLP has 109,386)" in text
    assert _number(r"CNN test accuracy: (\S+)%", text) > 90.0  # 95.1% measured
    assert "frozen layers bit-identical after fine-tuning: True | head changed: True" in text
    assert _number(r"test accuracy on 0-4 (\S+)%", text) > 95.0  # 97.7% measured
    # Chance is 20% on five classes; measured 75.4% (head only) and 89.3% (from scratch).
    assert _number(r"new head only\s+test accuracy on 5-9: (\S+)%", text) > 50.0
    assert _number(r"from scratch\s+test accuracy on 5-9: (\S+)%", text) > 80.0
    assert _png_count(nb) >= 3


@pytest.mark.realdata
@pytest.mark.slow
def test_notebook_05_trains_a_users_model_and_checks_a_hand_written_gradient(run_notebook):
    """Notebook 05 runs: a dict-of-arrays residual network with a label-smoothed loss and a chained
    optimizer trains through jaxmlp.train, its aux accuracy is in the history, the run resumed from its
    checkpoint equals the uninterrupted run bit for bit, it learns MNIST, and the hand-written gradient
    passes the finite-difference check."""
    nb = run_notebook("05_your_own_model")
    assert _errors(nb) == []
    text = sync.output_text(nb)
    assert "Epoch 1/1" in text and "Epoch 3/3" in text  # progress lines from the engine
    assert "resumed run equals the uninterrupted one bit for bit: True" in text
    accs = [float(a) for a in re.findall(r"train accuracy (\S+)%", text)]
    assert len(accs) == 3 and accs[2] > accs[0]
    assert _number(r"test accuracy: (\S+)%", text) > 95.0  # 97.06% measured (3 epochs on 20,000 images)
    assert "gradient check passed: True" in text
