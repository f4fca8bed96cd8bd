"""``jaxmlp download``, ``presets`` and ``gradcheck``."""
from __future__ import annotations

from jaxmlp.config import DEFAULT_INIT, INIT_SCHEMES, hidden_sizes, nonneg_float, positive_float, positive_int, seed_int

from .common import add_data_flags, hidden_token, say, subcommand


def add_download(sub) -> None:
    p = subcommand(sub, "download", run_download, "fetch a dataset's IDX files and verify their checksums")
    add_data_flags(p)
    p.add_argument("--mirror", metavar="URL", action="append", default=None,
                   help="base URL to fetch from instead of the built-in mirrors (file URL = URL/NAME); repeat to "
                        "try several in order")
    p.add_argument("--timeout", type=positive_float, default=30.0, metavar="SECONDS",
                   help="network timeout per request (default: 30)")
    p.add_argument("--quiet", action="store_true", help="no progress bar")


def run_download(args) -> int:
    """Download MNIST, Fashion-MNIST or KMNIST into a folder, verifying each file's SHA-256; files already there and
    verified are kept. Prints the folder.
    """
    from jaxmlp.data import download

    print(download(args.dataset, args.data_dir, mirrors=args.mirror, progress=not args.quiet, timeout=args.timeout))
    return 0


def add_presets(sub) -> None:
    subcommand(sub, "presets", run_presets, "list the named training recipes for `train --preset`")


def run_presets(args) -> int:
    """List the presets of `jaxmlp train --preset NAME` and their settings."""
    from jaxmlp.presets import PRESETS

    for name, preset in PRESETS.items():
        settings = " ".join(f"--{k.replace('_', '-')} {' '.join(map(str, v)) if isinstance(v, tuple) else v}"
                            for k, v in preset["config"].items())
        print(f"{name}: {preset['description']}")
        print(f"    {settings or '(the defaults)'}")
    return 0


def add_gradcheck(sub) -> None:
    from jaxmlp.model import ACTIVATIONS

    p = subcommand(sub, "gradcheck", run_gradcheck, "compare manual backprop, jax.grad and finite differences")
    add_data_flags(p)
    p.add_argument("--hidden", type=hidden_token, nargs="+", default=["128", "64"], metavar="N",
                   help="hidden layer sizes (default: 128 64)")
    p.add_argument("--batch-size", type=positive_int, default=32, help="examples in the batch (default: 32)")
    p.add_argument("--init", choices=INIT_SCHEMES, default=DEFAULT_INIT,
                   help=f"weight init (default: {DEFAULT_INIT}, whose gradients are of a checkable size in every "
                        f"layer)")
    p.add_argument("--activation", choices=ACTIVATIONS, default="relu", help="hidden activation (default: relu)")
    p.add_argument("--l2", type=nonneg_float, default=0.0, help="L2 penalty weight in the loss (default: 0)")
    p.add_argument("--seed", type=seed_int, default=0, help="PRNG seed (default: 0)")
    p.add_argument("--coords", type=positive_int, default=20,
                   help="finite-difference coordinates checked per parameter (default: 20)")
    p.add_argument("--eps", type=positive_float, default=1e-4, help="finite-difference step (default: 1e-4)")
    p.add_argument("--synthetic", action="store_true", help="use random inputs instead of the dataset")


def _batch(args, key):
    import jax
    import jax.numpy as jnp

    if args.synthetic:
        kx, ky = jax.random.split(key)
        return (jax.random.uniform(kx, (args.batch_size, 784), jnp.float64),
                jax.random.randint(ky, (args.batch_size,), 0, 10), "synthetic inputs")
    from jaxmlp.data import ensure_dataset
    from jaxmlp.runs import prepare

    data = ensure_dataset(args.data_dir, args.dataset)
    x = prepare(data.x_train[: args.batch_size], jnp.float64)
    return x, jnp.asarray(data.y_train[: args.batch_size], jnp.int32), f"the first {x.shape[0]} training images"


def run_gradcheck(args) -> int:
    """Compare the notebook's hand-derived backprop, jax.grad and central finite differences in float64 on a batch,
    reporting the max relative error per parameter. Finite-difference steps that cross a kink (a ReLU input
    crossing 0) are re-stepped smaller, or skipped when every step crosses one; the counts are printed.
    """
    import jax
    import jax.numpy as jnp

    from jaxmlp._compat import enable_x64
    from jaxmlp.backprop import AGREE_RTOL, FD_RTOL, gradcheck_mlp
    from jaxmlp.model import init_params

    hidden = hidden_sizes(args.hidden)
    with enable_x64(True):  # the comparison is only meaningful in float64
        key, data_key = jax.random.split(jax.random.PRNGKey(args.seed))
        x, y, source = _batch(args, data_key)
        params = init_params(key, [x.shape[1], *hidden, 10], scheme=args.init, dtype=jnp.float64)
        result = gradcheck_mlp(params, x, y, activation=args.activation, l2=args.l2, eps=args.eps,
                               max_coords=args.coords, seed=args.seed)
    print(f"gradient check in float64 on {source} ({args.activation}, l2 {args.l2:g}), {args.coords} "
          f"finite-difference coordinates per parameter")
    print(f"{'param':<6} {'shape':<12} {'manual~autodiff':>16} {'manual~FD':>12} {'autodiff~FD':>12} {'skipped':>8}")
    for r in result.rows:
        print(f"{r.name:<6} {str(r.shape):<12} {r.manual_vs_autodiff:>16.2e} {r.manual_vs_fd:>12.2e} "
              f"{r.autodiff_vs_fd:>12.2e} {r.skipped:>8}")
    worst_ad = max(r.manual_vs_autodiff for r in result.rows)
    worst_fd = max(max(r.manual_vs_fd, r.autodiff_vs_fd) for r in result.rows)
    print(f"finite differences: {result.checked} coordinates compared, {result.restepped} of them re-stepped "
          f"smaller at a kink, {result.skipped} skipped (a kink inside every step)")
    print(f"max relative error: manual vs autodiff {worst_ad:.1e} (limit {AGREE_RTOL:g}), "
          f"vs finite differences {worst_fd:.1e} (limit {FD_RTOL:g}): {'OK' if result.passed else 'FAILED'}")
    if not result.passed:
        say("jaxmlp: error: the gradient check FAILED (see the table)")
    return 0 if result.passed else 1
