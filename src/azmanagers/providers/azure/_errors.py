"""Azure SDK exceptions mapped to ours, at the seam: nothing of azure.core leaks above it."""

from __future__ import annotations

import contextlib
from collections.abc import Iterator

from azure.core.exceptions import (
    ClientAuthenticationError,
    HttpResponseError,
    ResourceNotFoundError,
    ServiceRequestError,
)

from azmanagers.errors import (
    NotAuthorisedError,
    NotFoundError,
    ProviderError,
    QuotaError,
    ThrottledError,
)

_QUOTA_CODES = {"OperationNotAllowed", "QuotaExceeded", "SkuNotAvailable"}


@contextlib.contextmanager
def mapped(action: str) -> Iterator[None]:
    """Run an SDK call; re-raise its failure as a ProviderError saying what we were doing."""
    try:
        yield
    except ResourceNotFoundError as exc:
        raise NotFoundError(f"{action}: not found ({_detail(exc)}).") from exc
    except ClientAuthenticationError as exc:
        raise NotAuthorisedError(
            f"{action}: Azure refused the credentials ({_detail(exc)}). Run `az login`, or set "
            "a service principal in AZURE_CLIENT_ID / AZURE_TENANT_ID / AZURE_CLIENT_SECRET."
        ) from exc
    except HttpResponseError as exc:
        code = getattr(exc.error, "code", None) if exc.error is not None else None
        if code in _QUOTA_CODES:
            raise QuotaError(f"{action}: {_detail(exc)}") from exc
        if exc.status_code == 429:
            response = getattr(exc, "response", None)
            wait = response.headers.get("Retry-After") if response is not None else None
            after = f" Azure asks to wait {wait} s;" if wait else ""
            raise ThrottledError(
                f"{action}: Azure is throttling requests ({_detail(exc)}).{after} try again "
                "later, or lower the request rate (fewer clusters or a longer "
                "reconcile_interval_s).",
                retry_after_s=_seconds(wait),
            ) from exc
        raise ProviderError(f"{action}: HTTP {exc.status_code} {_detail(exc)}") from exc
    except ServiceRequestError as exc:
        raise ProviderError(f"{action}: cannot reach Azure ({exc}).") from exc


def _detail(exc: HttpResponseError | ClientAuthenticationError) -> str:
    error = getattr(exc, "error", None)
    if error is not None and getattr(error, "code", None):
        return f"{error.code}: {error.message}"
    return str(exc.message or exc).splitlines()[0]


def _seconds(value: str | None) -> float:
    """Return a Retry-After header's delay in seconds (0 when absent or not a number)."""
    try:
        return max(0.0, float(value)) if value else 0.0
    except ValueError:
        return 0.0
