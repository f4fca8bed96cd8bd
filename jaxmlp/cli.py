"""The ``jaxmlp`` command line: parses flags, calls the library, reports.

Every failure the user can cause (bad flags, bad files, divergence) ends as one line on stderr and a
non-zero exit; set JAXMLP_DEBUG=1 to see the traceback instead.
"""
from __future__ import annotations

import argparse
import os
import sys


class CLIError(Exception):
    """A user-facing error: printed as one line, exit status 1."""


class UsageError(CLIError):
    """Bad flags: exit status 2, as argparse does."""


class _Parser(argparse.ArgumentParser):
    def error(self, message):  # argparse's default prints the whole usage block; one line is clearer
        where = self.prog.removeprefix("jaxmlp").strip()
        raise UsageError(f"{where + ': ' if where else ''}{message} (see --help)")


# ---------------------------------------------------------------- argument types


def _number(parse, accept, what: str):
    """An argparse type: ``parse`` the text, then require ``accept(value)``; the error says ``what``."""
    def convert(text: str):
        try:
            value = parse(text)
        except ValueError:
            value = None
        if value is None or not accept(value):
            raise argparse.ArgumentTypeError(f"expected {what}, got {text!r}")
        return value

    convert.__name__ = what  # argparse names the type in some messages
    return convert


_finite = float("inf").__gt__  # inf > v: rules out inf (and NaN, which compares False)
positive_int = _number(int, lambda v: v > 0, "a positive integer")
nonneg_int = _number(int, lambda v: v >= 0, "a non-negative integer")
positive_float = _number(float, lambda v: v > 0 and _finite(v), "a positive finite number")
nonneg_float = _number(float, lambda v: v >= 0 and _finite(v), "a non-negative finite number")
unit_float = _number(float, lambda v: 0 <= v < 1, "a number in [0, 1)")


# ---------------------------------------------------------------- subcommands
# Each subcommand has an _add_<name>(sub) that declares its flags and a _cmd_<name>(args) that runs it.

# >>> subcommands (keep each one self-contained; register it in SUBCOMMANDS below)

def _add_download(sub):
    from jaxmlp.data import DATASETS

    p = sub.add_parser(
        "download", help="fetch a dataset's IDX files and verify their checksums",
        description="Download MNIST, Fashion-MNIST or KMNIST into a folder, verifying each file's "
                    "SHA-256; files already there and verified are kept. Prints the folder.")
    p.add_argument("--dataset", choices=list(DATASETS), default="mnist", help="which dataset (default: mnist)")
    p.add_argument("--data-dir", metavar="DIR", default=None,
                   help="folder to store the files in (default: $JAXMLP_DATA_DIR, "
                        "else ~/.cache/jaxmlp/DATASET)")
    p.add_argument("--mirror", metavar="URL", action="append", default=None,
                   help="base URL to fetch from instead of the built-in mirrors (file URL = URL/NAME); "
                        "repeat to try several in order")
    p.add_argument("--timeout", type=positive_float, default=30.0, metavar="SECONDS",
                   help="network timeout per request (default: 30)")
    p.add_argument("--quiet", action="store_true", help="no progress bar")
    p.set_defaults(func=_cmd_download)


def _cmd_download(args) -> int:
    from jaxmlp.data import download

    folder = download(args.dataset, args.data_dir, mirrors=args.mirror, progress=not args.quiet,
                      timeout=args.timeout)
    print(folder)
    return 0

def _add_data_flags(p):
    p.add_argument("--data-dir", metavar="DIR", default=None,
                   help="folder with the four IDX files (default: $JAXMLP_DATA_DIR, else the cache "
                        "~/.cache/jaxmlp/DATASET, downloaded there on first use)")
    p.add_argument("--dataset", default="mnist", choices=["mnist", "fashion-mnist", "kmnist"],
                   help="dataset name (default: mnist)")


