from gemma_worker.core.request import SamplingParams
from gemma_worker.engine.job import Job
from gemma_worker.engine.prompt import Prompt
from gemma_worker.engine.sequence import SequenceState


def make_seq(max_tokens: int = 10, stop: tuple[str, ...] = (), n_ctx: int = 100) -> SequenceState:
    params = SamplingParams(max_tokens, 0.0, 1.0, 0, None, stop)
    job = Job("r", Prompt("p", True, False, "plain"), params, channel=None)  # type: ignore[arg-type]
    return SequenceState(job, slot=0, order=1, prompt_tokens=[1, 2, 3], n_ctx=n_ctx)


def test_multibyte_characters_wait_until_complete() -> None:
    seq = make_seq()
    euro = "€".encode()
    assert seq.on_token(euro[:1], eog=False) == ("", None)
    assert seq.on_token(euro[1:], eog=False) == ("€", None)


def test_max_tokens_ends_with_length() -> None:
    seq = make_seq(max_tokens=2)
    assert seq.on_token(b"a", False) == ("a", None)
    assert seq.on_token(b"b", False) == ("b", "length")
    assert seq.n_generated == 2


def test_end_of_generation_token_is_not_counted_or_shown() -> None:
    seq = make_seq()
    seq.on_token(b"hi", False)
    assert seq.on_token(b"", True) == ("", "stop")
    assert seq.n_generated == 1


def test_stop_string_ends_with_stop() -> None:
    seq = make_seq(stop=("\n",))
    assert seq.on_token(b" Paris", False) == (" Paris", None)
    assert seq.on_token(b"\nQuestion", False) == ("", "stop")


def test_context_end_ends_with_length() -> None:
    seq = make_seq(max_tokens=50, n_ctx=5)
    seq.n_past = 4
    assert seq.on_token(b"x", False) == ("x", "length")


def test_prefill_progress() -> None:
    seq = make_seq()
    assert seq.prefill_remaining == 3
    assert seq.prefill_chunk(2) == [1, 2]
    seq.n_past = 2
    assert seq.prefill_chunk(5) == [3]
