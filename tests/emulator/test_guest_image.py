"""The emulated image keeps a VM's custom data off this machine: stand-ins, confinement, limits."""

from __future__ import annotations

import base64
import gzip
import os
import stat
import subprocess
from collections.abc import Iterator
from pathlib import Path

import pytest

from azmanagers.emulator import Emulator, guest_image, start_emulator
from azmanagers.emulator.cloudinit import MAX_FILES_BYTES, boot_script
from azmanagers.providers.azure._clients import ArmSettings, resource_client
from tests.conftest import eventually, processes_under
from tests.emulator.test_cloud_init import LOCATION, RG, SUB, boot_vm, power_state


@pytest.fixture(scope="module")
def running_emulator(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Emulator]:
    """One emulator for the module's VMs (each test boots its own), with the test group."""
    folder = tmp_path_factory.mktemp("guest-image") / "emulator"
    emu = start_emulator(run_instances=True, folder=folder)
    try:
        with pytest.MonkeyPatch.context() as patch:
            for key, value in emu.environment().items():
                patch.setenv(key, value)
            resource_client(ArmSettings.from_environment(), SUB).resource_groups.create_or_update(
                RG, {"location": LOCATION}
            )
        yield emu
    finally:
        emu.stop()
    assert processes_under(folder) == []


@pytest.fixture
def emulator(running_emulator: Emulator, monkeypatch: pytest.MonkeyPatch) -> Emulator:
    """The module's emulator, the ARM variables set for this test's SDK clients."""
    for key, value in running_emulator.environment().items():
        monkeypatch.setenv(key, value)
    return running_emulator


def vm_folder(emu: Emulator, name: str) -> Path:
    (folder,) = (emu.state.runner.folder).glob(f"{name}-*")
    return folder


def alias_bomb(depth: int) -> str:
    """A few hundred bytes of YAML whose runcmd is 10**depth words once its aliases expand."""
    lines = ["#cloud-config", "a0: &a0 [x, x, x, x, x, x, x, x, x, x]"]
    for level in range(1, depth):
        lines.append(f"a{level}: &a{level} [" + ", ".join([f"*a{level - 1}"] * 10) + "]")
    lines.append(f"runcmd: [[echo, *a{depth - 1}]]")
    return "\n".join(lines) + "\n"


def test_admin_tools_in_runcmd_are_the_images_stand_ins_and_are_skipped(
    emulator: Emulator,
) -> None:
    # dask-cloudprovider's bootstrap=True runcmd (its key from loopback: no network here),
    # with sudo in front as many cloud-configs have it; set -e: every command must succeed
    config = """#cloud-config
packages: [apt-transport-https, ca-certificates]
runcmd:
  - set -e
  - curl -fsSL http://127.0.0.1:9/gpg | apt-key add -
  - add-apt-repository "deb [arch=amd64] https://download.docker.com/linux/ubuntu stable"
  - apt-get update -y
  - apt-get install -y docker-ce docker-ce-cli containerd.io
  - systemctl start docker
  - systemctl enable docker
  - sudo -E -H -u root -- apt-get install -y docker-ce
  - sudo DEBIAN_FRONTEND=noninteractive sh -c 'echo "sudo ran $DEBIAN_FRONTEND $0"' x
  - echo "apt-get is $(command -v apt-get)"
  - useradd -m someone
  - echo every command ran
  - sudo systemctl poweroff
"""
    boot_vm("tools", config)
    eventually(lambda: power_state("tools") == "PowerState/stopped", "the VM to power off", 30)
    folder = vm_folder(emulator, "tools")
    log = (folder / "boot.log").read_text()
    image_bin = emulator.state.runner.folder / "image" / "bin"
    for line in (
        "apt-key add -: skipped on the emulated image",
        "add-apt-repository deb [arch=amd64] https://download.docker.com/linux/ubuntu stable: "
        "skipped",
        "apt-get install -y docker-ce docker-ce-cli containerd.io: skipped",
        "systemctl start docker: skipped on the emulated image",
        "systemctl enable docker: skipped",
        "sudo ran noninteractive x",
        f"apt-get is {image_bin}/apt-get",
        "useradd -m someone: skipped",
        "every command ran",
        "the VM powers off",  # systemctl poweroff is the guest's, through sudo
    ):
        assert line in log, log
    assert log.count("apt-get install -y docker-ce") == 2  # sudo's options dropped
    assert "Failed running" not in log
    assert (folder / "powered_off").exists()


