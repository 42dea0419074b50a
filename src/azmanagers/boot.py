"""The boot script (cloud-init custom data) an instance runs: the same locally and on Azure."""

from __future__ import annotations

import base64
import gzip
import json
import re
import shlex

from azmanagers.errors import ConfigError
from azmanagers.providers.base import BootSpec

CUSTOM_DATA_MAX_BYTES = 65_535
"""Azure's limit on customData (the decoded bytes)."""
ROLES = ("worker", "detached")
_ENV_NAME = re.compile(r"^[A-Za-z_][A-Za-z0-9_]*$")
_PAYLOAD_MARKER = "AZM_PAYLOAD_EOF"


def encode_payload(payload: object) -> str:
    """Return the payload as gzip-compressed JSON in base64, wrapped at 76 columns."""
    raw = gzip.compress(json.dumps(payload, sort_keys=True).encode(), mtime=0)
    text = base64.b64encode(raw).decode()
    return "\n".join(text[i : i + 76] for i in range(0, len(text), 76))


def decode_payload(data: bytes) -> dict[str, object]:
    """Invert ``encode_payload`` (after base64 decoding): gzip JSON bytes to a dict."""
    value = json.loads(gzip.decompress(data))
    if not isinstance(value, dict):
        raise ConfigError("the boot payload is not a JSON object.")
    return value


def render(spec: BootSpec) -> str:
    """Return the bash boot script for ``spec``.

    The script exports ``spec.env``, writes the payload (mode 0600: it holds this cluster's
    TLS key) and starts ``python -m azmanagers.agent <role>``. It fits Azure's customData.
    """
    if spec.role not in ROLES:
        raise ConfigError(f"unknown boot role {spec.role!r}; expected one of {', '.join(ROLES)}.")
    exports = []
    for name, value in sorted(spec.env.items()):
        if not isinstance(name, str) or not _ENV_NAME.fullmatch(name):
            raise ConfigError(
                f"environment variable name {name!r} is not valid; use letters, digits and "
                "underscores, not starting with a digit."
            )
        if not isinstance(value, str):
            raise ConfigError(f"environment variable {name} must be a string, got {value!r}.")
        exports.append(f"export {name}={shlex.quote(value)}")
    lines = [
        "#!/bin/bash",
        f"# azmanagers boot script, role={spec.role} (generated; do not edit)",
        "set -u",
        "umask 077",
        'AZM_DIR="${AZMANAGERS_INSTANCE_DIR:-/var/lib/azmanagers}"',
        'mkdir -p "$AZM_DIR"',
        'echo "azmanagers: boot $(date -u +%Y-%m-%dT%H:%M:%SZ) on $(hostname)"',
        *exports,
        f"base64 -d > \"$AZM_DIR/payload.json.gz\" <<'{_PAYLOAD_MARKER}'",
        encode_payload(dict(spec.payload)),
        _PAYLOAD_MARKER,
        f"AZM_DEFAULT_PYTHON={shlex.quote(spec.python)}",
        'AZM_PYTHON="${AZMANAGERS_PYTHON:-$AZM_DEFAULT_PYTHON}"',
        'echo "azmanagers: starting agent with $AZM_PYTHON"',
        f'exec "$AZM_PYTHON" -m azmanagers.agent {spec.role} --payload "$AZM_DIR/payload.json.gz"',
        "",
    ]
    script = "\n".join(lines)
    size = len(script.encode())
    if size > CUSTOM_DATA_MAX_BYTES:
        raise ConfigError(
            f"the boot script is {size} bytes, over Azure's customData limit of "
            f"{CUSTOM_DATA_MAX_BYTES}; ship fewer environment variables or a shorter "
            "requirements file (or bake the packages into the image)."
        )
    return script
