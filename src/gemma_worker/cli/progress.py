"""Progress lines for the slow first steps (assembling, verifying, loading the model)."""

from __future__ import annotations

import sys
import time
from collections.abc import Iterator
from contextlib import contextmanager
from typing import TextIO


class Progress:
    """``[1/3] loading model ... done (0.42 s)`` on stderr; the CLI's own output."""

    def __init__(self, total: int, stream: TextIO | None = None) -> None:
        self.total = total
        self.index = 0
        self.stream = stream or sys.stderr

    @contextmanager
    def step(self, label: str) -> Iterator[None]:
        """Show ``label`` while the body runs, then how long it took (or that it failed)."""
        self.index += 1
        self.stream.write(f"[{self.index}/{self.total}] {label} ... ")
        self.stream.flush()
        t0 = time.perf_counter()
        try:
            yield
        except BaseException:
            self.stream.write("failed\n")
            self.stream.flush()
            raise
        self.stream.write(f"done ({time.perf_counter() - t0:.2f} s)\n")
        self.stream.flush()
