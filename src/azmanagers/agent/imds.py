"""What an instance learns about itself from the Instance Metadata Service (IMDS)."""

from __future__ import annotations

import json
import os
import time
import urllib.error
import urllib.request
from typing import Any

IMDS_DEFAULT = "http://169.254.169.254"
"""Azure's IMDS; ``AZMANAGERS_IMDS_ENDPOINT`` replaces it (the emulator gives one per VM)."""
INSTANCE_API_VERSION = "2021-02-01"
IMDS_TIMEOUT_S = 2.0
IMDS_ATTEMPTS = 5


def endpoint() -> str:
    """Return the IMDS base URL for this instance."""
    return os.environ.get("AZMANAGERS_IMDS_ENDPOINT", IMDS_DEFAULT).rstrip("/")


def get(path: str, api_version: str) -> Any:
    """GET an IMDS document (with ``Metadata: true``), retrying briefly; return its JSON."""
    request = urllib.request.Request(
        f"{endpoint()}/metadata/{path}?api-version={api_version}", headers={"Metadata": "true"}
    )
    last: Exception | None = None
    for attempt in range(IMDS_ATTEMPTS):
        try:
            with urllib.request.urlopen(request, timeout=IMDS_TIMEOUT_S) as reply:
                return json.loads(reply.read())
        except (urllib.error.URLError, TimeoutError, json.JSONDecodeError) as exc:
            last = exc
            time.sleep(min(2.0, 0.2 * 2**attempt))
    raise OSError(f"IMDS at {endpoint()} did not answer {path}: {last}")


def private_address() -> str:
    """Return this VM's private IPv4 address (its first NIC's first one)."""
    network = get("instance", INSTANCE_API_VERSION)["network"]
    return str(network["interface"][0]["ipv4"]["ipAddress"][0]["privateIpAddress"])


def instance_name() -> str:
    """Return this VM's name (a scale-set VM's is ``<scaleset>_<instanceId>``)."""
    return str(get("instance", INSTANCE_API_VERSION)["compute"]["name"])
