"""The cluster's Dask scheduler: TLS only, and HTTP (on loopback) only for a dashboard asked for."""

from __future__ import annotations

from typing import Any

from distributed.scheduler import Scheduler
from distributed.security import Security


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
    host: str, security: Security, *, dashboard: bool, dashboard_address: str
) -> Scheduler:
    """Start a TLS scheduler on ``host`` (a free port); with ``dashboard``, Dask's HTTP server
    on ``dashboard_address`` (loopback by default: reach it through an ssh tunnel)."""
    scheduler: Scheduler
    if dashboard:
        scheduler = await Scheduler(
            host=host,
            port=0,
            protocol="tls",
            security=security,
            dashboard=True,
            dashboard_address=dashboard_address,
            validate=False,
        )
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
