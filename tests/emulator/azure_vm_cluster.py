"""Running dask-cloudprovider's AzureVMCluster against an emulator (for the test and the bench).

dask-cloudprovider runs in a venv of its own (``.ci/install-dask-cloudprovider``): its Azure
code passes snake_case dicts, which azure-mgmt-network 31+ and azure-mgmt-compute 38+ send
unchanged and ARM refuses (``test_network_and_disks`` checks the emulator refuses them too), so
the venv holds the last SDKs that turn them into models. ``dask_cloudprovider_driver.py`` runs
the cluster there, its clients pointed at the emulator.
"""

from __future__ import annotations

import json
import os
import subprocess
from pathlib import Path
from typing import Any

from azmanagers.emulator import Emulator
from azmanagers.providers.azure._clients import ArmSettings, network_client, resource_client

SUB = "00000000-0000-0000-0000-0000000000dc"
RG = "azm-dask-cloudprovider"
LOCATION = "westeurope"
REPOSITORY = Path(__file__).resolve().parents[2]
INSTALL = REPOSITORY / ".ci" / "install-dask-cloudprovider"
DRIVER = Path(__file__).with_name("dask_cloudprovider_driver.py")
INSTALL_TIMEOUT_S = 600
CLUSTER_TIMEOUT_S = 180


def venv_python() -> str:
    """The python of dask-cloudprovider's venv (installed from PyPI the first time)."""
    done = subprocess.run(
        [str(INSTALL)], capture_output=True, text=True, timeout=INSTALL_TIMEOUT_S, check=False
    )
    if done.returncode != 0:
        raise RuntimeError(f"{INSTALL} failed:\n{done.stderr[-3000:]}")
    return done.stdout.strip().splitlines()[-1]


def prepare_network(emu: Emulator) -> None:
    """What AzureVMCluster expects to exist: a group, a network with a subnet, an NSG."""
    settings = ArmSettings(emu.server.base_url, str(emu.server.ca_file), emu.server.token, 0)
    resource_client(settings, SUB).resource_groups.create_or_update(RG, {"location": LOCATION})
    network = network_client(settings, SUB)
    network.virtual_networks.begin_create_or_update(
        RG,
        "dask-vnet",
        {
            "location": LOCATION,
            "properties": {
                "addressSpace": {"addressPrefixes": ["10.0.0.0/16"]},
                "subnets": [{"name": "default", "properties": {"addressPrefix": "10.0.0.0/24"}}],
            },
        },
    ).result()
    rule = {
        "protocol": "Tcp",
        "sourcePortRange": "*",
        "destinationPortRange": "8786-8787",
        "sourceAddressPrefix": "*",
        "destinationAddressPrefix": "*",
        "access": "Allow",
        "priority": 100,
        "direction": "Inbound",
    }
    network.network_security_groups.begin_create_or_update(
        RG,
        "dask-nsg",
        {
            "location": LOCATION,
            "properties": {"securityRules": [{"name": "dask", "properties": rule}]},
        },
    ).result()


def run_cluster(emu: Emulator, python: str, n_workers: int) -> dict[str, Any]:
    """Run the driver (create, compute, close); return its result."""
    arguments = {
        "location": LOCATION,
        "resource_group": RG,
        "subscription": SUB,
        "vnet": "dask-vnet",
        "security_group": "dask-nsg",
        "n_workers": n_workers,
    }
    env = {
        **os.environ,
        "AZM_EMU_ENDPOINT": emu.server.base_url,
        "AZM_EMU_CA": str(emu.server.ca_file),
        "AZM_EMU_TENANT": emu.service_principal.tenant_id,
        "AZM_EMU_CLIENT_ID": emu.service_principal.client_id,
        "AZM_EMU_CLIENT_SECRET": emu.service_principal.client_secret,
    }
    done = subprocess.run(
        [python, str(DRIVER), json.dumps(arguments)],
        env=env,
        capture_output=True,
        text=True,
        timeout=CLUSTER_TIMEOUT_S,
        check=False,
    )
    results = [line for line in done.stdout.splitlines() if line.startswith("RESULT ")]
    if done.returncode != 0 or not results:
        raise RuntimeError(f"the cluster failed:\n{done.stdout[-3000:]}\n{done.stderr[-5000:]}")
    return dict(json.loads(results[-1].removeprefix("RESULT ")))
