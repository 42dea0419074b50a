"""Listing the recorded detached VMs as they are now: each seen, each bad record reported."""

from __future__ import annotations

from dataclasses import dataclass, replace

from azmanagers.detached.vms import (
    DetachedVM,
    VMSummary,
    list_vm_names,
    load_vm,
    provider_of,
    records_dir,
    save_vm,
)
from azmanagers.errors import AzManagersError, ConfigError
from azmanagers.providers.base import InstanceState


@dataclass(frozen=True)
class RecordProblem:
    """A record file that could not be read, and why."""

    file: str
    error: str


@dataclass(frozen=True)
class VMListing:
    """The detached VMs recorded on this machine, and the record files that are not VMs."""

    vms: list[VMSummary]
    problems: list[RecordProblem]


def list_vms() -> VMListing:
    """Every recorded detached VM as seen now (see ``VMSummary.state``), and every record
    file that could not be read; one bad file does not hide the others.

    A VM whose service answers is recorded ``up`` (a create interrupted while it booted left
    it ``booting``); one whose service never answered is looked up at its provider.
    """
    vms, problems = [], []
    for name in list_vm_names():
        try:
            vm = load_vm(name)
        except ConfigError as exc:
            problems.append(RecordProblem(file=str(records_dir() / f"{name}.json"), error=str(exc)))
            continue
        vms.append(_observe(vm))
    return VMListing(vms=vms, problems=problems)


def _observe(vm: DetachedVM) -> VMSummary:
    if vm.ping():
        if vm.status in ("creating", "booting", "failed"):
            vm = save_vm(replace(vm, status="up"))
        return vm.summary(answers=True, state="up")
    if vm.status == "up":
        return vm.summary(answers=False, state="down")
    if vm.status == "deleting":
        return vm.summary(answers=False)
    try:
        info = provider_of(vm.template).get_vm(vm.name)
    except AzManagersError:  # no template any more, the cloud unreachable: say what we know
        return vm.summary(answers=False)
    if info is None:
        return vm.summary(answers=False, state="gone")
    seen = {InstanceState.STOPPED: "stopped", InstanceState.FAILED: "failed"}
    return vm.summary(answers=False, state=seen.get(info.state, "booting"))
