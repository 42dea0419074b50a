"""A subset of cloud-init for emulated VMs: ``#cloud-config`` custom data becomes a bash script."""

from __future__ import annotations

import base64
import binascii
import json
import shlex
import sys
import zlib
from collections.abc import Iterable, Iterator
from pathlib import Path
from typing import Any

import yaml

HEADER = "#cloud-config"
VERSION = "24.4 (azmanagers emulator subset)"
SCRIPTS = "var/lib/cloud/instance/scripts"
SKIPPED = ("packages", "package_update", "package_upgrade", "package_reboot_if_required", "apt")
SKIPPED_TOO = ("snap", "yum_repos")
HANDLED = ("bootcmd", "write_files", "runcmd")
MAX_SCRIPT_BYTES = 1 << 20
"""The most boot script a cloud-config's commands may make (Azure's custom data: 64 KiB)."""
MAX_FILES_BYTES = 16 << 20
"""The most ``write_files`` content of one cloud-config, decoded and decompressed."""
SPECIAL_BITS = 0o7000
"""setuid, setgid and sticky: never set on a VM's files (they are this machine's)."""
_WRITE = " ".join(
    shlex.quote(part)
    for part in (sys.executable, "-S", str(Path(__file__).with_name("guest_commands.py")))
)
"""The command that writes files under a VM's root, confined to it (``guest_commands``)."""


class TooLarge(ValueError):
    """A cloud-config that expands beyond the emulator's limits (a YAML alias or gzip bomb)."""


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


def _finished() -> str:
    return (
        f'echo "Cloud-init v. {VERSION} finished at $(date -R). Datasource DataSourceAzure.  '
        'Up ${SECONDS}.00 seconds"'
    )


def _pieces(value: Any) -> Iterator[str]:
    """``str(value)`` in pieces, made lazily (YAML aliases may nest one list a billion times)."""
    if isinstance(value, list):
        yield "["
        for index, item in enumerate(value):
            yield ", " if index else ""
            yield from _pieces(item) if isinstance(item, (list, dict)) else (repr(item),)
        yield "]"
    elif isinstance(value, dict):
        yield "{"
        for index, (key, item) in enumerate(value.items()):
            yield (", " if index else "") + repr(key) + ": "
            yield from _pieces(item) if isinstance(item, (list, dict)) else (repr(item),)
        yield "}"
    else:
        yield str(value)


def _text(value: Any, limit: int) -> str:
    """``str(value)``, or TooLarge as soon as it grows beyond ``limit`` characters."""
    out: list[str] = []
    size = 0
    for piece in _pieces(value):
        size += len(piece)
        if size > limit:
            raise TooLarge(f"it expands to more than {MAX_SCRIPT_BYTES >> 20} MiB of commands")
        out.append(piece)
    return "".join(out)


def shellify(commands: Iterable[Any], limit: int = MAX_SCRIPT_BYTES) -> str:
    """A ``/bin/sh`` script of cloud-init commands: a string as it is, a list as quoted argv.

    TooLarge when the script would pass ``limit`` characters (counted as it is made).
    """
    lines = ["#!/bin/sh"]
    left = limit
    for command in commands:
        if isinstance(command, list):
            line = " ".join(shlex.quote(_text(part, left)) for part in command)
        else:
            line = _text(command, left)
        left -= len(line) + 1
        if left < 0:
            raise TooLarge(f"it expands to more than {MAX_SCRIPT_BYTES >> 20} MiB of commands")
        lines.append(line)
    return "\n".join(lines) + "\n"


def _gunzip(data: bytes, limit: int) -> bytes:
    """Decompress gzip ``data`` (every member), or TooLarge once it passes ``limit`` bytes."""
    out = bytearray()
    while data:
        unzip = zlib.decompressobj(wbits=31)
        out += unzip.decompress(data, limit + 1 - len(out))
        if len(out) > limit:
            raise TooLarge(f"its content decompresses to more than {MAX_FILES_BYTES >> 20} MiB")
        if not unzip.eof:
            raise ValueError("the gzip content is truncated")
        data = unzip.unused_data
    return bytes(out)


def _decode(content: Any, encoding: str, limit: int) -> bytes:
    """A write_files entry's content as bytes (cloud-init's encodings), at most ``limit``."""
    if isinstance(content, (list, dict)):
        raise ValueError("its content is not a string")
    data = content if isinstance(content, bytes) else str("" if content is None else content)
    kind = encoding.strip().lower()
    if kind in ("", "text/plain"):
        raw = data if isinstance(data, bytes) else data.encode()
    elif kind in ("b64", "base64"):
        raw = base64.b64decode(data, validate=False)
    elif kind in ("gz", "gzip"):
        raw = _gunzip(data if isinstance(data, bytes) else data.encode("latin-1"), limit)
    elif kind in ("gz+b64", "gz+base64", "gzip+b64", "gzip+base64"):
        raw = _gunzip(base64.b64decode(data, validate=False), limit)
    else:
        raise ValueError(f"unknown encoding {encoding!r}")
    if len(raw) > limit:
        raise TooLarge(f"its content is more than {MAX_FILES_BYTES >> 20} MiB")
    return raw


