"""The detached service that runs ON a VM: app, gate, routes, jobs, procs, store, run, schema.

``app`` is the service's process (TLS listener, job polling); ``gate`` bounds its connections
(at most 256, each closed unless it sends a valid token within 10 s); ``routes`` serves the
routes of ``azmanagers.detached.wire`` with the bearer token checked from the headers before
any body is read, and before the method (only the schema's GET is open); ``jobs`` starts
and watches each job's process and ``procs`` finds and stops all of a job's processes (a
finished job's leftovers too); ``store`` keeps the records in SQLite; ``run`` is the one-job
process; ``schema`` the OpenAPI document. Like all of ``agent/``, it
imports only what a VM needs: ``detached.wire`` (the wire format it shares with the client),
``providers`` (a VM deleting itself), ``config.paths``, ``errors`` and ``_version``; never
``cluster``, ``cli`` or ``detached.api``.
"""
