"""Scale-set, VM and NIC templates: save, load, list and remove them (building and validation
live in ``template_builders`` and ``template_schema``; their public names are re-exported here).
"""

from __future__ import annotations

import copy
import json
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

from azmanagers.config.paths import atomic_write_json, home, locked, private_file, read_json
from azmanagers.config.template_builders import (
    build_nictemplate,
    build_sstemplate,
    build_vmtemplate,
)
from azmanagers.config.template_schema import (
    _HOW_TO_CREATE,
    BUILTIN_TEMPLATE_NAME,
    LOCAL_TEMPLATE_DEFAULTS,
    LOCAL_VM_TEMPLATE_DEFAULTS,
    PROVIDER_LOCAL,
    TEMPLATE_FILENAMES,
    TemplateKind,
    _check_kind,
    _check_name,
    _validate,
    template_provider,
    validate_template,
)
from azmanagers.errors import ConfigError

__all__ = [
    "LOCAL_TEMPLATE_DEFAULTS",
    "LOCAL_VM_TEMPLATE_DEFAULTS",
    "build_nictemplate",
    "build_sstemplate",
    "build_vmtemplate",
    "list_templates",
    "load_template",
    "load_template_nic",
    "load_template_scaleset",
    "load_template_vm",
    "remove_template",
    "save_template_nic",
    "save_template_scaleset",
    "save_template_vm",
    "stored_template_names",
    "template_provider",
    "templates_path",
    "validate_template",
]


def templates_path(kind: str) -> Path:
    """Return the file holding templates of ``kind`` under AZMANAGERS_HOME (may not exist)."""
    return home() / TEMPLATE_FILENAMES[_check_kind(kind)]


def _builtins(kind: TemplateKind) -> dict[str, dict[str, Any]]:
    """Return the built-in templates of ``kind``."""
    if kind == "scaleset":
        return {BUILTIN_TEMPLATE_NAME: dict(LOCAL_TEMPLATE_DEFAULTS)}
    if kind == "vm":
        return {BUILTIN_TEMPLATE_NAME: dict(LOCAL_VM_TEMPLATE_DEFAULTS)}
    return {}


def _read_file(kind: TemplateKind) -> tuple[Path, dict[str, Any]]:
    """Return the path and the stored templates of ``kind`` (empty when there is no file)."""
    path = templates_path(kind)
    private_file(path)  # it may hold secrets: 0600, as written
    data = read_json(path, default={})
    if not isinstance(data, dict):
        raise ConfigError(
            f"{path} must hold a JSON object mapping template names to templates; it holds "
            f"{type(data).__name__}. Fix or remove the file; nothing was changed."
        )
    return path, data


def _save(kind: TemplateKind, name: str, template: Mapping[str, Any]) -> Path:
    """Validate ``template`` and merge it into the file of ``kind``; return the path."""
    function = f"save_template_{kind}"
    source = f"the template passed to {function}"
    _check_name(name, f"{function}({name[:60]!r}, ...)", kind)
    _validate(kind, name, template, source, check_name=False)
    try:
        stored = json.loads(json.dumps(template))
    except (TypeError, ValueError) as exc:
        raise ConfigError(
            f"{source}, template {name!r}: cannot be stored as JSON ({exc}). "
            "Use only strings, numbers, booleans, lists and dicts."
        ) from exc
    with locked(templates_path(kind)):  # another saver's template is kept, not overwritten
        path, data = _read_file(kind)
        data[name] = stored
        atomic_write_json(path, data)
    return path


def save_template_scaleset(name: str, template: Mapping[str, Any]) -> Path:
    """Validate a scale-set template and merge it into ``templates_scaleset.json``.

    Parameters
    ----------
    name : str
        The template's name: letters, digits, ``-`` and ``_``. ``local`` overrides the
        built-in local template.
    template : Mapping
        From ``build_sstemplate``, or a local template (``{"provider": "local", ...}``).

    Returns
    -------
    Path
        The file written (atomically, mode 0600).

    Raises
    ------
    ConfigError
        The name or the template is bad, the file is corrupt, or it cannot be written;
        nothing is written then.
    """
    return _save("scaleset", name, template)


def save_template_vm(name: str, template: Mapping[str, Any]) -> Path:
    """Validate a VM template and merge it into ``templates_vm.json``.

    Parameters
    ----------
    name : str
        The template's name: letters, digits, ``-`` and ``_``.
    template : Mapping
        From ``build_vmtemplate``, or ``{"provider": "local"}``.

    Returns
    -------
    Path
        The file written (atomically, mode 0600).

    Raises
    ------
    ConfigError
        The name or the template is bad, the file is corrupt, or it cannot be written.
    """
    return _save("vm", name, template)


