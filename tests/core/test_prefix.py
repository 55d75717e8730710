from gemma_worker.core.prefix import PrefixMatch, common_prefix, match_prefix, token_boundaries

# a toy vocabulary: token id -> bytes
VOCAB = {
    1: b"<bos>",
    2: b"Hello",
    3: b" world",
    4: b"!",
    5: b" wor",
    6: b"ld",
    7: b"\xc3",
    8: b"\xa9",
}
CONTROL = {1}


def piece(t: int) -> bytes:
    return VOCAB[t]


def any_token(_t: int) -> bool:
    return True


def test_whole_cache_matches_when_the_text_continues_it() -> None:
    m = match_prefix([1, 2, 3], [1], b"Hello world, again", piece, any_token)
    assert m == PrefixMatch(3, len(b"Hello world"))


def test_match_is_on_text_not_on_token_ids() -> None:
    # the cache spelled " world" as " wor" + "ld"; the text still matches
    assert match_prefix([1, 2, 5, 6], [1], b"Hello world!", piece, any_token).n_tokens == 4


def test_match_stops_at_the_first_difference() -> None:
    assert match_prefix([1, 2, 3, 4], [1], b"Hello world?", piece, any_token) == PrefixMatch(
        3, len(b"Hello world")
    )
    assert match_prefix([1, 2, 3], [1], b"Goodbye", piece, any_token) == PrefixMatch(1, 0)


def test_head_must_match() -> None:
    assert match_prefix([2, 3], [1], b"Hello world", piece, any_token) == PrefixMatch(0, 0)
    assert match_prefix([], [1], b"Hello", piece, any_token) == PrefixMatch(0, 0)


def test_unreusable_tokens_end_the_match() -> None:
    # plain prompts must not reuse a control token for user text that merely spells it
    m = match_prefix([2, 1], [], b"Hello<bos>", piece, lambda t: t not in CONTROL)
    assert m == PrefixMatch(1, 5)
    assert match_prefix([1, 2], [], b"<bos>Hello", piece, any_token).n_tokens == 2


def test_never_ends_inside_a_utf8_character() -> None:
    # the cache holds the first byte of "é" as its own token; the text goes on with "é!"
    m = match_prefix([1, 2, 7], [1], "Helloé!".encode(), piece, any_token)
    assert m == PrefixMatch(2, 5)
    assert match_prefix([1, 2, 7, 8], [1], "Helloé!".encode(), piece, any_token).n_tokens == 4


def test_never_cuts_a_token_of_the_prompt_in_two() -> None:
    # cache: "<" generated as text; prompt: "<end>" which the prompt tokenises as one token
    vocab = {1: b"<", 2: b"<end>", 3: b"Hi"}
    text = b"Hi<end>"
    prompt_tokens = [3, 2]
    bounds = token_boundaries(prompt_tokens, 0, vocab.__getitem__)
    assert bounds == {0: 0, 2: 1, 7: 2}  # offset -> tokens before it
    assert token_boundaries([1, 3, 2], 1, vocab.__getitem__) == {0: 1, 2: 2, 7: 3}
    m = match_prefix([3, 1], [], text, vocab.__getitem__, any_token, boundaries=bounds)
    assert m == PrefixMatch(1, 2)  # stops before "<", so "<end>" is tokenised whole
    # without the prompt's boundaries the match would have taken the "<"
    assert match_prefix([3, 1], [], text, vocab.__getitem__, any_token).n_tokens == 2


def test_common_prefix_of_token_lists() -> None:
    assert common_prefix([], [1, 2]) == 0
    assert common_prefix([1, 2, 3], [1, 2, 3]) == 3
    assert common_prefix([1, 2, 3], [1, 2]) == 2  # one is the other's head
    assert common_prefix([5, 2, 3], [1, 2, 3]) == 0
    long = list(range(1000))
    for cut in (1, 511, 512, 999):
        other = [*long[:cut], -1, *long[cut + 1 :]]
        assert common_prefix(long, other) == cut
