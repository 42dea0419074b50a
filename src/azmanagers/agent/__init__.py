"""The agent that runs ON an instance: ``python -m azmanagers.agent worker --payload FILE``.

It holds the Dask worker's start-up (``worker``), the detached service (``service/``), log
forwarding, custom environments and IMDS reads. It imports only what a VM needs: ``errors``,
``_version``, ``tls``, ``config``, ``providers`` (the registry and ``boot``) and the wire
records of ``detached.wire``; never ``cluster``, ``cli`` or the caller's detached API.
"""

LOG_TOPIC = "azmanagers-log"
"""The Dask event topic that carries worker log records to the caller."""

EXIT_SCHEDULER_UNREACHABLE = 3
"""Exit status when the scheduler could not be reached within the death timeout."""
EXIT_BAD_PAYLOAD = 4
"""Exit status when the boot payload cannot be read."""
EXIT_ENV_FAILED = 5
"""Exit status when the custom environment could not be built."""
