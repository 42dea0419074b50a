"""The worker role: build the custom environment if asked, then run a Dask worker over TLS."""

from __future__ import annotations

import asyncio
import base64
import functools
import importlib.util
import logging
import os
import signal
import sys
import time
from pathlib import Path
from typing import Any

from azmanagers.agent import (
    EXIT_BAD_PAYLOAD,
    EXIT_ENV_FAILED,
    EXIT_SCHEDULER_UNREACHABLE,
    EXIT_SETUP_FAILED,
)

_ENV_READY = "AZMANAGERS_ENV_READY"
WORKER_START_METHOD = "fork"
"""Fork the worker from the nanny (it inherits the imported modules; spawn imports them again)."""
PRE_SPAWN_ENVIRON = "distributed.nanny.pre-spawn-environ"
BLAS_THREAD_VARIABLES = ("OMP_NUM_THREADS", "OPENBLAS_NUM_THREADS", "MKL_NUM_THREADS")
"""The thread-count variables of the BLAS libraries, in the order the user's value is taken."""
REFUSAL_PREFIX = "azmanagers refused"
"""How the scheduler guard's refusals begin (cluster.guard)."""
logger = logging.getLogger("azmanagers.agent")


def set_pre_spawn_environ() -> dict[str, str]:
    """Export Dask's ``distributed.nanny.pre-spawn-environ`` (OMP/MKL/OPENBLAS_NUM_THREADS=1,
    MALLOC_TRIM_THRESHOLD_) unless the user set them; return what was set.

    A user who sets one of ``BLAS_THREAD_VARIABLES`` (e.g. ``env={"OMP_NUM_THREADS": "2"}``)
    means it for every BLAS library: the unset others get the same value (the first set, in
    the order OMP, OPENBLAS, MKL), not Dask's 1 (OpenBLAS would keep one thread).

    A spawned worker gets them from its nanny before it starts; a forked one inherits its
    nanny's libraries, and BLAS sizes its thread pool when numpy is first imported (importing
    distributed does). So they must be set here, before anything imports numpy.
    """
    import dask.config

    spec = importlib.util.find_spec("distributed")
    if spec is None or spec.origin is None:
        return {}
    defaults = Path(spec.origin).with_name("distributed.yaml")
    for config in dask.config.collect_yaml([str(defaults)]):
        dask.config.update_defaults(config)
    wanted = dict(dask.config.get(PRE_SPAWN_ENVIRON, default={}) or {})
    chosen = next((os.environ[k] for k in BLAS_THREAD_VARIABLES if os.environ.get(k)), None)
    if chosen is not None:  # the user's thread count, for every BLAS library alike
        wanted.update({key: chosen for key in BLAS_THREAD_VARIABLES})
    done = {}
    for key, value in wanted.items():
        if key not in os.environ:
            os.environ[key] = done[key] = str(value)
    return done


def worker_host(payload: dict[str, Any]) -> str | None:
    """Where the worker listens: the payload's ``worker_host``, except that the instance's own
    address (``AZMANAGERS_WORKER_HOST``, which the local provider and the emulator set for each
    process-VM: a loopback address of its own) wins over a loopback ``worker_host`` (which only
    says "on this machine"). None lets Dask choose (a VM's own address)."""
    own = os.environ.get("AZMANAGERS_WORKER_HOST") or None
    wanted = payload.get("worker_host") or None
    if wanted is None or (own is not None and _is_loopback(str(wanted))):
        return own
    return str(wanted)


def _is_loopback(host: str) -> bool:
    import ipaddress

    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


def _say(message: str) -> None:
    print(f"azmanagers: {message}", flush=True)


def load_payload(path: str) -> dict[str, Any]:
    """Read the payload file the boot script wrote (base64 was decoded by the script)."""
    from azmanagers.providers.boot import decode_payload

    data = Path(path).read_bytes()
    try:
        return decode_payload(data)
    except OSError:
        return decode_payload(base64.b64decode(data))


