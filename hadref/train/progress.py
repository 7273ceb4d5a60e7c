"""Progress display and the JSON-lines log of a training run.

:class:`Progress` prints one status line (stage, step, c, losses, learning rate, rate,
time left): rewritten in place on a terminal and cut to its width, a new line every
``every`` seconds (60 by default) otherwise (logs, CI). :class:`JsonLog` appends one JSON
object per line and flushes, so a crash loses nothing already written.
"""

from __future__ import annotations

import json
import shutil
import sys
import time


def _duration(seconds: float) -> str:
    seconds = int(max(0, seconds))
    h, rem = divmod(seconds, 3600)
    m, s = divmod(rem, 60)
    return f"{h}:{m:02d}:{s:02d}" if h else f"{m:02d}:{s:02d}"


class Progress:
    """Status line for ``total`` steps, of which ``done`` were already made (resume).

    On a terminal the line is rewritten in place every 0.2 s and cut to the terminal's
    width (never wrapped); :meth:`close` (and every :meth:`message`) ends it, so that what
    follows (an error after Ctrl-C) starts on a line of its own. When the stream is not a
    terminal (a log file, CI) the display is sparse: one status line every ``every``
    seconds (default 60) and one at the last step, plus the messages.
    """

    def __init__(self, total: int, done: int = 0, stream=None, every: float = 60.0,
                 enabled: bool = True, label: str = ""):
        self.total, self.start_step = total, done
        self.stream = stream or sys.stderr
        self.tty = hasattr(self.stream, "isatty") and self.stream.isatty()
        self.every = 0.2 if self.tty else every
        self.enabled = enabled
        self.label = label
        self.t0 = time.monotonic()
        self._last = time.monotonic() if not self.tty else -1e9  # first line after `every`
        self._open = False   # a status line is on screen without its newline

    def start(self, total: int, done: int = 0) -> None:
        """(Re)start the clock for ``total`` steps of which ``done`` are made (resume)."""
        self.total, self.start_step = total, done
        self.t0 = time.monotonic()

    def line(self, step: int, fields: dict) -> str:
        """The status text after ``step`` steps (1-based count of steps made)."""
        elapsed = time.monotonic() - self.t0
        made = step - self.start_step
        rate = made / elapsed if elapsed > 0 else 0.0
        left = (self.total - step) / rate if rate > 0 else float("nan")
        parts = [f"{self.label}{step}/{self.total}"]
        for key, value in fields.items():
            if value is None:
                continue
            parts.append(f"{key} {value:.4g}" if isinstance(value, float) else f"{key} {value}")
        parts.append(f"{rate:.2f} step/s")
        parts.append("left " + (_duration(left) if left == left else "?"))
        return " | ".join(parts)

    def update(self, step: int, fields: dict, force: bool = False) -> None:
        if not self.enabled:
            return
        now = time.monotonic()
        if not force and now - self._last < self.every and step < self.total:
            return
        self._last = now
        text = self.line(step, fields)
        if self.tty:
            # one column less than the width: a full last column would wrap on some terminals
            width = shutil.get_terminal_size((80, 24)).columns - 1
            self.stream.write("\r\x1b[K" + text[:max(width, 10)])
            self._open = True
            if step >= self.total:
                self.stream.write("\n")
                self._open = False
        else:
            self.stream.write(text + "\n")
        self.stream.flush()

    def message(self, text: str) -> None:
        """A line of its own (stage ends, evaluations), not overwritten by the status."""
        if self.enabled:
            self.stream.write(("\r\x1b[K" if self.tty else "") + text + "\n")
            self._open = False
            self.stream.flush()

    def close(self) -> None:
        """End a status line left open (Ctrl-C, an error), so that the next output starts
        on a new line."""
        if self._open:
            self.stream.write("\n")
            self.stream.flush()
            self._open = False


class JsonLog:
    """JSON-lines log (None path: no log): a new file, or appended to on a resume. The
    file is opened at the first record, so a run refused before it starts writes nothing."""

    def __init__(self, path=None, append: bool = True):
        self.path, self.append = path, append
        self.handle = None

    def write(self, **record) -> None:
        if self.path is None:
            return
        if self.handle is None:
            self.handle = open(self.path, "a" if self.append else "w", encoding="utf-8")
        self.handle.write(json.dumps(record, sort_keys=False) + "\n")
        self.handle.flush()

    def close(self) -> None:
        if self.handle is not None:
            self.handle.close()
            self.handle = None