def save_template_nic(name: str, template: Mapping[str, Any]) -> Path:
    """Validate a NIC template and merge it into ``templates_nic.json``.

    Parameters
    ----------
    name : str
        The template's name: letters, digits, ``-`` and ``_``.
    template : Mapping
        From ``build_nictemplate``.

    Returns
    -------
    Path
        The file written (atomically, mode 0600).

    Raises
    ------
    ConfigError
        The name or the template is bad, the file is corrupt, or it cannot be written.
    """
    return _save("nic", name, template)


def _unknown_name(kind: TemplateKind, name: str, path: Path, known: Sequence[str]) -> ConfigError:
    """Return the error for a template name that does not exist."""
    names = ", ".join(sorted(known)) if known else "(none)"
    return ConfigError(
        f"no {kind} template named {name!r} in {path}. Known {kind} templates: {names}. "
        f"{_HOW_TO_CREATE[kind]}"
    )


def load_template(kind: str, name: str) -> dict[str, Any]:
    """Load and validate the template ``name`` of ``kind`` (stored, or built in).

    Parameters
    ----------
    kind : str
        ``"scaleset"``, ``"vm"`` or ``"nic"``.
    name : str
        The template's name.

    Returns
    -------
    dict
        A copy of the template; a local template has every key filled in.

    Raises
    ------
    ConfigError
        Unknown kind or name (the message lists the known names), a corrupt file, or a
        bad value (the message names the file, the template, the key and the fix).
    """
    checked = _check_kind(kind)
    path, data = _read_file(checked)
    if name in data:
        return _validate(checked, name, data[name], str(path), check_name=True)
    builtins = _builtins(checked)
    if name in builtins:
        return copy.deepcopy(builtins[name])
    raise _unknown_name(checked, name, path, sorted(set(data) | set(builtins)))


def load_template_scaleset(name: str) -> dict[str, Any]:
    """Load the scale-set template ``name``; see ``load_template``."""
    return load_template("scaleset", name)


def load_template_vm(name: str) -> dict[str, Any]:
    """Load the VM template ``name``; see ``load_template``."""
    return load_template("vm", name)


def load_template_nic(name: str) -> dict[str, Any]:
    """Load the NIC template ``name``; see ``load_template``."""
    return load_template("nic", name)


def stored_template_names(kind: str) -> list[str]:
    """Return the names of the templates of ``kind`` stored in its file (no built-ins), sorted.

    Parameters
    ----------
    kind : str
        ``"scaleset"``, ``"vm"`` or ``"nic"``.

    Returns
    -------
    list of str
        The stored names; a missing file gives an empty list.

    Raises
    ------
    ConfigError
        Unknown kind, or the file is corrupt.
    """
    _, data = _read_file(_check_kind(kind))
    return sorted(data)


def list_templates(kind: str) -> dict[str, dict[str, Any]]:
    """Return every template of ``kind`` by name, built-ins included, sorted by name.

    Stored templates are returned as stored (local ones with defaults filled in); they are
    validated when loaded, not here, so that one bad entry does not hide the others.

    Parameters
    ----------
    kind : str
        ``"scaleset"``, ``"vm"`` or ``"nic"``.

    Returns
    -------
    dict
        Template name to a copy of the template.

    Raises
    ------
    ConfigError
        Unknown kind, or the file is corrupt.
    """
    checked = _check_kind(kind)
    _, data = _read_file(checked)
    merged: dict[str, Any] = _builtins(checked)
    merged.update(copy.deepcopy(data))
    result: dict[str, dict[str, Any]] = {}
    for name in sorted(merged):
        template = merged[name]
        if isinstance(template, dict) and template.get("provider") == PROVIDER_LOCAL:
            defaults = (
                LOCAL_TEMPLATE_DEFAULTS if checked == "scaleset" else LOCAL_VM_TEMPLATE_DEFAULTS
            )
            template = {**defaults, **template}
        result[name] = template
    return result


def remove_template(kind: str, name: str) -> Path:
    """Remove the stored template ``name`` of ``kind``; return the file rewritten.

    Removing a stored override of a built-in template brings the built-in back.

    Parameters
    ----------
    kind : str
        ``"scaleset"``, ``"vm"`` or ``"nic"``.
    name : str
        The template's name.

    Returns
    -------
    Path
        The file rewritten (atomically, mode 0600).

    Raises
    ------
    ConfigError
        Unknown kind or name, the name is a built-in with no stored override, the file is
        corrupt, or it cannot be written.
    """
    checked = _check_kind(kind)
    with locked(templates_path(checked)):
        path, data = _read_file(checked)
        if name not in data:
            builtins = _builtins(checked)
            if name in builtins:
                raise ConfigError(
                    f"{kind} template {name!r} is built in and cannot be removed ({path} holds "
                    "no override of it). Nothing was changed."
                )
            raise _unknown_name(checked, name, path, sorted(set(data) | set(builtins)))
        del data[name]
        atomic_write_json(path, data)
    return path
