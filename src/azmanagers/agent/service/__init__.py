"""The detached service that runs ON a VM: app (HTTPS routes), jobs, procs, store, run, schema.

``app`` serves the routes of ``azmanagers.detached.wire`` over TLS with a bearer token checked
from the headers before any body is read; ``jobs`` starts and watches each job's process and
``procs`` finds and stops all of a job's processes; ``store`` keeps the records in SQLite;
``run`` is the one-job process; ``schema`` the OpenAPI document. Like all of ``agent/``, it
imports only what a VM needs: ``detached.wire`` (the wire format it shares with the client),
``providers`` (a VM deleting itself), ``config.paths``, ``errors`` and ``_version``; never
``cluster``, ``cli`` or ``detached.api``.
"""
