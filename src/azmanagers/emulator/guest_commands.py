"""Commands of the emulated VM image: docker, shutdown and the confined write of files."""

from __future__ import annotations

import base64
import contextlib
import json
import os
import posixpath
import secrets
import signal
import subprocess
import sys
import time
from pathlib import Path

POWERED_OFF = "powered_off"
"""The file in a VM's folder that says its guest powered it off."""
MARKER = "AZMANAGERS_INSTANCE_DIR"
STOP_GRACE_S = 3.0
CONTAINER_PATH = "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin"
KEPT = ("HOME", "LANG", "LC_ALL", "TZ", "TMPDIR", MARKER, "AZMANAGERS_VM_ADDRESS")
"""What a container keeps of the VM's environment (a container starts with little)."""
VALUE_OPTIONS = frozenset({
    "-e", "--env", "--env-file", "--name", "-v", "--volume", "--mount", "-p", "--publish",
    "--gpus", "--net", "--network", "-w", "--workdir", "-u", "--user", "--entrypoint",
    "--shm-size", "--ulimit", "-m", "--memory", "--cpus", "--restart", "--log-driver",
    "--log-opt", "-h", "--hostname", "-l", "--label", "--add-host", "--ipc", "--pid",
    "--runtime", "--cap-add", "--cap-drop", "--device", "--platform", "--pull",
    "--stop-signal", "--stop-timeout",
})  # fmt: skip
FLAG_OPTIONS = frozenset({
    "--rm", "-d", "--detach", "-i", "--interactive", "-t", "--tty", "--privileged", "--init",
    "--read-only",
})  # fmt: skip


def inside_root(root: Path, path: str, cwd: str = "") -> Path:
    """Where the VM's ``path`` lands on this machine: under the VM's ``root``, symlinks followed.

    An absolute path is the VM's (``/etc/x`` is ``root/etc/x``; ``/..`` is ``/``); a relative
    one is taken from ``cwd`` when that lies in the root, else from the root (where
    cloud-init runs its commands). Raise ValueError when the path, once every symlink made so
    far is followed (``ln -s /outside "$AZM_VM_ROOT/etc"``), leaves the root, or the root is
    itself a symlink: the VM's files stay under its own folder.
    """
    real_root = Path(os.path.realpath(root.parent)) / root.name
    if real_root.is_symlink():
        raise ValueError(f"the VM's root {root} is a symlink")
    base = real_root
    if cwd and not path.startswith("/"):
        real_cwd = Path(os.path.realpath(cwd))
        if real_cwd == real_root or real_cwd.is_relative_to(real_root):
            base = real_cwd
    relative = posixpath.normpath("/" + str(base.relative_to(real_root)) + "/" + path)
    resolved = Path(os.path.realpath(real_root / relative.lstrip("/")))
    if resolved != real_root and not resolved.is_relative_to(real_root):
        raise ValueError(f"{path} resolves to {resolved}, outside the VM's root")
    return resolved


def write_files(root: Path, entries: list[dict[str, object]]) -> int:
    """Write cloud-init's ``write_files`` entries (and its command scripts) under ``root``.

    Each entry holds ``path`` (the VM's), ``data`` (base64), ``mode``, ``append`` and
    ``quiet``; ``cloudinit`` made them. A path that leaves the root (``inside_root``) is
    refused and reported as cloud-init reports a failed file; the others are written all
    the same. Return 1 when any was refused, else 0.
    """
    refused = 0
    for entry in entries:
        path = str(entry["path"])
        mode = int(str(entry["mode"])) & 0o777  # never setuid, setgid or sticky
        try:
            target = inside_root(root, path)
            target.parent.mkdir(parents=True, exist_ok=True)
            flags = os.O_WRONLY | os.O_CREAT | os.O_NOFOLLOW
            flags |= os.O_APPEND if entry.get("append") else os.O_TRUNC
            fd = os.open(target, flags, mode)
            with os.fdopen(fd, "wb") as out:
                out.write(base64.b64decode(str(entry["data"])))
                os.fchmod(out.fileno(), mode)
        except (ValueError, OSError) as exc:
            refused = 1
            print(f"cloud-init: cc_write_files.py[WARNING]: {path}: not written: {exc}")
            continue
        if not entry.get("quiet"):
            print(f"cloud-init: write_files: {path} (under the VM's root)")
    sys.stdout.flush()
    return refused