async def run_worker(payload: dict[str, Any]) -> int:
    """Start a Dask nanny and its worker, wait until they close, return the exit status.

    The nanny restarts the worker when asked (``client.restart()``) or when it exceeds its
    memory limit, so the instance keeps its place in the cluster.
    """
    set_pre_spawn_environ()  # before distributed (and so numpy) is imported
    import dask
    from distributed import Nanny
    from distributed.security import Security

    # Fork the worker from the nanny: it inherits the imported modules instead of importing
    # Dask again (half the CPU of a boot; the difference shows when many instances share CPUs).
    dask.config.set({"distributed.worker.multiprocessing-method": WORKER_START_METHOD})

    tls = payload["tls"]
    security = Security(
        tls_ca_file=tls["ca"],
        tls_worker_cert=tls["cert"],
        tls_worker_key=tls["key"],
        require_encryption=True,
    )
    name = os.environ.get("AZMANAGERS_INSTANCE_ID") or _name_from_imds()
    instance_dir = Path(os.environ.get("AZMANAGERS_INSTANCE_DIR", "."))
    worker = Nanny(
        payload["scheduler"],
        name=name,
        nthreads=int(payload.get("nthreads", 1)),
        memory_limit=payload.get("memory_limit", "auto"),
        security=security,
        host=worker_host(payload),
        death_timeout=float(payload.get("death_timeout_s", 60)),
        local_directory=str(instance_dir / "dask-scratch"),
        worker_class=tls_only_worker(),
        dashboard=False,
    )

    loop = asyncio.get_running_loop()
    closing: list[asyncio.Future[Any]] = []

    def _on_signal() -> None:
        if not closing:
            closing.append(
                asyncio.ensure_future(worker.close(reason="azmanagers: instance stopping"))
            )

    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, _on_signal)
    try:
        await worker
    except (TimeoutError, OSError) as exc:
        _say(
            f"could not reach the scheduler at {payload['scheduler']} within "
            f"{payload.get('death_timeout_s', 60)} s ({exc}); exiting"
        )
        await worker.close(reason="azmanagers: scheduler unreachable")
        return EXIT_SCHEDULER_UNREACHABLE
    _say(f"worker {name} joined {payload['scheduler']} (nanny at {worker.address})")
    death_timeout_s = float(payload.get("death_timeout_s", 60))
    watchdog = asyncio.ensure_future(_watch_scheduler(worker, death_timeout_s))
    evictions = (
        asyncio.ensure_future(_watch_evictions(worker, name)) if payload.get("spot") else None
    )
    await worker.finished()
    watchdog.cancel()
    if evictions is not None:
        evictions.cancel()
    lost = watchdog.done() and not watchdog.cancelled() and watchdog.result()
    _say(f"worker {name} closed ({worker.status.name}); exiting")
    return EXIT_SCHEDULER_UNREACHABLE if lost else 0


async def _watch_scheduler(worker: Any, death_timeout_s: float) -> bool:
    """Close the worker when the scheduler has not answered for ``death_timeout_s``.

    A scheduler that vanishes without closing its connections (a frozen caller, a network
    partition) would otherwise leave the worker, and the VM's bill, running for good.
    Returns True when it closed the worker.
    """
    interval_s = max(1.0, min(10.0, death_timeout_s / 3))
    last_ok = time.monotonic()
    while worker.status.name in ("init", "starting", "running", "paused"):
        try:
            await asyncio.wait_for(
                worker.scheduler.get_metadata(keys=["azmanagers-liveness"], default=None),
                interval_s,
            )
            last_ok = time.monotonic()
        except (OSError, asyncio.TimeoutError):
            silent = time.monotonic() - last_ok
            if silent > death_timeout_s:
                _say(
                    f"the scheduler has not answered for {silent:.0f} s "
                    f"(death timeout {death_timeout_s:g} s); closing the worker"
                )
                await worker.close(reason="azmanagers: scheduler unreachable")
                return True
        await asyncio.sleep(interval_s)
    return False


EVENTS_API_VERSION = "2020-07-01"
EVENTS_POLL_S = 1.0
RETIRE_ON_EVICTION_TIMEOUT_S = 25.0
"""Azure gives a spot VM 30 s of notice; retiring must finish within it."""


EVICTION_DRAIN_S = 15.0
"""Of the 30 s Preempt notice: how long batch runs get to stop and store their logs."""


async def _flag_eviction() -> None:
    """Tell batch runs on this node to stop, and give them until ``EVICTION_DRAIN_S`` to
    store their logs (each run has a file in the active-runs folder while it runs)."""
    from azmanagers.config.paths import active_runs_dir, eviction_flag

    try:
        eviction_flag().write_text(f"{time.time():.0f}\n")
        deadline = time.monotonic() + EVICTION_DRAIN_S
        while any(active_runs_dir().iterdir()) and time.monotonic() < deadline:
            await asyncio.sleep(0.2)
    except OSError as exc:
        _say(f"could not flag the eviction to batch runs: {exc}")


async def _watch_evictions(nanny: Any, name: str) -> None:
    """On a spot VM: poll IMDS Scheduled Events every second; on a Preempt of this VM,
    retire its worker gracefully (its data moves, its tasks are rescheduled) before the
    notice runs out."""
    from azmanagers.agent import imds

    while True:
        try:
            document = await asyncio.to_thread(imds.get, "scheduledevents", EVENTS_API_VERSION)
        except OSError as exc:
            _say(f"scheduled events unavailable ({exc}); retrying")
            await asyncio.sleep(EVENTS_POLL_S * 5)
            continue
        for event in document.get("Events", []):
            if event.get("EventType") == "Preempt" and name in event.get("Resources", []):
                _say(
                    f"Preempt for {name} (not before {event.get('NotBefore')}): retiring the worker"
                )
                await _flag_eviction()
                try:
                    await asyncio.wait_for(
                        nanny.scheduler.retire_workers(
                            names=[name], close_workers=True, remove=True
                        ),
                        RETIRE_ON_EVICTION_TIMEOUT_S,
                    )
                    _say(f"worker {name} retired gracefully before the eviction")
                except (OSError, asyncio.TimeoutError) as exc:
                    _say(f"retiring {name} did not finish before the eviction: {exc!r}")
                return
        await asyncio.sleep(EVENTS_POLL_S)