def _add_train(sub):
    from jaxmlp.train import TrainConfig

    d = TrainConfig()
    p = sub.add_parser(
        "train", help="train a model and report test loss and accuracy",
        description="Train the MLP (or CNN) with a jit-compiled loop. Defaults are the notebook's "
                    "784-128-64-10 network with its best experiment: SGD lr 0.1, batch 32, 10 epochs, seed 42.")
    _add_data_flags(p)
    p.add_argument("--preset", default=None, help="a named recipe (see `jaxmlp presets`); explicit flags override it")
    g = p.add_argument_group("model")
    g.add_argument("--arch", choices=["mlp", "cnn"], default=None, help=f"architecture (default: {d.arch})")
    g.add_argument("--hidden", type=positive_int, nargs="+", default=None, metavar="N",
                   help="hidden layer sizes (default: 128 64)")
    g.add_argument("--init", choices=["notebook", "he", "glorot"], default=None,
                   help="weight init: notebook = N(0,1)*0.01 (default), he, glorot")
    g.add_argument("--dtype", choices=["float32", "float64"], default=None, help="float dtype (default: float32)")
    g = p.add_argument_group("optimization")
    g.add_argument("--epochs", type=positive_int, default=None, help=f"passes over the data (default: {d.epochs})")
    g.add_argument("--batch-size", type=positive_int, default=None, help=f"minibatch size (default: {d.batch_size})")
    g.add_argument("--lr", type=positive_float, default=None, help=f"learning rate (default: {d.lr})")
    g.add_argument("--seed", type=nonneg_int, default=None, help=f"PRNG seed (default: {d.seed})")
    g.add_argument("--optimizer", choices=["sgd", "momentum", "nesterov", "adam", "adamw"], default=None,
                   help="optimizer (default: sgd)")
    g.add_argument("--momentum", type=unit_float, default=None, help="momentum coefficient (default: 0.9)")
    g.add_argument("--beta1", type=unit_float, default=None, help="Adam's beta1 (default: 0.9)")
    g.add_argument("--beta2", type=unit_float, default=None, help="Adam's beta2 (default: 0.999)")
    g.add_argument("--weight-decay", type=nonneg_float, default=None,
                   help="weight decay: decoupled for adamw (default 0.01), coupled (L2 in the gradient) otherwise (default 0)")
    g.add_argument("--l2", type=nonneg_float, default=None, help="L2 penalty 0.5*l2*sum(W^2) added to the loss")
    g.add_argument("--schedule", choices=["constant", "step", "cosine", "warmup-cosine"], default=None,
                   help="learning-rate schedule over the run (default: constant)")
    g.add_argument("--warmup-epochs", type=nonneg_int, default=None, help="warmup length for warmup-cosine")
    g.add_argument("--dropout", type=unit_float, default=None, help="dropout rate on hidden units (default: 0)")
    g.add_argument("--augment", choices=["none", "shift", "affine"], default=None,
                   help="on-device data augmentation, fresh every step (default: none)")
    g.add_argument("--val-split", type=unit_float, default=None, help="fraction of training data held out for validation")
    g.add_argument("--patience", type=nonneg_int, default=None,
                   help="early stopping: stop after this many epochs without a better validation accuracy "
                        "and keep the best params (needs --val-split)")
    g.add_argument("--grad", choices=["autodiff", "manual"], default=None,
                   help="gradients from jax.grad (default) or the notebook's hand-derived backprop")
    g.add_argument("--notebook-exact", action="store_true", default=None,
                   help="reproduce the notebook's numbers: float64, NumPy's global RNG, its loss formula")
    g.add_argument("--replay-notebook-step", action="store_true", default=None,
                   help="with --notebook-exact: first replay the notebook's one test update (lr 0.01, 5 images)")
    g = p.add_argument_group("transfer learning")
    g.add_argument("--finetune", metavar="PATH", default=None,
                   help="start from the params of a checkpoint from `jaxmlp train --save` (its --arch and --hidden "
                        "are taken unless given)")
    g.add_argument("--freeze", type=int, nargs="+", default=None, metavar="I",
                   help="layer indices the optimizer leaves untouched (0 is the first layer, -1 the head)")
    g.add_argument("--new-head", action="store_true", default=None,
                   help="with --finetune: a fresh output layer sized to the labels (needed when their number changes)")
    g.add_argument("--classes", type=nonneg_int, nargs="+", default=None, metavar="C",
                   help="train and test on these labels only, relabelled 0..k-1 in the order given")
    g = p.add_argument_group("output")
    g.add_argument("--metrics-out", metavar="FILE", default=None, help="write a JSON summary of the run")
    g.add_argument("--log", metavar="FILE", default=None, help="append one JSON line per epoch (live monitoring)")
    g.add_argument("--plot-dir", metavar="DIR", default=None,
                   help="write PNGs: curves, confusion matrix, misclassified digits, first-layer weights")
    g.add_argument("--save", metavar="PATH", default=None,
                   help="checkpoint (.npz) written atomically after every epoch")
    g.add_argument("--resume", metavar="PATH", default=None,
                   help="continue the run saved in this checkpoint up to --epochs, with its saved settings "
                        "(other flags may repeat them, not change them; bit-exact unless a schedule's "
                        "horizon changes with --epochs)")
    g.add_argument("--quiet", action="store_true", help="no progress bar, no per-epoch lines")
    _add_scale_flags(p)
    p.set_defaults(func=_cmd_train)


_TRAIN_FIELDS = ("arch", "hidden", "init", "dtype", "epochs", "batch_size", "lr", "seed", "optimizer", "momentum",
                 "beta1", "beta2", "weight_decay", "l2", "schedule", "warmup_epochs", "dropout", "augment",
                 "val_split", "patience", "grad", "notebook_exact", "replay_notebook_step", "dataset",
                 "finetune", "freeze", "new_head", "classes")


def train_config_from_args(args):
    """TrainConfig from defaults, then the preset, then the flags given explicitly."""
    from jaxmlp.train import TrainConfig

    values = _explicit_train_values(args)
    if values.get("finetune"):
        from jaxmlp.checkpoint import load_model

        # The architecture comes with the checkpoint; flags given explicitly still win (and fit checks them).
        params, saved = load_model(values["finetune"])
        values.setdefault("arch", saved.get("arch", "mlp"))
        if values["arch"] == "mlp":
            values.setdefault("hidden", tuple(int(layer["W"].shape[1]) for layer in params[:-1]))
    return TrainConfig(**values).validate()


def _explicit_train_values(args) -> dict:
    """The TrainConfig fields set by --preset and explicit flags (normalized like TrainConfig's)."""
    values = {}
    if args.preset:
        from jaxmlp.presets import preset_config
        values.update(preset_config(args.preset))
        values["preset"] = args.preset
    for name in _TRAIN_FIELDS:
        v = getattr(args, name, None)
        if v is not None and not (name == "dataset" and args.preset and v == "mnist"):
            values[name] = v
    for name in ("hidden", "freeze", "classes"):
        if name in values:
            values[name] = tuple(values[name])
    if values.get("augment") == "none":
        values["augment"] = None
    return values


def _write_json_atomic(path, obj) -> None:
    import json
    import tempfile
    from pathlib import Path

    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        with os.fdopen(fd, "w") as f:
            json.dump(obj, f, indent=2)
            f.write("\n")
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        if os.path.exists(tmp):
            os.unlink(tmp)
        raise


