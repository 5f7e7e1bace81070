"""Progress of long loops in the form that suits where the output goes: a bar on a terminal, lines in a log.

tqdm redraws its bar with carriage returns. On a terminal that is one live line; written to a file (CI,
``nohup``, ``> run.log``) every redraw stays, and a training log held hundreds of them per epoch. So a bar is
drawn only when the stream is a terminal; otherwise :class:`Progress` logs one plain line every
``interval_s`` seconds (30 by default, or ``RECSYS_PROGRESS_INTERVAL``), and callers keep logging their own
per-epoch summaries. Every loop that reports progress (training epochs, ``recsys generate``) goes through
here, so the rule lives in one place.
"""

from __future__ import annotations

import logging
import os
import sys
import time
from collections.abc import Iterable, Iterator, Mapping, Sized
from typing import Generic, TextIO, TypeVar

from tqdm import tqdm

from recsys.errors import InputError

logger = logging.getLogger(__name__)

T = TypeVar("T")

INTERVAL_ENV = "RECSYS_PROGRESS_INTERVAL"
"""Environment variable: seconds between plain progress lines off a terminal (0: after every item)."""
DEFAULT_INTERVAL_S = 30.0


def line_interval() -> float:
    """Seconds between plain progress lines: ``RECSYS_PROGRESS_INTERVAL``, else 30.

    Raises:
        InputError: the variable is set to something other than a number >= 0.
    """
    text = os.environ.get(INTERVAL_ENV, "").strip()
    if not text:
        return DEFAULT_INTERVAL_S
    try:
        value = float(text)
    except ValueError:
        value = -1.0
    if not value >= 0:  # also rejects nan
        msg = f"{INTERVAL_ENV}={text!r}: expected seconds between progress lines, a number >= 0"
        raise InputError(msg)
    return value


class Progress(Generic[T]):
    """Iterate over ``iterable`` and report how far along it is: a tqdm bar or a log line now and then.

    Args:
        iterable: The work items.
        desc: What is being done, e.g. ``"epoch 3/20"``; starts every line.
        unit: What one item is, e.g. ``"batch"``.
        total: Number of items (``len(iterable)`` when it has one).
        enabled: ``False`` reports nothing (``--quiet``).
        stream: Where a bar would be drawn; it is drawn only if this is a terminal (default stderr).
        interval_s: Seconds between plain lines off a terminal (default :func:`line_interval`).
    """

    def __init__(
        self,
        iterable: Iterable[T],
        *,
        desc: str,
        unit: str,
        total: int | None = None,
        enabled: bool = True,
        stream: TextIO | None = None,
        interval_s: float | None = None,
    ) -> None:
        self._iterable = iterable
        self.desc = desc
        self.unit = unit
        self.total = total if total is not None or not isinstance(iterable, Sized) else len(iterable)
        out = stream if stream is not None else sys.stderr
        self._bar: tqdm[T] | None = None
        if enabled and out.isatty():
            self._bar = tqdm(iterable, desc=desc, unit=unit, total=self.total, file=out, leave=False)
        self._lines = enabled and self._bar is None
        self._interval = interval_s if interval_s is not None else (line_interval() if self._lines else 0.0)
        self._postfix: dict[str, float] = {}

    def set_postfix(self, values: Mapping[str, float]) -> None:
        """Show these numbers (e.g. running losses) after the count, on the bar or the next line."""
        self._postfix = dict(values)
        if self._bar is not None:
            self._bar.set_postfix(self._postfix)

    def __iter__(self) -> Iterator[T]:
        if self._bar is not None:
            yield from self._bar
            return
        if not self._lines:
            yield from self._iterable
            return
        start = last = time.monotonic()
        for count, item in enumerate(self._iterable, start=1):
            yield item
            now = time.monotonic()
            if now - last >= self._interval:
                last = now
                logger.info(self._line(count, now - start))

    def _line(self, count: int, seconds: float) -> str:
        done = f"{count:,}/{self.total:,}" if self.total else f"{count:,}"
        share = f" ({100 * count / self.total:.0f}%)" if self.total else ""
        rate = f", {count / seconds:.1f} {self.unit}/s" if seconds > 0 else ""
        extra = "".join(f" {name}={value:.4g}" for name, value in self._postfix.items())
        return f"{self.desc}: {done} {self.unit}{share}{rate}{',' if extra else ''}{extra}"
