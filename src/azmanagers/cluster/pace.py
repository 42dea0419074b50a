"""How often a reconciler lists its pool: the provider's pace, or the user's interval."""

from __future__ import annotations

import logging

from azmanagers.providers.base import Pace, Provider

logger = logging.getLogger("azmanagers.cluster")

SECONDS_PER_HOUR = 3600.0


def reconcile_pace(provider: Provider, interval_s: float | None, name: str) -> Pace:
    """Return the pace of listing ``provider``'s pool for the cluster ``name``.

    Parameters
    ----------
    provider
        Its ``pace`` is used when ``interval_s`` is None.
    interval_s
        The user's ``reconcile_interval_s``: a fixed interval. One shorter than the
        provider's steady pace is logged once, with the lists an hour it makes.
    name
        The cluster's name, for the warning.
    """
    if interval_s is None:
        return provider.pace
    if interval_s < provider.pace.steady_s:
        logger.warning(
            "cluster %s: reconcile_interval_s=%g lists the pool more often than the %s "
            "provider's steady pace of %g s: %.0f lists an hour (on Azure each is an ARM read, "
            "from the subscription's hourly read budget); leave it unset unless you need it",
            name,
            interval_s,
            provider.name,
            provider.pace.steady_s,
            SECONDS_PER_HOUR / interval_s,
        )
    return Pace(interval_s, interval_s, 0.0)
