"""Custom environments on an instance: a virtualenv per environment spec, keyed by its hash."""

from __future__ import annotations

import fcntl
import hashlib
import os
import subprocess
import sys
import sysconfig
import time
from pathlib import Path

from azmanagers.errors import AzManagersError

ENV_BUILD_TIMEOUT_S = 900.0
"""Default bound on building one environment (the cluster passes its own)."""
_READY = ".azmanagers-ready"


class EnvBuildError(AzManagersError):
    """The custom environment could not be built on the instance."""


def spec_hash(requirements: str) -> str:
    """Return the key of an environment spec: its hash with this Python's version."""
    digest = hashlib.sha256()
    digest.update(f"{sys.version_info.major}.{sys.version_info.minor}\n".encode())
    digest.update(requirements.encode())
    return digest.hexdigest()[:16]


def agent_home() -> Path:
    """Return the agent's folder on this instance (``AZMANAGERS_AGENT_HOME``)."""
    value = os.environ.get("AZMANAGERS_AGENT_HOME")
    return Path(value) if value else Path.home() / ".azmanagers-agent"


def _log(message: str) -> None:
    print(f"azmanagers: {message}", flush=True)


def ensure_env(
    requirements: str, *, root: Path | None = None, timeout_s: float = ENV_BUILD_TIMEOUT_S
) -> Path:
    """Create (or reuse) the virtualenv for ``requirements``; return its Python.

    The environment sees this interpreter's packages (a ``.pth`` file), so it only installs
    what differs. Concurrent instances sharing the folder build it once (a file lock).
    """
    root = root or agent_home() / "envs"
    root.mkdir(parents=True, exist_ok=True, mode=0o700)
    key = spec_hash(requirements)
    env_dir = root / key
    python = env_dir / "bin" / "python"
    with open(root / f"{key}.lock", "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        if (env_dir / _READY).exists():
            _log(f"reusing custom environment {key}")
            return python
        started = time.monotonic()
        _log(f"building custom environment {key} in {env_dir}")
        deadline = time.monotonic() + timeout_s
        _run([sys.executable, "-m", "venv", "--without-pip", "--clear", str(env_dir)], deadline)
        site = Path(
            sysconfig.get_path("purelib", vars={"base": str(env_dir), "platbase": str(env_dir)})
        )
        parent_paths = [p for p in sys.path if p and Path(p).is_dir() and "site-packages" in p]
        parent_paths += [p for p in os.environ.get("PYTHONPATH", "").split(os.pathsep) if p]
        (site / "azmanagers-parent.pth").write_text("\n".join(dict.fromkeys(parent_paths)) + "\n")
        req_file = env_dir / "requirements.txt"
        req_file.write_text(requirements)
        _run(
            [
                sys.executable,
                "-m",
                "pip",
                "--python",
                str(python),
                "install",
                "--disable-pip-version-check",
                "--no-input",
                "-r",
                str(req_file),
            ],
            deadline,
        )
        (env_dir / _READY).write_text(key)
        _log(f"custom environment {key} ready in {time.monotonic() - started:.1f} s")
        return python


def _run(cmd: list[str], deadline: float) -> None:
    try:
        result = subprocess.run(
            cmd,
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
            text=True,
            timeout=max(1.0, deadline - time.monotonic()),
            check=False,
        )
    except subprocess.TimeoutExpired as exc:
        raise EnvBuildError(f"'{' '.join(cmd[2:4])}' ran past the environment deadline") from exc
    print(result.stdout, end="", flush=True)
    if result.returncode != 0:
        raise EnvBuildError(f"'{' '.join(cmd[2:4])}' failed with exit status {result.returncode}")
