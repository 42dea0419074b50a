"""Signing in to the emulator: metadata without a token, JWTs, the token endpoint, IMDS tokens."""

from __future__ import annotations

import base64
import json
import ssl
import urllib.error
import urllib.parse
import urllib.request
import uuid
from collections.abc import Iterator
from typing import Any

import pytest
from azure.core.exceptions import ClientAuthenticationError
from azure.identity import ClientSecretCredential
from azure.mgmt.resource.resources import ResourceManagementClient

from azmanagers.emulator import Emulator, start_emulator
from azmanagers.emulator.instances import VMIdentity
from azmanagers.emulator.tokens import managed_identity_ids

OTHER_SUB = "00000000-0000-0000-0000-0000000000c1"


@pytest.fixture(scope="module")
def emu() -> Iterator[Emulator]:
    emulator = start_emulator(run_instances=True)
    yield emulator
    emulator.stop()


def call(
    emu: Emulator,
    method: str,
    path: str,
    *,
    token: str | None = None,
    form: dict[str, str] | None = None,
) -> tuple[int, dict[str, str], Any]:
    """One raw HTTPS request: (status, headers, JSON body or None)."""
    data = urllib.parse.urlencode(form).encode() if form is not None else None
    request = urllib.request.Request(emu.server.base_url + path, data=data, method=method)
    if token is not None:
        request.add_header("Authorization", f"Bearer {token}")
    context = ssl.create_default_context(cafile=str(emu.server.ca_file))
    try:
        with urllib.request.urlopen(request, context=context, timeout=10) as reply:
            status, headers, raw = reply.status, dict(reply.headers), reply.read()
    except urllib.error.HTTPError as err:
        status, headers, raw = err.code, dict(err.headers), err.read()
    return status, headers, json.loads(raw) if raw else None


def claims_of(token: str) -> dict[str, Any]:
    payload = token.split(".")[1]
    decoded: dict[str, Any] = json.loads(
        base64.urlsafe_b64decode(payload + "=" * (-len(payload) % 4))
    )
    return decoded


def token_form(emu: Emulator, **changes: str) -> dict[str, str]:
    sp = emu.service_principal
    form = {
        "grant_type": "client_credentials",
        "client_id": sp.client_id,
        "client_secret": sp.client_secret,
        "scope": f"{emu.server.base_url}//.default",
    }
    return {**form, **changes}


def test_metadata_endpoints_answer_without_a_token_and_point_at_the_emulator(emu: Emulator) -> None:
    own = emu.server.base_url + "/"
    status, _, cloud = call(emu, "GET", "/metadata/endpoints?api-version=2022-09-01")
    assert status == 200
    assert cloud["resourceManager"] == own
    assert cloud["authentication"]["loginEndpoint"] == own
    assert cloud["authentication"]["audiences"] == [own]
    status, _, clouds = call(emu, "GET", "/metadata/endpoints?api-version=2019-05-01")
    assert status == 200 and [c["resourceManager"] for c in clouds] == [own]
    # ARM itself still wants a token, and says how to get one
    status, headers, body = call(emu, "GET", "/subscriptions?api-version=2022-12-01")
    assert status == 401 and body["error"]["code"] == "AuthenticationFailed"
    assert f"{emu.server.base_url}/{emu.service_principal.tenant_id}" in headers["WWW-Authenticate"]


def test_instance_and_tenant_discovery_lead_to_the_token_endpoint(emu: Emulator) -> None:
    tenant = emu.service_principal.tenant_id
    authorize = urllib.parse.quote(f"{emu.server.base_url}/{tenant}/oauth2/v2.0/authorize")
    status, _, found = call(
        emu, "GET", f"/common/discovery/instance?api-version=1.1&authorization_endpoint={authorize}"
    )
    discovery = found["tenant_discovery_endpoint"]
    assert status == 200 and discovery.startswith(emu.server.base_url + "/")
    status, _, config = call(emu, "GET", discovery.removeprefix(emu.server.base_url))
    assert status == 200 and config["issuer"] == f"{emu.server.base_url}/{tenant}/v2.0"
    assert config["token_endpoint"] == f"{emu.server.base_url}/{tenant}/oauth2/v2.0/token"
    status, _, keys = call(emu, "GET", config["jwks_uri"].removeprefix(emu.server.base_url))
    assert (status, keys) == (200, {"keys": []})  # HMAC-signed test doubles: no public key


