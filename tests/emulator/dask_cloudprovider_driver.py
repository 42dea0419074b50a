"""Run dask-cloudprovider's AzureVMCluster against the emulator, then close it (a script).

Run by the python of ``.ci/install-dask-cloudprovider``'s venv (the Azure SDKs dask-cloudprovider
works with): ``python dask_cloudprovider_driver.py '<json arguments>'`` with the emulator's
endpoint and CA file in ``AZM_EMU_ENDPOINT`` and ``AZM_EMU_CA``, and its service principal in
``AZM_EMU_TENANT``, ``AZM_EMU_CLIENT_ID`` and ``AZM_EMU_CLIENT_SECRET``. dask-cloudprovider
makes its SDK clients itself (``DefaultAzureCredential``, Azure's endpoint): the script points
them at the emulator, as a user would, by replacing the names it imported, and signs in with
the service principal through the emulator's token endpoint.
It prints ``RESULT <json>`` last: the workers seen, a computed value, the scheduler's address.
"""

from __future__ import annotations

import json
import os
import sys
from typing import Any


def emulator_credential() -> Any:
    """The emulator's service principal, signing in there (for ``DefaultAzureCredential``)."""
    from azure.identity import ClientSecretCredential

    return ClientSecretCredential(
        os.environ["AZM_EMU_TENANT"],
        os.environ["AZM_EMU_CLIENT_ID"],
        os.environ["AZM_EMU_CLIENT_SECRET"],
        authority=os.environ["AZM_EMU_ENDPOINT"],
        disable_instance_discovery=True,
        connection_verify=os.environ["AZM_EMU_CA"],
    )


def point_at_the_emulator() -> None:
    """Make dask-cloudprovider's clients talk to the emulator (endpoint, CA, token)."""
    import dask_cloudprovider.azure.azurevm as azurevm
    from azure.mgmt.compute import ComputeManagementClient
    from azure.mgmt.network import NetworkManagementClient

    options = {
        "base_url": os.environ["AZM_EMU_ENDPOINT"],
        "connection_verify": os.environ["AZM_EMU_CA"],
        "polling_interval": 0,
    }

    def compute(credential: Any, subscription: str) -> Any:
        return ComputeManagementClient(credential, subscription, **options)

    def network(credential: Any, subscription: str) -> Any:
        return NetworkManagementClient(credential, subscription, **options)

    azurevm.DefaultAzureCredential = emulator_credential  # type: ignore[misc,assignment]
    azurevm.ComputeManagementClient = compute  # type: ignore[misc,assignment]
    azurevm.NetworkManagementClient = network  # type: ignore[misc,assignment]


def main(arguments: dict[str, Any]) -> dict[str, Any]:
    point_at_the_emulator()
    from dask.distributed import Client
    from dask_cloudprovider.azure import AzureVMCluster

    workers = int(arguments["n_workers"])
    with (
        AzureVMCluster(
            location=arguments["location"],
            resource_group=arguments["resource_group"],
            subscription_id=arguments["subscription"],
            vnet=arguments["vnet"],
            security_group=arguments["security_group"],
            n_workers=workers,
            # the emulated image has docker already, as a custom image would
            bootstrap=False,
        ) as cluster,
        Client(cluster) as client,
    ):
        client.wait_for_workers(workers, timeout=arguments.get("timeout_s", 120))
        seen = len(client.scheduler_info()["workers"])
        value = client.submit(sum, [1, 2, 3]).result() if workers else None
        address = cluster.scheduler_address
    return {"workers": seen, "value": value, "scheduler_address": address}


if __name__ == "__main__":
    result = main(json.loads(sys.argv[1]))
    print("RESULT " + json.dumps(result), flush=True)
