"""A subset of cloud-init for emulated VMs: custom data that is ``#cloud-config`` becomes a script.

Custom data whose first line is ``#cloud-config`` is YAML; the emulated VM runs the bash script
``boot_script`` makes of it (its boot log, power state and stop stay those of a process-VM).
In cloud-init's order:

- ``bootcmd`` (init stage): each entry, a string or an argv list, in one ``/bin/sh`` script;
- ``write_files`` (init stage, or final with ``defer: true``): ``path``, ``content``,
  ``encoding`` (``b64``/``base64``, ``gz``/``gzip``, ``gz+b64``/``gzip+base64``),
  ``permissions`` (octal, ``0644`` by default), ``append``; ``owner`` is ignored. The VMs
  share this machine, so files land under the VM's own root, ``$AZM_VM_ROOT``
  (``<VM folder>/root``): ``/etc/app.conf`` is ``$AZM_VM_ROOT/etc/app.conf``, never ``/etc``;
- ``packages``, ``package_update``, ``package_upgrade``, ``apt``, ``snap``: reported as
  skipped (the emulated image installs nothing);
- ``runcmd`` (final stage): written to ``$AZM_VM_ROOT/var/lib/cloud/instance/scripts/runcmd``
  and run by ``/bin/sh``, as cloud-init does: each command in turn, a failure does not stop
  the next; a failed script is reported as cloud-init reports it.

Any other module is reported as ignored. The boot log has cloud-init's stage lines and its
final message; the VM keeps running afterwards (a real VM does), whatever the commands did.
YAML that does not parse, or is not a mapping, is reported and nothing else runs.
"""

from __future__ import annotations

import base64
import binascii
import gzip
import posixpath
import shlex
from collections.abc import Iterable
from typing import Any

import yaml

HEADER = "#cloud-config"
VERSION = "24.4 (azmanagers emulator subset)"
SCRIPTS = "var/lib/cloud/instance/scripts"
SKIPPED = ("packages", "package_update", "package_upgrade", "package_reboot_if_required", "apt")
SKIPPED_TOO = ("snap", "yum_repos")
HANDLED = ("bootcmd", "write_files", "runcmd")


def is_cloud_config(custom_data: str) -> bool:
    """Whether custom data is cloud-config YAML (its first line is ``#cloud-config``)."""
    return custom_data.lstrip("\ufeff").split("\n", 1)[0].rstrip() == HEADER


def _say(text: str) -> str:
    return f"echo {shlex.quote(text)}"


def _stage(name: str) -> str:
    return (
        f"echo \"Cloud-init v. {VERSION} running '{name}' at $(date -R). "
        'Up ${SECONDS}.00 seconds."'
    )


def shellify(commands: Iterable[Any]) -> str:
    """A ``/bin/sh`` script of cloud-init commands: a string as it is, a list as quoted argv."""
    lines = ["#!/bin/sh"]
    for command in commands:
        if isinstance(command, list):
            lines.append(" ".join(shlex.quote(str(part)) for part in command))
        else:
            lines.append(str(command))
    return "\n".join(lines) + "\n"


def _write(relative: str, data: bytes, mode: int, append: bool) -> list[str]:
    """Bash that writes ``data`` under the VM's root (created folders, then the mode)."""
    target = '"$AZM_VM_ROOT"/' + shlex.quote(relative)
    redirect = ">>" if append else ">"
    encoded = base64.b64encode(data).decode()
    return [
        f'mkdir -p "$(dirname {target})"',
        f"printf '%s' {shlex.quote(encoded)} | base64 -d {redirect} {target}",
        f"chmod {mode:o} {target}",
    ]


def _decode(content: Any, encoding: str) -> bytes:
    """A write_files entry's content as bytes (cloud-init's encodings)."""
    text = "" if content is None else str(content)
    kind = encoding.strip().lower()
    if kind in ("", "text/plain"):
        return text.encode()
    if kind in ("b64", "base64"):
        return base64.b64decode(text, validate=False)
    if kind in ("gz", "gzip"):
        return gzip.decompress(text.encode("latin-1"))
    if kind in ("gz+b64", "gz+base64", "gzip+b64", "gzip+base64"):
        return gzip.decompress(base64.b64decode(text, validate=False))
    raise ValueError(f"unknown encoding {encoding!r}")


def _mode(permissions: Any) -> int:
    if permissions is None:
        return 0o644
    if isinstance(permissions, int) and not isinstance(permissions, bool):
        return permissions  # YAML read 0644 as an octal number already
    return int(str(permissions).strip().removeprefix("0o"), 8)


