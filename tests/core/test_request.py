import math

import pytest
from pydantic import ValidationError

from gemma_worker.core.request import ExecuteRequest


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
        ExecuteRequest.model_validate(body)


def test_a_request_states_only_what_it_was_given() -> None:
    req = ExecuteRequest.model_validate(
        {"input": "hi", "max_tokens": 7, "temperature": 0, "stop": ["\n"], "seed": 3}
    )
    sampling = req.sampling()
    assert (sampling.max_tokens, sampling.temperature, sampling.stop, sampling.seed) == (
        7,
        0,
        ("\n",),
        3,
    )
    assert (sampling.top_p, sampling.top_k) == (None, None)
    assert sampling.length.unset == "default" and not sampling.length.fit
