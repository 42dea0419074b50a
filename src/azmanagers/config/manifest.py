"""The manifest (``AZMANAGERS_HOME/manifest.json``): subscription, resource group and ssh user."""

from __future__ import annotations

import re
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

from azmanagers.config.paths import HOME_ENV, atomic_write_json, home, private_file, read_json
from azmanagers.errors import ConfigError

MANIFEST_FILENAME = "manifest.json"
DEFAULT_SSH_PRIVATE_KEY_FILE = "~/.ssh/azmanagers_rsa"
DEFAULT_SSH_PUBLIC_KEY_FILE = "~/.ssh/azmanagers_rsa.pub"

REQUIRED_KEYS = ("resourcegroup", "subscriptionid", "ssh_user")
OPTIONAL_KEYS = {
    "ssh_private_key_file": DEFAULT_SSH_PRIVATE_KEY_FILE,
    "ssh_public_key_file": DEFAULT_SSH_PUBLIC_KEY_FILE,
}

GUID_RE = re.compile(r"[0-9a-fA-F]{8}-(?:[0-9a-fA-F]{4}-){3}[0-9a-fA-F]{12}")
"""A subscription id; used with ``fullmatch`` (``match`` with ``$`` accepts a final newline)."""

RESOURCE_GROUP_RE = re.compile(r"[\w().-]{0,89}[\w()-]")
"""Azure's rule for a resource group name: 1-90 letters, digits, ``_ - . ( )``, not ending in
``.``; used with ``fullmatch``."""
SSH_USER_RE = re.compile(r"[a-z_][a-z0-9_-]{0,31}")
"""A Linux user name as ``useradd`` takes it by default (at most 32 characters)."""

HOW_TO_WRITE = (
    "Write one with azmanagers.write_manifest(resourcegroup=..., subscriptionid=..., "
    "ssh_user=...) or `azm manifest write --resourcegroup RG --subscriptionid SUB "
    "--ssh-user USER`."
)


@dataclass(frozen=True)
class Manifest:
    """The contents of ``manifest.json``.

    Attributes
    ----------
    resourcegroup : str
        The default Azure resource group.
    subscriptionid : str
        The default Azure subscription id (a GUID).
    ssh_user : str
        The user name on the VMs.
    ssh_private_key_file : str
        Path of the ssh private key (may start with ``~``); it never leaves this machine.
    ssh_public_key_file : str
        Path of the ssh public key placed on the VMs (may start with ``~``).
    """

    resourcegroup: str
    subscriptionid: str
    ssh_user: str
    ssh_private_key_file: str = DEFAULT_SSH_PRIVATE_KEY_FILE
    ssh_public_key_file: str = DEFAULT_SSH_PUBLIC_KEY_FILE

    def private_key_path(self) -> Path:
        """Return the private key path with ``~`` expanded."""
        return Path(self.ssh_private_key_file).expanduser()

    def public_key_path(self) -> Path:
        """Return the public key path with ``~`` expanded."""
        return Path(self.ssh_public_key_file).expanduser()

    def to_dict(self) -> dict[str, str]:
        """Return the manifest as the JSON object stored in ``manifest.json``."""
        return asdict(self)


def manifest_path() -> Path:
    """Return the path of ``manifest.json`` under AZMANAGERS_HOME (it may not exist)."""
    return home() / MANIFEST_FILENAME


