"""Detached jobs: run a function or a code string on a VM, independent of this process."""

from __future__ import annotations

import base64
import functools
import os
import pickle
from collections.abc import Callable, Mapping
from typing import Any

from azmanagers.detached.job import DetachedJob
from azmanagers.detached.vms import DetachedVM, can_delete_itself, create_vm, delete_vm, load_vm
from azmanagers.detached.wire import JobInfo, JobRequest, WireError, encode_body
from azmanagers.errors import ConfigError

__all__ = [
    "DetachedJob",
    "addproc",
    "detach",
    "detachat",
    "job_records",
    "list_jobs",
    "rmproc",
    "variablebundle",
]

MAX_JOB_BYTES = 64 * 1024 * 1024
"""The largest job (function, arguments and variable bundle) the service takes."""
SUBMIT_TIMEOUT_S = 120.0
"""How long sending a job (up to MAX_JOB_BYTES) may take."""
_BUNDLE_ENV = "AZMANAGERS_VARIABLE_BUNDLE"
_bundle: dict[str, Any] = {}
_job_bundle: dict[str, Any] | None = None


def addproc(
    template: str = "local",
    *,
    name: str | None = None,
    nic_template: str | None = None,
    timeout: float | None = None,
    env: Mapping[str, str] | None = None,
) -> DetachedVM:
    """Create a VM from ``template`` running the detached service; return when it answers.

    Usage::

        vm = addproc("local")                      # a VM running the detached service
        job = detachat(vm, train, data_path, epochs=3)
        job.status(); job.read(); job.wait(timeout=600); job.result(); job.kill()
        DetachedJob.attach(vm.name, job.id)        # later, from another process
        rmproc(vm)

    Parameters
    ----------
    template
        A VM template name (``"local"`` is built in: a process-VM on this machine).
    name
        The VM's name (default: ``azm-`` and 6 hex digits).
    nic_template
        For an Azure VM: the NIC template (default: the first saved one).
    timeout
        Seconds to wait for the service (default 60 locally, 900 on Azure).
    env
        Environment variables of the VM's service.

    Raises
    ------
    ConfigError, ProviderError, WaitTimeoutError, DetachedServiceError
    """
    return create_vm(template, name=name, nic_template=nic_template, timeout=timeout, env=env)


def rmproc(vm: DetachedVM | str) -> None:
    """Delete a detached VM (its running jobs end with it) and forget it."""
    delete_vm(vm)


def variablebundle(*keys: str, **values: Any) -> Any:
    """Ship values with the following jobs, or read one inside a job.

    ``variablebundle(session=s, table=t)`` adds values that every later ``detachat`` ships;
    ``variablebundle("table")`` returns a value: in a detached job, from the bundle it was
    sent with; elsewhere, from the values added so far. ``variablebundle()`` returns a copy
    of the whole bundle.
    """
    if values and keys:
        raise ConfigError("variablebundle takes names to read or values to add, not both.")
    if values:
        _bundle.update(values)
        return None
    bundle = _current_bundle()
    if not keys:
        return dict(bundle)
    if len(keys) > 1:
        return tuple(variablebundle(k) for k in keys)
    try:
        return bundle[keys[0]]
    except KeyError:
        raise KeyError(
            f"{keys[0]!r} is not in the variable bundle (it has: {', '.join(sorted(bundle))})"
        ) from None


def _current_bundle() -> dict[str, Any]:
    global _job_bundle
    path = os.environ.get(_BUNDLE_ENV)
    if path is None:
        return _bundle
    if _job_bundle is None:
        import cloudpickle

        with open(path, "rb") as handle:
            _job_bundle = dict(cloudpickle.load(handle))
    return _job_bundle


def detachat(
    vm: DetachedVM | str,
    function_or_code: Callable[..., Any] | str,
    *args: Any,
    env: Mapping[str, str] | None = None,
    job_name: str = "",
    **kwargs: Any,
) -> DetachedJob:
    """Run ``function_or_code`` on ``vm``; return its job at once.

    A function is called with ``args`` and ``kwargs`` (all cloudpickled, so lambdas and
    local functions work); a string is run as a Python script. ``env`` sets environment
    variables of the job; ``env`` and ``job_name`` are taken by this call, not passed on.
    """
    return submit_call(vm, function_or_code, args, kwargs, env=env, job_name=job_name)


