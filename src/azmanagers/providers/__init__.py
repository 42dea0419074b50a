"""Providers: where instances come from; the registry hands out ``local`` and ``azure``.

What lives here: ``base.py`` (the Provider protocol and the frozen dataclasses that cross
it), ``tags.py`` (ownership, expiry), ``boot.py`` (the boot script), ``gc.py``, and one
folder per provider with the same file names (``local/``, ``azure/``: ``provider.py`` for
pools, quota and owned resources, ``vms.py`` for stand-alone VMs). Code outside this package
gets a provider from ``get_provider`` (and the emulator its process-VMs from
``process_vm_runtime``), never from a provider's own module.

What it may import: ``azmanagers.config``, ``azmanagers.errors``, ``azmanagers._version``
and its own modules; never ``cluster``, ``detached``, ``cli``, ``agent`` or ``emulator``.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from azmanagers.errors import ConfigError, ProviderUnavailableError
from azmanagers.providers.base import Provider
from azmanagers.providers.local.procvm import ProcessVM, ProcessVMRuntime

__all__ = [
    "KNOWN_PROVIDERS",
    "ProcessVM",
    "ProcessVMRuntime",
    "Provider",
    "get_provider",
    "process_vm_runtime",
]

KNOWN_PROVIDERS = ("local", "azure")


def get_provider(name: str, template: Mapping[str, Any] | None = None) -> Provider:
    """Return a provider instance by name (``local`` or ``azure``).

    The local provider keeps its process-VMs under ``AZMANAGERS_HOME/state/local``: a
    process-VM finds its own VM through ``get_provider("local")`` too, since its environment
    carries the caller's ``AZMANAGERS_HOME``. The azure provider works in the template's
    subscription and resource group, or the manifest's when the template leaves them empty.

    Raises
    ------
    ConfigError
        For an unknown name, or an azure provider with no subscription or resource group.
    ProviderUnavailableError
        When the azure provider's SDKs cannot be imported.
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


def process_vm_runtime() -> ProcessVMRuntime:
    """Return the process-VM runtime: a boot script run in its own folder and process group.

    The local provider's instances are such process-VMs; the ARM emulator boots its VMs
    with the same runtime, so an emulated VM boots exactly as a local one does.
    """
    return ProcessVMRuntime()