def _check_value(key: str, value: object, *, where: str, fix: str) -> str:
    """Return ``value`` if it is a usable string for ``key``, else raise ConfigError."""
    if not isinstance(value, str) or not value.strip():
        raise ConfigError(f"{where}: key {key!r} must be a non-empty string, got {value!r}. {fix}")
    if key == "subscriptionid" and not GUID_RE.fullmatch(value):
        raise ConfigError(
            f"{where}: key 'subscriptionid' must look like a GUID "
            f"(xxxxxxxx-xxxx-xxxx-xxxx-xxxxxxxxxxxx), got {value!r}. "
            "Find it with `az account show --query id` or in the Azure portal. "
            f"{fix}"
        )
    if key == "resourcegroup" and not RESOURCE_GROUP_RE.fullmatch(value):
        raise ConfigError(
            f"{where}: key 'resourcegroup' is not a resource group name Azure takes: "
            f"{value!r}. Use 1 to 90 letters, digits, '_', '-', '.', '(' or ')', not ending "
            f"in '.' (no spaces or newlines). {fix}"
        )
    if key == "ssh_user" and not SSH_USER_RE.fullmatch(value):
        raise ConfigError(
            f"{where}: key 'ssh_user' is not a Linux user name: {value!r}. Use 1 to 32 "
            f"lower-case letters, digits, '_' or '-', starting with a letter or '_' "
            f"(e.g. azureuser). {fix}"
        )
    return value


def write_manifest(
    *,
    resourcegroup: str,
    subscriptionid: str,
    ssh_user: str,
    ssh_private_key_file: str = DEFAULT_SSH_PRIVATE_KEY_FILE,
    ssh_public_key_file: str = DEFAULT_SSH_PUBLIC_KEY_FILE,
) -> Path:
    """Validate and write ``AZMANAGERS_HOME/manifest.json`` (atomically, mode 0600).

    Parameters
    ----------
    resourcegroup : str
        The default Azure resource group.
    subscriptionid : str
        The default Azure subscription id; must look like a GUID.
    ssh_user : str
        The user name on the VMs.
    ssh_private_key_file : str, optional
        Path of the ssh private key, by default ``~/.ssh/azmanagers_rsa``.
    ssh_public_key_file : str, optional
        Path of the ssh public key, by default ``~/.ssh/azmanagers_rsa.pub``.

    Returns
    -------
    Path
        The path written.

    Raises
    ------
    ConfigError
        A value is empty or not a string, the subscription id is not a GUID, the resource
        group is not a name Azure takes, the ssh user is not a Linux user name, or
        AZMANAGERS_HOME cannot be written. Nothing is written in that case.
    """
    values = {
        "resourcegroup": resourcegroup,
        "subscriptionid": subscriptionid,
        "ssh_user": ssh_user,
        "ssh_private_key_file": ssh_private_key_file,
        "ssh_public_key_file": ssh_public_key_file,
    }
    where = "write_manifest"
    fix = "Pass a corrected value; nothing was written."
    checked = {key: _check_value(key, value, where=where, fix=fix) for key, value in values.items()}
    path = manifest_path()
    atomic_write_json(path, checked)
    return path


def load_manifest() -> Manifest:
    """Read and validate ``AZMANAGERS_HOME/manifest.json``.

    Returns
    -------
    Manifest
        The manifest; missing key-file entries take their defaults.

    Raises
    ------
    ConfigError
        The file is missing, is not valid JSON, is not a JSON object, or a key is
        missing or has a wrong value. The message names the file and the key.
    """
    path = manifest_path()
    private_file(path)  # it may hold secrets: 0600, as written
    data: Any = read_json(path)
    if data is None and not path.exists():
        raise ConfigError(f"no manifest at {path} ({HOME_ENV} is {home()}). {HOW_TO_WRITE}")
    if not isinstance(data, dict):
        raise ConfigError(
            f"{path} must hold a JSON object with keys {', '.join(REQUIRED_KEYS)}; "
            f"it holds {type(data).__name__}. {HOW_TO_WRITE}"
        )
    where = str(path)
    fix = f"Edit the file or rewrite it: {HOW_TO_WRITE}"
    fields: dict[str, str] = {}
    for key in REQUIRED_KEYS:
        if key not in data:
            raise ConfigError(f"{path}: key {key!r} is missing. {fix}")
        fields[key] = _check_value(key, data[key], where=where, fix=fix)
    for key, default in OPTIONAL_KEYS.items():
        value = data.get(key, default)
        fields[key] = _check_value(key, value, where=where, fix=fix)
    return Manifest(**fields)
