import math

import pytest
from pydantic import ValidationError

from gemma_worker.core.errors import ErrorCode, WorkerError
from gemma_worker.core.request import GenerationRequest, RequestLimits

LIMITS = RequestLimits(
    max_tokens_cap=100,
    default_max_tokens=20,
    max_input_chars=50,
    temperature=0.7,
    top_p=0.9,
    top_k=40,
)


@pytest.mark.parametrize(
    "body",
    [
        {},
        {"input": ""},
        {"input": "   "},
        {"input": 5},
        {"input": "x", "max_tokens": 0},
        {"input": "x", "max_tokens": -3},
        {"input": "x", "max_tokens": "5"},
        {"input": "x", "max_tokens": True},
        {"input": "x", "temperature": -0.1},
        {"input": "x", "temperature": math.nan},
        {"input": "x", "temperature": "0.5"},
        {"input": "x", "top_p": 0},
        {"input": "x", "top_p": 1.5},
        {"input": "x", "stop": "END"},
        {"input": "x", "stop": [1, 2]},
        {"input": "x", "seed": -1},
        {"input": "x", "session_id": "../../etc/passwd"},
        {"input": "x", "prompt_format": "markdown"},
    ],
)
def test_bad_requests_are_rejected(body: dict[str, object]) -> None:
    with pytest.raises(ValidationError):
        GenerationRequest.model_validate(body)


def test_defaults_come_from_limits() -> None:
    params = LIMITS.resolve(GenerationRequest(input="hi"))
    assert (params.max_tokens, params.temperature, params.top_p, params.top_k) == (
        20,
        0.7,
        0.9,
        40,
    )


def test_request_values_override_defaults() -> None:
    req = GenerationRequest.model_validate(
        {"input": "hi", "max_tokens": 7, "temperature": 0, "stop": ["\n"], "seed": 3}
    )
    params = LIMITS.resolve(req)
    assert (params.max_tokens, params.temperature, params.stop, params.seed) == (7, 0, ("\n",), 3)


def test_max_tokens_above_cap_is_invalid() -> None:
    with pytest.raises(WorkerError) as info:
        LIMITS.resolve(GenerationRequest(input="hi", max_tokens=101))
    assert info.value.code is ErrorCode.INVALID_REQUEST
    assert "100" in info.value.message


def test_input_over_limit_is_invalid() -> None:
    with pytest.raises(WorkerError) as info:
        LIMITS.resolve(GenerationRequest(input="x" * 51))
    assert info.value.code is ErrorCode.INVALID_REQUEST
