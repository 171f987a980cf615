"""Progress of the recipes' loops (training epochs, evaluation): a tqdm bar on a terminal, and
in a log (stderr not a terminal, or tqdm not installed) a line every ``LINE_EVERY_S`` seconds."""

from __future__ import annotations

import sys
import time
from collections.abc import Callable, Iterable, Iterator
from typing import TypeVar

T = TypeVar("T")
Log = Callable[[str], None]

#: Seconds between two progress lines in a log.
LINE_EVERY_S = 30.0


def on_terminal() -> bool:
    return sys.stderr.isatty()


class Progress:
    """``progress(items, total, desc)`` yields the items and shows how far the loop is."""

    def __init__(self, quiet: bool, log: Log) -> None:
        self.quiet, self.log = quiet, log

    def __call__(self, items: Iterable[T], total: int, desc: str) -> Iterator[T]:
        if self.quiet or total <= 0:
            return iter(items)
        if on_terminal():
            try:
                from tqdm.auto import tqdm
            except ImportError:  # the "train" extra is not installed: lines instead
                pass
            else:
                return iter(tqdm(items, total=total, desc=desc, leave=False, dynamic_ncols=True))
        return self._lines(items, total, desc)

    def _lines(self, items: Iterable[T], total: int, desc: str) -> Iterator[T]:
        start = last = time.monotonic()
        for done, item in enumerate(items, 1):
            yield item  # the loop's work on the item runs here
            now = time.monotonic()
            if now - last >= LINE_EVERY_S and done < total:
                last = now
                rate = done / max(now - start, 1e-9)
                self.log(
                    f"{desc}: {done}/{total} ({100 * done / total:.0f}%), "
                    f"{rate:.3g} it/s, ~{(total - done) / rate:.0f} s left"
                )
