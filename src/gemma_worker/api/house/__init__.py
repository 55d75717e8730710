"""The house protocol: ``WS /ws`` and ``POST /v1/execute``, ND-JSON events, sessions."""
