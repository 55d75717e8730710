"""The one error shared-state backends raise."""

from __future__ import annotations


class SharedStateError(Exception):
    """The shared store (Redis) could not be reached or answered with an error.

    The message is safe to log but not meant for clients: it may name a host.
    """
