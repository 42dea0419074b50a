"""Commands of the emulated VM image: ``docker`` (run, pull, version) and ``shutdown``.

Run as a script (``python -S guest_commands.py IMAGE_DIR COMMAND ARGS...``) by the shims
``guest_image`` puts first on every emulated VM's ``PATH``; only the standard library is used.

``docker run``: the image is this machine's Python environment, whatever its name, and the
container is the command given after it, run in the VM with host networking (a Python
listener on every interface listens on the VM's address: ``guest_network``). Its environment
is a container's (``-e``/``--env-file`` plus the basics), with ``python``, ``dask`` and the
image's tools on its ``PATH``. Volumes, GPUs and images without a command are refused, as
docker on such a VM would fail; ``-d`` runs it in the background.

``shutdown``/``poweroff``/``halt``: power the emulated VM off: every process of the VM is
stopped and the VM's power state becomes ``stopped`` (a VM whose boot ends in ``shutdown``,
as dask-cloudprovider's do, is stopped, not deleted). Never this machine's shutdown.
"""

from __future__ import annotations

import contextlib
import os
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


def container_environment(image_dir: Path, options: list[tuple[str, str]]) -> dict[str, str]:
    env = {key: os.environ[key] for key in KEPT if key in os.environ}
    env["PATH"] = f"{image_dir / 'container-bin'}:{CONTAINER_PATH}"
    env["PYTHONPATH"] = str(image_dir / "container-site")
    for name, value in options:
        lines = [value]
        if name == "--env-file":
            lines = Path(value).read_text().splitlines()
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
    """The emulated image's ``docker``: run, pull and version (see the module)."""
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
    env = container_environment(image_dir, options)
    for name, value in options:
        if name in ("-w", "--workdir"):
            workdir = Path(os.environ.get(MARKER, ".")) / "root" / value.lstrip("/")
            workdir.mkdir(parents=True, exist_ok=True)
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
    """Power the emulated VM off (see the module); ``-r`` and ``reboot`` are refused."""
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
    image_dir, program, args = Path(argv[1]), argv[2], argv[3:]
    if program == "docker":
        return docker(image_dir, args)
    return shutdown(program, args)


if __name__ == "__main__":
    sys.exit(main(sys.argv))
