import math

import pytest

from gemma_worker.core.keep_alive import KeepAliveError, parse_keep_alive


@pytest.mark.parametrize(
    ("value", "seconds"),
    [
        ("5m", 300.0),
        ("1h30m", 5400.0),
        ("300ms", 0.3),
        ("1.5s", 1.5),
        ("30", 30.0),
        (30, 30.0),
        (2.5, 2.5),
        (0, 0.0),
        ("0", 0.0),
        ("0s", 0.0),
        (-1, math.inf),
        ("-1", math.inf),
        ("-1m", math.inf),
        (1e12, math.inf),  # longer than ten years is for good
    ],
)
def test_keep_alive_takes_ollamas_forms(value: str | float, seconds: float) -> None:
    assert parse_keep_alive(value) == pytest.approx(seconds)


@pytest.mark.parametrize("value", ["soon", "5 minutes", "5x", "m", "", "5m3", True, None, "nan"])
def test_other_values_are_refused_with_the_accepted_forms(value: object) -> None:
    with pytest.raises(KeepAliveError, match="keep_alive"):
        parse_keep_alive(value)  # type: ignore[arg-type]
