"""The generation core every API dialect runs on: admission, rate-limit leases, accounting,
and typed events (engine events plus tool-call deltas)."""