@functools.cache
def tls_only_worker() -> type[Any]:
    """Return the worker class the agent runs: Dask's Worker without its HTTP server.

    Dask's worker serves metrics and health over plain HTTP without authentication; this
    one serves nothing but its mutual-TLS comm. A task that needs a client (``get_client``,
    ``Queue``, ``Variable``) on a cluster without ``workers_can_submit`` gets the scheduler
    guard's refusal as a ``PermissionError`` (Dask's connection code reports it as an
    ``ImportError``).
    """
    from distributed import Worker

    class TLSOnlyWorker(Worker):
        def start_http_server(
            self,
            routes: Any,
            dashboard_address: Any,
            default_port: int = 0,
            ssl_options: Any = None,
        ) -> None:
            del routes, dashboard_address, default_port, ssl_options

        def identity(self) -> dict[str, Any]:
            info: dict[str, Any] = super().identity()
            info["type"] = "Worker"  # Dask's type name, as tools expect
            return info

        def _get_client(self, timeout: float | None = None) -> Any:
            try:
                return super()._get_client(timeout)
            except ImportError as exc:
                if str(exc).startswith(REFUSAL_PREFIX):
                    raise PermissionError(str(exc)) from None
                raise

    TLSOnlyWorker.__module__ = __name__
    TLSOnlyWorker.__qualname__ = "TLSOnlyWorker"
    return TLSOnlyWorker


def __getattr__(name: str) -> Any:
    """Let ``azmanagers.agent.worker.TLSOnlyWorker`` be imported by name (a spawned worker
    unpickles its class so) without importing distributed with this module."""
    if name == "TLSOnlyWorker":
        return tls_only_worker()
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


def _name_from_imds() -> str:
    """On a VM (or in the emulator), the worker is named after the VM, as IMDS reports it."""
    from azmanagers.agent.imds import instance_name

    return instance_name()


def main(payload_path: str) -> int:
    """Entry point of the worker role."""
    try:
        payload = load_payload(payload_path)
    except Exception as exc:
        _say(f"cannot read the boot payload {payload_path}: {exc}")
        return EXIT_BAD_PAYLOAD
    requirements = payload.get("requirements")
    if requirements and not os.environ.get(_ENV_READY):
        from azmanagers.agent.envs import EnvBuildError, ensure_env

        try:
            python = ensure_env(
                str(requirements),
                timeout_s=float(payload.get("env_build_timeout_s", 900.0)),
            )
        except (EnvBuildError, OSError) as exc:
            _say(f"custom environment failed: {exc}")
            return EXIT_ENV_FAILED
        env = dict(os.environ, **{_ENV_READY: "1"})
        _say(f"starting the worker in the custom environment ({python})")
        os.execve(
            str(python),
            [str(python), "-m", "azmanagers.agent", "worker", "--payload", payload_path],
            env,
        )
    logging.basicConfig(
        stream=sys.stdout,
        level=logging.INFO,
        format="%(asctime)s %(name)s %(levelname)s %(message)s",
    )
    for noisy in ("distributed.worker", "distributed.core", "distributed.nanny"):
        logging.getLogger(noisy).setLevel(logging.WARNING)
    if payload.get("setup") and not _setup_ok(payload):
        return EXIT_SETUP_FAILED
    return asyncio.run(run_worker(payload))


def _setup_ok(payload: dict[str, Any]) -> bool:
    """Run the cluster's setup script before the worker joins; say how it went."""
    from azmanagers.agent.nodeexec import run_setup

    setup = payload["setup"]
    name = os.environ.get("AZMANAGERS_INSTANCE_ID") or "this node"
    _say(f"running the cluster's setup script on {name}")
    sys.stdout.flush()
    echo_fd = os.dup(sys.stdout.fileno())  # the script's output goes to the boot log too
    try:
        result = run_setup(
            str(setup["script"]), float(setup.get("timeout_s", 900.0)), echo_fd=echo_fd
        )
    finally:
        os.close(echo_fd)
    if result["exit_code"] == 0:
        _say(f"setup done on {name} ({result['duration_s']:.1f} s)")
        return True
    why = "timed out" if result["timed_out"] else f"exit status {result['exit_code']}"
    _say(f"setup failed on {name} ({why}); its output is above")
    return False
