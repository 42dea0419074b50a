"""ARM's subscription and tenant lists, what ``az login`` reads once it holds a token."""

from __future__ import annotations

from typing import Any

from azmanagers.emulator.identity import SignIn
from azmanagers.emulator.scalesets import ArmState
from azmanagers.emulator.server import ArmError, Request, Response, Router

DISPLAY_NAME = "Azure emulator (azmanagers)"
TENANT_DOMAIN = "azmemulator.onmicrosoft.com"


def subscription_document(sign_in: SignIn, subscription_id: str) -> dict[str, Any]:
    """A subscription as ``Subscriptions - List`` shows it."""
    return {
        "id": f"/subscriptions/{subscription_id}",
        "authorizationSource": "RoleBased",
        "managedByTenants": [],
        "subscriptionId": subscription_id,
        "tenantId": sign_in.tenant_id,
        "displayName": DISPLAY_NAME,
        "state": "Enabled",
        "subscriptionPolicies": {
            "locationPlacementId": "Public_2014-09-01",
            "quotaId": "PayAsYouGo_2014-09-01",
            "spendingLimit": "Off",
        },
    }


def known_subscriptions(sign_in: SignIn, state: ArmState) -> list[str]:
    """The emulator's own subscription first, then every other one that holds a group (ARM
    paths take any subscription id; the signed-in principal may use them all)."""
    with state.lock:
        used = sorted({sub for sub, _ in state.groups} - {sign_in.subscription_id.lower()})
    return [sign_in.subscription_id, *used]


def add_subscription_routes(router: Router, sign_in: SignIn, state: ArmState) -> None:
    """Register ``GET /subscriptions``, ``GET /subscriptions/{id}`` and ``GET /tenants``."""

    def list_subscriptions(req: Request) -> Response:
        del req
        subs = [subscription_document(sign_in, s) for s in known_subscriptions(sign_in, state)]
        return Response(200, {"value": subs, "count": {"type": "Total", "value": len(subs)}})

    def get_subscription(req: Request) -> Response:
        wanted = req.match["sub"].lower()
        for sub in known_subscriptions(sign_in, state):
            if sub.lower() == wanted:
                return Response(200, subscription_document(sign_in, sub))
        missing = req.match["sub"]
        raise ArmError(
            404, "SubscriptionNotFound", f"The subscription '{missing}' could not be found."
        )

    def list_tenants(req: Request) -> Response:
        del req
        tenant = {
            "id": f"/tenants/{sign_in.tenant_id}",
            "tenantId": sign_in.tenant_id,
            "tenantCategory": "Home",
            "countryCode": "US",
            "displayName": DISPLAY_NAME,
            "domains": [TENANT_DOMAIN],
            "defaultDomain": TENANT_DOMAIN,
            "tenantType": "AAD",
        }
        return Response(200, {"value": [tenant]})

    router.add("GET", r"/subscriptions", list_subscriptions)
    router.add("GET", r"/subscriptions/(?P<sub>[^/]+)", get_subscription)
    router.add("GET", r"/tenants", list_tenants)
