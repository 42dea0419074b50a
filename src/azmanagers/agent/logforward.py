"""Forward a worker's log records to the caller: a Dask worker plugin and its logging handler."""

from __future__ import annotations

import logging
import threading
from typing import Any

from distributed.diagnostics.plugin import WorkerPlugin

from azmanagers.agent import LOG_TOPIC

_QUIET_PREFIXES = ("distributed", "tornado", "asyncio")


class ForwardingHandler(logging.Handler):
    """Sends log records to the scheduler as ``azmanagers-log`` events, tagged with the worker."""

    def __init__(self, worker: Any, level: int) -> None:
        super().__init__(level)
        self.worker = worker
        self._busy = threading.local()

    def emit(self, record: logging.LogRecord) -> None:
        """Queue the record on the worker's event loop (thread-safe, never re-entrant)."""
        if getattr(self._busy, "on", False):
            return
        if record.name.startswith(_QUIET_PREFIXES) and record.levelno < logging.WARNING:
            return
        self._busy.on = True
        try:
            msg = {
                "instance": str(self.worker.name),
                "name": record.name,
                "levelno": record.levelno,
                "msg": record.getMessage(),
                "created": record.created,
            }
            loop = self.worker.loop
            if loop is not None:
                loop.add_callback(self.worker.log_event, LOG_TOPIC, msg)
        except Exception:  # a log handler must never raise into user code
            self.handleError(record)
        finally:
            self._busy.on = False


class LogForwardPlugin(WorkerPlugin):
    """Installs a ``ForwardingHandler`` on the worker's root logger (also after restarts)."""

    name = "azmanagers-log-forward"
    idempotent = True

    def __init__(self, level: int = logging.INFO) -> None:
        self.level = level
        self._handler: ForwardingHandler | None = None

    def setup(self, worker: Any) -> None:
        """Attach the handler and let records at ``level`` through the root logger."""
        self._handler = ForwardingHandler(worker, self.level)
        root = logging.getLogger()
        root.addHandler(self._handler)
        if root.level > self.level or root.level == logging.NOTSET:
            root.setLevel(self.level)

    def teardown(self, worker: Any) -> None:
        """Detach the handler."""
        del worker
        if self._handler is not None:
            logging.getLogger().removeHandler(self._handler)
            self._handler = None