def _mode(permissions: Any) -> int:
    if permissions is None:
        return 0o644
    if isinstance(permissions, int) and not isinstance(permissions, bool):
        return permissions  # YAML read 0644 as an octal number already
    return int(str(permissions).strip().removeprefix("0o"), 8)


def _flag(value: Any) -> bool:
    """A cloud-config boolean: YAML's, or a string such as ``"true"``."""
    if isinstance(value, str):
        return value.strip().lower() in ("true", "yes", "on", "1")
    return bool(value)


def _write(entries: list[dict[str, Any]], failure: str) -> list[str]:
    """Bash that writes files under the VM's root through ``guest_commands`` (confined)."""
    if not entries:
        return []
    manifest = json.dumps(entries, separators=(",", ":"))  # one line: the heredoc stays whole
    return [
        f"{_WRITE} - write-files \"$AZM_VM_ROOT\" <<'AZM_FILES' || {failure}",
        manifest,
        "AZM_FILES",
    ]


class _Script:
    """The boot script being made; its commands and files are counted as they are added."""

    def __init__(self) -> None:
        self.lines: list[str] = []
        self.size = 0
        self.files_left = MAX_FILES_BYTES

    def add(self, *lines: str) -> None:
        """Add lines of commands; TooLarge once the commands pass ``MAX_SCRIPT_BYTES``."""
        for line in lines:
            self.size += len(line) + 1
            if self.size > MAX_SCRIPT_BYTES:
                raise TooLarge(f"it expands to more than {MAX_SCRIPT_BYTES >> 20} MiB of commands")
            self.lines.append(line)

    def write_files(self, entries: Any, deferred: bool) -> None:
        """The write_files entries of one stage (deferred ones, or the others)."""
        chosen: list[dict[str, Any]] = []
        for index, entry in enumerate(entries if isinstance(entries, list) else []):
            if not isinstance(entry, dict) or _flag(entry.get("defer")) != deferred:
                continue
            path = entry.get("path")
            if not isinstance(path, str) or not path.strip("/."):
                self.add(_say(f"cloud-init: write_files[{index}]: no path; skipped"))
                continue
            where = f"write_files[{index}] {path}"
            try:
                data = _decode(
                    entry.get("content"), str(entry.get("encoding") or ""), self.files_left
                )
                mode = _mode(entry.get("permissions"))
            except TooLarge as exc:
                raise TooLarge(f"{where}: {exc}") from exc
            except (ValueError, binascii.Error, OSError, EOFError, zlib.error) as exc:
                self.add(_say(f"cloud-init: cc_write_files.py[WARNING]: {where}: {exc}; skipped"))
                continue
            self.files_left -= len(data)
            if mode & SPECIAL_BITS:
                bits = f"setuid, setgid and sticky bits of {mode:o}"
                self.add(_say(f"cloud-init: {where}: {bits} dropped on the emulated image"))
            encoded = base64.b64encode(data).decode()
            chosen.append(
                {
                    "path": path,
                    "data": encoded,
                    "mode": mode & 0o777,
                    "append": _flag(entry.get("append")),
                }
            )
        self.lines += _write(
            chosen, _say("cloud-init: util.py[WARNING]: Running module write_files failed")
        )

    def run(self, name: str, commands: Any, failure: list[str]) -> None:
        """Write a command list as a script under the VM's root, then run it with ``/bin/sh``."""
        if not isinstance(commands, list):
            self.add(_say(f"cloud-init: {name} must be a list; skipped"))
            return
        text = shellify(commands, MAX_SCRIPT_BYTES - self.size).encode()
        self.size += len(text)
        script = {
            "path": f"/{SCRIPTS}/{name}",
            "data": base64.b64encode(text).decode(),
            "mode": 0o700,
            "append": False,
            "quiet": True,
        }
        self.lines += _write([script], "false")
        self.add(
            f'if [ "$?" = 0 ]; then /bin/sh "$AZM_VM_ROOT"/{SCRIPTS}/{name}; status=$?',
            "else status=1; fi",
            'if [ "$status" != 0 ]; then',
            *(f"  {line}" for line in failure),
            "fi",
        )


def _start(instance_id: str) -> list[str]:
    return [
        "#!/bin/bash",
        "# made by the azmanagers emulator from #cloud-config custom data",
        'AZM_VM_ROOT="${AZMANAGERS_INSTANCE_DIR:-$PWD}/root"',
        f"INSTANCE_ID={shlex.quote(instance_id)}",
        "export AZM_VM_ROOT INSTANCE_ID",
        'mkdir -p "$AZM_VM_ROOT"',
        _stage("init"),
    ]


