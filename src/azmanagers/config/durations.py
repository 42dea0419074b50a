"""Durations as people write them: seconds, or "90s", "30m", "2h", "1d", "1h30m"."""

from __future__ import annotations

import math
import re

from azmanagers.errors import ConfigError

_NUMBER = r"\d+(?:\.\d*)?|\.\d+"
_DURATION_PART = re.compile(rf"({_NUMBER})\s*([smhd])")
_UNIT_S = {"s": 1.0, "m": 60.0, "h": 3600.0, "d": 86400.0}
_DURATION_HINT = 'give seconds (5400) or a duration such as "90s", "30m", "2h", "1d" or "1h30m"'


def parse_duration(value: str | float | int) -> float:
    """Return a duration in seconds: a number, or text such as ``"90s"``, ``"2h"``, ``"1h30m"``.

    Raises
    ------
    ConfigError
        Unless the result is a finite number of seconds > 0.
    """
    seconds: float | None = None
    if isinstance(value, (int, float)) and not isinstance(value, bool):
        seconds = float(value)
    elif isinstance(value, str):
        text = value.strip().lower()
        if re.fullmatch(_NUMBER, text):
            seconds = float(text)
        elif re.fullmatch(rf"(?:(?:{_NUMBER})\s*[smhd]\s*)+", text):
            seconds = sum(float(n) * _UNIT_S[u] for n, u in _DURATION_PART.findall(text))
    if seconds is None or not math.isfinite(seconds) or seconds <= 0:
        raise ConfigError(f"duration {value!r} is not a time > 0; {_DURATION_HINT}.")
    return seconds
