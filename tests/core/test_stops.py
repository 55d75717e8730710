from gemma_worker.core.stops import StopMatcher


def feed_all(m: StopMatcher, pieces: list[str]) -> str:
    return "".join(m.feed(p) for p in pieces) + m.flush()


def test_no_stops_passes_text_through() -> None:
    m = StopMatcher([])
    assert m.feed("hello") == "hello"
    assert not m.stopped


def test_stop_inside_one_piece_cuts_there() -> None:
    m = StopMatcher(["\n\n"])
    assert m.feed("Paris.\n\nQuestion") == "Paris."
    assert m.stopped
    assert m.feed("more") == ""


def test_stop_split_across_pieces_is_never_shown() -> None:
    m = StopMatcher(["END"])
    out = [m.feed("abc E"), m.feed("N"), m.feed("D tail")]
    assert "".join(out) == "abc "
    assert m.stopped


def test_partial_match_that_fails_is_released() -> None:
    m = StopMatcher(["END"])
    assert m.feed("xE") == "x"
    assert m.feed("Nx") == "ENx"
    assert not m.stopped


def test_flush_releases_held_text_at_end() -> None:
    m = StopMatcher(["STOP"])
    assert feed_all(m, ["go ST"]) == "go ST"


def test_earliest_of_several_stops_wins() -> None:
    m = StopMatcher(["b", "a"])
    assert m.feed("xxab") == "xx"


def test_the_matcher_says_which_stop_string_ended_the_text() -> None:
    m = StopMatcher(["END", "\n\n"])
    assert m.matched is None
    assert m.feed("one\n") == "one"
    assert m.feed("\nEND") == ""
    assert m.stopped and m.matched == "\n\n"  # the earliest in the text, not the first listed
