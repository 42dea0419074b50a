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
ROLES = ("worker", "detached", "head")
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


_STOP_FUNCTION = (
    # End the boot with a status. On an Azure VM (waagent present; never a process-VM) a
    # failure powers the VM off: its power state tells the cluster in its one list call.
    "azm_stop() {",
    '  if [ "$1" != 0 ] && [ -z "$AZM_PROCESS_VM" ] && [ -d /var/lib/waagent ] &&'
    ' [ "$(id -u)" = 0 ]; then',
    '    echo "azmanagers: the boot failed (status $1); powering off"',
    "    poweroff",
    "  fi",
    '  exit "$1"',
    "}",
)


def default_requirement() -> str:
    """Return the pip requirement of the caller's own azmanagers version."""
    from azmanagers._version import __version__

    return f"azmanagers=={__version__}"


def _bootstrap_lines(spec: BootSpec) -> list[str]:
    """Return bash that installs azmanagers into a virtualenv when the image lacks it.

    An image with the caller's version preinstalled skips all of it (and boots faster).
    On Debian and Ubuntu images without the venv module it installs python3-venv first.
    """
    from azmanagers._version import __version__

    requirement = spec.bootstrap_requirement or default_requirement()
    pip_args = " ".join(shlex.quote(arg) for arg in spec.bootstrap_pip_args)
    check = "import sys, azmanagers; sys.exit(azmanagers.__version__ != sys.argv[1])"
    return [
        f"AZM_VERSION={shlex.quote(__version__)}",
        "azm_has_version() {",
        f'  "$1" -c {shlex.quote(check)} "$AZM_VERSION" >/dev/null 2>&1',
        "}",
        'if ! command -v "$AZM_PYTHON" >/dev/null; then',
        '  echo "azmanagers: no interpreter $AZM_PYTHON: No such file or directory; use an image'
        ' with python3, or set AZMANAGERS_PYTHON"',
        "  azm_stop 127",
        "fi",
        'if ! azm_has_version "$AZM_PYTHON"; then',
        '  AZM_VENV="${AZMANAGERS_BOOTSTRAP_DIR:-$AZM_DIR}/venv-$AZM_VERSION"',
        '  if ! azm_has_version "$AZM_VENV/bin/python"; then',
        '    echo "azmanagers: $AZM_PYTHON lacks azmanagers $AZM_VERSION; installing it into'
        ' $AZM_VENV (an image with it preinstalled boots faster)"',
        '    if ! "$AZM_PYTHON" -m venv "$AZM_VENV"; then',
        # a real VM only: a process-VM (AZMANAGERS_INSTANCE_DIR set) never touches packages
        '      if [ -z "$AZM_PROCESS_VM" ] && [ "$(id -u)" = 0 ] &&'
        " command -v apt-get >/dev/null; then",
        '        echo "azmanagers: installing python3-venv"',
        "        apt-get -q -o DPkg::Lock::Timeout=300 update && DEBIAN_FRONTEND=noninteractive"
        " apt-get -q -o DPkg::Lock::Timeout=300 install -y python3-venv",
        "      fi",
        '      "$AZM_PYTHON" -m venv --clear "$AZM_VENV" || {',
        '        echo "azmanagers: cannot make a virtualenv with $AZM_PYTHON; use an image with'
        ' python3-venv, or with azmanagers $AZM_VERSION installed"; azm_stop 3; }',
        "    fi",
        '    "$AZM_VENV/bin/python" -m pip install --disable-pip-version-check --no-input -q'
        f" {pip_args} {shlex.quote(requirement)} || {{",
        '      echo "azmanagers: pip could not install azmanagers $AZM_VERSION (see above);'
        ' check bootstrap_requirement and bootstrap_pip_args"; azm_stop 3; }',
        '    azm_has_version "$AZM_VENV/bin/python" || {',
        '      echo "azmanagers: the bootstrap installed a different version than'
        ' $AZM_VERSION; set bootstrap_requirement"; azm_stop 3; }',
        "  fi",
        '  AZM_PYTHON="$AZM_VENV/bin/python"',
        "fi",
    ]


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
        # fixed before the exports below: a caller's env cannot make a process-VM a real VM
        'AZM_PROCESS_VM="${AZMANAGERS_INSTANCE_DIR:+1}"',
        "readonly AZM_PROCESS_VM",
        'echo "azmanagers: boot $(date -u +%Y-%m-%dT%H:%M:%SZ) on $(hostname)"',
        *_STOP_FUNCTION,
        *exports,
        f"base64 -d > \"$AZM_DIR/payload.json.gz\" <<'{_PAYLOAD_MARKER}'",
        encode_payload(dict(spec.payload)),
        _PAYLOAD_MARKER,
        f"AZM_DEFAULT_PYTHON={shlex.quote(spec.python)}",
        'AZM_PYTHON="${AZMANAGERS_PYTHON:-$AZM_DEFAULT_PYTHON}"',
        *_bootstrap_lines(spec),
        'echo "azmanagers: starting agent with $AZM_PYTHON"',
        f'AZM_AGENT=(-m azmanagers.agent {spec.role} --payload "$AZM_DIR/payload.json.gz")',
        # A process-VM ends with its agent; a real VM powers off when its agent fails.
        'if [ -n "$AZM_PROCESS_VM" ]; then exec "$AZM_PYTHON" "${AZM_AGENT[@]}"; fi',
        '"$AZM_PYTHON" "${AZM_AGENT[@]}"',
        'azm_stop "$?"',
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
