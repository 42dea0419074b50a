"""Signing in to the emulator: its Entra ID tenant, service principal and test-double JWTs."""

from __future__ import annotations

import hmac
import secrets
import time
import uuid
from dataclasses import dataclass, field
from typing import Any

from azmanagers.emulator.instances import VMIdentity
from azmanagers.emulator.server import ArmError, Request, Response, Router
from azmanagers.emulator.tokens import (
    CLOCK_SKEW_S,
    PUBLIC_ARM_AUDIENCES,
    TOKEN_LIFETIME_S,
    TokenIssuer,
    managed_identity_ids,
)


@dataclass(frozen=True)
class ServicePrincipal:
    """The emulator's one app registration: what ``az login --service-principal`` takes."""

    client_id: str
    client_secret: str = field(repr=False)
    tenant_id: str
    object_id: str
    """The service principal's object id: the ``oid`` of its tokens."""


class SignIn:
    """The emulator's Entra ID tenant: one service principal, one subscription, their tokens.

    Parameters
    ----------
    base_url
        The emulator's URL: login endpoint, token issuer and ARM audience at once.
    """

    def __init__(self, base_url: str) -> None:
        self.base_url = base_url
        self.tenant_id = str(uuid.uuid4())
        self.subscription_id = str(uuid.uuid4())
        """The subscription listed to whoever signs in (with every one that holds a group)."""
        self.service_principal = ServicePrincipal(
            client_id=str(uuid.uuid4()),
            client_secret=secrets.token_urlsafe(30),
            tenant_id=self.tenant_id,
            object_id=str(uuid.uuid4()),
        )
        self.tokens = TokenIssuer(f"{base_url}/{self.tenant_id}/")
        self.audiences = {a.rstrip("/").lower() for a in (base_url, *PUBLIC_ARM_AUDIENCES)}

    def app_token(self, audience: str, lifetime_s: int = TOKEN_LIFETIME_S) -> tuple[str, int]:
        """Return a token of the service principal for ``audience``, and its expiry."""
        sp = self.service_principal
        return self.tokens.issue(
            {
                "aud": audience,
                "appid": sp.client_id,
                "appidacr": "1",
                "idp": self.tokens.issuer,
                "idtyp": "app",
                "oid": sp.object_id,
                "sub": sp.object_id,
                "tid": self.tenant_id,
                "ver": "1.0",
            },
            lifetime_s,
        )

    def managed_identity_token(self, vm: VMIdentity, resource: str) -> dict[str, Any]:
        """Return IMDS's answer for a VM's system-assigned identity: a token whose ``oid`` is
        the identity's principal id (see ``managed_identity_ids``)."""
        principal, client = managed_identity_ids(vm.vm_id)
        kind = "virtualMachineScaleSets" if vm.scaleset else "virtualMachines"
        token, expires = self.tokens.issue(
            {
                "aud": resource,
                "appid": client,
                "appidacr": "2",
                "idp": self.tokens.issuer,
                "idtyp": "app",
                "oid": principal,
                "sub": principal,
                "tid": self.tenant_id,
                "ver": "1.0",
                "xms_mirid": f"/subscriptions/{vm.subscription}/resourcegroups/"
                f"{vm.resource_group}/providers/Microsoft.Compute/{kind}/"
                f"{vm.scaleset or vm.name}",
            },
            TOKEN_LIFETIME_S,
        )
        now = int(time.time())
        return {
            "access_token": token,
            "client_id": client,
            "expires_in": str(expires - now),
            "expires_on": str(expires),
            "ext_expires_in": str(expires - now),
            "not_before": str(now),
            "resource": resource,
            "token_type": "Bearer",
        }

    def authenticate(self, authorization: str, fixed_token: str) -> None:
        """Accept ``Bearer <token>`` for ARM if it is ``fixed_token`` or a token this tenant
        issued for an ARM audience that has not expired; else raise ARM's 401."""
        scheme, _, token = authorization.partition(" ")
        if scheme.lower() != "bearer" or not token:
            raise self._refused("AuthenticationFailed", "The 'Authorization' header is missing.")
        if hmac.compare_digest(token.encode(), fixed_token.encode()):
            return
        claims = self.tokens.claims(token)
        if claims is None:
            raise self._refused("InvalidAuthenticationToken", "The access token is invalid.")
        now = time.time()
        if float(claims.get("exp", 0)) + CLOCK_SKEW_S < now:
            raise self._refused(
                "ExpiredAuthenticationToken",
                f"The access token expiry UTC time '{_utc(float(claims.get('exp', 0)))}' is "
                f"earlier than current UTC time '{_utc(now)}'.",
            )
        if float(claims.get("nbf", 0)) - CLOCK_SKEW_S > now:
            raise self._refused("InvalidAuthenticationToken", "The access token is not yet valid.")
        audience = str(claims.get("aud", ""))
        if audience.rstrip("/").lower() not in self.audiences:
            raise self._refused(
                "InvalidAuthenticationTokenAudience",
                f"The access token has been obtained for wrong audience or resource "
                f"'{audience}'. It should exactly match with one of the allowed audiences "
                f"'{self.base_url}/', 'https://management.azure.com/'.",
            )

    def _refused(self, code: str, message: str) -> ArmError:
        challenge = (
            f'Bearer authorization_uri="{self.base_url}/{self.tenant_id}", '
            f'error="invalid_token", error_description="{message}"'
        )
        return ArmError(401, code, message, {"WWW-Authenticate": challenge})


