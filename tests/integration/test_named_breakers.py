"""Named clusters: what a breaker found (open shells, piped input, stop without templates, a pool
deleted by hand, autostop with a shell, status during a stop), each now a regression test."""

from __future__ import annotations

import contextlib
import os
import signal
import socket
import ssl
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import psutil
import pytest

import azmanagers
from azmanagers.config.templates import remove_template, save_template_scaleset
from azmanagers.errors import DetachedServiceError
from azmanagers.named.handle import STORE, NamedCluster, named_cluster
from azmanagers.named.refresh import refresh
from azmanagers.named.ssh import _client_context
from azmanagers.named.stop import stop_cluster
from azmanagers.named.wire import HEAD_SHELL, HEAD_STATUS, HEAD_STOP
from azmanagers.providers import get_provider
from tests.conftest import processes_under

pytestmark = pytest.mark.integration

SHARED = "t-brk-shared"
CLI_TIMEOUT_S = 20.0
START_TIMEOUT_S = 90.0


def _offline_env(home: Path) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("AZMANAGERS_")}
    env.update(
        AZMANAGERS_HOME=str(home),
        AZMANAGERS_ARM_ENDPOINT="https://127.0.0.1:9",
        AZMANAGERS_ARM_TOKEN="offline-tests",
        AZMANAGERS_IMDS_ENDPOINT="http://127.0.0.1:9",
    )
    return env


def _ssh(home: Path, command: list[str], stdin: bytes | None) -> bytes:
    """`azm cluster ssh SHARED -- command` with ``stdin`` piped in (None: /dev/null); its
    stdout. Fails the test (after killing it) when it does not end in CLI_TIMEOUT_S."""
    proc = subprocess.Popen(
        [sys.executable, "-m", "azmanagers", "cluster", "ssh", SHARED, "--", *command],
        stdin=subprocess.DEVNULL if stdin is None else subprocess.PIPE,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        env=_offline_env(home),
        start_new_session=True,
    )
    try:
        out, err = proc.communicate(stdin, timeout=CLI_TIMEOUT_S)
    except subprocess.TimeoutExpired:
        os.killpg(proc.pid, signal.SIGKILL)
        proc.communicate()
        pytest.fail(f"`azm cluster ssh -- {' '.join(command)}` did not end in {CLI_TIMEOUT_S} s")
    assert proc.returncode == 0, err
    return out


def _kill_all_under(home: Path) -> None:
    for proc in processes_under(home):
        with contextlib.suppress(psutil.Error, OSError):
            os.killpg(os.getpgid(proc.pid), signal.SIGKILL)


def _stop_quietly(name: str) -> None:
    for _ in range(2):
        if not STORE.exists(name):
            return
        with contextlib.suppress(Exception):
            stop_cluster(name)


@pytest.fixture(scope="module")
def shared_home(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Path]:
    """A cluster of 1 node for the tests that do not destroy it."""
    home = tmp_path_factory.mktemp("brk-home")
    before = os.environ.get("AZMANAGERS_HOME")
    os.environ["AZMANAGERS_HOME"] = str(home)
    try:
        azmanagers.start_cluster(SHARED, nodes=1, wait=True, timeout=START_TIMEOUT_S).close()
        yield home
    finally:
        _stop_quietly(SHARED)
        _kill_all_under(home)
        if before is None:
            os.environ.pop("AZMANAGERS_HOME", None)
        else:
            os.environ["AZMANAGERS_HOME"] = before


