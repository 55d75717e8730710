"""The native protocol: ``WS /ws`` and ``POST /v1/execute``, ND-JSON events, sessions."""
