"""The node cache trusts a cached copy only as it was when hashed, never a change made meanwhile."""

from __future__ import annotations

import hashlib
import os
from collections.abc import Callable
from pathlib import Path

import pytest

from azmanagers.batch import nodecache
from azmanagers.batch.nodecache import NodeCache
from azmanagers.storage.hashing import sha256_file
from azmanagers.storage.local import LocalStorage

GOOD = os.urandom(200_000)
SHA = hashlib.sha256(GOOD).hexdigest()


def cached(tmp_path: Path) -> tuple[LocalStorage, NodeCache, Path]:
    """A storage holding GOOD at "k", and a node cache that fetched it once."""
    store = LocalStorage(tmp_path / "store")
    store.put_bytes("k", GOOD)
    cache = NodeCache(root=tmp_path / "node")
    path = cache.file(store, "k", SHA)
    assert cache.fetched_files == 1 and path.read_bytes() == GOOD
    return store, cache, path


def hashing_then(monkeypatch: pytest.MonkeyPatch, change: Callable[[Path], None]) -> list[Path]:
    """Make the cache's hash read the file, then ``change`` it (once): a run that writes to
    the copy while it is being checked. Returns the paths hashed."""
    hashed: list[Path] = []

    def racing(path: Path) -> str:
        digest = sha256_file(path)
        if not hashed:
            change(Path(path))
        hashed.append(Path(path))
        return digest

    monkeypatch.setattr(nodecache, "sha256_file", racing)
    return hashed


def rewrite_keeping_size_and_mtime(path: Path) -> None:
    before = path.stat()
    path.chmod(0o644)
    with open(path, "r+b") as handle:
        handle.write(b"POISON")
    os.utime(path, ns=(before.st_atime_ns, before.st_mtime_ns))


def replace_with_other_bytes(path: Path) -> None:
    other = path.with_name("other")
    other.write_bytes(b"P" * len(GOOD))
    os.replace(other, path)


@pytest.mark.parametrize("change", [rewrite_keeping_size_and_mtime, replace_with_other_bytes])
def test_a_copy_changed_while_it_is_hashed_is_fetched_again_and_not_stamped(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, change: Callable[[Path], None]
) -> None:
    store, cache, path = cached(tmp_path)
    monkeypatch.setattr(nodecache, "STAMP_SETTLE_S", 0.0)
    hashed = hashing_then(monkeypatch, change)
    assert cache.file(store, "k", SHA) == path
    assert hashed == [path]  # it was checked, and changed under the check
    assert path.read_bytes() == GOOD and cache.fetched_files == 2
    assert not path.with_name(f"{SHA}.stamp").exists()


def test_a_copy_checked_clean_is_stamped_with_what_was_hashed(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    store, cache, path = cached(tmp_path)
    monkeypatch.setattr(nodecache, "STAMP_SETTLE_S", 0.0)
    hashed = hashing_then(monkeypatch, lambda _: None)
    assert cache.file(store, "k", SHA) == path and cache.fetched_files == 1
    assert path.with_name(f"{SHA}.stamp").exists() and len(hashed) == 1
    assert cache.file(store, "k", SHA) == path and len(hashed) == 1  # the stamp is trusted
    rewrite_keeping_size_and_mtime(path)  # after the stamp: its ctime differs
    assert cache.file(store, "k", SHA).read_bytes() == GOOD and cache.fetched_files == 2


def test_a_copy_changed_just_before_its_check_gets_no_stamp_yet(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    # a change in the clock tick of the last one can keep every stat field: such a copy is
    # hashed again at each reuse until it is older than STAMP_SETTLE_S
    store, cache, path = cached(tmp_path)
    monkeypatch.setattr(nodecache, "STAMP_SETTLE_S", 3600.0)
    hashed = hashing_then(monkeypatch, lambda _: None)
    for uses in (1, 2):
        assert cache.file(store, "k", SHA) == path and len(hashed) == uses
        assert not path.with_name(f"{SHA}.stamp").exists()
    assert cache.fetched_files == 1


def test_a_link_in_place_of_the_copy_is_not_trusted(tmp_path: Path) -> None:
    store, cache, path = cached(tmp_path)
    elsewhere = tmp_path / "elsewhere"
    elsewhere.write_bytes(GOOD)  # the right bytes, but not the cache's own file
    path.unlink()
    path.symlink_to(elsewhere)
    assert cache.file(store, "k", SHA) == path and cache.fetched_files == 2
    assert not path.is_symlink() and path.read_bytes() == GOOD