def _utc(epoch: float) -> str:
    return time.strftime("%m/%d/%Y %H:%M:%S", time.gmtime(epoch))


def _aad_error(req: Request, status: int, error: str, code: int, text: str) -> Response:
    """Entra ID's error body: ``error``, ``error_description`` (AADSTS code first) and more."""
    trace, correlation = str(uuid.uuid4()), str(uuid.uuid4())
    stamp = time.strftime("%Y-%m-%d %H:%M:%SZ", time.gmtime())
    return Response(
        status,
        {
            "error": error,
            "error_description": f"AADSTS{code}: {text} Trace ID: {trace} "
            f"Correlation ID: {correlation} Timestamp: {stamp}",
            "error_codes": [code],
            "timestamp": stamp,
            "trace_id": trace,
            "correlation_id": correlation,
            "error_uri": f"{req.base_url}/error?code={code}",
        },
    )


def _unknown_tenant(req: Request, tenant: str) -> Response:
    return _aad_error(
        req,
        400,
        "invalid_tenant",
        90002,
        f"Tenant '{tenant}' not found. Check to make sure you have the correct tenant ID and are "
        "signing into the correct cloud.",
    )


def cloud_metadata(base_url: str, api_version: str) -> Any:
    """What ARM's ``/metadata/endpoints`` says, pointing at the emulator: a cloud object from
    2022-09-01, a list of clouds from 2019-05-01, the legacy shape before."""
    own = f"{base_url}/"
    if api_version < "2019-05-01":
        return {
            "galleryEndpoint": "",
            "graphEndpoint": own,
            "portalEndpoint": "",
            "authentication": {"loginEndpoint": own, "audiences": [own]},
        }
    cloud = {
        "name": "AzureEmulator",
        "resourceManager": own,
        "authentication": {
            "loginEndpoint": own,
            "audiences": [own],
            "tenant": "common",
            "identityProvider": "AAD",
        },
        "graph": own,
        "graphAudience": own,
        "microsoftGraphResourceId": own,
        "suffixes": {},
    }
    return cloud if api_version >= "2022-09-01" else [cloud]


