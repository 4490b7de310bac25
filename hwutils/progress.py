"""Progress of long work, in the notebook and in the terminal that builds the report.

Training code makes its bars with :func:`progress_bar`::

    bar = progress_bar(total=epochs, desc=f"{method} seed {seed}", unit="epoch")
    for epoch in range(epochs):
        ...
        bar.set_postfix_str(f"val error {err:.2%}", refresh=False)  # redrawn by update()
        bar.update()
    bar.close()

(or ``for job in progress_bar(jobs, desc="sweep"): ...``). The bar is an ordinary text tqdm bar: it
shows in a notebook, a terminal and papermill's executed notebook alike. When the environment
variable ``HWUTILS_PROGRESS_LOG`` names a file - ``python -m hwutils.report`` sets it for the
kernels it starts - each bar also appends one status line to that file when it starts, at most every
``HWUTILS_PROGRESS_EVERY`` seconds (default 5) while it runs, and when it ends::

    L2 seed 0: 12/50 epoch [01:22<04:20, 6.84 s/epoch, val error 1.92%]

and :func:`follow` prints those lines to the terminal while the notebook runs (papermill itself only
shows its cell counter).
"""
from __future__ import annotations

import contextlib
import os
import sys
import threading
import time
from pathlib import Path

from tqdm import tqdm

__all__ = ["progress_bar", "follow", "LOG_ENV", "EVERY_ENV"]

LOG_ENV = "HWUTILS_PROGRESS_LOG"      # a file: the bars append their status lines to it
EVERY_ENV = "HWUTILS_PROGRESS_EVERY"  # seconds between two lines of one bar (default 5)
LINE_FORMAT = "{desc}: {n_fmt}/{total_fmt} {unit} [{elapsed}<{remaining}, {rate_fmt}{postfix}]"


class _LoggedBar(tqdm):
    """A tqdm bar that also appends a throttled one-line status to a file."""

    def __init__(self, *args, log_path: str, log_every: float, **kwargs):
        self._log_path, self._log_every, self._last_log, self._ended = log_path, log_every, -float("inf"), False
        self._last_line = None
        super().__init__(*args, **kwargs)
        self._log(force=True)

    def status_line(self) -> str:
        """The bar as one line: description, count, elapsed < remaining, rate, postfix."""
        fmt = dict(self.format_dict)
        fmt.update(bar_format=LINE_FORMAT, ncols=None)
        fmt["prefix"] = fmt.get("prefix") or "progress"
        line = self.format_meter(**fmt)
        return " ".join(line.split())

    def _log(self, force: bool = False) -> None:
        if self.disable:
            return
        now = time.monotonic()
        if not force and now - self._last_log < self._log_every:
            return
        line = self.status_line()
        if line == self._last_line:
            return
        self._last_log, self._last_line = now, line
        try:
            with open(self._log_path, "a", encoding="utf-8") as f:
                f.write(line + "\n")
        except OSError:
            pass  # the terminal copy is a convenience: never fail the training for it

    def update(self, n=1):
        shown = super().update(n)
        self._log()
        return shown

    def __iter__(self):
        for obj in super().__iter__():
            yield obj
            self._log()

    def close(self):
        if not self.disable and not self._ended:
            self._ended = True
            self._log(force=True)
        super().close()


def progress_bar(iterable=None, total=None, desc=None, unit="it", leave=False, disable=False, **kwargs):
    """A text tqdm bar over ``iterable`` (or updated by hand up to ``total``).

    ``desc`` names the work (e.g. "dropout + L2, seed 1"), ``unit`` what is counted ("epoch");
    ``leave=False`` removes the bar from the notebook when it closes; ``disable=True`` shows and
    logs nothing. Other keyword arguments go to tqdm. With ``$HWUTILS_PROGRESS_LOG`` set, the bar
    also appends its status line to that file (at start, every ``$HWUTILS_PROGRESS_EVERY`` seconds
    - default 5 - and at the end); see the module docstring.
    """
    log_path = os.environ.get(LOG_ENV)
    if not log_path or disable:
        return tqdm(iterable, total=total, desc=desc, unit=unit, leave=leave, disable=disable, **kwargs)
    try:
        every = float(os.environ.get(EVERY_ENV, "5"))
    except ValueError:
        every = 5.0
    return _LoggedBar(iterable, total=total, desc=desc, unit=unit, leave=leave, disable=disable,
                      log_path=log_path, log_every=every, **kwargs)


@contextlib.contextmanager
def follow(path, prefix: str = "", stream=None, poll: float = 0.5):
    """While the ``with`` block runs, print each new line of the file ``path`` to ``stream``
    (default stdout) as ``prefix + line``; on exit, the lines not yet printed."""
    path = Path(path)
    stop = threading.Event()

    def emit(line: str) -> None:
        text = f"{prefix}{line}"
        if stream is None:
            tqdm.write(text, file=sys.stdout)  # clears and redraws papermill's own bar around the line
            sys.stdout.flush()
        else:
            print(text, file=stream, flush=True)

    def pump(position: int) -> int:
        try:
            with open(path, "rb") as f:
                f.seek(position)
                data = f.read()
        except FileNotFoundError:
            return position
        complete = data.rfind(b"\n") + 1  # only whole lines: a half-written one waits for its end
        for line in data[:complete].decode("utf-8", "replace").splitlines():
            if line.strip():
                emit(line)
        return position + complete

    def run() -> None:
        position = 0
        while not stop.wait(poll):
            position = pump(position)
        pump(position)

    thread = threading.Thread(target=run, name="hwutils-progress", daemon=True)
    thread.start()
    try:
        yield path
    finally:
        stop.set()
        thread.join(timeout=5)
