"""The azure provider: VM scale sets and VMs through the official Azure SDKs.

What lives here (the same file names as ``providers/local``): ``provider.py`` (pools: scale
sets, quota, owned resources), ``vms.py`` (stand-alone VMs and their NICs), ``flexible.py``
(regular/spot mixes), ``_clients.py`` (SDK clients and the ARM settings), ``_errors.py``
(Azure errors mapped to ``azmanagers.errors``: nothing of ``azure.core`` leaves this folder),
``_credential.py``. What it may import: the Azure SDKs, ``azmanagers.config``,
``azmanagers.errors``, ``azmanagers._version`` and ``providers.base``, ``providers.tags``,
``providers.boot``; never ``cluster``, ``detached``, ``cli`` or ``agent``.
"""
