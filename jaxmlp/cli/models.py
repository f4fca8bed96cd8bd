"""``jaxmlp eval`` and ``jaxmlp predict``: what a saved checkpoint does on data."""
from __future__ import annotations

import json
import os
import sys

from jaxmlp.config import positive_int

from .common import (
    CLIError,
    UsageError,
    add_data_flags,
    add_metrics_flag,
    check_outputs,
    subcommand,
    write_metrics,
)


def add_eval(sub) -> None:
    p = subcommand(sub, "eval", run_eval, "test loss and accuracy of a saved checkpoint")
    p.add_argument("--load", metavar="PATH", required=True, help="checkpoint (.npz) from `jaxmlp train --save`")
    add_data_flags(p, dataset_default=None)
    add_metrics_flag(p, "a JSON summary")
    p.add_argument("--quiet", action="store_true", help="no download progress bar")


def _check_inputs(config, meta, num_features: int, source: str) -> None:
    """CLIError unless the model takes ``num_features`` inputs (a shape mismatch would be a traceback)."""
    if num_features != meta["input_dim"]:
        raise CLIError(f"{source} has {num_features} values per image but the model takes {meta['input_dim']}")


def run_eval(args) -> int:
    """Load a checkpoint written by `jaxmlp train --save` and report its test loss and accuracy on the dataset it was
    trained on (its saved config gives the architecture, dtype and dataset).
    """
    import jax.numpy as jnp

    from jaxmlp.data import ensure_dataset, select_classes
    from jaxmlp.engine import precision
    from jaxmlp.evaluation import evaluate
    from jaxmlp.runs import dtype_of, load_model, prepare

    check_outputs(args)
    model, params, config, meta = load_model(args.load)
    dataset = args.dataset or config.dataset
    data = ensure_dataset(args.data_dir, dataset, progress=not args.quiet)
    if config.classes is not None:  # a model fine-tuned on a label subset is scored on that subset, as trained
        data = select_classes(data, config.classes)
    with precision(config.dtype, config.matmul_precision):
        x = prepare(data.x_test, dtype_of(config))
        _check_inputs(config, meta, x.shape[1], f"the {dataset} test set")
        test_loss, test_acc = evaluate(model, params, x, jnp.asarray(data.y_test, jnp.int32))
    print(f"Test Loss: {test_loss:.4f}")
    print(f"Test Accuracy: {test_acc * 100:.2f}%")
    write_metrics(args.metrics_out, {"checkpoint": os.fspath(args.load), "config": config.to_dict(),
                                     "dataset": dataset, "num_test": int(x.shape[0]), "test_loss": test_loss,
                                     "test_accuracy": test_acc})
    return 0


def add_predict(sub) -> None:
    p = subcommand(sub, "predict", run_predict, "classify images with a saved checkpoint")
    p.add_argument("file", metavar="FILE", help="IDX or .npy images")
    p.add_argument("--load", metavar="PATH", required=True, help="checkpoint (.npz) from `jaxmlp train --save`")
    p.add_argument("--top", type=positive_int, default=1, metavar="K",
                   help="the K most probable classes per image (default: 1)")
    p.add_argument("--format", choices=("tsv", "csv", "json"), default=None,
                   help="tsv (default) or csv with a header row, or json: one object per line "
                        '{"index", "label", "prob", "top": [[label, prob], ...]}')
    p.add_argument("--json", action="store_true", help="the same as --format json")


def _rows(probs, names, k: int, fmt: str) -> list[str]:
    import numpy as np

    order = np.argsort(-probs, axis=1, kind="stable")[:, :k]
    if fmt == "json":
        return [json.dumps({"index": i, "label": names[top[0]], "prob": float(row[top[0]]),
                            "top": [[names[c], float(row[c])] for c in top]})
                for i, (row, top) in enumerate(zip(probs, order))]
    sep = "," if fmt == "csv" else "\t"
    header = ["index"] + [f"{w}{j + 1 if k > 1 else ''}" for j in range(k) for w in ("label", "prob")]
    return [sep.join(header)] + [sep.join([str(i)] + [f"{names[c]}{sep}{row[c]:.4f}" for c in top])
                                 for i, (row, top) in enumerate(zip(probs, order))]


def run_predict(args) -> int:
    """Classify the images in FILE with a checkpoint from `jaxmlp train --save`. FILE is an IDX images file (N, 28, 28)
    of uint8 pixels, gzip or raw, or a .npy array (N, 28, 28) or (N, 784) of integer pixels 0..255 or floats
    already scaled to [0, 1]. Prints a header and one row per image: its index, the predicted label and its
    probability (with --top K, K label/probability pairs, most probable first).
    """
    import jax.numpy as jnp

    from jaxmlp.data import read_images
    from jaxmlp.engine import precision
    from jaxmlp.evaluation import predict_probs
    from jaxmlp.runs import dtype_of, load_model, prepare

    if args.json and args.format not in (None, "json"):
        raise UsageError(f"--json is --format json; it cannot be combined with --format {args.format}")
    images, kind = read_images(args.file)
    model, params, config, meta = load_model(args.load)
    if images.shape[1] != meta["input_dim"] and images.size == meta["input_dim"]:
        images = images.reshape(1, -1)  # one image (28, 28) rather than 28 rows of 28 values
    _check_inputs(config, meta, images.shape[1], args.file)
    with precision(config.dtype, config.matmul_precision):
        dtype = dtype_of(config)
        x = prepare(images, dtype) if kind == "pixels" else jnp.asarray(images, dtype)
        probs = predict_probs(model, params, x)
    # A model fine-tuned on a label subset predicts positions in it; print the dataset's own labels.
    names = list(config.classes) if config.classes is not None else list(range(probs.shape[1]))
    rows = _rows(probs, names, min(args.top, probs.shape[1]), "json" if args.json else args.format or "tsv")
    sys.stdout.write("\n".join(rows) + "\n")
    return 0