def submit_call(
    vm: DetachedVM | str,
    function_or_code: Callable[..., Any] | str,
    args: tuple[Any, ...],
    kwargs: dict[str, Any],
    *,
    env: Mapping[str, str] | None = None,
    job_name: str = "",
    persist: bool = True,
) -> DetachedJob:
    """``detachat`` with its arguments as a tuple and a dict (for callers in azmanagers).

    ``persist=False``: the VM deletes itself after the job (see ``@detached``).
    """
    record = load_vm(vm) if isinstance(vm, str) else vm
    code: str | None = None
    call: str | None = None
    if isinstance(function_or_code, str):
        if args or kwargs:
            raise ConfigError("a code string takes no arguments; use variablebundle() for values.")
        code = function_or_code
    elif callable(function_or_code):
        call = _pickled((function_or_code, args, kwargs), "the function and its arguments")
    else:
        raise ConfigError(
            f"detachat runs a function or a code string, not a {type(function_or_code).__name__}."
        )
    if env and not all(isinstance(k, str) and isinstance(v, str) for k, v in env.items()):
        raise ConfigError("env must map variable names to string values.")
    request = JobRequest(
        name=job_name or _describe(function_or_code),
        code=code,
        call=call,
        bundle=_pickled(dict(_bundle), "the variable bundle") if _bundle else None,
        env=dict(env or {}),
        persist=persist,
    )
    try:
        JobRequest.from_json(request.to_json())  # the service's own checks, before sending
    except WireError as exc:
        raise ConfigError(f"the job cannot be sent: {exc}.") from None
    size = len(encode_body(request.to_json()))  # the bytes the client sends, escapes and all
    if size > MAX_JOB_BYTES:
        raise ConfigError(
            f"the job is {size / 2**20:.0f} MiB; a detached job takes at most "
            f"{MAX_JOB_BYTES // 2**20} MiB. Pass big inputs as files (Blob storage, or a path "
            "on the VM), not as arguments."
        )
    info = record.client().submit(request, timeout_s=SUBMIT_TIMEOUT_S)
    return DetachedJob(record, info.id)


def _describe(thing: object) -> str:
    if isinstance(thing, str):
        first = thing.strip().splitlines()[0] if thing.strip() else ""
        return first[:80]
    return str(getattr(thing, "__qualname__", type(thing).__name__))[:200]


def _pickled(value: object, what: str) -> str:
    import cloudpickle

    try:
        data = cloudpickle.dumps(value)
    except (pickle.PicklingError, TypeError, AttributeError) as exc:
        raise ConfigError(f"{what} cannot be pickled ({exc}); pass plain values.") from exc
    return base64.b64encode(data).decode()


def detach(
    vm_template: str = "local", *, persist: bool = True, **addproc_options: Any
) -> Callable[[Callable[..., Any]], Callable[..., DetachedJob]]:
    """Decorate a function so that calling it makes a VM and runs the call there.

    With ``persist=False`` the VM deletes itself ``SELF_DELETE_GRACE_S`` (30 s) after the
    job ends: its output and result go with it, so read them in that time (``job.result()``
    waits for the job, then reads at once). A local VM always can; an Azure VM needs a
    managed identity (``build_vmtemplate(..., managed_identity=True)``) with a role that
    lets it delete itself.
    """

    def decorate(function: Callable[..., Any]) -> Callable[..., DetachedJob]:
        @functools.wraps(function)
        def run(*args: Any, **kwargs: Any) -> DetachedJob:
            if not persist and not can_delete_itself(vm_template):
                raise ConfigError(
                    f"persist=False needs a VM that can delete itself; template {vm_template!r} "
                    "has no managed identity. Build it with build_vmtemplate(..., "
                    "managed_identity=True) and give that identity a role allowing it to "
                    "delete the VM (e.g. Virtual Machine Contributor on the resource group)."
                )
            vm = addproc(vm_template, **addproc_options)
            return submit_call(vm, function, args, kwargs, persist=persist)

        return run

    return decorate


def job_records(vm: DetachedVM | str) -> list[JobInfo]:
    """Every job of a VM, oldest first, as records."""
    record = load_vm(vm) if isinstance(vm, str) else vm
    return record.client().jobs()


def list_jobs(vm: DetachedVM | str) -> list[dict[str, Any]]:
    """Every job of a VM, oldest first, as dicts (``job_records`` gives them typed)."""
    return [job.to_json() for job in job_records(vm)]
