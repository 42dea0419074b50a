"""Instance deletes of one pool, through the throttle gate; a refused delete is sent again."""

from __future__ import annotations

import threading

from azmanagers.cluster.gate import ThrottleGate
from azmanagers.providers.base import Instance, InstanceState, Provider


class Deletes:
    """Deletes instances of ``pool``, remembering those the provider refused.

    The reconciler marks instances it removes, which hides them from ``decide``: were a
    refused delete (a 429, any provider error) forgotten, its instance would run, and bill,
    for good. ``retry`` sends such deletes again once the provider takes calls.
    """

    def __init__(self, provider: Provider, pool: str, gate: ThrottleGate) -> None:
        self.provider = provider
        self.pool = pool
        self.gate = gate
        self._lock = threading.Lock()
        self._refused: set[str] = set()

    async def delete(self, names: list[str]) -> None:
        """Delete these instances (one batched call); raise what the provider raised."""
        with self._lock:
            self._refused.update(names)
        await self.gate.acall(
            "deleting instances", self.provider.delete_instances, self.pool, names
        )
        with self._lock:
            self._refused.difference_update(names)

    async def retry(self, instances: list[Instance]) -> bool:
        """Delete again the refused instances still listed; return whether any were."""
        with self._lock:
            self._refused &= {i.id for i in instances}
            again = sorted(
                i.id
                for i in instances
                if i.id in self._refused and i.state is not InstanceState.DELETING
            )
        if again:
            await self.delete(again)
        return bool(again)