def _write_files(entries: Any, deferred: bool) -> list[str]:
    """Bash for the write_files entries of one stage (deferred ones, or the others)."""
    lines: list[str] = []
    for index, entry in enumerate(entries if isinstance(entries, list) else []):
        if not isinstance(entry, dict) or bool(entry.get("defer")) != deferred:
            continue
        path = str(entry.get("path") or "")
        relative = posixpath.normpath("/" + path).lstrip("/")
        if not path or not relative or relative == ".":
            lines.append(_say(f"cloud-init: write_files[{index}]: no path; skipped"))
            continue
        try:
            data = _decode(entry.get("content"), str(entry.get("encoding") or ""))
            mode = _mode(entry.get("permissions"))
        except (ValueError, binascii.Error, OSError, EOFError) as exc:
            lines.append(_say(f"cloud-init: write_files[{index}] {path}: {exc}; skipped"))
            continue
        lines.append(_say(f"cloud-init: write_files: {path} (under the VM's root)"))
        lines += _write(relative, data, mode, bool(entry.get("append")))
    return lines


def _run(name: str, commands: Any, failure: list[str]) -> list[str]:
    """Bash that writes a command list as a script under the VM's root and runs it."""
    if not isinstance(commands, list):
        return [_say(f"cloud-init: {name} must be a list; skipped")]
    script = f"{SCRIPTS}/{name}"
    return [
        *_write(script, shellify(commands).encode(), 0o700, False),
        f'/bin/sh "$AZM_VM_ROOT"/{script}',
        "status=$?",
        'if [ "$status" != 0 ]; then',
        *(f"  {line}" for line in failure),
        "fi",
    ]


def boot_script(custom_data: str, instance_id: str = "") -> str:
    """The bash script an emulated VM runs for cloud-config custom data (see the module)."""
    lines = [
        "#!/bin/bash",
        "# made by the azmanagers emulator from #cloud-config custom data",
        'AZM_VM_ROOT="${AZMANAGERS_INSTANCE_DIR:-$PWD}/root"',
        f"INSTANCE_ID={shlex.quote(instance_id)}",
        "export AZM_VM_ROOT INSTANCE_ID",
        'mkdir -p "$AZM_VM_ROOT"',
        _stage("init"),
    ]
    try:
        config = yaml.safe_load(custom_data)
    except yaml.YAMLError as exc:
        problem = f"the #cloud-config is not valid YAML: {' '.join(str(exc).split())}"
        config = None
    else:
        problem = "" if isinstance(config, dict) else "the #cloud-config is not a mapping"
    if not isinstance(config, dict):
        lines.append(_say(f"cloud-init: {problem}; nothing run"))
        return "\n".join([*lines, _finished(), "exit 0"]) + "\n"
    if "bootcmd" in config:
        bootcmd_failed = 'echo "cloud-init: cc_bootcmd.py[WARNING]: Failed to run bootcmd module'
        lines += _run("bootcmd", config["bootcmd"], [bootcmd_failed + ' (status $status)"'])
    lines += _write_files(config.get("write_files"), deferred=False)
    lines.append(_stage("modules:config"))
    lines.append(_stage("modules:final"))
    for key in (*SKIPPED, *SKIPPED_TOO):
        if key in config:
            lines.append(
                _say(f"cloud-init: skipped module {key}: the emulated image installs nothing")
            )
    for key in config:
        if key not in HANDLED and key not in SKIPPED and key not in SKIPPED_TOO:
            lines.append(
                _say(f"cloud-init: ignored module {key}: not in the emulator's cloud-init subset")
            )
    lines += _write_files(config.get("write_files"), deferred=True)
    if "runcmd" in config:
        lines += _run(
            "runcmd",
            config["runcmd"],
            [
                f'echo "cloud-init: util.py[WARNING]: Failed running /{SCRIPTS}/runcmd [$status]"',
                'echo "cloud-init: cc_scripts_user.py[WARNING]: Failed to run module scripts_user '
                f'(scripts in /{SCRIPTS})"',
            ],
        )
    return "\n".join([*lines, _finished(), "exit 0"]) + "\n"


def _finished() -> str:
    return (
        f'echo "Cloud-init v. {VERSION} finished at $(date -R). Datasource DataSourceAzure.  '
        'Up ${SECONDS}.00 seconds"'
    )
