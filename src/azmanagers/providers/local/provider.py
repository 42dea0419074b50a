"""The local provider: instances are process-VMs under AZMANAGERS_HOME/state/local."""

from __future__ import annotations

import contextlib
import shutil
import subprocess
import threading
import time
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

from azmanagers.config.paths import (
    atomic_write_json,
    home,
    read_json,
    state_dir,
)
from azmanagers.errors import ConfigError, NotFoundError, ProviderError
from azmanagers.providers import boot
from azmanagers.providers.base import (
    REGULAR,
    Instance,
    InstanceState,
    OwnedResource,
    Pace,
    PoolSpec,
    Priority,
    UnreadableResource,
    VMInfo,
    VMSpec,
)
from azmanagers.providers.local import _records, procvm
from azmanagers.providers.local.vms import LocalVMs, read_tags
from azmanagers.providers.tags import TAG_CLUSTER, TAG_OWNER, owner_alive

_DELETE_WAIT_S = 30.0


class LocalProvider:
    """Process-VMs on this machine, each running the same boot script an Azure VM gets.

    A pool is a folder ``pools/<name>/`` with ``pool.json`` (tags, capacity) and the boot
    script; an instance is ``pools/<name>/instances/<id>/`` with its boot log. Deleting an
    instance stops its process group (SIGTERM, then SIGKILL) in the background and keeps its
    boot log under ``pools/<name>/logs/``.
    """

    name = "local"
    pace = Pace(steady_s=0.5, after_change_s=0.5, change_window_s=0.0)
    """Listing is a folder scan: the reconciler may look twice a second."""

    def check_reachable(self, host: str) -> None:
        """Process-VMs run on this machine: every address of it is reachable."""

    def __init__(self, root: Path | None = None) -> None:
        self.root = root if root is not None else state_dir() / "local"
        self._lock = threading.RLock()
        self._procs: dict[str, subprocess.Popen[bytes]] = {}
        # Plain threads, not an executor: deletion must also work at interpreter exit,
        # when executors refuse new work.
        self._stopping: dict[str, threading.Thread] = {}
        self.vms = LocalVMs(self.root, caller_home=home().absolute() if root is None else None)

    # -- paths -------------------------------------------------------------------------
    def _pool_dir(self, pool: str) -> Path:
        return self.root / "pools" / pool

    def _instance_dir(self, pool: str, instance_id: str) -> Path:
        return self._pool_dir(pool) / "instances" / instance_id

    def _pool_meta(self, pool: str) -> dict[str, Any]:
        meta = read_json(self._pool_dir(pool) / _records.POOL_FILE)
        if not isinstance(meta, dict):
            raise NotFoundError(
                f"local pool {pool!r} does not exist: create it first, or check its name."
            )
        return meta

    # -- pools -------------------------------------------------------------------------
    def create_pool(self, spec: PoolSpec) -> None:
        """Create the pool folder and its boot script (idempotent)."""
        with self._lock:
            pool_dir = self._pool_dir(spec.name)
            if (pool_dir / _records.POOL_FILE).exists():
                return
            _records.make_pool(pool_dir, spec, boot.render)

    def check_capacity(
        self, template: object, add: int, *, current: int = 0, priority: Priority = REGULAR
    ) -> None:
        """No quota locally beyond the template's max_instances (the cluster checks that)."""
        del template, add, current, priority

    def set_pool_tags(self, pool: str, tags: Mapping[str, str]) -> None:
        """Replace the pool's tags (used to renew ``azmanagers-expires``)."""
        with self._lock:
            meta = self._pool_meta(pool)
            meta["tags"] = dict(tags)
            atomic_write_json(self._pool_dir(pool) / _records.POOL_FILE, meta)

    def scale_pool(self, pool: str, capacity: int) -> None:
        """Start or stop process-VMs until ``capacity`` are live."""
        if capacity < 0:
            raise ProviderError(f"capacity must be >= 0, got {capacity}.")
        with self._lock:
            meta = self._pool_meta(pool)
            if meta.get("deleting"):
                raise ProviderError(f"local pool {pool!r} is being deleted.")
            if capacity > int(meta["max_instances"]):
                raise ProviderError(
                    f"pool {pool!r} is limited to {meta['max_instances']} instances "
                    f"(asked for {capacity}); raise max_instances in its template."
                )
            live = [i for i in self._scan(pool) if i.state is not InstanceState.DELETING]
            if capacity < len(live):
                newest = sorted(live, key=lambda i: i.created_at)[capacity:]
                self.delete_instances(pool, [i.id for i in newest])
                return
            custom_data = (self._pool_dir(pool) / procvm.BOOT_SCRIPT_NAME).read_text()
            for _ in range(capacity - len(live)):
                index = int(meta["next_index"])
                meta["next_index"] = index + 1
                # Persist the index first: a failed start must not make the next try reuse it.
                atomic_write_json(self._pool_dir(pool) / _records.POOL_FILE, meta)
                address = procvm.loopback_address(pool, index)
                self._start_instance(pool, f"{pool}-{index:04d}", custom_data, meta, address)
                meta["capacity"] = int(meta.get("capacity", 0)) + 1
                atomic_write_json(self._pool_dir(pool) / _records.POOL_FILE, meta)

    def _start_instance(
        self, pool: str, instance_id: str, custom_data: str, meta: dict[str, Any], address: str
    ) -> None:
        instance_dir = self._instance_dir(pool, instance_id)
        try:
            instance_dir.mkdir(parents=True, mode=0o700)
        except OSError as exc:
            raise ProviderError(f"cannot create local instance {instance_id}: {exc}") from exc
        env = procvm.instance_environment(
            instance_dir,
            {
                "AZMANAGERS_INSTANCE_ID": instance_id,
                "AZMANAGERS_POOL": pool,
                "AZMANAGERS_AGENT_HOME": str(self.root / "agent"),
                # its own loopback address: the worker listens there (agent.worker)
                "AZMANAGERS_WORKER_HOST": address,
            },
        )
        try:
            proc = procvm.start(instance_dir, custom_data, env)
        except OSError as exc:
            shutil.rmtree(instance_dir, ignore_errors=True)
            raise ProviderError(f"cannot start local instance {instance_id}: {exc}") from exc
        handle = procvm.handle_of(proc)
        self._procs[instance_id] = proc
        atomic_write_json(
            instance_dir / _records.INSTANCE_FILE,
            {
                "id": instance_id,
                "pid": handle.pid,
                "create_time": handle.create_time,
                "created_at": time.time(),
                "deleting": False,
                "tags": meta["tags"],
            },
        )

    # -- instances ---------------------------------------------------------------------
    def list_instances(self, pool: str) -> list[Instance]:
        """Return every instance of the pool (one folder scan)."""
        with self._lock:
            if not (self._pool_dir(pool) / _records.POOL_FILE).exists():
                return []
            return self._scan(pool)

    def _scan(self, pool: str) -> list[Instance]:
        out = []
        instances_dir = self._pool_dir(pool) / "instances"
        for entry in sorted(instances_dir.iterdir()) if instances_dir.exists() else []:
            info = _records.read_instance(entry)
            if info is None:
                continue
            proc = self._procs.get(info["id"])
            if proc is not None:
                proc.poll()
            handle = procvm.ProcessHandle(int(info["pid"]), float(info["create_time"]))
            status = procvm.exit_status(entry)
            if info.get("deleting") or info["id"] in self._stopping:
                state = InstanceState.DELETING
            elif procvm.is_alive(handle):
                state = InstanceState.RUNNING
            elif status == 0:
                state = InstanceState.STOPPED
            else:
                state = InstanceState.FAILED
            out.append(
                Instance(
                    pool=pool,
                    id=info["id"],
                    state=state,
                    created_at=float(info["created_at"]),
                    exit_status=status,
                    tags=info.get("tags", {}),
                )
            )
        return out

    def delete_instances(self, pool: str, instance_ids: Sequence[str]) -> None:
        """Mark the instances deleting and stop them in the background."""
        with self._lock:
            meta = self._pool_meta(pool)
            removed = 0
            for instance_id in instance_ids:
                instance_dir = self._instance_dir(pool, instance_id)
                info = _records.read_instance(instance_dir)
                if info is None or info.get("deleting"):
                    continue
                info["deleting"] = True
                atomic_write_json(instance_dir / _records.INSTANCE_FILE, info)
                removed += 1
                handle = procvm.ProcessHandle(int(info["pid"]), float(info["create_time"]))
                thread = threading.Thread(
                    target=self._stop_instance,
                    args=(pool, instance_id, handle),
                    name=f"azm-stop-{instance_id}",
                    daemon=True,
                )
                self._stopping[instance_id] = thread
                thread.start()
            meta["capacity"] = max(0, int(meta["capacity"]) - removed)
            atomic_write_json(self._pool_dir(pool) / _records.POOL_FILE, meta)

    def _stop_instance(self, pool: str, instance_id: str, handle: procvm.ProcessHandle) -> None:
        proc = self._procs.pop(instance_id, None)
        instance_dir = self._instance_dir(pool, instance_id)
        try:
            procvm.stop(handle, proc, instance_dir=instance_dir)
            log = instance_dir / procvm.BOOT_LOG_NAME
            with contextlib.suppress(OSError):
                shutil.move(str(log), str(self._pool_dir(pool) / "logs" / f"{instance_id}.log"))
            shutil.rmtree(instance_dir, ignore_errors=True)
        finally:
            self._stopping.pop(instance_id, None)

    def wait_deleted(self, timeout_s: float = _DELETE_WAIT_S) -> None:
        """Wait (bounded) for background deletions to finish."""
        deadline = time.monotonic() + timeout_s
        for thread in list(self._stopping.values()):
            if thread is not threading.current_thread():
                thread.join(timeout=max(0.0, deadline - time.monotonic()))

    def delete_pool(self, pool: str, *, wait: bool = True) -> None:
        """Stop every instance of the pool and remove its folder.

        An instance whose record cannot be read still has its processes stopped (found by
        their ``AZMANAGERS_INSTANCE_DIR``); its record and the pool folder are then kept and
        ``ProviderError`` names the record, once every other instance was deleted.
        """
        pool_dir = self._pool_dir(pool)
        if not (pool_dir / _records.POOL_FILE).exists():
            return
        with self._lock:  # mark, list and delete under one lock: no start slips in between
            meta = self._pool_meta(pool)
            meta["deleting"] = True
            atomic_write_json(pool_dir / _records.POOL_FILE, meta)
            readable, unreadable = _records.instance_records(self._pool_dir(pool))
            self.delete_instances(pool, [str(info["id"]) for info in readable])
            for record in unreadable:
                self._stop_unreadable(record.folder)

        key = f"pool:{pool}"

        def finish() -> None:
            try:
                self.wait_deleted()
                if not unreadable:
                    shutil.rmtree(pool_dir, ignore_errors=True)
            finally:
                self._stopping.pop(key, None)

        if wait:
            finish()
        else:
            thread = threading.Thread(target=finish, name=f"azm-delete-{pool}", daemon=True)
            self._stopping[key] = thread
            thread.start()
        if unreadable:
            done = "were stopped" if wait else "are being stopped"
            raise ProviderError(
                f"local pool {pool!r} was not wholly deleted: "
                + "; ".join(f"{r.path} cannot be read ({r.reason})" for r in unreadable)
                + f". Its processes (found by their {procvm.MARKER}) {done} and the pool's "
                f"other instances deleted; {pool_dir} was kept with what could not be read: "
                "look at it, then remove that folder."
            )

    def _stop_unreadable(self, folder: Path) -> None:
        """Stop, in the background, the processes marked with an unreadable instance's folder."""
        key = f"unreadable:{folder}"

        def run() -> None:
            try:
                procvm.stop(None, instance_dir=folder)
            finally:
                self._stopping.pop(key, None)

        thread = threading.Thread(target=run, name=f"azm-stop-{folder.name}", daemon=True)
        self._stopping[key] = thread
        thread.start()

    def instance_log(self, pool: str, instance_id: str, *, tail_bytes: int = 4096) -> str:
        """Return the end of the instance's boot log (also after it was deleted)."""
        live = self._instance_dir(pool, instance_id) / procvm.BOOT_LOG_NAME
        kept = self._pool_dir(pool) / "logs" / f"{instance_id}.log"
        return procvm.tail(live if live.exists() else kept, tail_bytes)

    # -- stand-alone VMs ---------------------------------------------------------------
    def create_vm(self, spec: VMSpec) -> VMInfo:
        """Start a process-VM running the VM's boot script; return it (address 127.0.0.1)."""
        return self.vms.create(spec)

    def get_vm(self, name: str) -> VMInfo | None:
        """Return the VM with its state, or None when it does not exist."""
        return self.vms.get(name)

    def delete_vm(self, name: str) -> None:
        """Stop the VM's processes (its jobs too) and remove its folder."""
        self.vms.delete(name)

    # -- ownership -----------------------------------------------------------------------
    def vm_log(self, name: str, *, tail_bytes: int = 4096) -> str:
        """Return the end of a process-VM's boot log."""
        return self.vms.boot_log(name, tail_bytes)

    def _records(self) -> list[tuple[str, str, Path]]:
        """(kind, name, record file) of every pool and VM folder that has a record."""
        pools_dir = self.root / "pools"
        pools = sorted(pools_dir.iterdir()) if pools_dir.is_dir() else []
        found = [
            ("pool", p.name, p / _records.POOL_FILE)
            for p in pools
            if not p.name.startswith(".")
            and (p / _records.POOL_FILE).exists()  # not one being made
        ]
        return found + [("vm", name, path) for name, path in self.vms.records()]

    def list_owned_resources(self, *, cluster: str | None = None) -> list[OwnedResource]:
        """Return our pools and VMs found by their tags (exact match on the cluster tag).

        A record that cannot be read is left out (``list_unreadable_resources`` has it).
        """
        out = []
        for kind, name, path in self._records():
            try:
                tags = read_tags(path)
            except ConfigError:
                continue
            if tags is None or TAG_CLUSTER not in tags or TAG_OWNER not in tags:
                continue
            if cluster is None or tags[TAG_CLUSTER] == cluster:
                out.append(OwnedResource(kind, name, tags, owner_alive(tags[TAG_OWNER])))
        return out

    def list_unreadable_resources(self) -> list[UnreadableResource]:
        """Return each ``pool.json`` or ``vm.json`` that cannot be read, and why.

        An instance record (``instance.json``) of a pool that cannot be read is listed too:
        deleting its pool stops its processes by their marker but keeps the record.
        """
        out = []
        for kind, name, path in self._records():
            try:
                read_tags(path)
            except ConfigError as exc:
                out.append(UnreadableResource(path=str(path), reason=str(exc)))
                continue
            for record in (
                _records.instance_records(self._pool_dir(name))[1] if kind == "pool" else []
            ):
                reason = (
                    f"{record.reason} Deleting pool {name!r} stops this instance's processes "
                    f"(found by their {procvm.MARKER}) and keeps {record.folder}: look at "
                    f"it, then remove {record.folder.parent.parent}."
                )
                out.append(UnreadableResource(path=record.path, reason=reason))
        return out

    def delete_owned_resource(self, resource: OwnedResource) -> None:
        """Delete a pool or VM found by ``list_owned_resources``."""
        if resource.kind == "vm":
            self.delete_vm(resource.name)
        else:
            self.delete_pool(resource.name, wait=True)