def fail(message: str, status: int = 125) -> int:
    print(f"docker: {message}", file=sys.stderr)
    return status


def parse_run(args: list[str]) -> tuple[list[tuple[str, str]], list[str], str, list[str]]:
    """``docker run`` arguments: (options with values, flags, image, command)."""
    options: list[tuple[str, str]] = []
    flags: list[str] = []
    index = 0
    while index < len(args) and args[index].startswith("-"):
        arg = args[index]
        name, has_value, value = arg.partition("=")
        if name in VALUE_OPTIONS:
            if not has_value:
                index += 1
                if index >= len(args):
                    raise ValueError(f"flag needs an argument: {arg}")
                value = args[index]
            options.append((name, value))
        elif arg in FLAG_OPTIONS or (
            not arg.startswith("--") and set(arg[1:]) <= set("dit") and len(arg) > 1
        ):
            flags.append(arg)
        else:
            raise ValueError(f"unknown flag: {arg}")
        index += 1
    if index >= len(args):
        raise ValueError('"docker run" requires at least 1 argument (the image)')
    return options, flags, args[index], args[index + 1 :]


def vm_root() -> Path:
    """The VM's root (its ``/``): ``root`` in the VM's folder."""
    return Path(os.environ.get(MARKER) or ".") / "root"


def container_environment(image_dir: Path, options: list[tuple[str, str]]) -> dict[str, str]:
    """A container's environment: the basics of the VM's, ``-e`` and ``--env-file``'s."""
    env = {key: os.environ[key] for key in KEPT if key in os.environ}
    env["PATH"] = f"{image_dir / 'container-bin'}:{CONTAINER_PATH}"
    env["PYTHONPATH"] = str(image_dir / "container-site")
    for name, value in options:
        lines = [value]
        if name == "--env-file":  # the VM's file, read by the client as docker does
            try:
                lines = inside_root(vm_root(), value, os.getcwd()).read_text().splitlines()
            except (ValueError, OSError) as exc:
                reason = str(exc)
                if isinstance(exc, OSError) and exc.strerror:
                    reason = exc.strerror.lower()  # as Go words it: no such file or directory
                raise ValueError(f"open {value}: {reason}") from exc
        elif name not in ("-e", "--env"):
            continue
        for line in lines:
            key, has_value, setting = line.strip().partition("=")
            if not key or key.startswith("#"):
                continue
            if has_value:
                env[key] = setting
            elif key in os.environ:
                env[key] = os.environ[key]
    return env


