"""Named clusters on the caller's side: start, attach, resize, exec, setup, ssh, stop.

A named cluster's scheduler and reconciler run on a head VM (``agent/head.py``); the caller
keeps a record in ``state/`` and talks to the head's service. ``wire`` (the head's routes and
records) is also imported by the head, so this package's import is light. May import
``cluster`` (the credentials and settings it hands the head), ``detached`` (the pinned client
and the VM helpers), ``agent`` (what runs on a node for exec, setup and shells, shipped by
Dask), ``providers`` (through its registry and Protocol), ``state``, ``config``, ``tls``,
``errors`` and ``_version``; never ``cli`` or a provider's own modules.
"""

from __future__ import annotations