def _resume_state(args):
    """(config, fit's resume dict) from --resume: the saved run's config, --epochs extended.

    Resuming continues the saved run exactly, so a flag that would change it (--lr 0.01 on a run
    saved with 0.1) is refused; repeating the saved value, or giving only --epochs, is fine.
    """
    import json

    from jaxmlp.checkpoint import load_checkpoint, load_model
    from jaxmlp.train import TrainConfig, hparams_dict, make_optimizer, spec_for

    path = args.resume
    params, saved = load_model(path)  # float64 params turn x64 on before they are read
    try:
        saved = {k: v for k, v in saved.items() if k in TrainConfig.__dataclass_fields__}
        saved["hidden"] = tuple(saved.get("hidden", (128, 64)))
        config = TrainConfig(**saved)
        config.validate()
    except (TypeError, ValueError) as err:
        raise CLIError(f"--resume: {path}: the saved config is not a valid training config ({err})") from None
    given = _explicit_train_values(args)
    epochs = given.pop("epochs", config.epochs)
    if given.get("dataset") == "mnist":
        given.pop("dataset")  # the flag's default: the checkpoint's dataset wins
    clash = [k for k, v in given.items() if getattr(config, k) != v]
    if clash:
        flag = "--" + clash[0].replace("_", "-")
        raise CLIError(f"--resume continues {path} with its saved settings; {flag} {given[clash[0]]} differs from "
                       f"the saved {getattr(config, clash[0])} (only --epochs may change)")
    config.epochs = epochs
    template = make_optimizer(spec_for(config, 1), hparams_dict()).init(params)
    ckpt = load_checkpoint(path, opt_state_template=template)
    if ckpt.epoch >= config.epochs:
        raise CLIError(f"--resume: {path} already reached epoch {ckpt.epoch}; pass --epochs > {ckpt.epoch}")
    history = (ckpt.extra or {}).get("history", [])
    if isinstance(history, str):  # early checkpoints stored the history as JSON text inside JSON
        history = json.loads(history)
    return config, {"params": ckpt.params, "opt_state": ckpt.opt_state, "key": ckpt.key, "epoch": ckpt.epoch,
                    "history": list(history)}


def _cmd_train(args) -> int:
    import json
    import time

    import jax
    import jax.numpy as jnp

    from jaxmlp.data import ensure_dataset
    from jaxmlp.progress import Progress
    from jaxmlp.train import DivergenceError, fit

    if args.ensemble > 1:
        return _cmd_train_ensemble(args)
    mesh = _mesh_from_args(args)  # before loading data: a bad --devices fails fast
    started = time.perf_counter()
    resume = None
    if args.resume:
        config, resume = _resume_state(args)
    else:
        config = train_config_from_args(args)
    if args.save and os.path.isdir(args.save):  # found now, not after the first epoch
        raise CLIError(f"--save: {args.save} is a folder; give a file name such as {args.save}/run.npz")
    data = ensure_dataset(args.data_dir, config.dataset, progress=not args.quiet)

    show = not args.quiet
    bar = Progress(config.epochs, "train", enabled=show, unit=" epochs")
    bar.done = resume["epoch"] if resume else 0
    saved_epoch = [None]
    log_file = open(args.log, "a") if args.log else None

    def on_epoch(result, record):
        bar.close()
        if show:
            print(f"Epoch {result.epoch}/{config.epochs} - Loss: {result.loss:.4f}"
                  + (f" - val acc: {record['val_accuracy'] * 100:.2f}%" if "val_accuracy" in record else ""),
                  flush=True)
        bar.update(1, postfix=f"loss {result.loss:.4f}")
        if log_file is not None:
            log_file.write(json.dumps({**record, "time": time.time()}) + "\n")
            log_file.flush()
        if args.save:
            from jaxmlp.checkpoint import save_checkpoint

            # The loss is finite, but the epoch's last update may still have overflowed the params.
            if not all(bool(jnp.isfinite(leaf).all()) for leaf in jax.tree_util.tree_leaves(result.params)):
                raise DivergenceError(f"epoch {result.epoch}: the parameters became non-finite after the loss was "
                                      f"computed; training stopped (try a lower --lr)")
            save_checkpoint(args.save, params=result.params, opt_state=result.opt_state, key=result.key,
                            epoch=result.epoch, config=config.to_dict(),
                            extra={"history": history_so_far + [record]})
            saved_epoch[0] = result.epoch
        history_so_far.append(record)

    history_so_far = list(resume["history"]) if resume else []
    try:
        result = fit(config, data, on_epoch=on_epoch, resume=resume, mesh=mesh)
    except KeyboardInterrupt:
        bar.close()
        where = f"; epoch {saved_epoch[0]} is saved in {args.save}" if saved_epoch[0] else ""
        print(f"jaxmlp: interrupted{where}", file=sys.stderr)
        return 130
    except DivergenceError as err:
        kept = f"; {args.save} keeps epoch {saved_epoch[0]}" if saved_epoch[0] else ""
        raise DivergenceError(f"{err}{kept}") from None
    finally:
        bar.close()
        if log_file is not None:
            log_file.close()

    print(f"Test Loss: {result.test_loss:.4f}")
    print(f"Test Accuracy: {result.test_accuracy * 100:.2f}%")
    if args.metrics_out:
        _write_json_atomic(args.metrics_out, {
            "config": config.to_dict(),
            "history": result.history,
            "test_loss": result.test_loss,
            "test_accuracy": result.test_accuracy,
            "train_seconds": result.train_seconds,
            "compile_seconds": result.compile_seconds,
            "wall_seconds": time.perf_counter() - started,
            "stopped_early": result.stopped_early,
            "resumed_from_epoch": resume["epoch"] if resume else None,
            "backend": jax.default_backend(),
            "devices": args.devices,
            "jax_version": jax.__version__,
        })
    if args.plot_dir:
        from jaxmlp.plots import save_training_plots
        from jaxmlp.train import predict_labels, prepare

        if config.classes is not None:  # fit trained and tested on the subset, relabelled
            from jaxmlp.data import select_classes
            data = select_classes(data, config.classes)
        x_test = prepare(data.x_test, jnp.float64 if config.dtype == "float64" or config.notebook_exact
                         else jnp.float32)
        preds = predict_labels(result.params, x_test, arch=config.arch)
        paths = save_training_plots(args.plot_dir, history=result.history, params=result.params,
                                    x_test_images=data.x_test, y_test=data.y_test, preds=preds,
                                    class_names=None if config.classes is None else [str(c) for c in config.classes])
        if show:
            print(f"plots: {', '.join(str(p) for p in paths)}")
    return 0