def test_the_emulators_own_token_is_a_jwt_of_its_service_principal(emu: Emulator) -> None:
    claims = claims_of(emu.server.token)
    sp = emu.service_principal
    assert claims["tid"] == sp.tenant_id and claims["oid"] == sp.object_id
    assert claims["appid"] == sp.client_id and claims["aud"] == emu.server.base_url + "/"
    assert claims["iat"] <= claims["nbf"] < claims["exp"]
    assert sp.client_secret not in repr(sp)


def test_an_sdk_signs_in_with_the_service_principal_and_arm_accepts_the_token(
    emu: Emulator,
) -> None:
    sp = emu.service_principal
    credential = ClientSecretCredential(
        sp.tenant_id,
        sp.client_id,
        sp.client_secret,
        authority=emu.server.base_url,
        disable_instance_discovery=True,  # msal would ask login.microsoftonline.com otherwise
        connection_verify=str(emu.server.ca_file),
    )
    token = credential.get_token(f"{emu.server.base_url}//.default").token
    claims = claims_of(token)
    assert (claims["tid"], claims["oid"], claims["appid"]) == (
        sp.tenant_id,
        sp.object_id,
        sp.client_id,
    )
    assert claims["aud"] == emu.server.base_url + "/"
    # the SDK's default scope (management.azure.com) works against the emulator too
    resources = ResourceManagementClient(
        credential,
        OTHER_SUB,
        base_url=emu.server.base_url,
        connection_verify=str(emu.server.ca_file),
    )
    resources.resource_groups.create_or_update("signed-in", {"location": "westeurope"})
    assert "signed-in" in [g.name for g in resources.resource_groups.list()]
    status, _, subs = call(emu, "GET", "/subscriptions?api-version=2022-12-01", token=token)
    listed = [s["subscriptionId"] for s in subs["value"]]
    assert status == 200 and listed == [emu.server.sign_in.subscription_id, OTHER_SUB]
    assert {s["tenantId"] for s in subs["value"]} == {sp.tenant_id}


def test_a_wrong_secret_is_refused_as_entra_id_refuses_it(emu: Emulator) -> None:
    tenant = emu.service_principal.tenant_id
    path = f"/{tenant}/oauth2/v2.0/token"
    status, _, body = call(emu, "POST", path, form=token_form(emu, client_secret="wrong"))
    assert status == 401 and body["error"] == "invalid_client"
    assert body["error_codes"] == [7000215]
    assert body["error_description"].startswith("AADSTS7000215:")
    assert "wrong" not in json.dumps(body)
    sp = emu.service_principal
    credential = ClientSecretCredential(
        tenant,
        sp.client_id,
        "not-the-secret",
        authority=emu.server.base_url,
        disable_instance_discovery=True,
        connection_verify=str(emu.server.ca_file),
    )
    with pytest.raises(ClientAuthenticationError, match="AADSTS7000215"):
        credential.get_token(f"{emu.server.base_url}//.default")


@pytest.mark.parametrize(
    ("changes", "status", "error", "code"),
    [
        ({"client_id": str(uuid.UUID(int=7))}, 400, "unauthorized_client", 700016),
        ({"grant_type": "password"}, 400, "unsupported_grant_type", 70003),
        ({"scope": "https://graph.microsoft.com/.default"}, 400, "invalid_resource", 500011),
        (
            {"scope": "https://management.azure.com/user_impersonation"},
            400,
            "invalid_scope",
            1002012,
        ),
    ],
)
def test_the_token_endpoint_refuses_what_entra_id_refuses(
    emu: Emulator, changes: dict[str, str], status: int, error: str, code: int
) -> None:
    path = f"/{emu.service_principal.tenant_id}/oauth2/v2.0/token"
    got, _, body = call(emu, "POST", path, form=token_form(emu, **changes))
    assert (got, body["error"], body["error_codes"]) == (status, error, [code])
    unknown = str(uuid.UUID(int=9))
    got, _, body = call(emu, "GET", f"/{unknown}/v2.0/.well-known/openid-configuration")
    assert (got, body["error"], body["error_codes"]) == (400, "invalid_tenant", [90002])


