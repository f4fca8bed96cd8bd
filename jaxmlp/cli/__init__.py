"""The ``jaxmlp`` command line: parse, build the config, call the library, report.

One module per group of subcommands (``train``, ``sweep``, ``bench``, ``models``: eval and predict,
``misc``: download, presets, gradcheck); each has ``add(sub)`` declaring its flags and a ``run(args)``.
Results go to stdout, progress and diagnostics to stderr. Every failure the user can cause (bad flags,
bad files, divergence) ends as one line on stderr and a non-zero exit; JAXMLP_DEBUG=1 shows the
traceback instead. SIGTERM is turned into an exception so that temporary files are cleaned up.
"""
from __future__ import annotations

import argparse
import os
import signal
import sys

from . import bench, misc, models, reproduce, sweep, train
from .common import CLIError, Parser, UsageError, debug, one_line

__all__ = ["main", "build_parser", "CLIError", "UsageError"]

SUBCOMMANDS = [  # (name, adder): the order of --help
    ("train", train.add), ("sweep", sweep.add), ("bench", bench.add), ("gradcheck", misc.add_gradcheck),
    ("presets", misc.add_presets), ("download", misc.add_download), ("eval", models.add_eval),
    ("predict", models.add_predict), ("reproduce", reproduce.add_reproduce), ("verify", reproduce.add_verify),
]

EXAMPLES = """examples:
  jaxmlp train                                  the notebook's network and its best experiment
  jaxmlp train --preset fast-97                 about 97% in two epochs
  jaxmlp train --epochs 20 --save run.npz       Ctrl-C saves the step; --resume run.npz continues
  jaxmlp sweep --lr 0.01 0.03 0.1 0.3           four learning rates trained together
  jaxmlp eval --load run.npz                    test a checkpoint
  jaxmlp gradcheck --synthetic                  manual backprop vs jax.grad vs finite differences
  jaxmlp reproduce seed                         the notebook's table, exact in float64
  jaxmlp verify run.json                        rerun a `train --manifest run.json` run, bit for bit
"""


class Terminated(SystemExit):
    """SIGTERM outside a training loop: unwinds (cleaning temporary files) and exits 143."""


def _on_sigterm(signum, frame):
    raise Terminated(128 + signum)


def build_parser() -> Parser:
    from jaxmlp._version import __version__

    parser = Parser(prog="jaxmlp", description="Train and study the MNIST MLP with JAX.", epilog=EXAMPLES,
                    formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--version", action="version", version=f"jaxmlp {__version__}")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND", parser_class=Parser)
    sub.required = True
    for _, adder in SUBCOMMANDS:
        adder(sub)
    return parser


def enable_compile_cache() -> None:
    """Keep compiled XLA programs on disk so the next run of the same shapes starts in a fraction of the
    time ($JAXMLP_COMPILE_CACHE: a folder, or 0 to turn it off; default: the jaxmlp cache folder). A
    process-wide setting, made here at the CLI's entry, never by the library."""
    setting = os.environ.get("JAXMLP_COMPILE_CACHE", "")
    if setting == "0":
        return
    import jax

    if getattr(jax.config, "jax_compilation_cache_dir", None):  # the user (or a notebook) chose one already
        return
    folder = setting or os.path.join(os.environ.get("XDG_CACHE_HOME") or os.path.expanduser("~/.cache"),
                                     "jaxmlp", "xla")
    try:
        os.makedirs(folder, exist_ok=True)
    except OSError:
        return  # a read-only home only costs speed
    jax.config.update("jax_compilation_cache_dir", folder)
    jax.config.update("jax_persistent_cache_min_compile_time_secs", 0.0)  # small programs too


def main(argv=None) -> int:
    """Run one subcommand; returns the exit status (0, 1 for errors, 2 for bad flags, 130/143 signals,
    141 when stdout's reader went away)."""
    previous = signal.signal(signal.SIGTERM, _on_sigterm) if _main_thread() else None
    try:
        args = build_parser().parse_args(argv)
        enable_compile_cache()
        code = int(args.func(args) or 0)
        sys.stdout.flush()  # a reader that went away (`| head`) shows here, not in the interpreter's exit
        return code
    except KeyboardInterrupt:
        print("jaxmlp: interrupted", file=sys.stderr)
        return 130
    except Terminated as stop:
        print("jaxmlp: terminated (SIGTERM)", file=sys.stderr)
        return int(stop.code or 143)
    except (CLIError, ValueError, OSError, ArithmeticError, MemoryError, argparse.ArgumentTypeError) as err:
        if isinstance(err, BrokenPipeError) and _stdout_closed():
            return 141  # as a process killed by SIGPIPE, quietly: `jaxmlp reproduce --list | head -2`
        if debug():
            raise
        print(f"jaxmlp: error: {one_line(err)}", file=sys.stderr)
        return 2 if isinstance(err, (UsageError, argparse.ArgumentTypeError)) else 1
    except Exception as err:
        from jaxmlp.memory import is_out_of_memory

        if debug() or not is_out_of_memory(err):
            raise
        print(f"jaxmlp: error: out of memory on the device ({one_line(err)[:200]}); choose a smaller --hidden "
              f"or --batch-size", file=sys.stderr)
        return 1
    finally:
        if previous is not None:
            signal.signal(signal.SIGTERM, previous)


def _stdout_closed() -> bool:
    """Whether stdout's reader is gone (a BrokenPipeError can come from elsewhere, a socket); if so,
    stdout is pointed at /dev/null, where the interpreter's own flush at exit cannot fail."""
    try:
        sys.stdout.flush()
        closed = _reader_gone(sys.stdout)  # unbuffered (PYTHONUNBUFFERED), the flush has nothing to retry
    except OSError:
        closed = True
    if not closed:
        return False
    try:
        devnull = os.open(os.devnull, os.O_WRONLY)
        os.dup2(devnull, sys.stdout.fileno())
        os.close(devnull)
    except (OSError, ValueError):  # a stdout without a file descriptor (io.UnsupportedOperation)
        pass
    return True


def _reader_gone(stream) -> bool:
    """Whether ``stream`` is a pipe or socket whose other end closed: poll reports an error or a hang-up
    to its writer. False where that cannot be told (no poll, no file descriptor)."""
    import select

    try:
        poll = select.poll()
        poll.register(stream.fileno(), select.POLLOUT)
        return any(events & (select.POLLERR | select.POLLHUP) for _, events in poll.poll(0))
    except (AttributeError, OSError, ValueError):  # io.UnsupportedOperation is an OSError and a ValueError
        return False


def _main_thread() -> bool:
    import threading

    return threading.current_thread() is threading.main_thread()