def _add_gradcheck(sub):
    p = sub.add_parser(
        "gradcheck", help="compare manual backprop, jax.grad and finite differences",
        description="Compare the notebook's hand-derived backprop, jax.grad and central finite differences "
                    "in float64 on a batch, reporting the max relative error per parameter.")
    _add_data_flags(p)
    p.add_argument("--hidden", type=positive_int, nargs="+", default=[128, 64], metavar="N",
                   help="hidden layer sizes (default: 128 64)")
    p.add_argument("--batch-size", type=positive_int, default=32, help="examples in the batch (default: 32)")
    p.add_argument("--init", choices=["notebook", "he", "glorot"], default="he", help="weight init (default: he)")
    p.add_argument("--seed", type=nonneg_int, default=0, help="PRNG seed (default: 0)")
    p.add_argument("--coords", type=positive_int, default=20,
                   help="finite-difference coordinates checked per parameter (default: 20)")
    p.add_argument("--eps", type=positive_float, default=1e-4, help="finite-difference step (default: 1e-4)")
    p.add_argument("--synthetic", action="store_true", help="use random inputs instead of the dataset")
    p.set_defaults(func=_cmd_gradcheck)


def _cmd_gradcheck(args) -> int:
    import jax
    import jax.numpy as jnp
    import numpy as np

    jax.config.update("jax_enable_x64", True)
    from jaxmlp.backprop import gradcheck
    from jaxmlp.model import init_params

    key = jax.random.PRNGKey(args.seed)
    if args.synthetic:
        kx, ky, key = jax.random.split(key, 3)
        x = jax.random.uniform(kx, (args.batch_size, 784), jnp.float64)
        y = jax.random.randint(ky, (args.batch_size,), 0, 10)
        source = "synthetic inputs"
    else:
        from jaxmlp.data import ensure_dataset
        from jaxmlp.train import prepare

        data = ensure_dataset(args.data_dir, args.dataset)
        x = prepare(data.x_train[: args.batch_size], jnp.float64)
        y = jnp.asarray(data.y_train[: args.batch_size], jnp.int32)
        source = f"the first {x.shape[0]} training images"
    params = init_params(key, [x.shape[1], *args.hidden, 10], scheme=args.init, dtype=jnp.float64)
    rows = gradcheck(params, x, y, eps=args.eps, max_coords=args.coords, seed=args.seed)
    print(f"gradient check in float64 on {source}, {args.coords} finite-difference coordinates per parameter")
    print(f"{'param':<6} {'shape':<12} {'manual~autodiff':>16} {'manual~FD':>12} {'autodiff~FD':>12}")
    for r in rows:
        print(f"{r.name:<6} {str(r.shape):<12} {r.manual_vs_autodiff:>16.2e} {r.manual_vs_fd:>12.2e} "
              f"{r.autodiff_vs_fd:>12.2e}")
    worst_ad = max(r.manual_vs_autodiff for r in rows)
    worst_fd = max(max(r.manual_vs_fd, r.autodiff_vs_fd) for r in rows)
    ok = worst_ad <= 1e-10 and worst_fd <= 1e-5
    print(f"max relative error: manual vs autodiff {worst_ad:.1e} (limit 1e-10), "
          f"vs finite differences {worst_fd:.1e} (limit 1e-5): {'OK' if ok else 'FAILED'}")
    return 0 if ok else 1

def _add_eval(sub):
    p = sub.add_parser(
        "eval", help="test loss and accuracy of a saved checkpoint",
        description="Load a checkpoint written by `jaxmlp train --save` and report its test loss and accuracy "
                    "on the dataset it was trained on (its saved config gives the architecture, dtype and "
                    "dataset).")
    p.add_argument("--load", metavar="PATH", required=True, help="checkpoint (.npz) from `jaxmlp train --save`")
    p.add_argument("--data-dir", metavar="DIR", default=None,
                   help="folder with the four IDX files (default: $JAXMLP_DATA_DIR, else the cache "
                        "~/.cache/jaxmlp/DATASET, downloaded there on first use)")
    p.add_argument("--dataset", default=None, choices=["mnist", "fashion-mnist", "kmnist"],
                   help="dataset name (default: the checkpoint's)")
    p.add_argument("--metrics-out", metavar="FILE", default=None, help="write a JSON summary")
    p.add_argument("--quiet", action="store_true", help="no download progress bar")
    p.set_defaults(func=_cmd_eval)


