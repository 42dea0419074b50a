"""One contract for every storage back-end: file:// (a folder) and az:// (Blob on Azurite)."""

from __future__ import annotations

import contextlib
import dataclasses
import hashlib
import os
import pickle
import stat as statmod
import threading
import time
import uuid
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest
from azure.storage.blob import BlobServiceClient

from azmanagers.errors import (
    ConfigError,
    IntegrityError,
    StorageAccessError,
    StorageError,
    StorageNotFoundError,
)
from azmanagers.storage import Grant, Storage, is_storage_url, open_storage
from azmanagers.storage.base import Access

BIG_BYTES = (20 << 20) + 12345
"""A file of three 8 MiB blocks (the last one short)."""


@dataclass
class Backend:
    """A storage under test and the back-door ways to look at it that the contract needs."""

    kind: str
    store: Storage
    reopen: Callable[[], Storage]
    version: Callable[[str], object]  # changes whenever the object at key is rewritten
    tamper: Callable[[str, bytes], None]  # replace the bytes, keep our recorded hash
    record: Callable[[str, str], None]  # replace the recorded hash text, keep the bytes
    raw_put: Callable[[str, bytes], None]  # write an object by name, not through the seam
    raw: BlobServiceClient | None = None
    container: str = ""


def _file_backend(root: Path) -> Backend:
    def version(key: str) -> object:
        st = os.stat(root / key)
        return (st.st_ino, st.st_mtime_ns)

    def tamper(key: str, data: bytes) -> None:
        (root / key).write_bytes(data)

    def record(key: str, text: str) -> None:
        size = (root / key).stat().st_size
        (root / ".azm-meta" / key).write_text(f"{text} {size}\n")

    url = root.as_uri()
    return Backend(
        "file",
        open_storage(url),
        lambda: open_storage(url),
        version,
        tamper,
        record,
        lambda name, data: _write(root / name, data) and None,
    )


def _az_backend(connection_string: str) -> Backend:
    raw = BlobServiceClient.from_connection_string(connection_string)
    container = f"c{uuid.uuid4().hex[:20]}"
    url = f"az://{container}/root"

    def version(key: str) -> object:
        return raw.get_blob_client(container, f"root/{key}").get_blob_properties().etag

    def tamper(key: str, data: bytes) -> None:
        blob = raw.get_blob_client(container, f"root/{key}")
        metadata = blob.get_blob_properties().metadata
        blob.upload_blob(data, overwrite=True, metadata=metadata)

    def record(key: str, text: str) -> None:
        raw.get_blob_client(container, f"root/{key}").set_blob_metadata({"azm_sha256": text})

    def raw_put(name: str, data: bytes) -> None:
        raw.get_blob_client(container, f"root/{name}").upload_blob(data, overwrite=True)

    def reopen() -> Storage:
        return open_storage(url, connection_string=connection_string)

    return Backend(
        "az", reopen(), reopen, version, tamper, record, raw_put, raw=raw, container=container
    )


