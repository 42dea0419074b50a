"""The caller's environment spec, shipped to workers with ``customenv``."""

from __future__ import annotations

import json
from importlib import metadata
from pathlib import Path

from azmanagers.errors import ConfigError

_SKIP = {"azmanagers", "pip", "setuptools", "wheel"}


def _is_local(dist: metadata.Distribution) -> bool:
    """Tell whether a distribution was installed from a local folder or in editable mode."""
    text = dist.read_text("direct_url.json")
    if not text:
        return False
    try:
        info = json.loads(text)
    except json.JSONDecodeError:
        return True
    return "dir_info" in info or str(info.get("url", "")).startswith("file:")


def caller_requirements() -> str:
    """Return ``name==version`` lines for the caller's installed distributions.

    Distributions installed from local folders or in editable mode are left out (they cannot
    be installed elsewhere by name); so is azmanagers itself.
    """
    pins: dict[str, str] = {}
    for dist in metadata.distributions():
        name = dist.metadata["Name"]
        if not name or name.lower() in _SKIP or _is_local(dist):
            continue
        # sys.path order: the first copy found is the one imported; later ones are shadowed
        pins.setdefault(name.lower(), f"{name}=={dist.version}")
    return "\n".join(pins[k] for k in sorted(pins)) + "\n"


def requirements_for(customenv: object) -> str | None:
    """Turn the ``customenv`` argument into a requirements text (or None for no custom env).

    ``True`` takes the caller's installed distributions; a path reads a requirements or lock
    file; a list of strings is taken as requirement lines.
    """
    if customenv is False or customenv is None:
        return None
    if customenv is True:
        return caller_requirements()
    if isinstance(customenv, (str, Path)):
        path = Path(customenv).expanduser()
        try:
            text = path.read_text(encoding="utf-8")
        except OSError as exc:
            raise ConfigError(
                f"customenv={str(customenv)!r}: cannot read the requirements file "
                f"({exc.strerror}); give the path of a pip requirements or lock file."
            ) from exc
        if not text.strip():
            raise ConfigError(f"customenv file {path} is empty; list at least one requirement.")
        return text if text.endswith("\n") else text + "\n"
    if isinstance(customenv, (list, tuple)) and all(isinstance(x, str) for x in customenv):
        if not customenv:
            raise ConfigError("customenv=[] lists no requirements; pass False for no custom env.")
        return "\n".join(customenv) + "\n"
    raise ConfigError(
        f"customenv must be True, False, a requirements file path or a list of requirement "
        f"strings, got {customenv!r}."
    )