def _model_inputs(params, config, num_features: int, source: str) -> None:
    """CLIError unless the model takes ``num_features`` inputs (a shape mismatch would be a traceback)."""
    want = 784 if config.get("arch", "mlp") == "cnn" else int(params[0]["W"].shape[0])
    if num_features != want:
        raise CLIError(f"{source} has {num_features} values per image but the model takes {want}")


def _cmd_eval(args) -> int:
    import jax
    import jax.numpy as jnp

    from jaxmlp.checkpoint import load_model
    from jaxmlp.data import ensure_dataset
    from jaxmlp.train import evaluate, prepare

    params, config = load_model(args.load)
    dataset = args.dataset or config.get("dataset", "mnist")
    data = ensure_dataset(args.data_dir, dataset, progress=not args.quiet)
    if config.get("classes"):  # a model fine-tuned on a label subset is scored on that subset, as trained
        from jaxmlp.data import select_classes
        data = select_classes(data, config["classes"])
    x = prepare(data.x_test, params[0]["W"].dtype)
    _model_inputs(params, config, x.shape[1], f"the {dataset} test set")
    y = jnp.asarray(data.y_test, jnp.int32)
    # The notebook-exact mode reports the notebook's loss formula; eval matches what training printed.
    test_loss, test_acc = evaluate(params, x, y, arch=config.get("arch", "mlp"),
                                   notebook=bool(config.get("notebook_exact", False)))
    print(f"Test Loss: {test_loss:.4f}")
    print(f"Test Accuracy: {test_acc * 100:.2f}%")
    if args.metrics_out:
        _write_json_atomic(args.metrics_out, {
            "checkpoint": os.fspath(args.load), "config": config, "dataset": dataset,
            "num_test": int(x.shape[0]), "test_loss": test_loss, "test_accuracy": test_acc,
            "backend": jax.default_backend(), "jax_version": jax.__version__,
        })
    return 0


def _add_predict(sub):
    p = sub.add_parser(
        "predict", help="classify images with a saved checkpoint",
        description="Classify the images in FILE with a checkpoint from `jaxmlp train --save`. FILE is an IDX "
                    "images file (N, 28, 28) of uint8 pixels, gzip or raw, or a .npy array (N, 28, 28) or "
                    "(N, 784) of either uint8 (or integer) pixels 0..255 or floats already scaled to [0, 1] "
                    "(pixel / 255, as in training). Prints one line per image: its index, the predicted "
                    "class and that class's probability, tab-separated (with --top K, K class/probability "
                    "pairs, most probable first).")
    p.add_argument("file", metavar="FILE", help="IDX or .npy images")
    p.add_argument("--load", metavar="PATH", required=True, help="checkpoint (.npz) from `jaxmlp train --save`")
    p.add_argument("--top", type=positive_int, default=1, metavar="K",
                   help="print the K most probable classes per image (default: 1)")
    p.add_argument("--json", action="store_true",
                   help='one JSON object per line: {"index", "label", "prob", "top": [[label, prob], ...]}')
    p.set_defaults(func=_cmd_predict)


def _read_images(path) -> tuple:
    """Images from an IDX or .npy file as ``(array (N, F), kind)``: kind "pixels" (uint8, 0..255) or
    "unit" (float in [0, 1]). ValueError naming the file for anything else."""
    import io
    from pathlib import Path

    import numpy as np

    from jaxmlp.data import parse_idx

    name = os.fspath(path)
    try:
        raw = Path(path).read_bytes()
    except FileNotFoundError:
        raise ValueError(f"{name}: no such file") from None
    except OSError as err:
        raise ValueError(f"{name}: cannot read: {err.strerror or err}") from None
    if raw[:6] == b"\x93NUMPY":
        try:
            images = np.load(io.BytesIO(raw), allow_pickle=False)
        except Exception as err:  # truncated data, bad header, object arrays (pickle): all "unreadable"
            msg = " ".join(str(err).split()) or type(err).__name__
            raise ValueError(f"{name}: unreadable .npy file ({msg})") from None
    elif raw[:2] in (b"\x00\x00", b"\x1f\x8b"):
        images = parse_idx(raw, name)  # gzip or raw IDX; IDXError names the file
    else:
        raise ValueError(f"{name}: neither a .npy array nor an IDX file (gzip or raw)")
    if images.ndim not in (2, 3) or images.shape[0] == 0:
        raise ValueError(f"{name}: expected images (N, 28, 28) or (N, 784), got shape {images.shape}")
    images = images.reshape(images.shape[0], -1)
    if images.dtype.kind in "ui":
        if images.min() < 0 or images.max() > 255:
            raise ValueError(f"{name}: integer pixels must lie in 0..255, got {images.min()}..{images.max()}")
        return images.astype(np.uint8), "pixels"
    if images.dtype.kind == "f":
        if not np.isfinite(images).all() or images.min() < 0 or images.max() > 1:
            raise ValueError(f"{name}: float pixels must be finite and lie in [0, 1] (pixel / 255), "
                             f"got {images.min()}..{images.max()}")
        return images, "unit"
    raise ValueError(f"{name}: expected uint8 or float pixels, got dtype {images.dtype}")


