"""The agent that runs ON an instance: ``python -m azmanagers.agent worker|detached|head``.

It holds the Dask worker's start-up (``worker``), the detached service (``service/``), a
named cluster's head (``head``, ``head_routes``), commands, setup and shells on a node
(``nodeexec``, ``shell``), log forwarding, custom environments and IMDS reads. It imports only
what a VM needs: ``errors``, ``_version``, ``tls``, ``config``, ``providers`` (the registry and
``boot``) and the wire records of ``detached.wire``; never ``cli`` or the caller's detached
API. Only the head imports ``cluster`` (it runs the scheduler and reconciler) and
``named.wire``.
"""

LOG_TOPIC = "azmanagers-log"
"""The Dask event topic that carries worker log records to the caller."""

EXIT_SCHEDULER_UNREACHABLE = 3
"""Exit status when the scheduler could not be reached within the death timeout."""
EXIT_BAD_PAYLOAD = 4
"""Exit status when the boot payload cannot be read."""
EXIT_ENV_FAILED = 5
"""Exit status when the custom environment could not be built."""
EXIT_SETUP_FAILED = 6
"""The cluster's setup script failed on this node (its output is in the boot log)."""
