"""A native-protocol request (``/ws``, ``POST /v1/execute``) as the neutral request."""

from __future__ import annotations

from gemma_worker.core.request import ExecuteRequest
from gemma_worker.runtime.request import Caller, GenerationRequest, Output
from gemma_worker.sessions.service import TurnRequest


def to_request(
    req: ExecuteRequest, caller: Caller, *, transport: str, may_create: bool = False
) -> GenerationRequest:
    """The neutral request for a native one: a session turn, its history trimmed to fit.
    ``may_create``: the named session is the connection's own and may not exist yet."""
    output = (
        None
        if req.response_format is None
        else Output("response_format", format=req.response_format)
    )
    turn = TurnRequest(
        req.input,
        session_id=req.session_id,
        system=req.system,
        stateless=req.stateless,
        prompt_format=req.prompt_format,
        may_create=may_create,
    )
    return GenerationRequest(
        input=turn,
        sampling=req.sampling(),
        caller=caller,
        transport=transport,
        output=output,
        model=req.model,
        request_id=req.request_id,
        trim_history=True,
    )
