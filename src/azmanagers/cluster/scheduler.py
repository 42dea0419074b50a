"""The cluster's Dask scheduler: TLS only, and HTTP (on loopback) only for a dashboard asked for."""

from __future__ import annotations

import contextlib
import ipaddress
import logging
import socket
import warnings
from dataclasses import dataclass
from typing import Any

from distributed.scheduler import Scheduler
from distributed.security import Security

from azmanagers.errors import ConfigError

logger = logging.getLogger("azmanagers.cluster")

MAX_PORT = 65_535
_EVERY_INTERFACE = "0.0.0.0"
_ADDRESS_HINT = (
    "give HOST:PORT with an IPv4 address or host name of this machine, e.g. 127.0.0.1:8787 "
    "(loopback; reach it through an ssh tunnel) or 127.0.0.1:0 for any free port"
)


@dataclass(frozen=True)
class DashboardAddress:
    """Where the dashboard listens: an IPv4 address of this machine and a port (0: any free)."""

    host: str
    port: int

    @property
    def loopback(self) -> bool:
        """Whether only this machine can reach it."""
        return ipaddress.IPv4Address(self.host).is_loopback

    def __str__(self) -> str:
        return f"{self.host}:{self.port}"


def _refuse(address: str, why: str) -> ConfigError:
    return ConfigError(f"dashboard_address {address!r}: {why}; {_ADDRESS_HINT}.")


def parse_dashboard_address(address: str) -> DashboardAddress:
    """Check ``address`` (``HOST:PORT``, ``:PORT``, ``PORT`` or ``HOST``) as Dask binds it.

    An empty host is every interface (``0.0.0.0``) and a bare host any free port, as in
    Dask. A host name is resolved to its IPv4 address here, and the address must belong to
    this machine (a trial bind), so a bad value is a ``ConfigError`` before anything starts,
    not a raw socket error later.
    """
    text = address.strip()
    if "[" in text or text.count(":") > 1:
        raise _refuse(address, "IPv6 addresses are not supported by Dask's dashboard")
    host, colon, port_text = text.rpartition(":")
    if not colon and not port_text.isdigit():  # a bare host, as Dask takes it: any free port
        host, port_text = port_text, "0"
    if not (port_text.isascii() and port_text.isdigit()) or int(port_text) > MAX_PORT:
        raise _refuse(address, f"the port must be from 0 to {MAX_PORT}")
    host = host or _EVERY_INTERFACE
    try:
        ip = str(ipaddress.IPv4Address(host))
    except ValueError:
        try:
            found = socket.getaddrinfo(host, None, family=socket.AF_INET, type=socket.SOCK_STREAM)
        except (OSError, UnicodeError):
            why = f"{host!r} is not a host name or address of this machine"
            raise _refuse(address, why) from None
        ip = str(found[0][4][0])
    try:
        with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as probe:
            probe.bind((ip, 0))
    except OSError as exc:
        why = f"{ip} is not an address of this machine ({exc.strerror})"
        raise _refuse(address, why) from None
    return DashboardAddress(ip, int(port_text))


def warn_if_exposed(bound_host: str, port: int) -> None:
    """Warn (log and ``warnings.warn``) when the dashboard listens beyond loopback."""
    ip = ipaddress.IPv4Address(bound_host)
    if ip.is_loopback:
        return
    where = "every network interface" if ip.is_unspecified else f"the network address {ip}"
    text = (
        f"the Dask dashboard listens on {where} (port {port}) over plain HTTP with no "
        "authentication: anyone who can reach this machine can see your tasks and worker "
        "logs; bind it to 127.0.0.1 (the default) and use an ssh tunnel instead."
    )
    logger.warning(text)
    warnings.warn(text, UserWarning, stacklevel=4)


def dashboard_bound(scheduler: Scheduler) -> tuple[str, int]:
    """The (IPv4 address, port) the scheduler's dashboard is bound to."""
    from distributed.comm.utils import get_tcp_server_addresses

    host, port = get_tcp_server_addresses(scheduler.http_server)[0][:2]
    return str(host), int(port)


def dashboard_link(scheduler: Scheduler) -> str:
    """The URL of ``scheduler``'s dashboard at the address it is bound to.

    A dashboard on every interface (``0.0.0.0``) is linked by this machine's host name.
    """
    from distributed.utils import format_dashboard_link

    host, port = dashboard_bound(scheduler)
    if ipaddress.IPv4Address(host).is_unspecified:
        with contextlib.suppress(OSError):
            host = socket.gethostname()
    return str(format_dashboard_link(host, port))


class TLSOnlyScheduler(Scheduler):
    """A Scheduler that never starts Dask's HTTP server.

    Dask serves ``/json/identity.json``, ``/info/logs/<worker>``, call stacks and Prometheus
    metrics over plain HTTP with no authentication; this scheduler serves nothing but its
    mutual-TLS comm.
    """

    def start_http_server(
        self,
        routes: Any,
        dashboard_address: Any,
        default_port: int = 0,
        ssl_options: Any = None,
    ) -> None:
        """Start nothing: no route of Dask's HTTP server checks who asks."""
        del routes, dashboard_address, default_port, ssl_options

    def identity(self, n_workers: int = -1) -> dict[str, Any]:
        """Dask's identity, under Dask's type name (clients and tools look for it)."""
        info: dict[str, Any] = super().identity(n_workers)
        info["type"] = "Scheduler"
        return info


async def start_scheduler(
    host: str, security: Security, *, dashboard_address: DashboardAddress | None
) -> Scheduler:
    """Start a TLS scheduler on ``host`` (a free port); with a ``dashboard_address``, Dask's
    HTTP server there (loopback by default: reach it through an ssh tunnel), with a warning
    when it listens beyond loopback."""
    scheduler: Scheduler
    if dashboard_address is not None:
        scheduler = await Scheduler(
            host=host,
            port=0,
            protocol="tls",
            security=security,
            dashboard=True,
            dashboard_address=str(dashboard_address),
            validate=False,
        )
        warn_if_exposed(*dashboard_bound(scheduler))
    else:
        scheduler = await TLSOnlyScheduler(
            host=host,
            port=0,
            protocol="tls",
            security=security,
            dashboard=False,
            validate=False,
        )
    return scheduler
