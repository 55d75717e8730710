"""The one place sampling parameters are resolved: each dialect's rules, as data."""

import math

import pytest

from gemma_worker.core.errors import ErrorCode, WorkerError
from gemma_worker.core.sampling import LengthRule, RequestLimits, SamplingRequest

LIMITS = RequestLimits(
    max_tokens_cap=100,
    default_max_tokens=20,
    max_input_chars=50,
    temperature=0.7,
    top_p=0.9,
    top_k=40,
    max_messages=3,
)
N_CTX = 512
N_VOCAB = 1000


def resolve(**fields: object):  # type: ignore[no-untyped-def]
    return LIMITS.resolve(SamplingRequest(**fields), n_ctx=N_CTX, n_vocab=N_VOCAB)  # type: ignore[arg-type]


def test_defaults_come_from_limits() -> None:
    params = resolve()
    assert (params.max_tokens, params.temperature, params.top_p, params.top_k) == (20, 0.7, 0.9, 40)
    assert not params.fit_context and params.seed is None and params.repeat_last_n == 64


def test_given_values_override_defaults() -> None:
    params = resolve(max_tokens=7, temperature=0.0, top_p=0.5, top_k=3, stop=("\n",))
    assert (params.max_tokens, params.temperature, params.top_p, params.top_k) == (7, 0.0, 0.5, 3)
    assert params.stop == ("\n",) and not params.fit_context


@pytest.mark.parametrize(
    ("rule", "expected"),
    [
        (LengthRule(), (20, False)),  # native: the default, refused if it does not fit
        (LengthRule(unset="context"), (100, True)),  # OpenAI: what the context leaves
        (LengthRule(unset="default", fit=True), (20, True)),  # Ollama: the default, fitted
    ],
)
def test_an_unset_length_follows_the_dialects_rule(
    rule: LengthRule, expected: tuple[int, bool]
) -> None:
    params = resolve(length=rule)
    assert (params.max_tokens, params.fit_context) == expected


def test_until_full_fills_the_context() -> None:
    params = resolve(until_full=True)
    assert (params.max_tokens, params.fit_context) == (100, True)


def test_a_length_above_the_cap_is_refused_under_the_clients_name() -> None:
    with pytest.raises(WorkerError) as info:
        resolve(max_tokens=101, length=LengthRule(param="options.num_predict"))
    assert info.value.code is ErrorCode.INVALID_REQUEST
    assert info.value.details["param"] == "options.num_predict"
    assert "101" in info.value.message and "100" in info.value.message


def test_top_k_zero_or_huge_is_the_workers_bound() -> None:
    assert resolve(top_k=0).top_k == 1000
    assert resolve(top_k=10**6).top_k == 1000


def test_seeds_are_reduced_into_llama_cpps_range() -> None:
    assert resolve(seed=2**40).seed == 2**40 % (2**32 - 1)
    assert resolve(seed=-5).seed == -5 % (2**32 - 1)


def test_logit_bias_bans_at_minus_100_and_checks_the_vocabulary() -> None:
    params = resolve(logit_bias=((5, -100.0), (6, 2.5)))
    assert params.logit_bias[0][0] == 5 and math.isinf(params.logit_bias[0][1])
    assert params.logit_bias[1] == (6, 2.5)
    with pytest.raises(WorkerError) as info:
        resolve(logit_bias=((N_VOCAB, 1.0),))
    assert info.value.details["param"] == "logit_bias"


def test_a_negative_repeat_window_is_the_whole_context() -> None:
    assert resolve(repeat_last_n=-1).repeat_last_n == N_CTX
    assert resolve(repeat_last_n=8, repeat_penalty=1.2).repeat_penalty == 1.2


def test_a_context_above_the_workers_is_refused() -> None:
    with pytest.raises(WorkerError) as info:
        resolve(context_tokens=N_CTX + 1)
    assert "num_ctx" in info.value.message


def test_input_limits() -> None:
    LIMITS.check_chars(50, 3)
    with pytest.raises(WorkerError) as chars:
        LIMITS.check_chars(51)
    assert chars.value.code is ErrorCode.INVALID_REQUEST
    with pytest.raises(WorkerError) as messages:
        LIMITS.check_chars(1, 4)
    assert messages.value.details["param"] == "messages"
