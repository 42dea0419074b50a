"""The ARM/IMDS emulator: a faithful HTTPS test double of Azure for our provider and others.

What lives here: the HTTPS server (``server``, ``names``), sign-in (``identity``, ``tokens``,
``subscriptions``), ARM routes (``arm``, ``groups``, ``vms``, ``flexible``, ``network``,
``network_kinds``, ``disks``) with their checks and shapes (``validation``, ``shapes``,
``scaleset_updates``, ``scaleset_views``, ``removal``, ``views``, ``catalog``), ARM's state
(``scalesets``, ``addresses``), rate limits and faults, IMDS and the emulated VMs
(``instances``, booted as process-VMs; ``cloudinit`` and the ``guest_*`` image). What it may
import: ``errors``, ``tls``, ``config`` (template builders for samples) and, from
``providers``, only the registry (``process_vm_runtime``); never ``cluster``, ``detached`` or
``cli``.
"""

from __future__ import annotations

import shutil
import tempfile
from dataclasses import dataclass
from pathlib import Path

from azmanagers.emulator.arm import build_admin_router, build_router
from azmanagers.emulator.disks import add_disk_routes
from azmanagers.emulator.identity import ServicePrincipal
from azmanagers.emulator.instances import ImdsServer, ProcessRunner
from azmanagers.emulator.network import add_network_routes
from azmanagers.emulator.scalesets import ArmState
from azmanagers.emulator.server import EmulatorServer
from azmanagers.emulator.subscriptions import add_subscription_routes
from azmanagers.emulator.validation import check_envelope
from azmanagers.emulator.vms import add_vm_routes


@dataclass
class Emulator:
    """A running emulator: its HTTPS server, its state, and (optionally) its process-VMs."""

    server: EmulatorServer
    state: ArmState
    imds: ImdsServer | None = None
    owned_folder: Path | None = None

    @property
    def service_principal(self) -> ServicePrincipal:
        """The app that signs in here (``az login --service-principal``, azure-identity's
        ``ClientSecretCredential`` with ``authority=server.base_url``)."""
        return self.server.sign_in.service_principal

    def environment(self) -> dict[str, str]:
        """The variables that point the azure provider at this emulator."""
        return {
            "AZMANAGERS_ARM_ENDPOINT": self.server.base_url,
            "AZMANAGERS_ARM_CA": str(self.server.ca_file),
            "AZMANAGERS_ARM_TOKEN": self.server.token,
            "AZMANAGERS_ARM_POLLING_S": "0",
        }

    def stop(self) -> None:
        """Stop every emulated VM, then the servers."""
        if self.state.runner is not None:
            self.state.runner.stop_all()
        if self.imds is not None:
            self.imds.stop()
        self.server.stop()
        self.state.addresses.release()
        if self.owned_folder is not None:
            shutil.rmtree(self.owned_folder, ignore_errors=True)


def sample_scaleset_template(
    name: str,
    subscription: str,
    resource_group: str,
    location: str = "southcentralus",
    *,
    image: str | None = None,
) -> dict[str, object]:
    """Return a scale-set template for trying the emulator (its network and image are made up).

    The emulator checks the shape of the request, not whether the network or image exist.
    A gallery image stands for one with azmanagers installed; a market image URN
    (``image="Canonical:ubuntu-24_04-lts:server:latest"``) for a stock image, whose VMs
    install azmanagers at boot.
    """
    from azmanagers.config.template_builders import build_sstemplate

    return build_sstemplate(
        name,
        subscriptionid=subscription,
        admin_username="azuser",
        location=location,
        resourcegroup=resource_group,
        vnet="vnet",
        subnet="subnet",
        imagegallery=None if image else "gallery",
        imagename=None if image else "image",
        image=image,
        skuname="Standard_D2s_v3",
    )


def start_emulator(
    *, run_instances: bool = False, token: str | None = None, folder: Path | None = None
) -> Emulator:
    """Start the emulator on free loopback ports.

    Parameters
    ----------
    run_instances
        Run each VM's custom data as a process-VM (with an IMDS of its own); otherwise VMs
        are records only (for counting calls at scale).
    token, folder
        The bearer token (a JWT of the emulator's service principal by default) and where
        to keep the CA and VM folders.
    """
    owned = None if folder is not None else Path(tempfile.mkdtemp(prefix="azm-emulator-"))
    folder = folder if folder is not None else Path(str(owned))
    folder.mkdir(parents=True, exist_ok=True, mode=0o700)
    imds = ImdsServer() if run_instances else None
    runner = ProcessRunner(folder / "vms", imds) if imds is not None else None
    state = ArmState(runner)
    router = build_router(state)
    add_vm_routes(router, state)
    add_network_routes(router, state)
    add_disk_routes(router, state)
    server = EmulatorServer(
        router,
        token=token,
        folder=folder,
        before_route=state.faults.maybe_fail_request,
        admin=build_admin_router(state),
    ).start()
    add_subscription_routes(router, server.sign_in, state)  # before anyone knows the port
    state.call_log = server.calls_since  # the admin route /azmanagers-admin/calls
    server.check_body = check_envelope  # ARM's envelope of every PUT and PATCH
    state.tenant_id = server.sign_in.tenant_id  # shown on managed identities
    if imds is not None and runner is not None:
        imds.issue_token = server.sign_in.managed_identity_token
        runner.arm_environment = {
            "AZMANAGERS_ARM_ENDPOINT": server.base_url,
            "AZMANAGERS_ARM_CA": str(server.ca_file),
        }
    return Emulator(server, state, imds, owned)
