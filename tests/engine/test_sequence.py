from gemma_worker.core.sampling import SamplingParams
from gemma_worker.engine.job import GenerationSpec, Job
from gemma_worker.engine.messages import Text, TokenLogprob
from gemma_worker.engine.prompt import Prompt
from gemma_worker.engine.sequence import SequenceState


def make_seq(max_tokens: int = 10, stop: tuple[str, ...] = (), n_ctx: int = 100) -> SequenceState:
    params = SamplingParams(max_tokens, 0.0, 1.0, 0, None, stop)
    spec = GenerationSpec("r", Prompt("p", True, False, "plain"), params)
    job = Job(spec, channel=None)  # type: ignore[arg-type]
    return SequenceState(
        job,
        slot=0,
        order=1,
        prompt_tokens=[1, 2, 3],
        n_ctx=n_ctx,
        sampler=None,  # type: ignore[arg-type]
    )


def feed(
    seq: SequenceState, piece: bytes, eog: bool = False, logprob: TokenLogprob | None = None
) -> tuple[str, str | None]:
    text, reason = seq.on_token(piece, eog, logprob)
    return ("" if text is None else text.text), reason


def lp(token: str) -> TokenLogprob:
    return TokenLogprob(token, -0.5, token.encode())


def test_logprobs_of_held_back_tokens_go_out_with_the_next_text() -> None:
    seq = make_seq(stop=("\nQ",))
    assert seq.on_token(b" Paris", False, lp(" Paris"))[0] == Text(" Paris", (lp(" Paris"),))
    assert seq.on_token(b"\n", False, lp("\n"))[0] is None  # may start the stop string
    text, reason = seq.on_token(b"ice", False, lp("ice"))
    assert text == Text("\nice", (lp("\n"), lp("ice")))
    assert reason is None


def test_multibyte_characters_wait_until_complete() -> None:
    seq = make_seq()
    euro = "€".encode()
    assert feed(seq, euro[:1], eog=False) == ("", None)
    assert feed(seq, euro[1:], eog=False) == ("€", None)


def test_max_tokens_ends_with_length() -> None:
    seq = make_seq(max_tokens=2)
    assert feed(seq, b"a", False) == ("a", None)
    assert feed(seq, b"b", False) == ("b", "length")
    assert seq.n_generated == 2


def test_end_of_generation_token_is_not_counted_or_shown() -> None:
    seq = make_seq()
    feed(seq, b"hi", False)
    assert feed(seq, b"", True) == ("", "stop")
    assert seq.n_generated == 1


def test_stop_string_ends_with_stop() -> None:
    seq = make_seq(stop=("\n",))
    assert feed(seq, b" Paris", False) == (" Paris", None)
    assert feed(seq, b"\nQuestion", False) == ("", "stop")


def test_context_end_ends_with_length() -> None:
    seq = make_seq(max_tokens=50, n_ctx=5)
    seq.n_past = 4
    assert feed(seq, b"x", False) == ("x", "length")


def test_prefill_progress() -> None:
    seq = make_seq()
    assert seq.prefill_remaining == 3
    assert seq.prefill_chunk(2) == [1, 2]
    seq.n_past = 2
    assert seq.prefill_chunk(5) == [3]


def test_guesses_that_fill_a_step_count_neither_in_timings_nor_in_acceptance() -> None:
    seq = make_seq()
    seq.draft_match = 12  # found by a 12-token match
    seq.n_guessed = 3  # a draft of 5: 2 from the drafter, then 3 guesses filling the step
    before = seq.acceptance[12].rate
    seq.speculated(drafted=5, accepted=5)
    assert (seq.n_drafted, seq.n_accepted) == (2, 2)
    assert seq.acceptance[12].rate > before  # the drafter's 2 stood
    seq.draft_match, seq.n_guessed = 0, 4
    seq.speculated(drafted=4, accepted=0)  # guesses alone: the drafter was not tried
    assert (seq.n_drafted, seq.n_accepted) == (2, 2)
    assert set(seq.acceptance) == {12}
    seq.draft_match, seq.n_guessed = 12, 2
    high = seq.acceptance[12].rate
    seq.speculated(drafted=6, accepted=1)  # the drafter's 4: 1 stood, then a miss
    assert (seq.n_drafted, seq.n_accepted) == (6, 3)
    assert seq.acceptance[12].rate < high
    finished = seq.finished("stop")
    assert (finished.timings.draft_tokens, finished.timings.accepted_tokens) == (6, 3)


def test_acceptance_is_kept_apart_for_each_match_length() -> None:
    seq = make_seq()
    for _ in range(5):  # drafts found by 2 tokens keep failing...
        seq.draft_match = 2
        seq.speculated(drafted=8, accepted=0)
        seq.draft_match = 12  # ...those found by 12 keep standing
        seq.speculated(drafted=8, accepted=8)
    assert seq.acceptance[2].rate < 0.5
    assert seq.acceptance[12].rate > 0.9