def _cmd_predict(args) -> int:
    import json

    import jax.numpy as jnp
    import numpy as np

    from jaxmlp.checkpoint import load_model
    from jaxmlp.train import predict_probs, prepare

    images, kind = _read_images(args.file)
    params, config = load_model(args.load)
    _model_inputs(params, config, images.shape[1], args.file)
    dtype = params[0]["W"].dtype
    x = prepare(images, dtype) if kind == "pixels" else jnp.asarray(images, dtype)
    probs = predict_probs(params, x, arch=config.get("arch", "mlp"))
    k = min(args.top, probs.shape[1])
    order = np.argsort(-probs, axis=1, kind="stable")[:, :k]
    # A model fine-tuned on a label subset predicts positions in it; print the dataset's own labels.
    names = [int(c) for c in config["classes"]] if config.get("classes") else list(range(probs.shape[1]))
    lines = []
    for i, (row, top) in enumerate(zip(probs, order)):
        if args.json:
            lines.append(json.dumps({"index": i, "label": names[top[0]], "prob": float(row[top[0]]),
                                     "top": [[names[c], float(row[c])] for c in top]}))
        else:
            lines.append("\t".join([str(i)] + [f"{names[c]}\t{row[c]:.4f}" for c in top]))
    sys.stdout.write("\n".join(lines) + "\n")
    return 0

# ---- sweep, bench, and train's --ensemble / --devices (speed and scale)

def hidden_sizes(text: str) -> tuple:
    """'128,64' -> (128, 64): one configuration's hidden layer sizes."""
    try:
        sizes = tuple(int(t) for t in text.replace("-", ",").split(",") if t.strip())
    except ValueError:
        sizes = ()
    if not sizes or any(s <= 0 for s in sizes):
        raise argparse.ArgumentTypeError(f"expected comma-separated positive layer sizes like 128,64, got {text!r}")
    return sizes


def _add_scale_flags(p):
    g = p.add_argument_group("scale")
    g.add_argument("--ensemble", type=positive_int, default=1, metavar="K",
                   help="train K models (seeds SEED..SEED+K-1) together in one vmapped program and report each "
                        "and their averaged-probability ensemble (default: 1)")
    g.add_argument("--devices", type=positive_int, default=1, metavar="N",
                   help="data parallelism: split each minibatch over N devices, params replicated (default: 1)")


def _cmd_train_ensemble(args) -> int:
    import time

    import jax

    from jaxmlp.data import ensure_dataset
    from jaxmlp.sweep import fit_ensemble, run_record

    refused = [flag for flag, on in (("--resume", args.resume), ("--save", args.save), ("--plot-dir", args.plot_dir),
                                     ("--log", args.log), ("--devices", args.devices > 1),
                                     ("--finetune", args.finetune), ("--freeze", args.freeze),
                                     ("--classes", args.classes)) if on]
    if refused:
        raise CLIError(f"--ensemble cannot be combined with {refused[0]}")
    started = time.perf_counter()
    config = train_config_from_args(args)
    data = ensure_dataset(args.data_dir, config.dataset, progress=not args.quiet)
    k = args.ensemble

    def on_epoch(epoch, losses):
        if not args.quiet:
            print(f"Epoch {epoch}/{config.epochs} - Loss: " + " ".join(f"{v:.4f}" for v in losses), flush=True)

    res = fit_ensemble(config, data, k, on_epoch=on_epoch)
    for m in res.members:
        print(f"member seed {m.config.seed}: Test Loss: {m.test_loss:.4f}  Test Accuracy: {m.test_accuracy * 100:.2f}%"
              + ("  (diverged)" if m.diverged else ""))
    print(f"Ensemble of {k} (averaged probabilities): Test Loss: {res.ensemble_loss:.4f}  "
          f"Test Accuracy: {res.ensemble_accuracy * 100:.2f}%")
    if args.metrics_out:
        _write_json_atomic(args.metrics_out, {
            "config": config.to_dict(), "ensemble": k, "members": [run_record(m) for m in res.members],
            "test_loss": res.ensemble_loss, "test_accuracy": res.ensemble_accuracy,
            "ensemble_loss": res.ensemble_loss, "ensemble_accuracy": res.ensemble_accuracy,
            "compile_seconds": res.compile_seconds, "train_seconds": res.train_seconds,
            "wall_seconds": time.perf_counter() - started,
            "backend": jax.default_backend(), "devices": 1, "jax_version": jax.__version__})
    return 0


def _mesh_from_args(args):
    """None for one device, else a data-parallel mesh over --devices devices."""
    if getattr(args, "devices", 1) <= 1:
        return None
    from jaxmlp.parallel import make_mesh

    return make_mesh(args.devices)


