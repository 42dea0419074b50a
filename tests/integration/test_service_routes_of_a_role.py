"""A role's own routes on the agent's HTTPS service (what a head node adds): the same token
check before any body, the same JSON errors, and the role's objects in the app settings."""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import threading
from collections.abc import Iterator
from pathlib import Path

import pytest

from azmanagers.agent.service.app import config_from_payload, serve
from azmanagers.agent.service.jobs import JobService
from azmanagers.agent.service.routes import Handler, make_app
from azmanagers.detached import wire
from azmanagers.detached.client import ServiceAddress, ServiceClient
from azmanagers.errors import AzManagersError
from tests.detached_fixtures import service_payload

pytestmark = pytest.mark.integration
STATUS = wire.Route(("GET",), "/v1/test-role/status")


class _Status(Handler):
    def get(self) -> None:
        self.send_json({"role": self.settings["role"], "ok": True})


@pytest.fixture
def role_service(tmp_path: Path) -> Iterator[ServiceAddress]:
    payload, address = service_payload("role-vm")
    config = config_from_payload(payload, tmp_path / "state")
    loop = asyncio.new_event_loop()
    ready: asyncio.Future[int] = loop.create_future()

    async def run() -> None:
        with contextlib.suppress(asyncio.CancelledError):  # the fixture's stop
            await serve(config, ready, extra_routes=[(STATUS, _Status)], settings={"role": "head"})

    task = loop.create_task(run())
    thread = threading.Thread(target=loop.run_until_complete, args=(task,), daemon=True)
    thread.start()
    port = asyncio.run_coroutine_threadsafe(asyncio.wait_for(ready, 30), loop).result(40)
    try:
        yield dataclasses.replace(address, port=port)
    finally:
        loop.call_soon_threadsafe(task.cancel)
        thread.join(30)
        loop.close()


def test_a_role_route_answers_with_its_settings_and_wants_the_token(
    role_service: ServiceAddress,
) -> None:
    client = ServiceClient(role_service)
    try:
        assert client.request("GET", STATUS.path()) == {"role": "head", "ok": True}
        assert client.request("GET", wire.PING.path())  # the service's own routes stay
    finally:
        client.close()
    stranger = ServiceClient(
        ServiceAddress(
            role_service.name,
            role_service.host,
            role_service.port,
            role_service.cert,
            role_service.fingerprint,
            "not-the-token",
        )
    )
    try:
        with pytest.raises(AzManagersError, match=r"401|token"):
            stranger.request("GET", STATUS.path())
        with pytest.raises(AzManagersError, match=r"405|takes GET"):
            ServiceClient(role_service).request("POST", STATUS.path(), body={"x": 1})
    finally:
        stranger.close()


def test_a_role_may_not_take_a_route_or_a_setting_of_the_service(tmp_path: Path) -> None:
    config = config_from_payload(service_payload("role-vm")[0], tmp_path / "state")
    service = JobService(config)
    try:
        with pytest.raises(ValueError, match="served twice"):
            make_app(service, extra_routes=[(wire.PING, _Status)])
        with pytest.raises(ValueError, match="may not replace"):
            make_app(service, settings={"gate": None})
    finally:
        service.close()