def add_sign_in_routes(router: Router, sign_in: SignIn) -> None:
    """Register what Azure serves without a token: ARM's metadata endpoints, and Entra ID's
    tenant discovery, instance discovery, keys and client-credentials token endpoints."""
    tenant_path = r"/(?P<tenant>[^/]+)"

    def known(tenant: str, *, aliases: bool) -> bool:
        names = {sign_in.tenant_id, "common", "organizations"} if aliases else {sign_in.tenant_id}
        return tenant.lower() in names

    def metadata(req: Request) -> Response:
        return Response(200, cloud_metadata(req.base_url, req.query.get("api-version", "")))

    def openid_configuration(req: Request) -> Response:
        tenant = req.match["tenant"]
        if not known(tenant, aliases=True):
            return _unknown_tenant(req, tenant)
        shown = sign_in.tenant_id if tenant.lower() == sign_in.tenant_id else "{tenantid}"
        v2 = "/v2.0" if "/v2.0/" in req.path else ""
        oauth = f"{req.base_url}/{tenant}/oauth2{v2}"
        return Response(
            200,
            {
                "issuer": f"{req.base_url}/{shown}{v2 or '/'}",
                "token_endpoint": f"{oauth}/token",
                "authorization_endpoint": f"{oauth}/authorize",
                "device_authorization_endpoint": f"{oauth}/devicecode",
                "jwks_uri": f"{req.base_url}/{tenant}/discovery{v2}/keys",
                "token_endpoint_auth_methods_supported": ["client_secret_post"],
                "response_types_supported": ["token"],
                "grant_types_supported": ["client_credentials"],
                "id_token_signing_alg_values_supported": ["HS256"],
                "subject_types_supported": ["pairwise"],
                "scopes_supported": ["openid", "profile", "email", "offline_access"],
                "tenant_region_scope": "NA",
                "cloud_instance_name": "azmanagers-emulator",
            },
        )

    def keys(req: Request) -> Response:
        del req
        return Response(200, {"keys": []})  # HMAC-signed: no public key to publish

    def instance_discovery(req: Request) -> Response:
        endpoint = req.query.get("authorization_endpoint", "")
        tenant = endpoint.removeprefix(req.base_url).strip("/").split("/")[0] or "common"
        host = req.base_url.removeprefix("https://")
        return Response(
            200,
            {
                "tenant_discovery_endpoint": f"{req.base_url}/{tenant}/v2.0/.well-known/"
                "openid-configuration",
                "api-version": "1.1",
                "metadata": [
                    {"preferred_network": host, "preferred_cache": host, "aliases": [host]}
                ],
            },
        )

    def token(req: Request) -> Response:
        tenant, form = req.match["tenant"], req.body if isinstance(req.body, dict) else {}
        if not known(tenant, aliases=False):
            return _unknown_tenant(req, tenant)
        refused = _refuse_client(req, sign_in, form)
        if refused is not None:
            return refused
        v2 = "/v2.0/" in req.path
        resource = _requested_resource(form, v2)
        if isinstance(resource, tuple):
            return _aad_error(req, 400, *resource)
        if resource.rstrip("/").lower() not in sign_in.audiences:
            return _aad_error(
                req,
                400,
                "invalid_resource",
                500011,
                f"The resource principal named {resource} was not found in the tenant named "
                f"{tenant}.",
            )
        access, expires = sign_in.app_token(resource)
        lifetime = expires - int(time.time())
        reply: dict[str, Any] = {
            "token_type": "Bearer",
            "expires_in": lifetime,
            "ext_expires_in": lifetime,
            "access_token": access,
        }
        if not v2:  # the v1 endpoint: strings, and the resource
            reply.update(
                expires_in=str(lifetime),
                ext_expires_in=str(lifetime),
                expires_on=str(expires),
                not_before=str(expires - lifetime),
                resource=resource,
            )
        return Response(200, reply)

    router.add("GET", r"/metadata/endpoints", metadata)
    for version in (r"/v2\.0", ""):
        router.add(
            "GET",
            tenant_path + version + r"/\.well-known/openid-configuration",
            openid_configuration,
        )
        router.add("GET", tenant_path + r"/discovery" + version + r"/keys", keys)
        router.add("POST", tenant_path + r"/oauth2" + version + r"/token", token)
    router.add("GET", r"/common/discovery/instance", instance_discovery)


def _refuse_client(req: Request, sign_in: SignIn, form: dict[str, str]) -> Response | None:
    """Entra ID's answer to a wrong grant, client id or secret; None when all are right."""
    sp = sign_in.service_principal
    if form.get("grant_type") != "client_credentials":
        return _aad_error(
            req,
            400,
            "unsupported_grant_type",
            70003,
            f"The app requested an unsupported grant type '{form.get('grant_type', '')}'.",
        )
    client_id = form.get("client_id", "")
    if client_id.lower() != sp.client_id:
        return _aad_error(
            req,
            400,
            "unauthorized_client",
            700016,
            f"Application with identifier '{client_id}' was not found in the directory "
            f"'{sp.tenant_id}'.",
        )
    secret = form.get("client_secret", "")
    if not secret:
        return _aad_error(
            req,
            401,
            "invalid_client",
            7000216,
            "'client_assertion', 'client_secret' or 'request' is required for the "
            "'client_credentials' grant type.",
        )
    if not hmac.compare_digest(secret.encode(), sp.client_secret.encode()):
        return _aad_error(
            req,
            401,
            "invalid_client",
            7000215,
            "Invalid client secret provided. Ensure the secret being sent in the request is the "
            f"client secret value, not the client secret ID, for a secret added to app "
            f"'{sp.client_id}'.",
        )
    return None


def _requested_resource(form: dict[str, str], v2: bool) -> str | tuple[str, int, str]:
    """The resource a token is asked for (v2: ``scope`` ``<resource>/.default``; v1:
    ``resource``), or Entra ID's (error, code, text)."""
    if not v2:
        resource = form.get("resource", "")
        if resource:
            return resource
        return (
            "invalid_request",
            900144,
            "The request body must contain the following parameter: 'resource'.",
        )
    reserved = {"openid", "profile", "offline_access", "email"}
    scopes = [s for s in form.get("scope", "").split() if s not in reserved]
    if not scopes:
        return (
            "invalid_request",
            90014,
            "The required field 'scope' is missing from the credential.",
        )
    if len(scopes) != 1 or not scopes[0].endswith("/.default"):
        return (
            "invalid_scope",
            1002012,
            f"The provided value for scope {' '.join(scopes)} is not valid. Client credential "
            "flows must have a scope value with /.default suffixed to the resource identifier "
            "(application ID URI).",
        )
    return scopes[0].removesuffix("/.default")
