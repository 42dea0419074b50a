"""Multi-node models: ``MpiModel`` (a run across N nodes), ``MasterWorker`` (master + workers)."""

from __future__ import annotations

import os
import re
import shlex
import warnings
from collections.abc import Iterable, Iterator, Mapping
from contextlib import contextmanager
from contextvars import ContextVar
from typing import TYPE_CHECKING, TypedDict, cast

from azmanagers.batch.checks import (
    check_coordination,
    check_duration,
    check_library,
    check_whole,
    unknown_key,
)
from azmanagers.batch.model import Model, Output, Package
from azmanagers.errors import ConfigError

if TYPE_CHECKING:
    from azmanagers.batch.sweep import RunSpec, Sweep

MPI_LIBRARIES = ("mpich", "openmpi")
MAX_NODES = 1000
"""The most nodes one MPI run may take."""
MAX_WORKERS = 1000
"""The most worker runs one master may have."""
MAX_RANKS_PER_NODE = 100_000
DEFAULT_NODE_WAIT = "10m"
"""How long a gang's members wait for the driver's next word (and for free nodes)."""
DEFAULT_PORT_WAIT = "2m"
"""How long worker runs wait for the master's port to accept connections."""
MASTER_VARIABLES = ("AZM_MASTER_HOST", "AZ_BATCH_MASTER_NODE")
"""The variables giving worker runs the master's address; a worker should use one of them."""
MPIEXEC = re.compile(r"(?:^|[;&|(`\n]|\bexec|\btime)\s*(?:\S*/)?mpi(?:exec|run)(?:\s|$)")
"""A command matching this starts MPI itself; any other runs as ``mpiexec -n ... COMMAND``."""
MPI_KEYS = (
    "nodes",
    "ranks_per_node",
    "coordination",
    "library",
    "oversubscribe",
    "node_wait",
    "wrap",
)
MASTER_WORKER_KEYS = ("worker", "workers", "port", "port_wait")

_QUIET: ContextVar[bool] = ContextVar("azm_multinode_quiet", default=False)


def launches_mpi(command: str) -> bool:
    """Whether ``command`` calls ``mpiexec``/``mpirun`` itself (else the primary wraps it)."""
    return MPIEXEC.search(command) is not None


class _Fields(TypedDict):
    """A model's keyword arguments (besides its name), to make another model like it."""

    command: str
    inputs: tuple[str, ...]
    shared: tuple[str, ...]
    packages: tuple[Package, ...]
    env: dict[str, str]
    outputs: tuple[Output, ...]
    retries: int
    timeout: float | None


