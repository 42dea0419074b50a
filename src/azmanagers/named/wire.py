"""The head's routes and the records they carry, shared by the caller and the head."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import asdict, dataclass, field
from typing import Any

from azmanagers.detached.wire import API_PREFIX, Route, WireError

HEAD_STATUS = Route(("GET",), f"{API_PREFIX}/head/status")
"""The cluster as the head sees it: a ``HeadStatus`` (``?boot_log=1``: with the boot log of a
node that has not joined, one provider call)."""
HEAD_RESIZE = Route(("POST",), f"{API_PREFIX}/head/resize")
"""Body ``{"nodes": N}`` or ``{"add": K}`` (K may be negative); answers a ``HeadStatus``."""
HEAD_STOP = Route(("POST",), f"{API_PREFIX}/head/stop")
"""Delete the workers' pool, then stop the head's process; answers ``{"pool_deleted": bool}``."""
HEAD_SHELL = Route(("POST",), f"{API_PREFIX}/head/shell")
"""Body ``{"command": [words] | null, "rows": R, "cols": C, "tty": B}``: a one-shot shell on
the head (``agent/shell.py``); answers ``{"host": H, "port": P}`` to connect to with the
client's TLS."""
HEAD_EXEC = Route(("POST",), f"{API_PREFIX}/head/exec")
"""Body ``{"command": TEXT, "node": NAME | null, "timeout_s": S, "env": {...}}``: the command
run by bash on every node (or one) through its worker; answers ``{"results": [NodeResult]}``."""
HEAD_SETUP = Route(("POST",), f"{API_PREFIX}/head/setup")
"""Body ``{"only_new": bool}``: the cluster's setup script again on every node; answers
``{"results": [NodeResult]}``."""
HEAD_ROUTES = (HEAD_STATUS, HEAD_RESIZE, HEAD_STOP, HEAD_SHELL, HEAD_EXEC, HEAD_SETUP)
EXEC_TIMEOUT_S = 3600.0
"""The longest a command may run on a node by default (then its process group is killed)."""


@dataclass(frozen=True)
class ExecRequest:
    """A command for the nodes."""

    command: str
    node: str | None = None
    timeout_s: float = EXEC_TIMEOUT_S
    env: Mapping[str, str] = field(default_factory=dict)

    def to_json(self) -> dict[str, Any]:
        """The request as JSON-ready data."""
        return {**asdict(self), "env": dict(self.env)}

    @classmethod
    def from_json(cls, value: object) -> ExecRequest:
        """Parse an exec request; WireError saying what is wrong when it is not one."""
        if not isinstance(value, dict) or set(value) - {"command", "node", "timeout_s", "env"}:
            raise WireError('an exec takes {"command": TEXT, "node", "timeout_s", "env"}')
        command, node = value.get("command"), value.get("node")
        timeout_s, env = value.get("timeout_s", EXEC_TIMEOUT_S), value.get("env") or {}
        if not isinstance(command, str) or not command.strip():
            raise WireError("an exec's command is bash text, not empty")
        if len(command.encode()) > MAX_SHELL_COMMAND_BYTES:
            raise WireError("an exec's command is at most 128 KiB: ship a script as a file")
        if node is not None and not isinstance(node, str):
            raise WireError("an exec's node is a node's name or null")
        if (
            not isinstance(timeout_s, (int, float))
            or isinstance(timeout_s, bool)
            or not 0 < timeout_s <= 7 * 24 * 3600
        ):
            raise WireError("an exec's timeout_s is a number of seconds, at most a week")
        if not isinstance(env, dict) or not all(
            isinstance(k, str) and isinstance(v, str) for k, v in env.items()
        ):
            raise WireError("an exec's env maps names to text")
        return cls(command, node, float(timeout_s), env)


MAX_SHELL_COMMAND_BYTES = 128 * 1024


