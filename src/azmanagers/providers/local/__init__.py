"""The local provider: process-VMs on this machine, under ``AZMANAGERS_HOME/state/local``.

What lives here (the same file names as ``providers/azure``): ``provider.py`` (pools: a folder
of process-VMs, owned resources), ``vms.py`` (stand-alone VMs: detached VMs, head nodes) and
``procvm.py`` (the process-VM runtime: a boot script run in its own folder and process group);
``_records.py`` (private: the pool and instance records on disk, made whole or not at all).
What it may import: ``azmanagers.config``, ``azmanagers.errors``, ``azmanagers._version`` and
``providers.base``, ``providers.tags``, ``providers.boot``; never ``cluster``, ``detached``,
``cli`` or ``agent``. Code outside ``providers/`` reaches it through the registry.
"""
