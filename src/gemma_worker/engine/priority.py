"""Work that must not slow the streams already running: a model load beside loaded models.

On two cores a load (reading and repacking the weights) took one core from the decode
threads of the running models: a stream's p95 token gap during a 2.2 s load was 4-7x its
normal gap. At niceness 5 the load takes 4.7 s beside a stream and the gap stays within
1.2-1.6x (niceness 10: 11 s, no better for the stream); alone, a load runs at full speed.
The priority is set on a short-lived thread because a thread may lower its own priority but
(unprivileged) never raise it back: the engine thread that decodes afterwards keeps the
normal one.
"""

from __future__ import annotations

import contextlib
import os
import threading
from collections.abc import Callable
from typing import TypeVar

T = TypeVar("T")

#: The niceness of a load (0 is normal, 19 the lowest priority).
LOAD_NICENESS = 5


def at_low_priority(fn: Callable[[], T], niceness: int = LOAD_NICENESS) -> T:
    """``fn()`` on its own thread at ``niceness``; its result, or its exception re-raised."""
    result: list[T] = []
    failure: list[BaseException] = []

    def run() -> None:
        with contextlib.suppress(OSError, AttributeError):  # not Linux: normal priority
            os.setpriority(os.PRIO_PROCESS, threading.get_native_id(), niceness)
        try:
            result.append(fn())
        except BaseException as exc:  # re-raised on the caller's thread
            failure.append(exc)

    thread = threading.Thread(target=run, name="gemma-load", daemon=True)
    thread.start()
    thread.join()
    if failure:
        raise failure[0]
    return result[0]