class MpiModel(Model):
    """A model whose every run spans ``nodes`` whole workers and runs under MPI.

    Each run reserves ``nodes`` idle workers at once; inputs, shared inputs and packages go
    to every node (the run folder has the same path on each), the overlay to the primary.
    ``coordination`` runs on every node first; then ``command`` runs on the primary with
    ``AZM_HOST_LIST``, ``AZM_HOSTFILE``, ``AZM_NODES``, ``AZM_RANKS_PER_NODE``, ``AZM_RANKS``
    and ``mpiexec`` set up to launch on the other nodes through the azmanagers agents (no
    sshd). A command that does not mention ``mpiexec``/``mpirun`` runs as
    ``mpiexec -n $AZM_RANKS -ppn $AZM_RANKS_PER_NODE COMMAND``.

    Parameters
    ----------
    name, command, inputs, shared, packages, env, outputs, retries, timeout
        As for ``Model``.
    nodes
        Whole workers per run, 1 to ``MAX_NODES``.
    ranks_per_node
        MPI ranks started on each node (at most its cores unless ``oversubscribe``).
    coordination
        A bash command run on every node before the main command (``{NAME}`` substituted as in
        the command); all must succeed.
    mpi
        ``"mpich"`` (tested) or ``"openmpi"``.
    oversubscribe
        Allow more ranks per node than it has cores.
    node_wait
        How long to wait for ``nodes`` free workers.
    wrap
        Run the command under ``mpiexec -n RANKS -ppn RANKS_PER_NODE``: None (default) when
        it does not start one itself (``mpiexec``/``mpirun`` as a command of its own), True
        always, False never (a script that calls mpiexec inside).
    """

    __slots__ = (
        "coordination",
        "library",
        "node_wait_s",
        "nodes",
        "oversubscribe",
        "ranks_per_node",
        "wrap",
    )
    nodes: int
    ranks_per_node: int
    coordination: str | None
    library: str
    oversubscribe: bool
    node_wait_s: float
    wrap: bool | None

    def __init__(
        self,
        name: str,
        *,
        command: str,
        nodes: int,
        ranks_per_node: int = 1,
        coordination: str | None = None,
        mpi: str = "mpich",
        oversubscribe: bool = False,
        node_wait: str | float = DEFAULT_NODE_WAIT,
        wrap: bool | None = None,
        inputs: Iterable[str | os.PathLike[str]] = (),
        shared: Iterable[str | os.PathLike[str]] = (),
        packages: Iterable[Package] = (),
        env: Mapping[str, str | int | float] | None = None,
        outputs: Iterable[Output | str] = (),
        retries: int = 0,
        timeout: str | float | None = None,
    ) -> None:
        super().__init__(
            name,
            command=command,
            inputs=inputs,
            shared=shared,
            packages=packages,
            env=env,
            outputs=outputs,
            retries=retries,
            timeout=timeout,
        )
        set_ = object.__setattr__
        where = f"MpiModel {name!r}"
        set_(self, "nodes", check_whole(nodes, f"{where}: nodes", 1, MAX_NODES, "nodes per run"))
        set_(
            self,
            "ranks_per_node",
            check_whole(ranks_per_node, f"{where}: ranks_per_node", 1, MAX_RANKS_PER_NODE, "ranks"),
        )
        set_(self, "coordination", check_coordination(coordination, where))
        set_(self, "library", check_library(mpi, where, MPI_LIBRARIES))
        if not isinstance(oversubscribe, bool):
            raise ConfigError(
                f"{where}: oversubscribe must be true or false, got {oversubscribe!r}."
            )
        set_(self, "oversubscribe", oversubscribe)
        set_(self, "node_wait_s", check_duration(node_wait, f"{where}: node_wait"))
        if wrap is not None and not isinstance(wrap, bool):
            raise ConfigError(f"{where}: wrap must be true, false or null, got {wrap!r}.")
        set_(self, "wrap", wrap)

    def __repr__(self) -> str:
        inner = super().__repr__().removeprefix("Model(").removesuffix(")")
        return (
            f"MpiModel({inner}, nodes={self.nodes}, ranks_per_node={self.ranks_per_node}, "
            f"coordination={self.coordination!r}, mpi={self.library!r}, "
            f"oversubscribe={self.oversubscribe}, node_wait_s={self.node_wait_s}, "
            f"wrap={self.wrap})"
        )

    def wraps(self, command: str) -> bool:
        """Whether run command ``command`` goes under ``mpiexec`` (see ``wrap``)."""
        return not launches_mpi(command) if self.wrap is None else self.wrap

    @property
    def ranks(self) -> int:
        """Ranks per run: ``nodes`` x ``ranks_per_node``."""
        return self.nodes * self.ranks_per_node

    def coordination_for(self, spec: RunSpec) -> str | None:
        """The coordination command of run ``spec``, its ``{NAME}`` substituted (shell-quoted)
        from the run's parameters and env, exactly like the command."""
        if self.coordination is None:
            return None
        from azmanagers.batch.sweep import substitute

        quoted = {k: shlex.quote(v) for k, v in spec.env.items()}
        return substitute(self.coordination, quoted, where=f"coordination of run {spec.run_id}")

    def to_dict(self) -> dict[str, object]:
        """``Model.to_dict()`` and ``"mpi"``: nodes, ranks, coordination, library, ..."""
        return {
            **super().to_dict(),
            "mpi": {
                "nodes": self.nodes,
                "ranks_per_node": self.ranks_per_node,
                "coordination": self.coordination,
                "library": self.library,
                "oversubscribe": self.oversubscribe,
                "node_wait": self.node_wait_s,
                **({} if self.wrap is None else {"wrap": self.wrap}),
            },
        }

    @classmethod
    def from_dict(cls, data: Mapping[str, object]) -> MpiModel:
        """Rebuild an MPI model from ``to_dict()``'s form (checked again)."""
        if not isinstance(data, Mapping):
            raise ConfigError(f"a model must be a mapping, got {type(data).__name__}.")
        base = Model.from_dict({k: v for k, v in data.items() if k != "mpi"})
        mpi = data.get("mpi")
        if not isinstance(mpi, Mapping):
            raise ConfigError(
                f"model {base.name!r}: mpi must be a mapping such as {{nodes: 4, "
                f"ranks_per_node: 2}}, got {mpi!r}."
            )
        for key in mpi:
            if key not in MPI_KEYS:
                unknown_key(key, MPI_KEYS, where=f"the mpi of model {base.name!r}")
        if "nodes" not in mpi:
            raise ConfigError(f"model {base.name!r}: mpi has no nodes; give how many (e.g. 4).")
        coordination = mpi.get("coordination")
        return cls(
            base.name,
            **_model_fields(base),
            nodes=cast("int", mpi["nodes"]),
            ranks_per_node=cast("int", mpi.get("ranks_per_node", 1)),
            coordination=cast("str | None", coordination),
            mpi=cast("str", mpi.get("library", "mpich")),
            oversubscribe=cast("bool", mpi.get("oversubscribe", False)),
            node_wait=cast("str | float", mpi.get("node_wait", DEFAULT_NODE_WAIT)),
            wrap=cast("bool | None", mpi.get("wrap")),
        )