def test_the_v1_token_endpoint_takes_a_resource(emu: Emulator) -> None:
    path = f"/{emu.service_principal.tenant_id}/oauth2/token"
    form = token_form(emu, resource="https://management.core.windows.net/")
    del form["scope"]
    status, _, body = call(emu, "POST", path, form=form)
    assert status == 200 and body["token_type"] == "Bearer"
    assert body["resource"] == "https://management.core.windows.net/"
    assert int(body["expires_on"]) - int(body["not_before"]) == int(body["expires_in"])
    status, _, _ = call(emu, "GET", "/tenants?api-version=2022-12-01", token=body["access_token"])
    assert status == 200


def test_forged_expired_and_foreign_tokens_are_refused(emu: Emulator) -> None:
    path = "/subscriptions?api-version=2022-12-01"
    header, _, signature = emu.server.token.split(".")
    claims = claims_of(emu.server.token)
    claims["oid"] = str(uuid.UUID(int=1))
    forged_payload = base64.urlsafe_b64encode(json.dumps(claims).encode()).rstrip(b"=").decode()
    forged = f"{header}.{forged_payload}.{signature}"
    expired, _ = emu.server.sign_in.app_token(emu.server.base_url + "/", lifetime_s=-3600)
    foreign, _ = emu.server.sign_in.app_token("https://graph.microsoft.com/")
    expected = {
        forged: "InvalidAuthenticationToken",
        "not-a-jwt": "InvalidAuthenticationToken",
        expired: "ExpiredAuthenticationToken",
        foreign: "InvalidAuthenticationTokenAudience",
    }
    for token, code in expected.items():
        status, _, body = call(emu, "GET", path, token=token)
        assert (status, body["error"]["code"]) == (401, code)


def imds_token(endpoint: str, resource: str | None) -> tuple[int, dict[str, Any]]:
    query = "" if resource is None else "&resource=" + urllib.parse.quote(resource, safe="")
    request = urllib.request.Request(
        f"{endpoint}/metadata/identity/oauth2/token?api-version=2018-02-01{query}",
        headers={"Metadata": "true"},
    )
    try:
        with urllib.request.urlopen(request, timeout=10) as reply:
            return reply.status, json.loads(reply.read())
    except urllib.error.HTTPError as err:
        return err.code, json.loads(err.read())


def test_imds_gives_a_vm_a_jwt_of_its_own_identity(emu: Emulator) -> None:
    assert emu.imds is not None
    vm = VMIdentity("idvm", str(uuid.uuid4()), OTHER_SUB, "rg", "", "westeurope")
    vm.managed_identity = True
    endpoint = emu.imds.register(vm)
    status, body = imds_token(endpoint, "https://management.azure.com/")
    assert status == 200 and body["token_type"] == "Bearer" and int(body["expires_in"]) > 0
    claims = claims_of(body["access_token"])
    principal, client = managed_identity_ids(vm.vm_id)
    assert (claims["oid"], claims["appid"], claims["tid"]) == (
        principal,
        client,
        emu.service_principal.tenant_id,
    )
    assert claims["xms_mirid"].endswith("/providers/Microsoft.Compute/virtualMachines/idvm")
    assert claims["aud"] == "https://management.azure.com/"
    status, _, _ = call(emu, "GET", "/tenants?api-version=2022-12-01", token=body["access_token"])
    assert status == 200
    status, body = imds_token(endpoint, None)
    assert status == 400 and body["error"] == "invalid_request"
    vm.managed_identity = False
    status, body = imds_token(endpoint, "https://management.azure.com/")
    assert status == 400 and body["error_description"] == "Identity not found"


def test_head_says_whether_a_group_exists(emu: Emulator) -> None:
    token = emu.server.token
    group = f"/subscriptions/{OTHER_SUB}/resourcegroups/headrg?api-version=2022-09-01"
    assert call(emu, "HEAD", group, token=token)[0] == 404
    body = json.dumps({"location": "westeurope"}).encode()
    request = urllib.request.Request(
        emu.server.base_url + group,
        data=body,
        method="PUT",
        headers={"Authorization": f"Bearer {token}", "Content-Type": "application/json"},
    )
    context = ssl.create_default_context(cafile=str(emu.server.ca_file))
    with urllib.request.urlopen(request, context=context, timeout=10) as reply:
        assert reply.status in (200, 201)
    assert call(emu, "HEAD", group, token=token)[0] == 204