def _add_sweep(sub):
    from jaxmlp.model import INIT_SCHEMES

    p = sub.add_parser(
        "sweep", help="grid or random search; same-shape configurations train together, vmapped",
        description="Train every combination of the values given (or --random N draws from them) and print "
                    "the runs sorted by test accuracy. Configurations that share shapes (hidden sizes, batch "
                    "size) train together as ONE compiled program: learning rates, seeds and init schemes are "
                    "a vmapped batch axis. Example: jaxmlp sweep --lr 0.001 0.01 0.1 --hidden 128,64 256,128 "
                    "--batch-size 32 128")
    _add_data_flags(p)
    g = p.add_argument_group("search space (each flag takes one or more values)")
    g.add_argument("--lr", type=positive_float, nargs="+", default=[0.1], metavar="LR",
                   help="learning rates (default: 0.1); with --random, lrs are drawn log-uniformly between "
                        "the smallest and largest given")
    g.add_argument("--hidden", type=hidden_sizes, nargs="+", default=[(128, 64)], metavar="H1,H2",
                   help="hidden layer sizes, one comma-separated list per architecture (default: 128,64)")
    g.add_argument("--batch-size", type=positive_int, nargs="+", default=[32], metavar="B",
                   help="minibatch sizes (default: 32)")
    g.add_argument("--seed", type=nonneg_int, nargs="+", default=[42], metavar="S", help="PRNG seeds (default: 42)")
    g.add_argument("--init", choices=list(INIT_SCHEMES), nargs="+", default=["notebook"],
                   help="weight init schemes (default: notebook)")
    g.add_argument("--random", type=positive_int, default=None, metavar="N",
                   help="random search: N configurations drawn from the values above instead of the full grid")
    g.add_argument("--search-seed", type=nonneg_int, default=0, help="seed of the random search's draws (default: 0)")
    g = p.add_argument_group("training (shared by every configuration)")
    g.add_argument("--epochs", type=positive_int, default=10, help="passes over the data (default: 10)")
    g.add_argument("--optimizer", choices=["sgd", "momentum", "nesterov", "adam", "adamw"], default="sgd",
                   help="optimizer (default: sgd)")
    g.add_argument("--momentum", type=unit_float, default=0.9, help="momentum coefficient (default: 0.9)")
    g.add_argument("--dtype", choices=["float32", "float64"], default="float32", help="float dtype (default: float32)")
    g.add_argument("--max-group", type=positive_int, default=None, metavar="K",
                   help="at most K models per compiled program (bounds memory; default: no limit)")
    g = p.add_argument_group("output")
    g.add_argument("--metrics-out", metavar="FILE", default=None,
                   help="write JSON: runs (config, test_accuracy, history, ...) best first, and the programs")
    g.add_argument("--top", type=positive_int, default=None, metavar="N", help="print only the N best runs")
    g.add_argument("--plot-dir", metavar="DIR", default=None,
                   help="write sweep.png: test accuracy against each swept value")
    g.add_argument("--quiet", action="store_true", help="only the final table")
    p.set_defaults(func=_cmd_sweep)


def _cmd_sweep(args) -> int:
    import jax
    import numpy as np

    from jaxmlp.data import ensure_dataset
    from jaxmlp.sweep import (format_table, grid, group_by_shape, random_search, run_sweep, sorted_runs,
                              sweep_record)
    from jaxmlp.train import TrainConfig

    base = TrainConfig(dataset=args.dataset, epochs=args.epochs, optimizer=args.optimizer, momentum=args.momentum,
                       dtype=args.dtype)
    axes = {"lr": args.lr, "batch_size": args.batch_size, "hidden": args.hidden, "seed": args.seed,
            "init": args.init}
    if args.random:
        lrs = axes.pop("lr")
        configs = random_search(base, args.random, seed=args.search_seed, lr_range=(min(lrs), max(lrs)), **axes)
    else:
        configs = grid(base, **axes)
    data = ensure_dataset(args.data_dir, args.dataset, progress=not args.quiet)
    groups = group_by_shape(configs, len(data.y_train), int(data.x_train.shape[1]), args.max_group)
    show = not args.quiet
    if show:
        print(f"{len(configs)} configurations, {len(groups)} compiled program(s), {args.epochs} epochs", flush=True)
    from jaxmlp.progress import Progress

    bar = Progress(len(groups) * args.epochs, "sweep", enabled=show, unit=" group-epochs")

    def on_group(g, members):
        bar.close()
        if show:
            c = configs[members[0]]
            print(f"[{g + 1}/{len(groups)}] hidden {'-'.join(map(str, c.hidden))}, batch {c.batch_size}: "
                  f"{len(members)} model(s) in one program", flush=True)

    def on_epoch(g, epoch, losses):
        bar.close()
        if show:
            finite = losses[np.isfinite(losses)] if len(losses) else losses
            best = f"{finite.min():.4f}" if len(finite) else "nan"
            print(f"  epoch {epoch}/{args.epochs}: best loss {best}, {len(losses) - len(finite)} diverged", flush=True)
        bar.update(1)

    try:
        result = run_sweep(configs, data, max_group=args.max_group, on_group=on_group, on_epoch=on_epoch)
    finally:
        bar.close()
    runs = sorted_runs(result.runs)[: args.top] if args.top else result.runs
    print(format_table(runs))
    if show:
        compile_s = sum(g.compile_seconds for g in result.groups)
        train_s = sum(g.train_seconds for g in result.groups)
        print(f"wall {result.wall_seconds:.1f} s (compile {compile_s:.1f} s, training {train_s:.1f} s)")
    if args.metrics_out:
        _write_json_atomic(args.metrics_out, {**sweep_record(result), "dataset": args.dataset,
                                              "backend": jax.default_backend(), "devices": 1,
                                              "jax_version": jax.__version__})
    if args.plot_dir:
        from pathlib import Path

        from jaxmlp.plots import plot_sweep

        Path(args.plot_dir).mkdir(parents=True, exist_ok=True)
        path = plot_sweep(sweep_record(result)["runs"], Path(args.plot_dir) / "sweep.png")
        if show:
            print(f"plot: {path}")
    return 0


