"""file:// puts that make folders only when needed, name temps cheaply and still check links."""

from __future__ import annotations

import hashlib
import os
import stat
from pathlib import Path

import pytest

from azmanagers.errors import ConfigError, StorageAccessError
from azmanagers.storage.local import LocalStorage
from azmanagers.storage.local_meta import META_DIR, TEMP_PREFIX


def _temps(root: Path) -> list[Path]:
    return [p for p in root.rglob("*") if p.name.startswith(TEMP_PREFIX)]


def test_a_put_makes_missing_folders_private_and_leaves_no_temp(tmp_path: Path) -> None:
    root = tmp_path / "store"
    with LocalStorage(root) as store:
        info = store.put_bytes("job/runs/r1/attempt-1/outputs/out.txt", b"x")
        assert info.sha256 == hashlib.sha256(b"x").hexdigest()
        for folder in ("job", "job/runs/r1", "job/runs/r1/attempt-1/outputs"):
            for base in (root, root / META_DIR):
                assert stat.S_IMODE((base / folder).stat().st_mode) == 0o700
        data = root / "job/runs/r1/attempt-1/outputs/out.txt"
        assert stat.S_IMODE(data.stat().st_mode) == 0o600
        assert _temps(root) == []
        assert store.get_bytes("job/runs/r1/attempt-1/outputs/out.txt") == b"x"


def test_a_folder_pruned_by_a_delete_is_made_again_by_the_next_put(tmp_path: Path) -> None:
    root = tmp_path / "store"
    with LocalStorage(root) as store:
        store.put_bytes("a/b/c.txt", b"1")
        store.delete("a/b/c.txt")
        assert not (root / "a").exists() and not (root / META_DIR / "a").exists()
        store.put_bytes("a/b/d.txt", b"2")  # the same instance: no stale "folder exists"
        assert store.get_bytes("a/b/d.txt") == b"2"
        assert store.stat("a/b/d.txt").sha256 == hashlib.sha256(b"2").hexdigest()  # type: ignore[union-attr]


def test_a_key_under_an_object_or_over_a_folder_is_refused(tmp_path: Path) -> None:
    with LocalStorage(tmp_path / "store") as store:
        store.put_bytes("a/b", b"object")
        with pytest.raises(ConfigError, match="not a folder"):
            store.put_bytes("a/b/c", b"x")
        store.put_bytes("d/e", b"x")
        with pytest.raises(ConfigError, match="folder"):
            store.put_bytes("d", b"x")
        assert _temps(tmp_path / "store") == []


def test_a_link_anywhere_under_the_root_is_refused_but_the_root_may_be_a_link(
    tmp_path: Path,
) -> None:
    real = tmp_path / "real"
    real.mkdir()
    (tmp_path / "alias").symlink_to(real)
    outside = tmp_path / "outside"
    outside.mkdir()
    with LocalStorage(tmp_path / "alias") as store:
        store.put_bytes("jobs/a/in.txt", b"in")
        assert (real / "jobs" / "a" / "in.txt").read_bytes() == b"in"
        os.symlink(outside, real / "jobs" / "a" / "deep")
        for key in ("jobs/a/deep/x", "jobs/a/deep/y/z"):
            with pytest.raises(StorageAccessError, match="link"):
                store.put_bytes(key, b"x")
        os.symlink(outside, real / "jobs" / "b")
        with pytest.raises(StorageAccessError, match="link"):
            store.put_bytes("jobs/b/x", b"x")
    assert list(outside.iterdir()) == []


def test_temps_of_two_instances_never_clash(tmp_path: Path) -> None:
    root = tmp_path / "store"
    one, two = LocalStorage(root), LocalStorage(root)
    for i in range(50):
        (one if i % 2 else two).put_bytes(f"k/{i}", str(i).encode())
    assert sorted(int(i.key.split("/")[1]) for i in one.list("k/")) == list(range(50))
    assert _temps(root) == []
    one.close()
    two.close()