@dataclass(frozen=True)
class ShellRequest:
    """What a shell is started with."""

    command: tuple[str, ...] | None
    rows: int = 24
    cols: int = 80
    tty: bool = True
    """On a pty (the caller has a terminal); else on pipes, its bytes as they are."""

    def to_json(self) -> dict[str, Any]:
        """The request as JSON-ready data."""
        return {
            "command": None if self.command is None else list(self.command),
            "rows": self.rows,
            "cols": self.cols,
            "tty": self.tty,
        }

    @classmethod
    def from_json(cls, value: object) -> ShellRequest:
        """Parse a shell request; WireError saying what is wrong when it is not one."""
        if not isinstance(value, dict) or set(value) - {"command", "rows", "cols", "tty"}:
            raise WireError(
                'a shell takes {"command": [words] or null, "rows": R, "cols": C, "tty": bool}'
            )
        tty = value.get("tty", True)
        if not isinstance(tty, bool):
            raise WireError("a shell's tty is true or false")
        command = value.get("command")
        if command is not None and (
            not isinstance(command, list)
            or not command
            or not all(isinstance(w, str) for w in command)
            or sum(len(w.encode()) for w in command) > MAX_SHELL_COMMAND_BYTES
        ):
            raise WireError("a shell's command is a non-empty list of words (at most 128 KiB)")
        sizes = [value.get("rows", 24), value.get("cols", 80)]
        if not all(isinstance(n, int) and not isinstance(n, bool) and 0 < n < 65536 for n in sizes):
            raise WireError("a shell's rows and cols are whole numbers from 1 to 65535")
        return cls(None if command is None else tuple(command), sizes[0], sizes[1], tty)


NODE_STATES = ("creating", "running", "joined", "failed", "stopped", "leaving")


@dataclass(frozen=True)
class NodeStatus:
    """One node of the workers' pool as the head sees it."""

    name: str
    state: str
    """``joined`` (its worker is in the scheduler) or the provider's state of the instance."""
    address: str = ""
    joined_at: float = 0.0
    """When its worker first joined (epoch seconds; 0: not yet)."""


@dataclass(frozen=True)
class HeadStatus:
    """What the head reports: its scheduler, the pool's target and every node."""

    name: str
    scheduler: str
    pool: str
    target: int
    max_nodes: int
    started_at: float
    nodes: tuple[NodeStatus, ...] = ()
    failures: tuple[str, ...] = ()
    """One line per node that failed (its name and why), newest last."""
    failure_log: str = ""
    """The end of the boot log of the node that failed last (empty: none failed)."""
    waiting_log: str = ""
    """With ``?boot_log=1``: the end of the boot log of a node that has not joined."""
    error: str = ""
    """Why the head cannot go on (a budget spent, a pool the cloud refused), else empty."""
    clients: int = 0
    tasks: int = 0
    idle_s: float = 0.0
    """Seconds since the cluster last had a client, a task or a running job."""
    autostop_s: float = 0.0

    def to_json(self) -> dict[str, Any]:
        """The status as JSON-ready data."""
        return asdict(self)

    @classmethod
    def from_json(cls, value: object) -> HeadStatus:
        """Parse a head's answer; WireError saying what is wrong when it is not one."""
        if not isinstance(value, dict):
            raise WireError("the head's status is not a JSON object")
        try:
            nodes = tuple(NodeStatus(**n) for n in value.get("nodes", ()))
            data = {k: v for k, v in value.items() if k != "nodes"}
            data["failures"] = tuple(data.get("failures", ()))
            return cls(nodes=nodes, **data)
        except TypeError as exc:
            raise WireError(f"the head's status has an unexpected shape: {exc}") from None

    @property
    def joined(self) -> int:
        """How many nodes' workers are in the scheduler."""
        return sum(1 for n in self.nodes if n.state == "joined")


@dataclass(frozen=True)
class NodeResult:
    """What a command did on one node."""

    node: str
    exit_code: int
    """The command's exit status; -1 when it timed out (its process group was killed)."""
    stdout: str = ""
    stderr: str = ""
    """The end of each stream (the last 64 KiB)."""
    duration_s: float = 0.0
    skipped: bool = False
    """``setup(only_new=True)``: the node had run this script already."""

    @property
    def ok(self) -> bool:
        """Whether it exited with status 0 (or was skipped)."""
        return self.exit_code == 0

    def to_json(self) -> dict[str, Any]:
        """The result as JSON-ready data."""
        return asdict(self)

    @classmethod
    def from_json(cls, value: object) -> NodeResult:
        """Parse a node's result; WireError saying what is wrong when it is not one."""
        if not isinstance(value, dict):
            raise WireError("a node's result is not a JSON object")
        try:
            return cls(**value)
        except TypeError as exc:
            raise WireError(f"a node's result has an unexpected shape: {exc}") from None


def resize_target(body: object, current: int) -> int:
    """The target a resize body asks for, given the ``current`` one; WireError if malformed."""
    if not isinstance(body, dict) or len(body) != 1:
        raise WireError('a resize takes {"nodes": N} or {"add": K}')
    ((key, value),) = body.items()
    if key not in ("nodes", "add") or not isinstance(value, int) or isinstance(value, bool):
        raise WireError('a resize takes {"nodes": N} or {"add": K} with whole numbers')
    target = value if key == "nodes" else current + value
    if target < 0:
        raise WireError(f"a resize to {target} nodes: the least is 0")
    return target
