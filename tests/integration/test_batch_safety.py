"""A node's cache, packages and staging stay right when runs, archives or folders misbehave."""

from __future__ import annotations

import hashlib
import io
import os
import stat
import subprocess
import tarfile
import zipfile
from collections.abc import Iterator
from pathlib import Path

import pytest

import azmanagers
from azmanagers import batch
from azmanagers.batch import packages, staging
from azmanagers.batch.nodecache import NodeCache
from azmanagers.batch.packages import add_package, package_info
from azmanagers.batch.staging import InputRef, Stager
from azmanagers.errors import AzManagersError, BatchError, ConfigError
from azmanagers.storage.base import ObjectInfo, local_root
from azmanagers.storage.local import LocalStorage

pytestmark = pytest.mark.integration
DEADLINE_S = 120.0


def sha(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def cached_files(root: Path) -> list[Path]:
    return [p for p in (root / "cache").rglob("*") if p.is_file() and len(p.name) == 64]


# -- the node cache: F2, N1, F22 ----------------------------------------------------------------


def test_bytes_changed_in_storage_after_staging_are_refused_and_not_cached(tmp_path: Path) -> None:
    store = LocalStorage(tmp_path / "store")
    good = b"the staged table\n"
    # written by someone else: no recorded hash, so storage cannot verify it; the cache must
    (tmp_path / "store" / "job" / "inputs").mkdir(parents=True)
    (tmp_path / "store" / "job" / "inputs" / "t").write_bytes(b"EVIL, written by someone else")
    cache = NodeCache(root=tmp_path / "node")
    with pytest.raises(BatchError, match="job/inputs/t"):
        cache.file(store, "job/inputs/t", sha(good))
    # recorded, then overwritten: refused too (by storage or by the cache)
    store.put_bytes("job/inputs/u", good)
    (tmp_path / "store" / "job" / "inputs" / "u").write_bytes(b"EVIL, written by someone else")
    with pytest.raises(AzManagersError, match="job/inputs/u"):
        cache.file(store, "job/inputs/u", sha(good))
    assert cached_files(tmp_path / "node") == []


def test_a_cached_file_rewritten_in_place_is_fetched_again(tmp_path: Path) -> None:
    store = LocalStorage(tmp_path / "store")
    good = os.urandom(100_000)
    store.put_bytes("k", good)
    cache = NodeCache(root=tmp_path / "node")
    path = cache.file(store, "k", sha(good))
    assert stat.S_IMODE(path.stat().st_mode) == 0o444
    assert cache.file(store, "k", sha(good)) == path and cache.fetched_files == 1
    path.chmod(0o644)  # what a run can do through its link
    path.write_bytes(b"POISON\n")
    assert cache.file(store, "k", sha(good)).read_bytes() == good
    assert cache.fetched_files == 2
    # the same size, with the old modification time put back: still noticed
    before = path.stat()
    path.chmod(0o644)
    with open(path, "r+b") as handle:
        handle.write(b"X")
    os.utime(path, ns=(before.st_atime_ns, before.st_mtime_ns))
    assert cache.file(store, "k", sha(good)).read_bytes() == good
    assert cache.fetched_files == 3
    # only made writable: checked, kept (no fetch), read-only again
    path.chmod(0o644)
    assert cache.file(store, "k", sha(good)).read_bytes() == good
    assert cache.fetched_files == 3 and stat.S_IMODE(path.stat().st_mode) == 0o444


def test_a_run_that_rewrites_a_shared_input_does_not_poison_later_runs(tmp_path: Path) -> None:
    big = tmp_path / "big.dat"
    data = os.urandom(1_000_000)
    big.write_bytes(data)
    storage = (tmp_path / "runs").as_uri()
    cluster = azmanagers.addprocs("local", 1, waitfor=True, timeout=DEADLINE_S)
    poison = batch.Model(
        "poison", command="chmod u+w big.dat && echo POISON > big.dat", shared=[str(big)]
    )
    job = batch.submit(poison, name="poison", storage=storage, cluster=cluster, wait=True)
    assert job.status().status == "succeeded"
    victim = batch.Model(
        "victim",
        command="cat big.dat > seen.dat",
        shared=[str(big)],
        outputs=[batch.Output("seen.dat")],
    )
    job = batch.submit(victim, name="victim", storage=storage, cluster=cluster, wait=True)
    assert job.status().status == "succeeded"
    (run,) = job.runs()
    assert job.storage.get_bytes(run.outputs[0].key) == data


# -- packages: P1, P2, P3, and packages changed by runs -------------------------------------------


def zip_with(path: Path, members: list[tuple[str, bytes, int]]) -> Path:
    """A zip made on "Unix": (name, data, full st_mode) per member."""
    with zipfile.ZipFile(path, "w", zipfile.ZIP_DEFLATED) as zf:
        for name, data, mode in members:
            info = zipfile.ZipInfo(name)
            info.create_system = 3
            info.external_attr = mode << 16
            info.compress_type = zipfile.ZIP_DEFLATED
            zf.writestr(info, data)
    return path


def package_ref(store: LocalStorage, archive: Path, name: str = "tool") -> InputRef:
    info = add_package(store, name, "1", archive)
    return InputRef(info.source, "", info.key, info.sha256, info.size, False)


def test_a_zip_package_keeps_exec_bits_and_relative_links(tmp_path: Path) -> None:
    archive = zip_with(
        tmp_path / "good.zip",
        [
            ("bin/", b"", stat.S_IFDIR | 0o755),
            ("bin/tool", b"#!/bin/sh\necho ok\n", stat.S_IFREG | 0o755),
            ("lib/libfoo.so.1", b"library", stat.S_IFREG | 0o644),
            ("lib/libfoo.so", b"libfoo.so.1", stat.S_IFLNK | 0o777),
            ("bin/lib", b"../lib", stat.S_IFLNK | 0o777),
        ],
    )
    store = LocalStorage(tmp_path / "store")
    folder = NodeCache(root=tmp_path / "node").package(store, package_ref(store, archive), "t", "1")
    tool = folder / "bin" / "tool"
    assert stat.S_IMODE(tool.stat().st_mode) == 0o555  # executable, read-only
    out = subprocess.run([str(tool)], capture_output=True, text=True, timeout=30, check=True)
    assert out.stdout == "ok\n"
    assert os.readlink(folder / "lib" / "libfoo.so") == "libfoo.so.1"
    assert (folder / "bin" / "lib" / "libfoo.so").read_bytes() == b"library"


@pytest.mark.parametrize("target", [b"/etc/passwd", b"../../outside", b"../.."])
def test_a_zip_link_leaving_its_folder_is_refused(tmp_path: Path, target: bytes) -> None:
    archive = zip_with(tmp_path / "bad.zip", [("bin/link", target, stat.S_IFLNK | 0o777)])
    with pytest.raises(ConfigError, match="bin/link"):
        add_package(LocalStorage(tmp_path / "store"), "bad", "1", archive)
    # a registered archive that was never checked is refused on the node too
    store = LocalStorage(tmp_path / "raw")
    store.put_file(archive, "bad.zip")
    ref = InputRef("bad.zip", "", "bad.zip", sha(archive.read_bytes()), 1, False)
    with pytest.raises(BatchError, match="bin/link"):
        NodeCache(root=tmp_path / "node").package(store, ref, "bad", "1")
    assert not (tmp_path / "outside").exists()


def test_a_zip_whose_links_chain_out_of_the_folder_is_refused_on_the_node(tmp_path: Path) -> None:
    # each link looks inside on its own; together "q/x" would be written outside
    archive = zip_with(
        tmp_path / "chain.zip",
        [
            ("q", b"r/..", stat.S_IFLNK | 0o777),
            ("r", b".", stat.S_IFLNK | 0o777),
            ("q/x", b"owned", stat.S_IFREG | 0o644),
        ],
    )
    store = LocalStorage(tmp_path / "raw")
    store.put_file(archive, "chain.zip")
    ref = InputRef("chain.zip", "", "chain.zip", sha(archive.read_bytes()), 1, False)
    with pytest.raises(BatchError, match="outside"):
        NodeCache(root=tmp_path / "node").package(store, ref, "chain", "1")
    assert not list(tmp_path.rglob("x"))


def bad_tar(path: Path, kind: str) -> Path:
    with tarfile.open(path, "w") as tar:
        if kind == "dotdot":
            info = tarfile.TarInfo("../x.txt")
            info.size = 2
            tar.addfile(info, io.BytesIO(b"hi"))
        elif kind == "absolute":
            info = tarfile.TarInfo("/tmp/x.txt")
            info.size = 2
            tar.addfile(info, io.BytesIO(b"hi"))
        else:
            info = tarfile.TarInfo("link")
            info.type = tarfile.SYMTYPE
            info.linkname = "/etc/passwd"
            tar.addfile(info)
    return path


@pytest.mark.parametrize("kind", ["dotdot", "absolute", "abslink"])
def test_an_unsafe_tar_is_refused_at_package_add(tmp_path: Path, kind: str) -> None:
    store = LocalStorage(tmp_path / "store")
    with pytest.raises(ConfigError, match="rebuild"):
        add_package(store, "bad", "1", bad_tar(tmp_path / "bad.tar", kind))
    assert package_info(store, "bad", "1") is None


def test_a_folder_with_a_link_out_is_refused_at_package_add(tmp_path: Path) -> None:
    folder = tmp_path / "pkg"
    folder.mkdir()
    (folder / "passwd").symlink_to("/etc/passwd")
    with pytest.raises(ConfigError, match="passwd"):
        add_package(LocalStorage(tmp_path / "store"), "bad", "1", folder)


def test_a_package_that_unpacks_too_big_is_refused(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    bomb = zip_with(tmp_path / "bomb.zip", [("zeros", bytes(4_000_000), stat.S_IFREG | 0o644)])
    assert bomb.stat().st_size < 20_000  # over 200 times smaller than what it unpacks to
    store = LocalStorage(tmp_path / "store")
    ref = package_ref(store, bomb, "fine")  # small enough to be allowed whatever its ratio
    monkeypatch.setattr(packages, "EXPANSION_FREE_BYTES", 1_000_000)
    with pytest.raises(ConfigError, match="unpack"):
        add_package(store, "bomb", "1", bomb)
    with pytest.raises(BatchError, match="unpack"):
        NodeCache(root=tmp_path / "node").package(store, ref, "fine", "1")
    monkeypatch.setattr(packages, "EXPANSION_FREE_BYTES", 2**30)
    monkeypatch.setattr(packages, "MAX_UNPACKED_BYTES", 1_000_000)
    with pytest.raises(ConfigError, match="unpack"):
        add_package(store, "bomb", "2", bomb)


def test_a_package_changed_by_a_run_is_unpacked_again(tmp_path: Path) -> None:
    src = tmp_path / "src"
    (src / "bin").mkdir(parents=True)
    (src / "bin" / "tool").write_text("#!/bin/sh\necho ok\n")
    (src / "bin" / "tool").chmod(0o755)
    (src / "data.txt").write_text("table\n")
    store = LocalStorage(tmp_path / "store")
    ref = package_ref(store, src)
    cache = NodeCache(root=tmp_path / "node")
    folder = cache.package(store, ref, "tool", "1")
    assert not (folder / "data.txt").stat().st_mode & 0o222
    assert cache.package(store, ref, "tool", "1") == folder
    (folder / "data.txt").chmod(0o644)
    (folder / "data.txt").write_text("TABLE\n")  # same size
    assert (cache.package(store, ref, "tool", "1") / "data.txt").read_text() == "table\n"
    (folder / "bin" / "tool").unlink()
    assert (cache.package(store, ref, "tool", "1") / "bin" / "tool").exists()
    # a file a run adds (a __pycache__, a log) is not the package's: no unpacking again,
    # which would pull the folder from under runs that use it
    (folder / "bin" / "extra").write_text("left by a run")
    assert (cache.package(store, ref, "tool", "1") / "bin" / "extra").exists()


# -- staging: S2, SAS in messages, F21 ------------------------------------------------------------


def test_a_link_to_a_folder_in_a_folder_input_is_refused(tmp_path: Path) -> None:
    inp = tmp_path / "in1"
    inp.mkdir()
    (inp / "data.txt").write_text("data\n")
    (inp / "etclink").symlink_to("/etc")
    stager = Stager(LocalStorage(tmp_path / "store"), "job/")
    with pytest.raises(ConfigError, match=r"etclink.*copy it in, or give it as its own input"):
        stager.add(str(inp))
    (inp / "etclink").unlink()
    (inp / "loop").symlink_to(inp / "loop")
    with pytest.raises(ConfigError, match="loop"):
        stager.add(str(inp))


def test_links_to_files_in_a_folder_input_are_staged_as_their_content(tmp_path: Path) -> None:
    inp = tmp_path / "in1"
    inp.mkdir()
    (inp / "data.txt").write_text("data\n")
    outside = tmp_path / "outside.txt"
    outside.write_text("from outside\n")
    (inp / "out").symlink_to(outside)
    (inp / "same").symlink_to("data.txt")
    store = LocalStorage(tmp_path / "store")
    stager = Stager(store, "job/")
    ref = stager.add(str(inp))
    stager.flush()
    cache = NodeCache(root=tmp_path / "node")
    got = {item.rel: cached.read_bytes() for item, cached in cache.tree(store, ref)}
    assert got == {"data.txt": b"data\n", "out": b"from outside\n", "same": b"data\n"}


def test_staging_messages_never_show_a_query_string(tmp_path: Path) -> None:
    stager = Stager(LocalStorage(tmp_path / "store"), "job/")
    for url in (
        "https://acct.blob.core.windows.net/c/x.txt?sv=2024&sig=SECRETSIG",
        f"file://{tmp_path}/x.txt?sig=SECRETSIG",
    ):
        with pytest.raises(ConfigError) as caught:
            stager.add(url)
        assert "SECRETSIG" not in str(caught.value) and "x.txt" in str(caught.value)


class ForeignNames(LocalStorage):
    """A real folder storage whose listing also yields a name no call accepts, as a back-end
    listing objects written by other tools may (storage F21)."""

    def list(self, prefix: str = "") -> Iterator[ObjectInfo]:
        yield from super().list(prefix)
        yield ObjectInfo("c\tz.txt", 3, None, 0.0)


def test_a_storage_tree_with_a_name_storage_refuses_names_the_input(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    tree = tmp_path / "src" / "tree"
    tree.mkdir(parents=True)
    (tree / "ok.txt").write_text("ok")
    monkeypatch.setattr(staging, "open_storage", lambda url: ForeignNames(local_root(url)))
    stager = Stager(LocalStorage(tmp_path / "store"), "job/")
    with pytest.raises(ConfigError, match=r"src/tree/'.*c\\tz\.txt"):
        stager.add(f"file://{tmp_path}/src/tree/")
    with pytest.raises(ConfigError, match=r"input 'file:///x\.txt'"):
        Stager(LocalStorage(tmp_path / "store"), "job/").add("file:///x.txt")