class MasterWorker(Model):
    """A master run and ``workers`` worker runs started as soon as the master's process is.

    Its ``Model`` fields are the master's (its sweep's runs are the master's runs); each master
    run gets ``workers`` runs of ``worker`` with the same parameters, started with
    ``AZM_MASTER_HOST``, ``AZM_MASTER_PORT`` and ``AZ_BATCH_MASTER_NODE`` (``host:port``) set.
    The master's exit code is the run's; its workers are then stopped.

    Parameters
    ----------
    master, worker
        Plain ``batch.Model`` objects (not MPI models); the worker's inputs, shared inputs and
        packages are staged with the master's.
    workers
        Worker runs per master run, 1 to ``MAX_WORKERS``.
    port
        The master's port (``AZM_MASTER_PORT``); None: none.
    port_wait
        With ``port``: workers start once the port accepts connections, waiting this long at
        most; None: they start at once.
    """

    __slots__ = ("_master", "port", "port_wait_s", "worker", "workers")
    _master: Model
    worker: Model
    workers: int
    port: int | None
    port_wait_s: float | None

    def __init__(
        self,
        master: Model,
        worker: Model,
        *,
        workers: int,
        port: int | None = None,
        port_wait: str | float | None = DEFAULT_PORT_WAIT,
    ) -> None:
        for role, model in (("master", master), ("worker", worker)):
            if type(model) is not Model:
                raise ConfigError(
                    f"MasterWorker {role} must be a plain batch.Model, got "
                    f"{type(model).__name__} {getattr(model, 'name', model)!r}; describe the "
                    f"{role} with batch.Model(name, command=...)."
                )
        super().__init__(master.name, **_model_fields(master))
        set_ = object.__setattr__
        where = f"MasterWorker {master.name!r}"
        set_(self, "_master", master)
        set_(self, "worker", worker)
        set_(self, "workers", check_whole(workers, f"{where}: workers", 1, MAX_WORKERS, "workers"))
        if port is not None and (
            isinstance(port, bool) or not isinstance(port, int) or not 1 <= port <= 65535
        ):
            raise ConfigError(
                f"{where}: port {port!r} is not a TCP port; give a whole number from 1 to 65535 "
                "(the port the master listens on), or leave it out."
            )
        set_(self, "port", port)
        set_(
            self,
            "port_wait_s",
            None if port_wait is None else check_duration(port_wait, f"{where}: port_wait"),
        )
        if not _QUIET.get():
            _warn_unless_addressed(worker)

    @property
    def master(self) -> Model:
        """The master as a plain ``Model``."""
        return self._master

    def __repr__(self) -> str:
        return (
            f"MasterWorker(master={self.master!r}, worker={self.worker!r}, "
            f"workers={self.workers}, port={self.port}, port_wait_s={self.port_wait_s})"
        )

    def worker_sweep(self, sweep: Sweep) -> Sweep:
        """The worker's runs for a sweep of this model: same parameters and overlays."""
        from azmanagers.batch.sweep import Sweep

        try:
            return Sweep(self.worker, sweep.params, sweep.overlays)
        except ConfigError as exc:
            raise ConfigError(f"worker {self.worker.name!r}: {exc}") from None

    def to_dict(self) -> dict[str, object]:
        """The master's ``to_dict()`` and ``worker``, ``workers``, ``port``, ``port_wait``."""
        return {
            **super().to_dict(),
            "worker": self.worker.to_dict(),
            "workers": self.workers,
            "port": self.port,
            "port_wait": self.port_wait_s,
        }

    @classmethod
    def from_dict(cls, data: Mapping[str, object]) -> MasterWorker:
        """Rebuild from ``to_dict()``'s form (checked again, without the address warning)."""
        if not isinstance(data, Mapping):
            raise ConfigError(f"a model must be a mapping, got {type(data).__name__}.")
        master = Model.from_dict({k: v for k, v in data.items() if k not in MASTER_WORKER_KEYS})
        worker = data.get("worker")
        if not isinstance(worker, Mapping):
            raise ConfigError(
                f"model {master.name!r}: worker must be a model mapping (name, command, ...), "
                f"got {worker!r}."
            )
        if "workers" not in data:
            raise ConfigError(f"model {master.name!r} has a worker but no workers count; give one.")
        with quiet():
            return cls(
                master,
                Model.from_dict(worker),
                workers=cast("int", data["workers"]),
                port=cast("int | None", data.get("port")),
                port_wait=cast("str | float | None", data.get("port_wait")),
            )


