"""The emulator's cloud-init subset: #cloud-config custom data, converted and booted."""

from __future__ import annotations

import base64
import gzip
import os
import stat
import subprocess
from collections.abc import Iterator
from pathlib import Path

import pytest

from azmanagers.emulator import Emulator, start_emulator
from azmanagers.emulator.cloudinit import boot_script, is_cloud_config, shellify
from azmanagers.providers.azure._clients import (
    ArmSettings,
    compute_client,
    network_client,
    resource_client,
)
from tests.conftest import eventually, processes_under

SUB = "00000000-0000-0000-0000-0000000000c1"
RG = "azm-cloud-init"
LOCATION = "southcentralus"


def run_script(script: str, folder: Path) -> str:
    """Run a converted script as a process-VM would (bash, its folder named); return its log."""
    folder.mkdir(exist_ok=True)
    done = subprocess.run(
        ["/bin/bash", "-c", script],
        cwd=folder,
        env={"PATH": os.environ["PATH"], "AZMANAGERS_INSTANCE_DIR": str(folder)},
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert done.returncode == 0, done.stderr
    return done.stdout + done.stderr


def test_only_a_first_line_of_cloud_config_makes_it_cloud_config() -> None:
    assert is_cloud_config("#cloud-config\nruncmd: []\n")
    assert is_cloud_config("#cloud-config  \r\n")
    assert not is_cloud_config("#!/bin/bash\n#cloud-config\n")
    assert not is_cloud_config("")


def test_runcmd_entries_become_one_shell_script_strings_as_they_are() -> None:
    assert shellify(["echo 'a b'", ["touch", "file with space"], "false"]) == (
        "#!/bin/sh\necho 'a b'\ntouch 'file with space'\nfalse\n"
    )


def test_write_files_land_under_the_vms_root_in_every_encoding(tmp_path: Path) -> None:
    gz_b64 = base64.b64encode(gzip.compress(b"zipped\n")).decode()
    config = f"""#cloud-config
write_files:
  - path: /etc/app/plain.conf
    content: |
      key=value
  - path: /etc/app/secret
    encoding: b64
    content: {base64.b64encode(b"hidden").decode()}
    permissions: '0600'
  - path: /opt/zipped
    encoding: gzip+base64
    content: {gz_b64}
  - path: /etc/app/plain.conf
    content: "more=1\\n"
    append: true
  - path: ../../escape
    content: stays inside
  - path: /late
    content: after packages
    defer: true
"""
    log = run_script(boot_script(config), tmp_path / "vm")
    root = tmp_path / "vm" / "root"
    assert (root / "etc/app/plain.conf").read_text() == "key=value\nmore=1\n"
    assert (root / "etc/app/secret").read_bytes() == b"hidden"
    assert stat.S_IMODE((root / "etc/app/secret").stat().st_mode) == 0o600
    assert stat.S_IMODE((root / "opt/zipped").stat().st_mode) == 0o644
    assert (root / "opt/zipped").read_text() == "zipped\n"
    assert (root / "escape").read_text() == "stays inside"  # never above the VM's root
    assert (root / "late").read_text() == "after packages"
    assert not (tmp_path / "escape").exists()
    assert "write_files: /etc/app/secret" in log


def test_commands_run_in_cloud_inits_order_and_a_failure_does_not_stop_them(
    tmp_path: Path,
) -> None:
    config = """#cloud-config
bootcmd:
  - echo boot >> "$AZM_VM_ROOT/order"
write_files:
  - path: /order
    content: "files\\n"
    append: true
packages: [curl, docker.io]
package_update: true
users: [default]
runcmd:
  - echo run1 >> "$AZM_VM_ROOT/order"
  - false
  - [sh, -c, 'echo "run2 $0" >> "$AZM_VM_ROOT/order"', 'with arg']
"""
    log = run_script(boot_script(config, instance_id="vm-1"), tmp_path / "vm")
    order = (tmp_path / "vm" / "root" / "order").read_text().splitlines()
    assert order == ["boot", "files", "run1", "run2 with arg"]
    runcmd = tmp_path / "vm" / "root" / "var/lib/cloud/instance/scripts/runcmd"
    assert runcmd.read_text().startswith("#!/bin/sh\n")
    assert "skipped module packages" in log and "skipped module package_update" in log
    assert "ignored module users" in log
    assert "running 'init'" in log and "running 'modules:final'" in log
    # sh ran every command; the script's status is its last command's (0): no failure line
    assert "Failed to run module scripts_user" not in log
    assert "finished at" in log and "Datasource DataSourceAzure" in log


def test_a_failing_runcmd_is_reported_as_cloud_init_reports_it(tmp_path: Path) -> None:
    log = run_script(boot_script("#cloud-config\nruncmd:\n  - exit 3\n"), tmp_path / "vm")
    assert "Failed running /var/lib/cloud/instance/scripts/runcmd [3]" in log
    assert "Failed to run module scripts_user" in log


def test_yaml_that_does_not_parse_is_reported_and_runs_nothing(tmp_path: Path) -> None:
    log = run_script(boot_script("#cloud-config\nruncmd: [unclosed\n"), tmp_path / "vm")
    assert "the #cloud-config is not valid YAML" in log
    assert not (tmp_path / "vm" / "root" / "var").exists()


@pytest.fixture
def emulator(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> Iterator[Emulator]:
    emu = start_emulator(run_instances=True, folder=tmp_path / "emulator")
    for key, value in emu.environment().items():
        monkeypatch.setenv(key, value)
    resource_client(ArmSettings.from_environment(), SUB).resource_groups.create_or_update(
        RG, {"location": LOCATION}
    )
    yield emu
    emu.stop()
    assert processes_under(tmp_path / "emulator") == []


def boot_vm(name: str, custom_data: str) -> None:
    settings = ArmSettings.from_environment()
    nic = (
        network_client(settings, SUB)
        .network_interfaces.begin_create_or_update(
            RG,
            f"{name}-nic",
            {
                "location": LOCATION,
                "properties": {
                    "ipConfigurations": [
                        {
                            "name": "ipconfig1",
                            "properties": {
                                "subnet": {
                                    "id": f"/subscriptions/{SUB}/resourceGroups/{RG}/providers/"
                                    "Microsoft.Network/virtualNetworks/vnet/subnets/default"
                                }
                            },
                        }
                    ]
                },
            },
        )
        .result()
    )
    compute_client(settings, SUB).virtual_machines.begin_create_or_update(
        RG,
        name,
        {
            "location": LOCATION,
            "properties": {
                "hardwareProfile": {"vmSize": "Standard_D2s_v3"},
                "storageProfile": {
                    "imageReference": {
                        "publisher": "Canonical",
                        "offer": "ubuntu-24_04-lts",
                        "sku": "server",
                        "version": "latest",
                    }
                },
                "osProfile": {
                    "computerName": name,
                    "adminUsername": "azuser",
                    "customData": base64.b64encode(custom_data.encode()).decode(),
                },
                "networkProfile": {"networkInterfaces": [{"id": nic.id}]},
            },
        },
    ).result()


def power_state(name: str) -> str:
    view = compute_client(ArmSettings.from_environment(), SUB).virtual_machines.instance_view(
        RG, name
    )
    return next(s.code for s in view.statuses if s.code.startswith("PowerState/"))


def test_a_vm_boots_its_cloud_config_then_powers_off_with_shutdown(
    emulator: Emulator, tmp_path: Path
) -> None:
    config = """#cloud-config
write_files:
  - path: /etc/greeting
    content: hello from cloud-init
runcmd:
  - cat "$AZM_VM_ROOT/etc/greeting" > "$AZM_VM_ROOT/seen"
  - echo "ran as $INSTANCE_ID"
  - sleep 600 &
  - shutdown -h now
"""
    boot_vm("ci1", config)
    (folder,) = (tmp_path / "emulator" / "vms").glob("ci1-*")  # its name and its vmId
    eventually(lambda: power_state("ci1") == "PowerState/stopped", "the VM to power off", 30)
    assert (folder / "root" / "seen").read_text() == "hello from cloud-init"
    log = (folder / "boot.log").read_text()
    assert "running 'modules:final'" in log and "the VM powers off" in log
    vm_id = compute_client(ArmSettings.from_environment(), SUB).virtual_machines.get(RG, "ci1")
    assert f"ran as {vm_id.vm_id}" in log
    # shutdown stopped every process of the VM (the backgrounded sleep too), not this machine
    eventually(lambda: processes_under(folder) == [], "the VM's processes to end", 10)


def test_the_images_docker_runs_the_command_and_refuses_what_it_cannot_emulate(
    tmp_path: Path,
) -> None:
    from azmanagers.emulator import guest_image

    bin_dir = guest_image.prepare(tmp_path / "image")
    vm = tmp_path / "vm"
    vm.mkdir()
    env = {
        "PATH": f"{bin_dir}:{os.environ['PATH']}",
        "AZMANAGERS_INSTANCE_DIR": str(vm),
        "SECRET_OF_THE_VM": "not for containers",
    }

    def docker(*args: str) -> subprocess.CompletedProcess[str]:
        return subprocess.run(
            ["docker", *args], env=env, capture_output=True, text=True, timeout=60, check=False
        )

    show = "import os; print(os.environ['GREETING'], 'SECRET_OF_THE_VM' in os.environ)"
    ran = docker(
        "run", "--rm", "--net=host", "-e", "GREETING=hi", "daskdev/dask", "python", "-c", show
    )
    assert ran.returncode == 0, ran.stderr
    assert ran.stdout.splitlines()[-1] == "hi False"
    for args, message in (
        (("run", "-v", "/data:/data", "img", "true"), "volumes are not emulated"),
        (("run", "--gpus=all", "img", "true"), "could not select device driver"),
        (("run", "img"), "runs the command given after it"),
        (("build", "."), "serves run, pull and version only"),
    ):
        refused = docker(*args)
        assert refused.returncode != 0 and message in refused.stderr
    exited = docker("run", "img", "sh", "-c", "exit 7")
    assert exited.returncode == 7
