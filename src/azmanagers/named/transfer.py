"""Export a named cluster's record to a file (0600) and import it on another machine."""

from __future__ import annotations

import json
import tempfile
from pathlib import Path

from azmanagers.config.paths import atomic_write_text
from azmanagers.errors import ConfigError
from azmanagers.named.handle import STORE, load_record
from azmanagers.state.clusters import CLUSTERS, ClusterRecord, check_cluster_name
from azmanagers.state.records import RecordStore

MAX_RECORD_BYTES = 1024 * 1024
"""A record holds a few certificates and keys: anything larger is not one."""


def export_record(name: str, path: str | Path) -> Path:
    """Write cluster ``name``'s record to ``path`` (mode 0600: it holds the client's key and
    the head's token). Another machine imports it with ``import_record``."""
    load_record(name)  # a clear error when there is none
    out = Path(path)
    if out.is_dir():
        raise ConfigError(f"{out} is a folder; give a file name, e.g. {out / (name + '.json')}.")
    try:
        atomic_write_text(out, STORE.path(name).read_text())
    except (OSError, ConfigError) as exc:
        cause = exc.__cause__ or exc
        raise ConfigError(f"cannot write {out} ({cause}); give a writable file path.") from None
    return out


def import_record(path: str | Path, *, replace: bool = False) -> ClusterRecord:
    """Record the cluster exported to ``path`` on this machine; return its record.

    Refuses a name this machine already records unless ``replace``.
    """
    source = Path(path)
    try:
        if source.stat().st_size > MAX_RECORD_BYTES:
            raise ConfigError(f"{source} is not a cluster record (larger than 1 MiB).")
        text = source.read_text(encoding="utf-8")
        name = json.loads(text)["name"]
    except (OSError, UnicodeDecodeError, ValueError, KeyError, TypeError) as exc:
        raise ConfigError(
            f"{source} is not a cluster record exported by `azm cluster export` ({exc})."
        ) from None
    check_cluster_name(name)
    with tempfile.TemporaryDirectory() as tmp:
        staging: RecordStore[ClusterRecord] = RecordStore(CLUSTERS, ClusterRecord, Path(tmp))
        staging.folder.mkdir(parents=True, mode=0o700)
        staged = staging.path(name)
        staged.touch(mode=0o600)  # as the store keeps records (else it warns and fixes)
        staged.write_text(text)
        record = staging.load(name)  # checks the schema version and every field
    if record is None:
        raise ConfigError(f"{source} is not a cluster record exported by `azm cluster export`.")
    if replace:
        return STORE.save(record)
    created = STORE.create(record)
    if created is None:
        raise ConfigError(
            f"this machine records a cluster named {name!r} already; pass --replace (replace="
            "True) to overwrite it with the imported one."
        )
    return created