def multinode_from_dict(data: Mapping[str, object]) -> Model:
    """``Model.from_dict`` for a mapping with ``mpi`` or ``worker``: the right class."""
    if "mpi" in data and "worker" in data:
        raise ConfigError(
            f"model {data.get('name')!r} has both mpi and worker; a model is an MPI model or a "
            "master/worker pair, not both: remove one."
        )
    if "mpi" in data:
        return MpiModel.from_dict(data)
    return MasterWorker.from_dict(data)


@contextmanager
def quiet() -> Iterator[None]:
    """No worker-address warning inside: for rebuilding models already warned about."""
    token = _QUIET.set(True)
    try:
        yield
    finally:
        _QUIET.reset(token)


def _warn_unless_addressed(worker: Model) -> None:
    texts = [worker.command, *worker.env.values()]
    if any(name in text for text in texts for name in MASTER_VARIABLES):
        return
    warnings.warn(
        f"worker {worker.name!r}: its command ({worker.command!r}) and env mention neither "
        f"{' nor '.join('$' + v for v in MASTER_VARIABLES)}, so its runs may not find the "
        "master; use the address in its command, e.g. $AZM_MASTER_HOST:$AZM_MASTER_PORT.",
        UserWarning,
        stacklevel=3,
    )


def _model_fields(model: Model) -> _Fields:
    return {
        "command": model.command,
        "inputs": model.inputs,
        "shared": model.shared,
        "packages": model.packages,
        "env": dict(model.env),
        "outputs": model.outputs,
        "retries": model.retries,
        "timeout": model.timeout_s,
    }
