"""The ``gemma-worker`` command line."""
