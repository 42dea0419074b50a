"""Providers: where instances come from (``local`` process-VMs, ``azure`` scale sets)."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from azmanagers.errors import ConfigError, ProviderUnavailableError
from azmanagers.providers.base import Provider

KNOWN_PROVIDERS = ("local", "azure")


def get_provider(name: str, template: Mapping[str, Any] | None = None) -> Provider:
    """Return a provider instance by name (``local`` or ``azure``).

    The azure provider works in the template's subscription and resource group, or the
    manifest's when the template leaves them empty.
    """
    if name == "local":
        from azmanagers.providers.local.provider import LocalProvider

        return LocalProvider()
    if name == "azure":
        try:
            from azmanagers.providers.azure.provider import AzureProvider
        except ImportError as exc:  # pragma: no cover - the SDKs are dependencies
            raise ProviderUnavailableError(
                f"the azure provider needs the Azure SDKs ({exc}); pip install azmanagers again."
            ) from exc
        template = template or {}
        subscription = str(template.get("subscriptionid") or "")
        group = str(template.get("resourcegroup") or "")
        if not subscription or not group:
            from azmanagers.config.manifest import load_manifest

            manifest = load_manifest()
            subscription = subscription or manifest.subscriptionid
            group = group or manifest.resourcegroup
        return AzureProvider(subscription, group)
    raise ConfigError(f"unknown provider {name!r}; known providers: {', '.join(KNOWN_PROVIDERS)}.")