@pytest.fixture(params=["file", "az"])
def backend(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[Backend]:
    """A fresh, checked storage root of each kind (a new folder, or a new container)."""
    if request.param == "file":
        made = _file_backend(tmp_path / "store")
    else:
        made = _az_backend(request.getfixturevalue("azurite"))
    made.store.check()
    try:
        yield made
    finally:
        made.store.close()
        if made.raw is not None:
            made.raw.delete_container(made.container)
            made.raw.close()


def _write(path: Path, data: bytes) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(data)
    return path


# -- round trips ---------------------------------------------------------------------------
def test_a_file_and_bytes_round_trip_with_their_hash(backend: Backend, tmp_path: Path) -> None:
    store = backend.store
    data = os.urandom(5000)
    info = store.put_file(_write(tmp_path / "in.bin", data), "inputs/in.bin")
    assert (info.key, info.size, info.sha256) == ("inputs/in.bin", 5000, _sha(data))
    assert abs(info.modified - time.time()) < 120

    got = store.get_file("inputs/in.bin", tmp_path / "deep" / "down" / "out.bin")
    assert (tmp_path / "deep" / "down" / "out.bin").read_bytes() == data
    assert got.sha256 == info.sha256 and got.size == 5000
    assert store.stat("inputs/in.bin") == dataclasses.replace(info, modified=got.modified)

    put = store.put_bytes("runs/r1/run.json", b'{"status": "ok"}')
    assert put.sha256 == _sha(b'{"status": "ok"}')
    assert store.get_bytes("runs/r1/run.json") == b'{"status": "ok"}'
    store.put_bytes("runs/r1/run.json", b"second")  # overwrite
    assert store.get_bytes("runs/r1/run.json") == b"second"
    assert store.put_bytes("empty", b"").size == 0 and store.get_bytes("empty") == b""
    assert store.url_for("a/b") == store.url + "/a/b" and is_storage_url(store.url)


def test_the_same_content_is_not_uploaded_again(backend: Backend, tmp_path: Path) -> None:
    store = backend.store
    local = _write(tmp_path / "x.bin", os.urandom(3000))
    first = store.put_file(local, "k/x.bin")
    before = backend.version("k/x.bin")
    time.sleep(1.05)  # Blob ETags and mtimes would move on a rewrite
    again = store.put_file(local, "k/x.bin")
    with_hash = store.put_file(local, "k/x.bin", sha256=first.sha256)
    assert backend.version("k/x.bin") == before
    assert again.sha256 == with_hash.sha256 == first.sha256

    local.write_bytes(os.urandom(3000))  # same size, other bytes: uploaded
    changed = store.put_file(local, "k/x.bin")
    assert backend.version("k/x.bin") != before and changed.sha256 != first.sha256
    assert store.get_bytes("k/x.bin") == local.read_bytes()


def test_a_big_file_goes_in_blocks_and_comes_back_whole(backend: Backend, tmp_path: Path) -> None:
    store = backend.store
    data = os.urandom(BIG_BYTES)
    info = store.put_file(_write(tmp_path / "big.bin", data), "shared/big.bin")
    assert (info.size, info.sha256) == (BIG_BYTES, _sha(data))
    if backend.raw is not None:
        blob = backend.raw.get_blob_client(backend.container, "root/shared/big.bin")
        committed, _ = blob.get_block_list("committed")
        assert len(committed) == 3
        assert blob.get_blob_properties().metadata["azm_sha256"] == _sha(data)
    got = store.get_file("shared/big.bin", tmp_path / "back.bin")
    assert got.sha256 == info.sha256 and (tmp_path / "back.bin").read_bytes() == data
    assert store.get_bytes("shared/big.bin") == data
    big_bytes = os.urandom(9 << 20)
    store.put_bytes("shared/bytes.bin", big_bytes)
    assert store.get_bytes("shared/bytes.bin") == big_bytes


def test_many_files_in_parallel_and_skipped_when_unchanged(
    backend: Backend, tmp_path: Path
) -> None:
    store = backend.store
    pairs = [
        (_write(tmp_path / "src" / f"{i:03d}.dat", os.urandom(4096)), f"many/{i:03d}.dat")
        for i in range(120)
    ]
    infos = store.put_files(pairs)
    assert [i.key for i in infos] == [key for _, key in pairs]
    assert all(i.sha256 == _sha(p.read_bytes()) for (p, _), i in zip(pairs, infos, strict=True))
    before = [backend.version(key) for _, key in pairs]
    time.sleep(1.05)
    pairs[7][0].write_bytes(b"changed")
    store.put_files(pairs)
    after = [backend.version(key) for _, key in pairs]
    assert [i for i in range(120) if before[i] != after[i]] == [7]

    back = store.get_files([(key, tmp_path / "dst" / key) for _, key in pairs])
    assert [b.sha256 for b in back] == [_sha(p.read_bytes()) for p, _ in pairs]
    for path, key in pairs:
        assert (tmp_path / "dst" / key).read_bytes() == path.read_bytes()
    assert len(list(store.list("many/"))) == 120


# -- integrity and missing objects ----------------------------------------------------------
def test_tampered_bytes_fail_verification_and_leave_no_file(
    backend: Backend, tmp_path: Path
) -> None:
    store = backend.store
    for key, size in (("t/small", 4000), ("t/big", BIG_BYTES)):
        store.put_file(_write(tmp_path / key, os.urandom(size)), key)
        backend.tamper(key, os.urandom(size))
        target = tmp_path / "out" / key
        with pytest.raises(IntegrityError, match="SHA-256"):
            store.get_file(key, target)
        assert not target.parent.exists() or list(target.parent.iterdir()) == []
        with pytest.raises(IntegrityError):
            store.get_bytes(key)
        assert len(store.get_bytes(key, verify=False)) == size
        with pytest.raises(IntegrityError):
            store.get_files([(key, target)])


def test_missing_objects(backend: Backend, tmp_path: Path) -> None:
    store = backend.store
    with pytest.raises(StorageNotFoundError):
        store.get_file("no/such", tmp_path / "out")
    with pytest.raises(LookupError):
        store.get_bytes("no/such")
    assert not (tmp_path / "out").exists() and list(tmp_path.iterdir()) in (
        [],
        [tmp_path / "store"],
    )
    assert store.stat("no/such") is None
    store.delete("no/such")  # fine
    store.put_bytes("a/b/c", b"1")
    assert store.stat("a/b") is None  # a "folder" is no object
    store.delete("a/b/c")
    assert store.stat("a/b/c") is None and store.list_dirs() == [] and list(store.list()) == []


@pytest.mark.parametrize(
    "key",
    [
        "",
        "/abs",
        "a//b",
        "a/../b",
        "..",
        "./a",
        "a/.",
        "a\\b",
        "a\x00b",
        "a\nb",
        "x" * 1025,
        "surrogate/\ud800",
        "bidi/\u202etxt.exe",
        "line\u2028sep",
        "zero\u200bwidth",
        "long/" + "x" * 256,
        "long/" + "\u00e9" * 128,
        ".azm-meta/x",
        "a/.azm-tmp-1",
        "trailing/",
    ],
)
def test_bad_keys_are_refused_before_any_io(backend: Backend, tmp_path: Path, key: str) -> None:
    store = backend.store
    local = _write(tmp_path / "f", b"data")
    for call in (
        lambda: store.put_file(local, key),
        lambda: store.put_bytes(key, b"x"),
        lambda: store.get_file(key, tmp_path / "out"),
        lambda: store.get_bytes(key),
        lambda: store.stat(key),
        lambda: store.delete(key),
        lambda: store.put_files([(local, "ok"), (local, key)]),
    ):
        with pytest.raises(ConfigError):
            call()
    assert list(store.list()) == []  # not even the good key of the batch went up


def test_list_and_list_dirs(backend: Backend) -> None:
    store = backend.store
    keys = ["a/b/c.txt", "a/b-d", "a-x", "b/z/deep/1", "a/e.txt", "top"]
    for key in keys:
        store.put_bytes(key, key.encode())
    listed = list(store.list())
    assert [i.key for i in listed] == sorted(keys)
    assert all(i.sha256 == _sha(i.key.encode()) and i.size == len(i.key) for i in listed)
    assert [i.key for i in store.list("a/")] == ["a/b-d", "a/b/c.txt", "a/e.txt"]
    assert [i.key for i in store.list("a")] == ["a-x", "a/b-d", "a/b/c.txt", "a/e.txt"]
    assert [i.key for i in store.list("a/b")] == ["a/b-d", "a/b/c.txt"]
    assert list(store.list("nothing/")) == []
    assert store.list_dirs() == ["a", "b"]
    assert store.list_dirs("a") == store.list_dirs("a/") == ["b"]
    assert store.list_dirs("b/z") == ["deep"] and store.list_dirs("none") == []


def test_file_storage_keeps_hashes_aside_with_private_modes(tmp_path: Path) -> None:
    root = tmp_path / "made" / "here"
    store = open_storage(str(root))
    store.check()
    assert statmod.S_IMODE(root.stat().st_mode) == 0o700
    store.put_bytes("a/b/c", b"x")
    assert statmod.S_IMODE((root / "a" / "b").stat().st_mode) == 0o700
    assert statmod.S_IMODE((root / "a" / "b" / "c").stat().st_mode) == 0o600
    assert (root / ".azm-meta" / "a" / "b" / "c").read_text().split()[0] == _sha(b"x")
    assert [i.key for i in store.list()] == ["a/b/c"] and store.list_dirs() == ["a"]
    (root / "other").write_bytes(b"written by someone else")
    assert store.stat("other") is not None and store.stat("other").sha256 is None  # type: ignore[union-attr]
    assert store.get_bytes("other") == b"written by someone else"
    store.close()


# -- grants ----------------------------------------------------------------------------------
def test_a_read_only_grant_reads_its_prefix_and_nothing_else(backend: Backend) -> None:
    store = backend.store
    store.put_bytes("jobs/j1/in.txt", b"in")
    store.put_bytes("jobs/j2/secret.txt", b"other job")
    grant = store.grant("jobs/j1", ttl_s=600, write=False)
    assert grant.prefix == "jobs/j1/" and not grant.write and grant.url == store.url
    assert grant.expires_at == pytest.approx(time.time() + 600, abs=30)
    if backend.kind == "az":
        assert "sig=" in grant.token
    assert grant.token not in repr(grant) + str(grant) or not grant.token
    grant = pickle.loads(pickle.dumps(grant))
    with grant.open() as worker:  # type: ignore[attr-defined]
        assert worker.get_bytes("jobs/j1/in.txt") == b"in"
        assert [i.key for i in worker.list("jobs/j1/")] == ["jobs/j1/in.txt"]
        for refused in (
            lambda: worker.put_bytes("jobs/j1/out.txt", b"x"),
            lambda: worker.get_bytes("jobs/j2/secret.txt"),
            lambda: list(worker.list()),
            lambda: worker.delete("jobs/j1/in.txt"),
            lambda: worker.grant("jobs/j1/", ttl_s=60, write=True),
        ):
            with pytest.raises(StorageAccessError):
                refused()
    assert store.get_bytes("jobs/j1/in.txt") == b"in"


def test_a_write_grant_writes_its_prefix_but_never_deletes(backend: Backend) -> None:
    store = backend.store
    grant = store.grant("jobs/j1/", ttl_s=600, write=True)
    with grant.open() as worker:  # type: ignore[attr-defined]
        worker.put_bytes("jobs/j1/runs/r/out.txt", b"result")
        with pytest.raises(StorageAccessError):
            worker.put_bytes("jobs/j2/out.txt", b"x")
        with pytest.raises(StorageAccessError):
            worker.delete("jobs/j1/runs/r/out.txt")
    assert store.get_bytes("jobs/j1/runs/r/out.txt") == b"result"
    if backend.kind == "az":  # the service itself refuses, not only our client
        from azmanagers.storage.blob import open_granted

        unchecked = Access(prefix="", write=True, delete=True)
        with open_granted(grant.url, grant.endpoint, grant.token, unchecked) as raw:
            with pytest.raises(StorageAccessError) as refused:
                raw.delete("jobs/j1/runs/r/out.txt")
            assert "sig=" not in str(refused.value)
            raw.put_bytes("jobs/j2/out.txt", b"same container: the SAS allows it")
        assert store.stat("jobs/j1/runs/r/out.txt") is not None


def test_an_expired_grant_is_refused(backend: Backend) -> None:
    store = backend.store
    store.put_bytes("p/x", b"x")
    grant = store.grant("p/", ttl_s=1.0, write=False)
    time.sleep(2.1)
    with grant.open() as worker, pytest.raises(StorageAccessError, match="expired"):  # type: ignore[attr-defined]
        worker.get_bytes("p/x")
    if backend.kind == "az":  # a client that ignores the expiry: the service refuses
        stretched = dataclasses.replace(grant, expires_at=time.time() + 3600)
        with stretched.open() as worker, pytest.raises(StorageAccessError) as refused:  # type: ignore[attr-defined]
            worker.get_bytes("p/x")
        assert "expired" in str(refused.value) and grant.token not in str(refused.value)


def test_a_grant_does_not_open_another_container(backend: Backend) -> None:
    if backend.raw is None:
        pytest.skip("containers are a Blob notion")
    other = f"c{uuid.uuid4().hex[:20]}"
    backend.raw.create_container(other)
    try:
        backend.raw.get_blob_client(other, "root/p/x").upload_blob(b"other")
        grant = backend.store.grant("p/", ttl_s=600, write=True)
        moved = dataclasses.replace(grant, url=f"az://{other}/root")
        with moved.open() as worker:  # type: ignore[attr-defined]
            with pytest.raises(StorageAccessError):
                worker.get_bytes("p/x")
            with pytest.raises(StorageAccessError):
                worker.put_bytes("p/y", b"y")
    finally:
        backend.raw.delete_container(other)


# -- opening and checking ---------------------------------------------------------------------
def test_open_storage_refuses_bad_urls(monkeypatch: pytest.MonkeyPatch) -> None:
    for bad, words in (
        ("s3://bucket/x", "unknown scheme"),
        ("relative/path", "relative path; use an absolute path or file:///"),
        ("~/x", "relative path"),
        ("file://host/x", "file:///"),
        ("file://relative", "file:///"),
        ("az://A_B/x", "container"),
        ("az://ab", "container"),
        ("az://good-name/../x", "prefix"),
    ):
        with pytest.raises(ConfigError, match=words):
            open_storage(bad)
    for name in (
        "AZURE_STORAGE_CONNECTION_STRING",
        "AZURE_STORAGE_ACCOUNT_URL",
        "AZURE_STORAGE_ACCOUNT",
    ):
        monkeypatch.delenv(name, raising=False)
    with pytest.raises(ConfigError, match="AZMANAGERS_STORAGE_CONNECTION_STRING"):
        open_storage("az://container/prefix")
    assert is_storage_url("az://c/p") and is_storage_url("file:///x")
    assert not is_storage_url("/abs/path") and not is_storage_url("rel/file.txt")


def test_an_unreachable_account_is_one_clear_error(monkeypatch: pytest.MonkeyPatch) -> None:
    key = "a2V5a2V5a2V5"
    monkeypatch.setenv(
        "AZMANAGERS_STORAGE_CONNECTION_STRING",
        f"DefaultEndpointsProtocol=http;AccountName=acct;AccountKey={key};"
        "BlobEndpoint=http://127.0.0.1:9/acct;",
    )
    store = open_storage("az://somewhere/p")
    assert key not in repr(store)
    started = time.monotonic()
    with pytest.raises(StorageError, match=r"127\.0\.0\.1:9") as failed:
        store.check()
    assert key not in str(failed.value) and time.monotonic() - started < 30
    store.close()


def test_grant_arguments_are_checked(backend: Backend) -> None:
    for ttl in (0, -1, float("inf")):
        with pytest.raises(ConfigError, match="ttl_s"):
            backend.store.grant("p/", ttl_s=ttl, write=False)
    with pytest.raises(ConfigError):
        backend.store.grant("../p", ttl_s=60, write=False)
    assert isinstance(backend.store.grant("", ttl_s=60, write=False), Grant)


# -- recorded hashes that do not fit (F1, F4) -------------------------------------------------
def test_a_recorded_hash_is_read_one_way_and_a_bad_one_fails_verified_reads(
    backend: Backend, tmp_path: Path
) -> None:
    store = backend.store
    data = b"hello world"
    store.put_bytes("h/upper", data)
    backend.record("h/upper", _sha(data).upper())  # the same hash, in capitals: fine
    assert store.get_bytes("h/upper") == data
    assert store.stat("h/upper").sha256 == _sha(data)  # type: ignore[union-attr]
    store.put_bytes("h/garbage", data)
    backend.record("h/garbage", "ABC")
    assert store.stat("h/garbage").sha256 is None  # type: ignore[union-attr]
    assert [i.sha256 for i in store.list("h/garbage")] == [None]
    with pytest.raises(IntegrityError):
        store.get_bytes("h/garbage")
    with pytest.raises(IntegrityError):
        store.get_file("h/garbage", tmp_path / "out")
    assert not (tmp_path / "out").exists()
    assert store.get_bytes("h/garbage", verify=False) == data


def test_file_an_object_whose_size_changed_fails_verified_reads(tmp_path: Path) -> None:
    root = tmp_path / "store"
    store = open_storage(str(root))
    store.put_bytes("a.txt", b"hello world")
    (root / "a.txt").write_bytes(b"hello world!!")  # appended outside the seam
    with pytest.raises(IntegrityError):
        store.get_bytes("a.txt")
    with pytest.raises(IntegrityError):
        store.get_file("a.txt", tmp_path / "a.txt")
    assert store.stat("a.txt").sha256 is None  # type: ignore[union-attr]
    (root / ".azm-meta" / "a.txt").unlink()  # no sidecar: written by someone else
    assert store.get_bytes("a.txt") == b"hello world!!"
    store.close()


# -- file:// writers keep data and sidecar in step (F5, F6, F7) -------------------------------
def test_file_racing_writers_never_leave_a_sidecar_that_lies(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    store = open_storage(str(tmp_path / "store"))
    target = str(tmp_path / "store" / "k")
    real_replace = os.replace
    slow = threading.Event()

    def replace(src: object, dst: object) -> None:  # writer A pauses after its data lands
        real_replace(src, dst)  # type: ignore[arg-type]
        if str(dst) == target and threading.current_thread().name == "A":
            slow.set()
            time.sleep(0.5)

    monkeypatch.setattr(os, "replace", replace)
    a = threading.Thread(target=store.put_bytes, args=("k", b"A" * 100), name="A")
    a.start()
    slow.wait(10)
    store.put_bytes("k", b"B" * 100)
    a.join()
    data = store.get_bytes("k")
    assert store.stat("k").sha256 in (_sha(data), None)  # type: ignore[union-attr]
    store.close()


def test_file_put_records_the_hash_of_the_bytes_it_copied(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    import azmanagers.storage.local as local

    store = open_storage(str(tmp_path / "store"))
    source = _write(tmp_path / "src.bin", b"x" * 5000)
    real = local.sha256_file

    def hash_then_change(path: Path) -> str:  # a writer still appending to its output
        digest = real(path)
        with open(path, "r+b") as handle:
            handle.seek(-1, os.SEEK_END)
            handle.write(b"y")
        return digest

    monkeypatch.setattr(local, "sha256_file", hash_then_change)
    store.put_bytes("k", b"z" * 5000)  # same size: put_file hashes to decide whether to skip
    for key in ("fresh", "k"):
        info = store.put_file(source, key)
        assert info.sha256 == _sha(store.get_bytes(key))  # no IntegrityError, and no lie
    store.close()


def test_download_temps_are_named_for_their_target_and_old_put_temps_are_swept(
    backend: Backend, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    import tempfile

    store = backend.store
    store.put_bytes("d/x.bin", b"x")
    made: list[tuple[str, str]] = []
    real = tempfile.mkstemp

    def mkstemp(**kwargs: str) -> tuple[int, str]:
        fd, name = real(**kwargs)  # type: ignore[call-overload]
        made.append((str(kwargs.get("dir")), os.path.basename(name)))
        return fd, name  # type: ignore[no-any-return]

    monkeypatch.setattr(tempfile, "mkstemp", mkstemp)
    store.get_file("d/x.bin", tmp_path / "dl" / "x.bin")
    assert next(n for d, n in made if d == str(tmp_path / "dl")).startswith(".x.bin.azm-part-")
    monkeypatch.undo()
    if backend.kind == "file":
        folder = tmp_path / "store" / "d"
        old, new = folder / ".azm-tmp-old", folder / ".azm-tmp-new"
        old.write_bytes(b"left by a killed put")
        new.write_bytes(b"a put running now")
        os.utime(old, (time.time() - 7200, time.time() - 7200))
        fresh = backend.reopen()
        fresh.put_bytes("d/y.bin", b"y")
        assert not old.exists() and new.exists()
        fresh.close()


# -- file:// stays inside its root (F8, F9) ---------------------------------------------------
def test_file_storage_never_follows_links_out_of_its_root(tmp_path: Path) -> None:
    outside = tmp_path / "outside"
    _write(outside / "secret", b"SECRET")
    root = tmp_path / "store"
    store = open_storage(str(root))
    store.put_bytes("jobs/a/in.txt", b"in")
    os.symlink(outside, root / "jobs" / "a" / "esc")
    os.symlink(outside / "secret", root / "jobs" / "a" / "filelink")
    grant = store.grant("jobs/a/", ttl_s=600, write=True)
    with grant.open() as worker:  # type: ignore[attr-defined]
        for who in (store, worker):
            for refused in (
                lambda who=who: who.get_bytes("jobs/a/esc/secret"),
                lambda who=who: who.get_bytes("jobs/a/filelink"),
                lambda who=who: who.get_file("jobs/a/filelink", tmp_path / "got"),
                lambda who=who: who.stat("jobs/a/esc/secret"),
                lambda who=who: who.put_bytes("jobs/a/esc/planted", b"x"),
                lambda who=who: who.put_file(outside / "secret", "jobs/a/filelink"),
            ):
                with pytest.raises(StorageAccessError, match="link"):
                    refused()
            assert [i.key for i in who.list("jobs/a/")] == ["jobs/a/in.txt"]
            assert who.list_dirs("jobs/a/") == []
    for refused in (
        lambda: store.delete("jobs/a/esc/secret"),
        lambda: store.delete("jobs/a/filelink"),
    ):
        with pytest.raises(StorageAccessError):
            refused()
    assert (outside / "secret").read_bytes() == b"SECRET"
    assert sorted(os.listdir(outside)) == ["secret"] and not (tmp_path / "got").exists()
    store.close()


def test_file_roots_are_canonical_and_never_the_whole_file_system(tmp_path: Path) -> None:
    for bad in ("file:///", "/", "file:///tmp/..", "FILE:///"):
        with pytest.raises(ConfigError, match="root of the file system"):
            open_storage(bad)
    assert open_storage(f"{tmp_path}/a/../b/").url == (tmp_path / "b").as_uri()
    assert open_storage(f"FILE://{tmp_path}/c").url == (tmp_path / "c").as_uri()
    assert is_storage_url("AZ://c/p") and is_storage_url("File:///x")


# -- keys and URLs (F11, F12, F23) -------------------------------------------------------------
def test_a_blob_name_longer_than_blob_allows_is_refused_up_front(backend: Backend) -> None:
    key = "/".join(["x" * 200] * 5) + "/" + "y" * 15  # 1,020 characters; az:// adds "root/"
    if backend.kind == "az":
        with pytest.raises(ConfigError, match="1024"):
            backend.store.put_bytes(key, b"x")
        assert list(backend.store.list()) == []
    else:
        backend.store.put_bytes(key, b"x")
        assert backend.store.get_bytes(key) == b"x"


def test_urls_in_messages_never_show_their_query() -> None:
    for url, words in (
        ("https://acct.blob.core.windows.net/c/x?sv=2024&sig=SECRETSIG", "use az://container"),
        ("az://cont/x?sv=2024&sig=SECRETSIG", "no query"),
        ("s3://b/x?sig=SECRETSIG", "unknown scheme"),
        ("file://host/x?sig=SECRETSIG", "file:///"),
    ):
        with pytest.raises(ConfigError, match=words) as refused:
            open_storage(url)
        assert "SECRETSIG" not in str(refused.value)


# -- local paths, duplicates and folders (F19) ---------------------------------------------------
def test_bad_local_paths_duplicate_keys_and_folder_keys(backend: Backend, tmp_path: Path) -> None:
    store = backend.store
    store.put_bytes("c/d", b"d")
    (tmp_path / "dir").mkdir()
    _write(tmp_path / "plain", b"p")
    for local in (tmp_path / "dir", tmp_path / "plain" / "under"):
        with pytest.raises(ConfigError, match=str(local)):
            store.get_file("c/d", local)
        with pytest.raises(ConfigError, match=str(local)):
            store.get_files([("c/d", local)])
    assert sorted(os.listdir(tmp_path / "dir")) == []
    one, two = _write(tmp_path / "1", b"1"), _write(tmp_path / "2", b"2")
    with pytest.raises(ConfigError, match="twice"):
        store.put_files([(one, "dup"), (two, "dup")])
    assert store.stat("dup") is None
    store.delete("c")  # a "folder": no object, nothing deleted, as on every back-end
    assert store.get_bytes("c/d") == b"d"
    with pytest.raises(ConfigError, match="ttl_s"):
        store.grant("p/", ttl_s=True, write=False)


# -- listings skip names no call accepts (F21) ---------------------------------------------------
def test_listings_skip_names_no_call_accepts(backend: Backend) -> None:
    store = backend.store
    store.put_bytes("tree/ok.txt", b"ok")
    backend.raw_put("tree/bidi\u202etxt", b"b")
    backend.raw_put("tree/.azm-x/y", b"y")
    if backend.kind == "az":
        backend.raw_put("tree/a//b", b"b")
        backend.raw_put("tree/trail/", b"t")
    assert [i.key for i in store.list("tree/")] == ["tree/ok.txt"]
    assert ".azm-x" not in store.list_dirs("tree/")
    for info in store.list():
        store.get_bytes(info.key)


# -- bounded waits, racing writers and readers, failing batches (F15, F16, F17, F18) -----------
def test_a_silent_endpoint_is_reported_by_check_within_seconds() -> None:
    import socket

    listener = socket.socket()
    listener.bind(("127.0.0.1", 0))
    listener.listen(16)
    held: list[socket.socket] = []
    stop = threading.Event()

    def accept_and_say_nothing() -> None:
        listener.settimeout(0.2)
        while not stop.is_set():
            with contextlib.suppress(OSError):
                held.append(listener.accept()[0])

    server = threading.Thread(target=accept_and_say_nothing, daemon=True)
    server.start()
    port = listener.getsockname()[1]
    store = open_storage(
        "az://blackhole/p",
        connection_string="DefaultEndpointsProtocol=http;AccountName=acct;"
        f"AccountKey=a2V5a2V5a2V5;BlobEndpoint=http://127.0.0.1:{port}/acct;",
    )
    failures: list[BaseException] = []

    def check() -> None:
        try:
            store.check()
        except BaseException as exc:
            failures.append(exc)

    checker = threading.Thread(target=check, daemon=True)
    started = time.monotonic()
    checker.start()
    checker.join(20)
    try:
        assert not checker.is_alive(), "check() still waiting after 20 s"
        assert time.monotonic() - started < 16
        assert len(failures) == 1 and isinstance(failures[0], StorageError)
    finally:
        stop.set()
        server.join()
        for conn in held:
            conn.close()
        listener.close()
        if not checker.is_alive():
            store.close()


def _put_at_once(stores: list[Storage], source: Path, key: str) -> list[object]:
    """put_file ``source`` to ``key`` from every store at the same instant; infos or errors."""
    barrier = threading.Barrier(len(stores))
    results: list[object] = []

    def put(store: Storage) -> None:
        barrier.wait()
        try:
            results.append(store.put_file(source, key))
        except Exception as exc:
            results.append(exc)

    threads = [threading.Thread(target=put, args=(s,)) for s in stores]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    return results


def test_two_writers_of_the_same_big_content_both_succeed(backend: Backend, tmp_path: Path) -> None:
    data = os.urandom(BIG_BYTES)
    source = _write(tmp_path / "same.bin", data)
    stores = [backend.reopen(), backend.reopen()]
    try:
        for round_ in range(2):
            results = _put_at_once(stores, source, f"inputs/same{round_}")
            assert [getattr(r, "sha256", r) for r in results] == [_sha(data)] * 2
            assert backend.store.get_bytes(f"inputs/same{round_}") == data
    finally:
        for store in stores:
            store.close()


def test_a_reader_racing_a_writer_gets_whole_objects_or_a_clear_error(backend: Backend) -> None:
    store = backend.store
    versions = [bytes([65 + i]) * (17 << 20) for i in range(2)]
    store.put_bytes("busy", versions[0])
    stop = threading.Event()

    def write() -> None:
        with backend.reopen() as writer:  # type: ignore[attr-defined]
            i = 0
            while not stop.is_set():
                i += 1
                writer.put_bytes("busy", versions[i % 2])

    writer = threading.Thread(target=write)
    writer.start()
    try:
        for _ in range(6):
            try:
                assert store.get_bytes("busy") in versions
            except StorageError as exc:
                assert "kept changing while being read; try again" in str(exc)
                assert "StorageErrorCode" not in str(exc)
    finally:
        stop.set()
        writer.join()


def test_a_failing_batch_returns_only_when_no_transfer_runs(
    backend: Backend, tmp_path: Path
) -> None:
    store = backend.store
    sources = [_write(tmp_path / "src" / f"b{i}", os.urandom(16 << 20)) for i in range(6)]
    store.put_files([(path, f"big/b{i}") for i, path in enumerate(sources)])
    out = tmp_path / "dl"
    out.mkdir()
    pairs = [("big/missing", out / "m")] + [(f"big/b{i}", out / f"b{i}") for i in range(6)]
    with pytest.raises(StorageNotFoundError):
        store.get_files(pairs)
    seen = sorted(os.listdir(out))
    time.sleep(1.0)
    assert sorted(os.listdir(out)) == seen
    assert not [name for name in seen if ".azm-" in name]


def _sha(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()