def _add_bench(sub):
    p = sub.add_parser(
        "bench", help="time numpy, a jitted-step loop, fused epochs, a vmapped sweep, a large batch",
        description="Run, in one process and on the same data, the notebook's NumPy algorithm, a Python loop over "
                    "the jitted step, the fused lax.scan epoch, a vmapped learning-rate sweep and a large-batch "
                    "run; print seconds per epoch, samples/s, GFLOP/s against a measured matmul peak, and the "
                    "ratios. Steady state: compile time is excluded (and reported).")
    _add_data_flags(p)
    p.add_argument("--synthetic", action="store_true",
                   help="random data of MNIST's shape (default: real MNIST when found, else synthetic)")
    p.add_argument("--train-size", type=positive_int, default=None, metavar="N",
                   help="training examples per epoch (default: all 60000)")
    p.add_argument("--hidden", type=positive_int, nargs="+", default=[128, 64], metavar="N",
                   help="hidden layer sizes (default: 128 64)")
    p.add_argument("--batch-size", type=positive_int, default=32, help="minibatch size (default: 32)")
    p.add_argument("--lr", type=positive_float, default=0.1, help="learning rate (default: 0.1)")
    p.add_argument("--large-batch", type=positive_int, default=512, help="the large-batch row's size (default: 512)")
    p.add_argument("--sweep-size", type=positive_int, default=16, help="learning rates in the sweep row (default: 16)")
    p.add_argument("--numpy-steps", type=positive_int, default=600,
                   help="minibatches timed for the numpy row (default: 600)")
    p.add_argument("--loop-steps", type=positive_int, default=600,
                   help="minibatches timed for the jitted-step loop (default: 600)")
    p.add_argument("--repeats", type=positive_int, default=5,
                   help="timed repeats, best kept; the sweep row does half as many (default: 5)")
    p.add_argument("--peak-size", type=positive_int, default=2048,
                   help="side of the square matmul that measures the peak (default: 2048)")
    p.add_argument("--json", action="store_true", help="print the report as JSON")
    p.add_argument("--out", metavar="FILE", default=None, help="also write the JSON report to FILE")
    p.set_defaults(func=_cmd_bench)


def _cmd_bench(args) -> int:
    import json

    from jaxmlp.bench import format_report, load_bench_data, run_bench

    images, labels, note = load_bench_data(args.data_dir, args.dataset, args.synthetic, args.train_size)
    if not args.json:
        print(f"bench: {note}; timing 5 rows (about a minute)...", file=sys.stderr, flush=True)

    def on_row(row):
        if not args.json:
            print(f"  {row['name']}: {row['seconds_per_model_epoch']:.3f} s per model-epoch", file=sys.stderr,
                  flush=True)

    report = run_bench(images, labels, hidden=args.hidden, batch_size=args.batch_size, lr=args.lr,
                       large_batch=args.large_batch, sweep_size=args.sweep_size, numpy_steps=args.numpy_steps,
                       loop_steps=args.loop_steps, repeats=args.repeats, peak_size=args.peak_size,
                       data_note=note, on_row=on_row)
    print(json.dumps(report, indent=2) if args.json else format_report(report))
    if args.out:
        _write_json_atomic(args.out, report)
    return 0


def _add_presets(sub):
    p = sub.add_parser("presets", help="list the named training recipes for `train --preset`",
                       description="List the presets of `jaxmlp train --preset NAME` and their settings.")
    p.set_defaults(func=_cmd_presets)


def _cmd_presets(args) -> int:
    from jaxmlp.presets import PRESETS

    for name, preset in PRESETS.items():
        settings = " ".join(f"--{k.replace('_', '-')} {' '.join(map(str, v)) if isinstance(v, tuple) else v}"
                            for k, v in preset["config"].items())
        print(f"{name}: {preset['description']}")
        print(f"    {settings or '(the defaults)'}")
    return 0

# <<< subcommands

SUBCOMMANDS = [
    # (name, adder) -- order is the order in --help
    ("train", _add_train),
    ("sweep", _add_sweep),
    ("bench", _add_bench),
    ("gradcheck", _add_gradcheck),
    ("presets", _add_presets),
    ("download", _add_download),
    ("eval", _add_eval),
    ("predict", _add_predict),
]


def build_parser() -> argparse.ArgumentParser:
    parser = _Parser(prog="jaxmlp", description="Train and study the MNIST MLP with JAX.")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND", parser_class=_Parser)
    sub.required = True
    for _, adder in SUBCOMMANDS:
        adder(sub)
    return parser


def _enable_compile_cache() -> None:
    """Keep compiled XLA programs on disk so the next run of the same shapes starts in a fraction of the
    time ($JAXMLP_COMPILE_CACHE: a folder, or 0 to turn it off; default: the jaxmlp cache folder)."""
    setting = os.environ.get("JAXMLP_COMPILE_CACHE", "")
    if setting == "0":
        return
    import jax

    if jax.config.jax_compilation_cache_dir:  # the user (or a notebook) chose one already
        return
    folder = setting or os.path.join(os.environ.get("XDG_CACHE_HOME") or os.path.expanduser("~/.cache"),
                                     "jaxmlp", "xla")
    try:
        os.makedirs(folder, exist_ok=True)
    except OSError:
        return  # a read-only home only costs speed
    jax.config.update("jax_compilation_cache_dir", folder)
    # Cache every program, small ones too: a warm start then compiles nothing at all.
    jax.config.update("jax_persistent_cache_min_compile_time_secs", 0.0)


def main(argv=None) -> int:
    debug = os.environ.get("JAXMLP_DEBUG") not in (None, "", "0")
    try:
        args = build_parser().parse_args(argv)
        _enable_compile_cache()
        return int(args.func(args) or 0)
    except KeyboardInterrupt:
        print("jaxmlp: interrupted", file=sys.stderr)
        return 130
    except (CLIError, ValueError, OSError, ArithmeticError) as err:
        if debug:
            raise
        msg = str(err).strip().splitlines()[0] if str(err).strip() else type(err).__name__
        print(f"jaxmlp: error: {msg}", file=sys.stderr)
        return 2 if isinstance(err, UsageError) else 1


if __name__ == "__main__":
    sys.exit(main())