@pytest.fixture
def in_shared(shared_home: Path, azm_home: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    del azm_home
    monkeypatch.setenv("AZMANAGERS_HOME", str(shared_home))
    return shared_home


# -- ssh -- CMD with no terminal: the one-shot shell always runs on a pty ----------------


def test_piped_input_without_a_final_newline_ends_the_command(in_shared: Path) -> None:
    assert _ssh(in_shared, ["cat"], b"abc") == b"abc"


def test_ssh_command_output_is_byte_for_byte_when_not_on_a_terminal(in_shared: Path) -> None:
    assert _ssh(in_shared, ["printf", "a\\nb\\n"], None) == b"a\nb\n"
    assert _ssh(in_shared, ["cat"], b"x\ny\n") == b"x\ny\n"


def test_open_shells_on_the_head_do_not_block_its_status(in_shared: Path) -> None:
    cluster = named_cluster(SHARED)
    shells = min(32, (os.cpu_count() or 1) + 4)
    conns: list[ssl.SSLSocket] = []
    try:
        for _ in range(shells):
            reply = cluster.service().request(
                "POST", HEAD_SHELL.path(), body={"command": ["sleep", "60"], "rows": 24, "cols": 80}
            )
            sock = socket.create_connection((reply["host"], reply["port"]), timeout=10)
            conns.append(_client_context(cluster.record).wrap_socket(sock))
        time.sleep(1.0)
        started = time.monotonic()
        cluster.service().request("GET", HEAD_STATUS.path(), timeout_s=10)
        assert time.monotonic() - started < 5
    finally:
        for conn in conns:
            conn.close()  # the shells get SIGHUP and end
        cluster.close()


# -- refresh, stop, autostop --------------------------------------------------------------


def test_refresh_says_the_pool_was_deleted_by_hand_while_the_head_answers(
    azm_home: Path,
) -> None:
    del azm_home
    name = "t-brk-pool"
    try:
        azmanagers.start_cluster(name, nodes=1, wait=True, timeout=START_TIMEOUT_S).close()
        get_provider("local").delete_pool(name)
        found = refresh(named_cluster(name).record)
        said = " ".join(found.notes) + " " + found.record.reason
        assert "pool" in said, found
    finally:
        _stop_quietly(name)


def test_stop_works_after_the_pool_template_was_removed(azm_home: Path) -> None:
    del azm_home
    name = "t-brk-tmpl"
    save_template_scaleset("brk-tmpl", {"provider": "local", "max_instances": 4})
    try:
        azmanagers.start_cluster(
            name, template="brk-tmpl", nodes=1, wait=True, timeout=START_TIMEOUT_S
        ).close()
        remove_template("scaleset", "brk-tmpl")
        stop_cluster(name)
        assert get_provider("local").list_owned_resources(cluster=name) == []
        assert not STORE.exists(name)
    finally:
        with contextlib.suppress(Exception):
            save_template_scaleset("brk-tmpl", {"provider": "local", "max_instances": 4})
        _stop_quietly(name)


def test_an_open_shell_on_the_head_keeps_autostop_off(azm_home: Path) -> None:
    del azm_home
    name = "t-brk-auto"
    conn: ssl.SSLSocket | None = None
    try:
        cluster = azmanagers.start_cluster(
            name, nodes=1, autostop=4, wait=True, timeout=START_TIMEOUT_S
        )
        reply = cluster.service().request(
            "POST", HEAD_SHELL.path(), body={"command": ["sleep", "60"], "rows": 24, "cols": 80}
        )
        sock = socket.create_connection((reply["host"], reply["port"]), timeout=10)
        conn = _client_context(cluster.record).wrap_socket(sock)
        time.sleep(16.0)  # autostop 4 s, checked every 5 s
        try:
            status = NamedCluster(cluster.record).status()
        except DetachedServiceError as exc:
            pytest.fail(f"the head autostopped with a shell open: {exc}")
        assert status.name == name
    finally:
        if conn is not None:
            conn.close()
        _stop_quietly(name)


def test_status_right_after_a_stop_is_not_an_internal_error(azm_home: Path) -> None:
    del azm_home
    name = "t-brk-stopst"
    try:
        cluster = azmanagers.start_cluster(name, nodes=1, timeout=START_TIMEOUT_S)
        cluster.service().request("POST", HEAD_STOP.path(), timeout_s=60)
        try:
            NamedCluster(cluster.record).status()
        except DetachedServiceError as exc:
            assert "500" not in str(exc), exc
        cluster.close()
    finally:
        _stop_quietly(name)
