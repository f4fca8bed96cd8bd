"""Progress bars for long work (epochs, sweeps, downloads), drawn on stderr.

A bar is drawn only when it is enabled and stderr is a terminal or a Jupyter kernel's output (which
renders the carriage returns a bar redraws with), so logs and CI output stay clean.
"""
from __future__ import annotations

import sys
import time


class Progress:
    """A one-line text progress bar: ``with Progress(total, "train") as bar: bar.update(1)``.

    Args:
        total: the amount that completes the bar.
        desc: the label written before the bar.
        enabled: draw at all (it draws only when ``stream`` is a terminal or a Jupyter kernel's, too).
        stream: where to draw (default ``sys.stderr``).
        unit: written after the ``done/total`` counts.
    """

    def __init__(self, total: float, desc: str = "", enabled: bool = True, stream=None, unit: str = ""):
        self.total = max(float(total), 0.0)
        self.desc = desc
        self.unit = unit
        self.stream = stream if stream is not None else sys.stderr
        self.enabled = bool(enabled) and _isatty(self.stream)
        self.done = 0.0
        self.postfix = ""
        self._start = time.perf_counter()
        self._last_draw = 0.0

    def update(self, n: float = 1, postfix: str | None = None) -> None:
        self.done += n
        if postfix is not None:
            self.postfix = postfix
        now = time.perf_counter()
        # Redrawing more than ~20 times a second costs time and flickers.
        if self.enabled and (now - self._last_draw > 0.05 or self.done >= self.total):
            self._last_draw = now
            self._draw(now)

    def _draw(self, now: float) -> None:
        width = 28
        frac = min(self.done / self.total, 1.0) if self.total else 1.0
        filled = int(round(frac * width))
        elapsed = now - self._start
        eta = elapsed / frac - elapsed if frac > 0 else float("nan")
        eta_txt = f" eta {eta:5.1f}s" if frac < 1 and eta == eta else f" {elapsed:5.1f}s"
        line = (f"\r{self.desc} [{'#' * filled}{'.' * (width - filled)}] "
                f"{_fmt(self.done)}/{_fmt(self.total)}{self.unit}{eta_txt} {self.postfix}")
        self.stream.write(line[:200].ljust(80))
        self.stream.flush()

    def close(self) -> None:
        if self.enabled:
            self.stream.write("\r" + " " * 100 + "\r")
            self.stream.flush()

    def __enter__(self) -> Progress:
        return self

    def __exit__(self, *exc) -> None:
        self.close()


def _fmt(x: float) -> str:
    return str(int(x)) if float(x).is_integer() else f"{x:.1f}"


def _isatty(stream) -> bool:
    if type(stream).__module__.startswith("ipykernel"):  # a notebook's cell output redraws on "\r" too
        return True
    try:
        return stream.isatty()
    except (AttributeError, ValueError):
        return False
