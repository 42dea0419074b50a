"""Which files of a run are outputs, and how staged folders and packages are placed safely."""

from __future__ import annotations

import io
import tarfile
import zipfile
from pathlib import Path

import pytest
from hypothesis import given
from hypothesis import strategies as st

from azmanagers.batch.model import Output
from azmanagers.batch.nodecache import _safe_rel, _unpack
from azmanagers.batch.outputs import (
    collect_outputs,
    glob_regex,
    run_files,
    selected,
    upload_outputs,
)
from azmanagers.errors import BatchError
from azmanagers.storage.local import LocalStorage


@pytest.mark.parametrize(
    ("pattern", "path", "matches"),
    [
        ("*.log", "run.log", True),
        ("*.log", "sub/run.log", False),
        ("**/*.log", "sub/deep/run.log", True),
        ("**/*.log", "run.log", True),
        ("output/**", "output/a/b.txt", True),
        ("output/**", "outputs/a.txt", False),
        ("out?.txt", "out1.txt", True),
        ("out?.txt", "out/.txt", False),
        ("[ab].txt", "a.txt", True),
        ("[!ab].txt", "a.txt", False),
        ("a+b(1).txt", "a+b(1).txt", True),
        ("**", "anything/at/all", True),
    ],
)
def test_globs_keep_single_stars_in_one_folder(pattern: str, path: str, matches: bool) -> None:
    assert bool(glob_regex(pattern).match(path)) is matches


@given(st.text(alphabet="abc/.*?", max_size=12), st.text(alphabet="abc/.", max_size=12))
def test_a_glob_never_raises_and_a_literal_matches_itself(pattern: str, path: str) -> None:
    glob_regex(pattern).match(path)
    literal = pattern.replace("*", "").replace("?", "")
    assert glob_regex(literal).match(literal)


def test_outputs_follow_their_condition() -> None:
    outputs = [Output("ok.txt"), Output("bad.txt", when="failure"), Output("*.log", when="always")]
    files = ["ok.txt", "bad.txt", "run.log", "other"]
    assert selected(outputs, files, succeeded=True) == ["ok.txt", "run.log"]
    assert selected(outputs, files, succeeded=False) == ["bad.txt", "run.log"]


def test_links_out_of_the_run_folder_are_never_outputs(tmp_path: Path) -> None:
    run = tmp_path / "run"
    (run / "sub").mkdir(parents=True)
    (run / "real.txt").write_text("mine")
    (run / "sub" / "inside").symlink_to(run / "real.txt")
    secret = tmp_path / "secret.txt"
    secret.write_text("not an output")
    (run / "passwd").symlink_to(secret)
    (run / "loop").symlink_to(run / "loop")
    assert run_files(run) == ["real.txt", "sub/inside"]


@pytest.mark.parametrize("rel", ["../x", "/etc/passwd", "a/../../x", ""])
def test_a_manifest_path_that_escapes_is_refused(rel: str) -> None:
    with pytest.raises(BatchError, match="escapes"):
        _safe_rel(rel)


def test_a_package_archive_cannot_write_outside_its_folder(tmp_path: Path) -> None:
    evil = tmp_path / "evil.tar"
    with tarfile.open(evil, "w") as tar:
        data = b"owned"
        info = tarfile.TarInfo("../escaped.txt")
        info.size = len(data)
        tar.addfile(info, io.BytesIO(data))
    folder = tmp_path / "pkg"
    folder.mkdir()
    with pytest.raises(BatchError, match=r"'\.\./escaped\.txt' would be unpacked outside"):
        _unpack(evil, folder, "evil.tar")
    assert not (tmp_path / "escaped.txt").exists()

    zipped = tmp_path / "evil.zip"
    with zipfile.ZipFile(zipped, "w") as zf:
        zf.writestr("../zipped.txt", "owned")
    with pytest.raises(BatchError, match=r"evil\.zip: member '\.\./zipped\.txt' would be"):
        _unpack(zipped, folder, "evil.zip")
    assert not (tmp_path / "zipped.txt").exists()


def test_a_plain_file_package_is_placed_executable(tmp_path: Path) -> None:
    tool = tmp_path / "tool"
    tool.write_text("#!/bin/sh\necho hi\n")
    folder = tmp_path / "pkg"
    folder.mkdir()
    _unpack(tool, folder, "dist/tool")
    assert (folder / "tool").stat().st_mode & 0o111


def test_an_output_whose_name_cannot_be_a_key_does_not_lose_the_others(tmp_path: Path) -> None:
    run = tmp_path / "run"
    (run / ".azm-x").mkdir(parents=True)
    (run / "good.txt").write_text("good\n")
    for odd in ("c\tz.txt", "x\\y.txt", "new\nline", ".azm-x/y.txt"):
        (run / odd).write_text("odd")
    store = LocalStorage(tmp_path / "store")
    done = upload_outputs(store, run, [Output("**")], "job/out/", succeeded=True)
    assert [f.path for f in done.files] == ["good.txt"]
    assert store.get_bytes("job/out/good.txt") == b"good\n"
    assert sorted(done.skipped) == sorted([".azm-x/y.txt", "c\tz.txt", "new\nline", "x\\y.txt"])
    assert "'c\\tz.txt'" in done.error and "cannot be storage keys" in done.error
    kept = collect_outputs(store, run, [Output("*.txt")], "job/again/", succeeded=True)
    assert [f.path for f in kept] == ["good.txt"]
    assert upload_outputs(store, run, [Output("good.txt")], "p/", succeeded=True).error == ""


def test_a_package_is_unpacked_again_only_when_its_own_files_change(tmp_path: Path) -> None:
    from azmanagers.batch.nodecache import NodeCache
    from azmanagers.batch.staging import Stager
    from azmanagers.storage import open_storage

    archive = tmp_path / "tool.tar.gz"
    (tmp_path / "src" / "bin").mkdir(parents=True)
    (tmp_path / "src" / "bin" / "tool").write_text("#!/bin/sh\necho 1\n")
    with tarfile.open(archive, "w:gz") as tar:
        tar.add(tmp_path / "src" / "bin", arcname="bin")
    storage = open_storage((tmp_path / "store").as_uri())
    stager = Stager(storage, "job/")
    ref = stager.add(str(archive), dest="")
    stager.flush()
    cache = NodeCache(root=tmp_path / "node")
    folder = cache.package(storage, ref, "tool", "1")
    marker_time = folder.with_name(folder.name + ".azm-complete").stat().st_mtime_ns
    (folder / "__pycache__").mkdir()
    (folder / "__pycache__" / "x.pyc").write_bytes(b"added by a run")
    assert cache.package(storage, ref, "tool", "1") == folder
    assert (folder / "__pycache__" / "x.pyc").exists()  # not unpacked again: not its file
    assert folder.with_name(folder.name + ".azm-complete").stat().st_mtime_ns == marker_time
    tool = folder / "bin" / "tool"
    tool.chmod(0o755)
    tool.write_text("#!/bin/sh\necho POISON\n")
    cache.package(storage, ref, "tool", "1")
    assert tool.read_text() == "#!/bin/sh\necho 1\n"  # its own file changed: unpacked again
