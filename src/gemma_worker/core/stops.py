"""Stop-string detection over streamed text (sans-I/O).

Text that could be the start of a stop string is held back until it is known not to be one, so a
client never sees part of a stop string.
"""

from __future__ import annotations


class StopMatcher:
    """Feed generated text in pieces; get back what is safe to emit and whether a stop was hit."""

    __slots__ = ("_held", "_stops", "matched", "stopped")

    def __init__(self, stops: tuple[str, ...] | list[str]) -> None:
        self._stops = tuple(s for s in stops if s)
        self._held = ""
        self.stopped = False
        #: The stop string that was found (the earliest in the text), once :attr:`stopped`.
        self.matched: str | None = None

    def feed(self, text: str) -> str:
        """Add ``text``; return the part that can be emitted now.

        After a stop string is found, :attr:`stopped` is true and everything from the stop string
        on is discarded.
        """
        if self.stopped:
            return ""
        if not self._stops:
            return text
        buf = self._held + text
        found = [(i, s) for s in self._stops if (i := buf.find(s)) >= 0]
        if found:
            cut, self.matched = min(found, key=lambda f: f[0])
            self.stopped = True
            self._held = ""
            return buf[:cut]
        keep = self._longest_partial(buf)
        self._held = buf[len(buf) - keep :] if keep else ""
        return buf[: len(buf) - keep]

    def flush(self) -> str:
        """At the end of generation: release any text still held back."""
        out, self._held = self._held, ""
        return "" if self.stopped else out

    def _longest_partial(self, buf: str) -> int:
        """Length of the longest suffix of ``buf`` that is a proper prefix of a stop string."""
        best = 0
        for stop in self._stops:
            for n in range(min(len(stop) - 1, len(buf)), best, -1):
                if buf.endswith(stop[:n]):
                    best = n
                    break
        return best
