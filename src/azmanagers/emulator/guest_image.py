"""What every emulated VM's image holds besides this machine's tools: its own admin tools."""

from __future__ import annotations

import os
import shlex
import shutil
import sys
from pathlib import Path

IMAGE_VERSION = "2"
"""Bumped when the image's contents change: an older image folder is made again."""
GUEST_COMMANDS = ("docker", "shutdown", "poweroff", "halt", "reboot")
"""The image's commands that ``guest_commands`` runs."""
SKIPPED_TOOLS = (
    "apt", "apt-get", "apt-key", "add-apt-repository", "dpkg", "snap", "yum", "dnf", "rpm",
    "zypper", "ubuntu-drivers", "useradd", "usermod", "userdel", "groupadd", "groupdel",
    "adduser", "addgroup", "chpasswd", "service", "sysctl", "modprobe", "hostnamectl",
    "timedatectl", "ufw", "iptables", "mount", "umount", "mkfs", "mkfs.ext4", "mkfs.xfs",
    "mkswap", "swapon", "parted", "fdisk",
)  # fmt: skip
"""Admin tools that would change this machine: reported as skipped, exit status 0."""
CONTAINER_COMMANDS = {
    "python": "",
    "python3": "",
    "dask": "-m dask",
    "dask-scheduler": "-m distributed.cli.dask_scheduler",
    "dask-worker": "-m distributed.cli.dask_worker",
}
"""A container's Python commands: this machine's interpreter with these arguments first."""
SUDO_VALUE_OPTIONS = (
    "-u|-g|-h|-p|-C|-D|-R|-T|-U|-r|-t|--user|--group|--host|--prompt|--close-from|--chdir"
    "|--chroot|--command-timeout|--other-user|--role|--type"
)
"""sudo's options that take the next argument as their value."""

SUDO = f"""#!/bin/sh
# sudo on the emulated image: the VM's processes are this machine's user already, so the
# command runs as it is, with the VM's PATH (the image's stand-ins first); options dropped
while [ "$#" -gt 0 ]; do
  case "$1" in
    --) shift; break ;;
    {SUDO_VALUE_OPTIONS}) shift; [ "$#" -gt 0 ] && shift ;;
    -*) shift ;;
    *) break ;;
  esac
done
[ "$#" -gt 0 ] || exit 0  # sudo -v, sudo -k: nothing to run
exec env -- "$@"  # env: sudo's NAME=value arguments before the command
"""
SYSTEMCTL = """#!/bin/sh
# systemctl on the emulated image: powering off is the VM's; the rest is skipped
verb=
for arg in "$@"; do
  case "$arg" in
    -*) ;;
    *) verb=$arg; break ;;
  esac
done
case "$verb" in
  poweroff|halt) exec {bin}/poweroff ;;
  reboot|kexec|soft-reboot) exec {bin}/reboot ;;
esac
printf '%s\\n' "systemctl $*: skipped on the emulated image" >&2
exit 0
"""
SKIPPED = """#!/bin/sh
printf '%s\\n' "{name} $*: skipped on the emulated image (it changes nothing of this machine)" >&2
exit 0
"""


def _write_executable(path: Path, text: str) -> None:
    partial = path.with_name(path.name + ".partial")
    partial.write_text(text)
    partial.chmod(0o755)
    os.replace(partial, path)


def prepare(folder: Path) -> Path:
    """Make the image's folder (once); return its ``bin``, to put first on a VM's ``PATH``.

    Its commands are the emulated VM's own, never this machine's:

    - ``docker``, ``shutdown``, ``poweroff``, ``halt`` and ``reboot`` run ``guest_commands``
      (a container is a process of the VM; powering off stops the VM's processes);
    - ``sudo`` runs its command as it is (the VM is this machine's user already) with the
      VM's ``PATH``, its options (``-E``, ``-H``, ``-u USER``, ``--``...) dropped, so
      ``sudo apt-get`` finds the image's ``apt-get``;
    - ``systemctl poweroff``/``halt`` power the VM off (``reboot`` is refused, as
      ``reboot``); any other ``systemctl`` is reported as skipped, exit status 0;
    - ``SKIPPED_TOOLS`` (``apt-get``, ``apt-key``, ``add-apt-repository``, ``useradd``,
      ``mount``...): reported as skipped on the emulated image, exit status 0, so a
      cloud-config written for a real VM (dask-cloudprovider's bootstrap) runs through.

    Their reports go to stderr, which is the boot log. ``curl``, ``wget`` and the rest are
    this machine's, with its network. A container's ``python``, ``python3``, ``dask``,
    ``dask-scheduler`` and ``dask-worker`` are this machine's Python, with
    ``guest_network`` as its ``sitecustomize`` (a container's listeners on every interface
    listen on the VM's address).

    The stand-ins catch what a script finds on ``PATH`` only: an absolute path
    (``/sbin/shutdown``, ``/usr/bin/apt-get``) bypasses them and reaches this machine, and
    a VM's commands run as this machine's user, able to do what that user can. They keep
    well-meant custom data written for a real VM off this machine; they are no sandbox for
    hostile custom data.
    """
    bin_dir = folder / "bin"
    ready = folder / f"image-{IMAGE_VERSION}"
    if ready.exists():
        return bin_dir
    here = Path(__file__).resolve().parent
    python = shlex.quote(sys.executable)
    for sub in ("bin", "container-bin", "container-site"):
        (folder / sub).mkdir(parents=True, exist_ok=True, mode=0o700)
    shutil.copyfile(here / "guest_network.py", folder / "container-site" / "sitecustomize.py")
    script = shlex.quote(str(here / "guest_commands.py"))
    for name, arguments in CONTAINER_COMMANDS.items():
        _write_executable(
            folder / "container-bin" / name, f'#!/bin/sh\nexec {python} {arguments} "$@"\n'
        )
    for name in GUEST_COMMANDS:
        _write_executable(
            bin_dir / name,
            f'#!/bin/sh\nexec {python} -S {script} {shlex.quote(str(folder))} {name} "$@"\n',
        )
    for name in SKIPPED_TOOLS:
        _write_executable(bin_dir / name, SKIPPED.format(name=name))
    _write_executable(bin_dir / "sudo", SUDO)
    _write_executable(bin_dir / "systemctl", SYSTEMCTL.format(bin=shlex.quote(str(bin_dir))))
    ready.write_text("")  # written last: the image is whole
    return bin_dir