def test_write_files_through_a_symlink_to_outside_are_refused_and_special_bits_dropped(
    emulator: Emulator, tmp_path: Path
) -> None:
    outside = tmp_path / "outside"
    outside.mkdir()
    config = f"""#cloud-config
bootcmd:
  - ln -s {outside} "$AZM_VM_ROOT/etc"
  - ln -s {outside}/passwd "$AZM_VM_ROOT/passwd"
write_files:
  - path: /etc/through-a-symlink
    content: escaped
  - path: /etc/appended
    content: appended
    append: true
  - path: /passwd
    content: a symlink itself
  - path: /opt/tool
    content: "#!/bin/sh\\n"
    permissions: '6755'
  - path: /opt/shared
    content: shared
    permissions: '1777'
runcmd:
  - touch "$AZM_VM_ROOT/done"
"""
    boot_vm("files", config)
    root = vm_folder(emulator, "files") / "root"
    eventually(lambda: (root / "done").exists(), "the runcmd to run", 30)
    assert list(outside.iterdir()) == []  # nothing written outside the VM's root
    log = (root.parent / "boot.log").read_text()
    for path in ("/etc/through-a-symlink", "/etc/appended", "/passwd"):
        assert f"cc_write_files.py[WARNING]: {path}: not written" in log
    assert "outside the VM's root" in log
    assert "Running module write_files failed" in log
    assert stat.S_IMODE((root / "opt/tool").stat().st_mode) == 0o755
    assert stat.S_IMODE((root / "opt/shared").stat().st_mode) == 0o777
    assert "bits of 6755 dropped" in log and "bits of 1777 dropped" in log
    assert power_state("files") == "PowerState/running"  # warned, and went on


def test_a_yaml_alias_bomb_fails_the_boot_with_a_line_that_says_why(emulator: Emulator) -> None:
    bomb = alias_bomb(9)  # a billion words from under 1 KiB
    script = boot_script(bomb)
    assert script.endswith("exit 1\n") and len(script) < 4096
    boot_vm("aliases", bomb)
    eventually(lambda: power_state("aliases") == "PowerState/stopped", "the boot to fail", 30)
    folder = vm_folder(emulator, "aliases")
    log = (folder / "boot.log").read_text()
    assert "beyond the emulator's limits: it expands to more than 1 MiB of commands" in log
    assert not (folder / "root" / "var").exists()  # nothing of it ran


def test_a_gzip_bomb_fails_the_boot_with_a_line_that_says_why(emulator: Emulator) -> None:
    zipped = base64.b64encode(gzip.compress(bytes(2 * MAX_FILES_BYTES), 9)).decode()
    config = f"""#cloud-config
write_files:
  - path: /small
    content: fine
  - path: /bomb
    encoding: gz+b64
    content: {zipped}
"""
    assert boot_script(config).endswith("exit 1\n")
    boot_vm("gzipped", config)
    eventually(lambda: power_state("gzipped") == "PowerState/stopped", "the boot to fail", 30)
    folder = vm_folder(emulator, "gzipped")
    log = (folder / "boot.log").read_text()
    assert "write_files[1] /bomb: its content decompresses to more than 16 MiB" in log
    assert not (folder / "root" / "bomb").exists() and not (folder / "root" / "small").exists()


def test_dockers_workdir_and_env_file_are_the_vms_paths_under_its_root(tmp_path: Path) -> None:
    bin_dir = guest_image.prepare(tmp_path / "image")
    vm = tmp_path / "vm"
    (vm / "root" / "etc").mkdir(parents=True)
    (vm / "root" / "etc" / "app.env").write_text("GREETING=from the VM\n")
    outside = tmp_path / "outside"
    outside.mkdir()
    (vm / "root" / "escape").symlink_to(outside)
    env = {"PATH": f"{bin_dir}:{os.environ['PATH']}", "AZMANAGERS_INSTANCE_DIR": str(vm)}

    def docker(*args: str) -> subprocess.CompletedProcess[str]:
        return subprocess.run(
            ["docker", "run", *args], cwd=vm, env=env, capture_output=True, text=True, timeout=60
        )

    ran = docker("-w", "/../../x", "img", "pwd")
    assert ran.returncode == 0, ran.stderr
    assert ran.stdout.splitlines()[-1] == str((vm / "root" / "x").resolve())
    for args, message in (
        (("-w", "/escape/wd"), "outside the VM's root"),
        (("-w", "relative"), "it needs to be an absolute path"),
        (("--env-file", "/etc/passwd"), "open /etc/passwd: no such file or directory"),
        (("--env-file", "../../etc/passwd"), "open ../../etc/passwd: no such file or directory"),
        (("--env-file", "/escape/env"), "outside the VM's root"),
    ):
        refused = docker(*args, "img", "true")
        assert refused.returncode == 125 and message in refused.stderr, refused.stderr
    assert list(outside.iterdir()) == []
    show = "import os; print(os.environ['GREETING'])"
    # -p and --privileged are accepted: the container is a process of the VM already
    read = docker("--env-file=/etc/app.env", "--privileged", "-p=1:1", "img", "python", "-c", show)
    assert read.returncode == 0, read.stderr
    assert read.stdout.splitlines()[-1] == "from the VM"
