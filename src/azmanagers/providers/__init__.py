"""Providers: where instances come from (``local`` process-VMs, ``azure`` scale sets)."""

from __future__ import annotations

from azmanagers.errors import ConfigError, ProviderUnavailableError
from azmanagers.providers.base import Provider

KNOWN_PROVIDERS = ("local", "azure")


def get_provider(name: str) -> Provider:
    """Return a provider instance by name (``local`` or ``azure``)."""
    if name == "local":
        from azmanagers.providers.local import LocalProvider

        return LocalProvider()
    if name == "azure":
        raise ProviderUnavailableError(
            "the azure provider is not part of this version of azmanagers yet; "
            "use a local template (for example 'local') meanwhile."
        )
    raise ConfigError(f"unknown provider {name!r}; known providers: {', '.join(KNOWN_PROVIDERS)}.")
