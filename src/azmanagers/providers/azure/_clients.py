"""SDK clients for the azure provider: credential, endpoint, CA bundle, retry and polling.

One code path serves Azure and the emulator: ``AZMANAGERS_ARM_ENDPOINT`` points the clients at
another ARM endpoint, ``AZMANAGERS_ARM_CA`` gives its CA bundle, and ``AZMANAGERS_ARM_TOKEN``
selects a static bearer token instead of ``DefaultAzureCredential`` (az login, managed
identity, or a service principal in the environment).
"""

from __future__ import annotations

import os
from dataclasses import dataclass, field
from typing import Any

from azmanagers.errors import ConfigError

DEFAULT_ARM_ENDPOINT = "https://management.azure.com"
RETRY_TOTAL = 6
"""Retries of one request (429 with Retry-After, 5xx, connection errors) before we give up."""
RETRY_BACKOFF_MAX_S = 30
RETRY_AFTER_MAX_S = 60
"""A 429 asking us to wait longer than this is not slept through: it reaches the caller."""
POLLING_INTERVAL_S = 5


def retry_policy() -> Any:
    """Return azure-core's retry policy, bounded: RETRY_TOTAL retries, and no sleeping
    through a Retry-After over RETRY_AFTER_MAX_S (a spent hourly ARM limit would otherwise
    block the caller for up to an hour without a word)."""
    from azure.core.pipeline.policies import RetryPolicy

    class BoundedRetryPolicy(RetryPolicy):  # type: ignore[type-arg]
        def is_retry(self, settings: Any, response: Any) -> bool:
            wait_s = self.get_retry_after(response)
            if wait_s is not None and wait_s > RETRY_AFTER_MAX_S:
                return False
            return bool(super().is_retry(settings, response))

    return BoundedRetryPolicy(retry_total=RETRY_TOTAL, retry_backoff_max=RETRY_BACKOFF_MAX_S)


@dataclass(frozen=True)
class ArmSettings:
    """Where ARM is and how we authenticate to it."""

    endpoint: str = DEFAULT_ARM_ENDPOINT
    ca_file: str | None = None
    token: str | None = field(default=None, repr=False)
    polling_interval_s: float = POLLING_INTERVAL_S

    @classmethod
    def from_environment(cls) -> ArmSettings:
        """Read ``AZMANAGERS_ARM_ENDPOINT``, ``AZMANAGERS_ARM_CA`` and ``AZMANAGERS_ARM_TOKEN``."""
        endpoint = os.environ.get("AZMANAGERS_ARM_ENDPOINT", DEFAULT_ARM_ENDPOINT).rstrip("/")
        if not endpoint.startswith("https://"):
            raise ConfigError(
                f"AZMANAGERS_ARM_ENDPOINT must be an https:// URL (bearer tokens never travel "
                f"over plain HTTP), got {endpoint!r}."
            )
        ca_file = os.environ.get("AZMANAGERS_ARM_CA") or None
        if ca_file is not None and not os.path.isfile(ca_file):
            raise ConfigError(f"AZMANAGERS_ARM_CA names {ca_file!r}, which is not a file.")
        token = os.environ.get("AZMANAGERS_ARM_TOKEN") or None
        polling = float(os.environ.get("AZMANAGERS_ARM_POLLING_S", POLLING_INTERVAL_S))
        return cls(endpoint, ca_file, token, polling)

    def credential(self) -> Any:
        """Return the credential: the static token if set; on a VM whose IMDS is named by
        ``AZMANAGERS_IMDS_ENDPOINT`` (one the emulator runs), its managed identity; else
        DefaultAzureCredential."""
        if self.token is not None:
            from azmanagers.providers.azure._credential import StaticTokenCredential

            return StaticTokenCredential(self.token)
        imds = os.environ.get("AZMANAGERS_IMDS_ENDPOINT")
        if imds:
            from azmanagers.providers.azure._credential import ImdsIdentityCredential

            return ImdsIdentityCredential(imds)
        from azure.identity import DefaultAzureCredential

        return DefaultAzureCredential()

    def client_options(self) -> dict[str, Any]:
        """Keyword arguments every management client gets (endpoint, CA, retry, polling)."""
        options: dict[str, Any] = {
            "retry_policy": retry_policy(),
            "polling_interval": self.polling_interval_s,
        }
        if self.ca_file is not None:
            options["connection_verify"] = self.ca_file
        return options


def compute_client(settings: ArmSettings, subscription: str) -> Any:
    """Return a ComputeManagementClient for ``subscription``."""
    from azure.mgmt.compute import ComputeManagementClient

    return ComputeManagementClient(
        settings.credential(), subscription, settings.endpoint, **settings.client_options()
    )


def resource_client(settings: ArmSettings, subscription: str) -> Any:
    """Return a ResourceManagementClient for ``subscription``."""
    from azure.mgmt.resource.resources import ResourceManagementClient

    return ResourceManagementClient(
        settings.credential(),
        subscription,
        base_url=settings.endpoint,
        **settings.client_options(),
    )


def network_client(settings: ArmSettings, subscription: str) -> Any:
    """Return a NetworkManagementClient for ``subscription``."""
    from azure.mgmt.network import NetworkManagementClient

    return NetworkManagementClient(
        settings.credential(), subscription, settings.endpoint, **settings.client_options()
    )


BOOT_LOG_TIMEOUT_S = 10.0
"""How long fetching a boot diagnostics log (a blob behind a SAS URL) may take."""


def download_tail(url: str, tail_bytes: int, ca_file: str | None) -> str:
    """GET a blob (a SAS URL, no bearer token) and return its last ``tail_bytes`` as text.

    Returns '' when the blob cannot be fetched: a boot log is a diagnostic, never a failure.
    """
    import ssl
    import urllib.error
    import urllib.request

    context = ssl.create_default_context(cafile=ca_file) if ca_file else None
    try:
        with urllib.request.urlopen(url, timeout=BOOT_LOG_TIMEOUT_S, context=context) as reply:
            data: bytes = reply.read()
    except (urllib.error.URLError, TimeoutError, OSError):
        return ""
    return data[-tail_bytes:].decode("utf-8", errors="replace")
