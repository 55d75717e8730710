"""Server-side conversation sessions: the store seam and its SQLite implementation."""