def _config(custom_data: str) -> tuple[Any, str]:
    """The cloud-config's mapping, or why there is none."""
    if len(custom_data) > MAX_SCRIPT_BYTES:
        raise TooLarge(f"it is more than {MAX_SCRIPT_BYTES >> 20} MiB")
    try:
        config = yaml.safe_load(custom_data)
    except yaml.YAMLError as exc:
        return None, f"the #cloud-config is not valid YAML: {' '.join(str(exc).split())}"
    return config, "" if isinstance(config, dict) else "the #cloud-config is not a mapping"


def _modules(script: _Script, config: dict[Any, Any]) -> None:
    """Bash for each stage's modules, in cloud-init's order."""
    if "bootcmd" in config:
        bootcmd_failed = 'echo "cloud-init: cc_bootcmd.py[WARNING]: Failed to run bootcmd module'
        script.run("bootcmd", config["bootcmd"], [bootcmd_failed + ' (status $status)"'])
    script.write_files(config.get("write_files"), deferred=False)
    script.add(_stage("modules:config"), _stage("modules:final"))
    for key in config:
        name = str(key)[:200]
        if key in SKIPPED or key in SKIPPED_TOO:
            script.add(
                _say(f"cloud-init: skipped module {name}: the emulated image installs nothing")
            )
        elif key not in HANDLED:
            script.add(
                _say(f"cloud-init: ignored module {name}: not in the emulator's cloud-init subset")
            )
    script.write_files(config.get("write_files"), deferred=True)
    if "runcmd" in config:
        script.run(
            "runcmd",
            config["runcmd"],
            [
                f'echo "cloud-init: util.py[WARNING]: Failed running /{SCRIPTS}/runcmd [$status]"',
                'echo "cloud-init: cc_scripts_user.py[WARNING]: Failed to run module scripts_user '
                f'(scripts in /{SCRIPTS})"',
            ],
        )


def boot_script(custom_data: str, instance_id: str = "") -> str:
    """The bash script an emulated VM runs for cloud-config custom data.

    In cloud-init's order:

    - ``bootcmd`` (init stage): each entry, a string or an argv list, in one ``/bin/sh``
      script;
    - ``write_files`` (init stage, or final with ``defer: true``): ``path``, ``content``,
      ``encoding`` (``b64``/``base64``, ``gz``/``gzip``, ``gz+b64``/``gzip+base64``),
      ``permissions`` (octal, ``0644`` by default; setuid, setgid and sticky bits dropped),
      ``append``; ``owner`` is ignored. The VMs share this machine, so files land under the
      VM's own root, ``$AZM_VM_ROOT`` (``<VM folder>/root``): ``/etc/app.conf`` is
      ``$AZM_VM_ROOT/etc/app.conf``, never ``/etc``. A path that leaves the root through a
      symlink (one a ``bootcmd`` made, say) is refused and reported as cloud-init reports a
      failed module; the other files are written (``guest_commands.inside_root``);
    - ``packages``, ``package_update``, ``package_upgrade``, ``apt``, ``snap``: reported as
      skipped (the emulated image installs nothing);
    - ``runcmd`` (final stage): written to ``$AZM_VM_ROOT/var/lib/cloud/instance/scripts/
      runcmd`` and run by ``/bin/sh``, as cloud-init does: each command in turn, a failure
      does not stop the next; a failed script is reported as cloud-init reports it.

    Commands run with the image's stand-ins first on ``PATH`` (``guest_image``). Any other
    module is reported as ignored. The boot log has cloud-init's stage lines and its final
    message; the VM keeps running afterwards (a real VM does), whatever the commands did.
    YAML that does not parse, or is not a mapping, is reported and nothing else runs.

    Expansion is bounded, counted as the script is made: commands beyond
    ``MAX_SCRIPT_BYTES`` (a YAML alias bomb) or files beyond ``MAX_FILES_BYTES`` decoded (a
    gzip bomb) make a script that says so in the boot log and fails, so the VM stops, as
    after a broken boot; nothing of the cloud-config runs.
    """
    try:
        config, problem = _config(custom_data)
        script = _Script()
        script.lines = _start(instance_id)
        if problem:
            script.add(_say(f"cloud-init: {problem}; nothing run"))
        else:
            _modules(script, config)
    except (TooLarge, RecursionError) as exc:
        reason = str(exc) if isinstance(exc, TooLarge) else "it nests too deeply"
        return "\n".join([
            *_start(instance_id),
            _say(
                f"cloud-init: the #cloud-config is beyond the emulator's limits: {reason}; "
                "nothing of it runs and the boot fails"
            ),
            _finished(),
            "exit 1",
        ]) + "\n"  # fmt: skip
    return "\n".join([*script.lines, _finished(), "exit 0"]) + "\n"
