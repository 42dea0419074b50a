"""Deletes a detached VM after a ``persist=False`` job, from outside its service."""

from __future__ import annotations

import json
import os
import ssl
import sys
import time
import urllib.parse
import urllib.request
from pathlib import Path

ARM_DEFAULT = "https://management.azure.com"
ARM_RESOURCE = "https://management.azure.com/"
VM_API_VERSION = "2024-07-01"
TOKEN_API_VERSION = "2018-02-01"
REQUEST_TIMEOUT_S = 30.0


def _delete_local(folder: Path) -> None:
    """Delete the process-VM in ``folder`` (``<home>/state/local/vms/<name>``) through the
    provider registry, with the ``AZMANAGERS_HOME`` the folder lies in."""
    from azmanagers.config.paths import HOME_ENV
    from azmanagers.providers import get_provider

    if folder.parent.name != "vms" or folder.parents[1].name != "local":
        raise ValueError(f"{folder} is not a local VM's folder (<home>/state/local/vms/<name>)")
    os.environ[HOME_ENV] = str(folder.parents[3])
    get_provider("local").delete_vm(folder.name)


def _delete_azure() -> None:
    from azmanagers.agent import imds

    compute = imds.get("instance", imds.INSTANCE_API_VERSION)["compute"]
    query = urllib.parse.urlencode({"api-version": TOKEN_API_VERSION, "resource": ARM_RESOURCE})
    token_request = urllib.request.Request(
        f"{imds.endpoint()}/metadata/identity/oauth2/token?{query}", headers={"Metadata": "true"}
    )
    with urllib.request.urlopen(token_request, timeout=REQUEST_TIMEOUT_S) as reply:
        token = json.loads(reply.read())["access_token"]
    arm = os.environ.get("AZMANAGERS_ARM_ENDPOINT", ARM_DEFAULT).rstrip("/")
    ca = os.environ.get("AZMANAGERS_ARM_CA")
    context = ssl.create_default_context(cafile=ca) if ca else ssl.create_default_context()
    url = (
        f"{arm}/subscriptions/{compute['subscriptionId']}/resourceGroups/"
        f"{compute['resourceGroupName']}/providers/Microsoft.Compute/virtualMachines/"
        f"{compute['name']}?api-version={VM_API_VERSION}&forceDeletion=true"
    )
    request = urllib.request.Request(
        url, method="DELETE", headers={"Authorization": f"Bearer {token}"}
    )
    with urllib.request.urlopen(request, timeout=REQUEST_TIMEOUT_S, context=context) as reply:
        print(f"azmanagers: deleting this VM ({reply.status})", flush=True)


def main(argv: list[str]) -> int:
    """Wait the grace period, then delete this VM.

    ``local VM_FOLDER GRACE_S``: a local process-VM; stops its processes and removes its
    folder. ``azure GRACE_S``: an Azure VM; asks IMDS for a token of the VM's managed identity
    and DELETEs the VM through ARM (its NIC and disks go with it: delete options). The
    identity needs a role that allows it (e.g. Virtual Machine Contributor on the resource
    group); no caller credential is ever on the VM.
    """
    mode = argv[0]
    time.sleep(float(argv[-1]))
    try:
        if mode == "local":
            _delete_local(Path(argv[1]).resolve())
        elif mode == "azure":
            _delete_azure()
        else:
            print(f"azmanagers selfdelete: unknown mode {mode!r}", file=sys.stderr)
            return 2
    except (OSError, KeyError, ValueError) as exc:
        print(f"azmanagers selfdelete: this VM could not delete itself: {exc}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