def docker(image_dir: Path, args: list[str]) -> int:
    """The emulated image's ``docker``: ``run``, ``pull`` and ``version``.

    ``docker run``: the image is this machine's Python environment, whatever its name, and
    the container is the command given after it, run in the VM with host networking (a
    Python listener on every interface listens on the VM's address: ``guest_network``).
    Its environment is a container's (``-e``/``--env-file`` plus the basics), with
    ``python``, ``dask`` and the image's tools on its ``PATH``. ``-w`` and ``--env-file``
    are the VM's paths, under its root (``inside_root``): one that leaves it is refused.
    ``-p`` is accepted (the network is the VM's anyway), and so is ``--privileged``: it
    grants nothing, the container being a process of the VM with the VM's rights already.
    Volumes, GPUs and images without a command are refused, as docker on such a VM would
    fail; ``-d`` runs it in the background.
    """
    if not args or args[0] not in ("run", "pull", "version"):
        return fail("the emulated image's docker serves run, pull and version only", 1)
    if args[0] == "version":
        print("Client/Server: azmanagers emulator (containers are processes of the VM)")
        return 0
    if args[0] == "pull":
        print(f"Status: Image is up to date for {args[-1]} (this machine's Python environment)")
        return 0
    try:
        options, flags, image, command = parse_run(args[1:])
    except ValueError as exc:
        return fail(str(exc))
    names = {name for name, _ in options}
    if names & {"-v", "--volume", "--mount"}:
        return fail("volumes are not emulated: the container sees the VM's own files")
    if "--gpus" in names:
        return fail('could not select device driver "" with capabilities: [[gpu]]')
    entrypoint = [value for name, value in options if name == "--entrypoint"]
    command = entrypoint[-1:] + command
    if not command:
        return fail(f"{image}: the emulated image runs the command given after it; none was")
    try:
        env = container_environment(image_dir, options)
    except ValueError as exc:
        return fail(str(exc))
    for name, value in options:
        if name in ("-w", "--workdir"):
            if not value.startswith("/"):
                return fail(
                    f"Error response from daemon: the working directory '{value}' is invalid, "
                    "it needs to be an absolute path"
                )
            try:
                workdir = inside_root(vm_root(), value)
                workdir.mkdir(parents=True, exist_ok=True)
            except (ValueError, OSError) as exc:
                return fail(f"Error response from daemon: the working directory: {exc}")
            os.chdir(workdir)
    print(f"docker (emulated): {image} runs {command[0]} on the VM's network", flush=True)
    if any(f == "--detach" or (not f.startswith("--") and "d" in f) for f in flags):
        subprocess.Popen(command, env=env, stdin=subprocess.DEVNULL)
        print(secrets.token_hex(32))
        return 0
    try:
        os.execvpe(command[0], command, env)
    except OSError as exc:
        return fail(f'failed to create task for container: exec: "{command[0]}": {exc}', 127)
    return 0  # not reached: exec replaced this process


def _vm_processes(folder: str) -> list[int]:
    """Every process of the VM (found by the folder its environment names), but this one."""
    found = []
    wanted = f"{MARKER}={folder}".encode()
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit() or int(entry.name) == os.getpid():
            continue
        try:
            if wanted in (entry / "environ").read_bytes().split(b"\0"):
                found.append(int(entry.name))
        except OSError:
            continue
    return found


def _signal(pids: list[int], sig: int) -> None:
    for pid in pids:
        with contextlib.suppress(OSError):
            os.kill(pid, sig)


def shutdown(program: str, args: list[str]) -> int:
    """``shutdown``/``poweroff``/``halt``: power the emulated VM off, never this machine.

    Every process of the VM is stopped and the VM's power state becomes ``stopped`` (a VM
    whose boot ends in ``shutdown``, as dask-cloudprovider's do, is stopped, not deleted).
    ``-r`` and ``reboot`` are refused: rebooting is not emulated.
    """
    if program == "reboot" or "-r" in args or "--reboot" in args:
        print(f"{program}: rebooting is not emulated", file=sys.stderr)
        return 1
    if "-c" in args:
        print("Shutdown cancelled.")
        return 0
    folder = os.environ.get(MARKER, "")
    if not folder:
        print(f"{program}: not an emulated VM: refusing to power this machine off", file=sys.stderr)
        return 1
    try:
        signal.signal(signal.SIGTERM, signal.SIG_IGN)
    except OSError:  # a SIGTERM came first: the VM is being stopped already
        return 0
    print("azmanagers emulator: the VM powers off", flush=True)
    (Path(folder) / POWERED_OFF).write_text(f"{time.time()}\n")
    _signal(_vm_processes(folder), signal.SIGTERM)
    deadline = time.monotonic() + STOP_GRACE_S
    while (left := _vm_processes(folder)) and time.monotonic() < deadline:
        time.sleep(0.1)
    _signal(left, signal.SIGKILL)
    return 0


def main(argv: list[str]) -> int:
    """``python -S guest_commands.py IMAGE_DIR COMMAND ARGS...``, as the image's shims run it.

    Only the standard library is used (the image's Python may lack the rest). ``write-files
    ROOT`` reads its entries as JSON from stdin (the boot script ``cloudinit`` makes).
    """
    image_dir, program, args = Path(argv[1]), argv[2], argv[3:]
    if program == "write-files":
        return write_files(Path(args[0]), json.load(sys.stdin))
    if program == "docker":
        return docker(image_dir, args)
    return shutdown(program, args)


if __name__ == "__main__":
    sys.exit(main(sys.argv))
