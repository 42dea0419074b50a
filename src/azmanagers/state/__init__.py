"""Caller-side state: typed records in versioned JSON (records.py) and their kinds (vms.py,
clusters.py).

A record is a frozen dataclass with ``name``, ``status`` and ``updated_at``; a store keeps
one kind of record in ``AZMANAGERS_HOME/state/<kind>/<name>.json``, adding ``kind`` and
``schema_version``, written atomically with mode 0600 and never pickled, so another process
(or a newer version) can read it. A record of an older schema is upgraded as it is read;
one of a newer schema is refused with a ConfigError that says to upgrade. A record is read
only from the file of its own name: a copy (``victim-backup.json`` naming ``victim``) is
refused with an error naming the file. A record others may read or write (not 0600: someone
copied it, or an old version wrote it) is made 0600 as it is read, with a warning logged: it
may hold a token, and refusing it would strand the VM it records. ``create`` reserves a name
atomically (no two processes both create ``x``), and ``delete(name, only=...)`` lets a call
clean up its own record only, never one another call wrote since. Detached VMs live
here (kind ``detached``), and named clusters (kind ``clusters``, with the cluster name
rule). The cloud's tags are the truth: a record is a cache of them.

May import only ``azmanagers.config.paths`` and ``azmanagers.errors``: feature packages
(detached/, cluster/, ...) import state/, never the other way round.
"""
