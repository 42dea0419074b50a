"""``azm cluster`` as a user runs it on the local provider: one named cluster for the module
(two nodes, with a setup script)."""

from __future__ import annotations

import contextlib
import json
import os
import pty
import select
import signal
import stat
import subprocess
import sys
import time
from collections.abc import Iterator
from dataclasses import dataclass, replace
from pathlib import Path

import psutil
import pytest

from azmanagers.cli import main
from tests.conftest import eventually, processes_under

pytestmark = pytest.mark.integration
NAME = "cli-study"
CLI_TIMEOUT_S = 180.0
SECRETS = ("token", "client_key", "client_cert", "cert", "ca")
"""The record's credentials: none may appear in any output."""
SETUP = """#!/bin/bash
echo "setting up ${AZMANAGERS_INSTANCE_ID:-unknown}"
echo ran >> "MARKERS/${AZMANAGERS_INSTANCE_ID:-unknown}"
"""
"""Each node says so, and adds a line to its marker file (MARKERS: a folder of the test's)."""


@dataclass(frozen=True)
class Started:
    """The module's cluster: its AZMANAGERS_HOME, what `start --json` printed, its secrets."""

    home: Path
    start_out: str
    start_err: str
    secrets: tuple[str, ...]
    markers: Path
    """A file per node that ran the setup script, a line per run."""


def _offline_env(home: Path) -> dict[str, str]:
    """The environment of an `azm` subprocess: ``home``, and no way to reach Azure."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("AZMANAGERS_")}
    env.update(
        AZMANAGERS_HOME=str(home),
        AZMANAGERS_ARM_ENDPOINT="https://127.0.0.1:9",
        AZMANAGERS_ARM_TOKEN="offline-tests",
        AZMANAGERS_IMDS_ENDPOINT="http://127.0.0.1:9",
    )
    return env


def azm(home: Path, *args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "azmanagers", *args],
        capture_output=True,
        text=True,
        timeout=CLI_TIMEOUT_S,
        env=_offline_env(home),
        stdin=subprocess.DEVNULL,
        check=False,
    )


def _record_file(home: Path, name: str = NAME) -> Path:
    return home / "state" / "clusters" / f"{name}.json"


@pytest.fixture(scope="module")
def started(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Started]:
    """`azm cluster start NAME --nodes 2 --setup FILE --wait` once; always stopped (and
    killed) after."""
    base = tmp_path_factory.mktemp("cluster-cli")
    home, markers, script = base / "azm-home", base / "markers", base / "setup.sh"
    markers.mkdir()
    script.write_text(SETUP.replace("MARKERS", str(markers)))
    try:
        result = azm(
            home, "cluster", "start", NAME, "-n", "2", "--setup", str(script), "--wait", "--json"
        )
        assert result.returncode == 0, result.stdout + result.stderr
        record = json.loads(_record_file(home).read_text())
        secrets = tuple(str(record[key]) for key in SECRETS)
        assert all(len(s) > 20 for s in secrets)
        yield Started(home, result.stdout, result.stderr, secrets, markers)
    finally:
        if _record_file(home).exists():
            azm(home, "cluster", "stop", NAME, "--yes")
        for proc in processes_under(home):  # only if the stop above failed
            with contextlib.suppress(psutil.Error, OSError):
                os.killpg(os.getsid(proc.pid), signal.SIGKILL)


def run(capsys: pytest.CaptureFixture[str], *args: str) -> tuple[int, str, str]:
    """Run `azm ARGS` in this process; return (exit code, stdout, stderr)."""
    capsys.readouterr()
    code = main(list(args))
    out, err = capsys.readouterr()
    return code, out, err


@pytest.fixture
def home(started: Started, monkeypatch: pytest.MonkeyPatch) -> Path:
    """The module cluster's AZMANAGERS_HOME for in-process `azm` calls."""
    monkeypatch.setenv("AZMANAGERS_HOME", str(started.home))
    return started.home


def _no_secret(text: str, started: Started) -> None:
    for secret in started.secrets:
        assert secret not in text
    for line in ("BEGIN CERTIFICATE", "PRIVATE KEY"):
        assert line not in text


COMMANDS = ("start", "list", "nodes", "templates", "exec", "ssh", "resize", "setup", "stop")


@pytest.mark.parametrize("command", [*COMMANDS, "export", "import"])
def test_every_cluster_command_has_help(command: str, capsys: pytest.CaptureFixture[str]) -> None:
    code, out, _ = run(capsys, "cluster", command, "--help")
    assert code == 0 and f"Usage: azm cluster {command}" in out


def test_templates_lists_the_scaleset_and_vm_templates(
    capsys: pytest.CaptureFixture[str],
) -> None:
    code, out, _ = run(capsys, "cluster", "templates", "--json")
    assert code == 0
    data = json.loads(out)
    local = [t for t in data["scaleset"] if t["name"] == "local"]
    assert local == [
        {
            "kind": "scaleset",
            "name": "local",
            "provider": "local",
            "max_instances": 16,
            "problem": "",
        }
    ]
    assert [t["name"] for t in data["vm"]] == ["local"]
    code, out, _ = run(capsys, "cluster", "templates")
    assert code == 0
    assert "--template" in out and "--head-template" in out
    assert any(line.split() == ["local", "local", "16"] for line in out.splitlines())


@pytest.mark.parametrize(
    ("args", "says"),
    [
        (["start", "Bad_Name"], "'Bad_Name' is not a valid cluster name"),
        (["start", "abc", "--nodes", "-1"], "--nodes -1"),
        (["start", "abc", "--nodes", "99"], "at most 16 nodes"),
        (["start", "abc", "--autostop", "soon"], "autostop: duration 'soon'"),
        (["start", "abc", "--timeout", "0"], "timeout: duration '0'"),
        (["start", "abc", "--template", "nope"], "nope"),
        (["start", "abc", "--setup", "/nonexistent/setup.sh"], "cannot read the setup script"),
        (["exec", "nope", "--", "true"], "no cluster named 'nope'"),
        (["exec", "nope", "--timeout", "soon", "--", "true"], "duration 'soon'"),
        (["setup", "nope"], "no cluster named 'nope'"),
        (["ssh", "nope"], "no cluster named 'nope'"),
        (["nodes", "nope"], "no cluster named 'nope'"),
        (["resize", "nope", "+1"], "no cluster named 'nope'"),
        (["resize", "nope", "two"], "give a node count (5) or a change (+2, -1)"),
        (["stop", "nope", "--yes"], "no cluster named 'nope'"),
        (["export", "nope", "-o", "x.json"], "no cluster named 'nope'"),
        (["import", "/nonexistent/x.json"], "is not a cluster record"),
    ],
)
def test_bad_input_is_one_line_and_exits_2(
    args: list[str], says: str, capsys: pytest.CaptureFixture[str], azm_home: Path
) -> None:
    code, out, err = run(capsys, "cluster", *args)
    assert code == 2, out + err
    assert err.startswith("Error: ") and says in err, err
    assert "Traceback" not in err
    assert not _record_file(azm_home, "abc").exists()  # nothing recorded


def test_start_and_list_show_the_cluster_without_its_credentials(
    started: Started, home: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    shown = json.loads(started.start_out)
    assert shown["name"] == NAME and shown["status"] == "up" and shown["nodes"] == 2
    assert shown["scheduler"].startswith("tls://")
    assert f"cluster {NAME}: up" in started.start_err  # progress on stderr
    _no_secret(started.start_out + started.start_err, started)

    code, out, _ = run(capsys, "cluster", "list")
    assert code == 0
    assert out.splitlines()[0].split() == ["NAME", "STATUS", "NODES", "PROVIDER", "AGE", "AUTOSTOP"]
    assert out.splitlines()[1].split()[:4] == [NAME, "up", "2", "local"]
    assert out.splitlines()[1].split()[-1] == "-"  # no autostop

    code, out, _ = run(capsys, "cluster", "list", "--json")
    assert code == 0
    (row,) = json.loads(out)
    assert row["name"] == NAME and row["joined"] is None  # the record only: no head asked
    for key in SECRETS:
        assert key not in row
    _no_secret(out, started)

    code, out, err = run(capsys, "cluster", "list", "--refresh", "--json")
    assert code == 0, err
    (row,) = json.loads(out)
    assert row["joined"] == 2 and row["nodes"] == 2 and row["notes"] == []
    _no_secret(out + err, started)


def test_nodes_asks_the_head(
    started: Started, home: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    code, out, err = run(capsys, "cluster", "nodes", NAME)
    assert code == 0, err
    assert f"cluster {NAME}: 2 of 2 nodes joined (max 16)" in out
    header = next(line for line in out.splitlines() if line.startswith("NODE"))
    assert header.split() == ["NODE", "STATE", "ADDRESS", "JOINED"]
    nodes = [line for line in out.splitlines() if line.startswith(f"{NAME}-")]
    assert [n.split()[1] for n in nodes] == ["joined"] * 2
    addresses = [n.split()[2] for n in nodes]  # each process-VM on a loopback address of its own
    assert len(set(addresses)) == 2 and all(a.startswith("127.") for a in addresses)

    code, out, _ = run(capsys, "cluster", "nodes", NAME, "--json", "--refresh")
    assert code == 0
    status = json.loads(out)
    assert status["target"] == 2 and [n["state"] for n in status["nodes"]] == ["joined"] * 2
    _no_secret(out, started)


def _node_names(capsys: pytest.CaptureFixture[str]) -> list[str]:
    code, out, err = run(capsys, "cluster", "nodes", NAME, "--json")
    assert code == 0, err
    return sorted(n["name"] for n in json.loads(out)["nodes"] if n["state"] == "joined")


def _setup_runs(started: Started) -> dict[str, int]:
    """How many times each node ran the setup script (from its marker file)."""
    return {p.name: len(p.read_text().splitlines()) for p in started.markers.iterdir()}


def test_start_ran_the_setup_on_every_node_before_it_joined(
    started: Started, home: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    names = _node_names(capsys)
    assert len(names) == 2
    assert _setup_runs(started) == dict.fromkeys(names, 1)


def test_exec_on_every_node_prints_each_then_a_table(
    home: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    names = _node_names(capsys)
    code, out, err = run(
        capsys, "cluster", "exec", NAME, "--", "echo out-$AZMANAGERS_INSTANCE_ID; echo err >&2"
    )
    assert code == 0, out + err
    lines = out.splitlines()
    for name in names:
        header = lines.index(next(x for x in lines if x.startswith(f"== node {name} (exit 0, ")))
        assert lines[header + 1] == f"out-{name}"
        assert lines[header].endswith(" s) ==")
    table = lines[lines.index(next(x for x in lines if x.startswith("NODE"))) :]
    assert table[0].split() == ["NODE", "EXIT", "SECONDS"]
    assert [row.split()[:2] for row in table[1:]] == [[name, "0"] for name in names]
    assert err.splitlines() == ["err", "err"]

    # several words are an argument list (quoted); one failing node makes azm exit 1
    code, out, err = run(capsys, "cluster", "exec", NAME, "--", "printf", "%s|", "a b", "c")
    assert code == 0 and out.count("a b|c|") == 2, out + err
    failing = f'[ "$AZMANAGERS_INSTANCE_ID" = {names[0]} ] && exit 3; exit 0'
    code, out, err = run(capsys, "cluster", "exec", NAME, "--", failing)
    assert code == 1, out + err
    assert f"== node {names[0]} (exit 3, " in out and f"== node {names[1]} (exit 0, " in out
    assert "1 of 2 nodes failed" in err


def test_exec_on_one_node_passes_its_output_and_exit_status(
    home: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    node = _node_names(capsys)[1]
    args = ("cluster", "exec", NAME, "--node", node, "--")
    code, out, err = run(
        capsys, *args, "bash", "-c", "echo hi $AZMANAGERS_INSTANCE_ID; echo oops >&2; exit 3"
    )
    assert (code, out, err) == (3, f"hi {node}\n", "oops\n")

    code, out, err = run(capsys, "cluster", "exec", NAME, "--json", "--", "nproc")
    assert code == 0, err
    results = json.loads(out)
    assert [r["node"] for r in results] == _node_names(capsys)
    assert {r["exit_code"] for r in results} == {0} and all(int(r["stdout"]) > 0 for r in results)
    assert set(results[0]) == {"node", "exit_code", "stdout", "stderr", "duration_s", "skipped"}

    code, out, err = run(
        capsys, "cluster", "exec", NAME, "--node", node, "--timeout", "1", "--", "sleep 30"
    )
    assert code == 124 and f"node {node}: timed out after" in err, out + err

    code, out, err = run(capsys, "cluster", "exec", NAME, "--node", "nope", "--", "true")
    assert code == 2 and "no node named 'nope'" in err and node in err, out + err
    code, out, err = run(capsys, "cluster", "exec", NAME)
    assert code == 2 and "exec needs a command" in err, out + err


def test_setup_again_then_only_on_new_nodes(
    started: Started, home: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    names = _node_names(capsys)
    code, out, err = run(capsys, "cluster", "setup", NAME)
    assert code == 0, out + err
    lines = out.splitlines()
    assert lines[0].split() == ["NODE", "RESULT", "SECONDS"]
    assert [line.split()[:2] for line in lines[1:]] == [[name, "ok"] for name in names]
    assert _setup_runs(started) == dict.fromkeys(names, 2)

    code, out, err = run(capsys, "cluster", "setup", NAME, "--only-new")
    assert code == 0, out + err
    assert [line.split() for line in out.splitlines()[1:]] == [[n, "skipped", "-"] for n in names]
    code, out, err = run(capsys, "cluster", "setup", NAME, "--only-new", "--json")
    assert code == 0, err
    assert [(r["node"], r["skipped"]) for r in json.loads(out)] == [(n, True) for n in names]
    assert _setup_runs(started) == dict.fromkeys(names, 2)  # skipped: not run


def test_setup_of_a_cluster_without_a_script_says_how_to_give_one(
    started: Started,
    tmp_path: Path,
    capsys: pytest.CaptureFixture[str],
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    from azmanagers.named.handle import STORE, load_record

    monkeypatch.setenv("AZMANAGERS_HOME", str(tmp_path / "no-setup-home"))
    code, _, err = run(capsys, "cluster", "import", str(_record_file(started.home)))
    assert code == 0, err
    STORE.save(replace(load_record(NAME), setup=""))
    code, _, err = run(capsys, "cluster", "setup", NAME)
    assert code == 2 and f"cluster {NAME} has no setup script" in err and "--setup" in err


def test_ssh_runs_a_command_on_the_head_or_a_node(
    started: Started, home: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    node = _node_names(capsys)[0]
    result = azm(
        home, "cluster", "ssh", NAME, "--", "bash", "-c", "echo on $AZMANAGERS_INSTANCE_ID; exit 4"
    )
    assert result.returncode == 4, result.stdout + result.stderr
    assert f"on {NAME}-head" in result.stdout
    result = azm(
        home, "cluster", "ssh", NAME, "--node", node, "--", "echo on $AZMANAGERS_INSTANCE_ID"
    )
    assert result.returncode == 0 and f"on {node}" in result.stdout, result.stdout + result.stderr
    result = azm(home, "cluster", "ssh", NAME, "--node", "nope")
    assert result.returncode == 2 and "nope" in result.stderr, result.stderr
    _no_secret(result.stdout + result.stderr, started)


def test_ssh_on_a_terminal_is_an_interactive_shell(started: Started, home: Path) -> None:
    primary, secondary = pty.openpty()
    proc = subprocess.Popen(
        [sys.executable, "-m", "azmanagers", "cluster", "ssh", NAME],
        stdin=secondary,
        stdout=secondary,
        stderr=secondary,
        env=_offline_env(home),
        start_new_session=True,
    )
    os.close(secondary)
    seen, typed = b"", False
    try:
        deadline = time.monotonic() + CLI_TIMEOUT_S
        while proc.poll() is None and time.monotonic() < deadline:
            ready, _, _ = select.select([primary], [], [], 0.5)
            if ready:
                with contextlib.suppress(OSError):
                    seen += os.read(primary, 4096)
            if seen and not typed:  # the shell's prompt: type a line, as a person would
                os.write(primary, b"echo shell-$((6 * 7)) $AZMANAGERS_INSTANCE_ID; exit 5\r")
                typed = True
        assert proc.wait(timeout=5) == 5, seen
        assert f"shell-42 {NAME}-head".encode() in seen, seen
    finally:
        if proc.poll() is None:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait()
        os.close(primary)


def _joined(capsys: pytest.CaptureFixture[str]) -> tuple[int, int]:
    code, out, err = run(capsys, "cluster", "nodes", NAME, "--json")
    assert code == 0, err
    status = json.loads(out)
    return status["target"], sum(1 for n in status["nodes"] if n["state"] == "joined")


def test_resize_down_with_minus_one_then_up_and_the_new_node_ran_the_setup(
    started: Started, home: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    code, out, err = run(capsys, "cluster", "resize", NAME, "-1", "--json")  # not an option
    assert code == 0, err
    assert json.loads(out)["target"] == 1
    eventually(lambda: _joined(capsys) == (1, 1), "one node to leave", timeout=60)
    assert json.loads(_record_file(home).read_text())["nodes"] == 1

    before = set(_setup_runs(started))
    code, out, err = run(capsys, "cluster", "resize", NAME, "+1")
    assert code == 0, err
    assert f"cluster {NAME}: 2 nodes (was 1)" in out
    eventually(lambda: _joined(capsys) == (2, 2), "a second node to join", timeout=60)
    (new,) = set(_node_names(capsys)) - before
    assert _setup_runs(started)[new] == 1  # it ran the setup before it joined

    code, _, err = run(capsys, "cluster", "resize", NAME, "-5")
    assert code == 2 and "the least is 0" in err, err
    code, _, err = run(capsys, "cluster", "resize", NAME, "99")
    assert code == 2 and "at most 16" in err, err
    assert _joined(capsys)[0] == 2


def test_export_then_import_into_another_home(
    started: Started,
    home: Path,
    tmp_path: Path,
    capsys: pytest.CaptureFixture[str],
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    exported = tmp_path / "study.json"
    code, out, err = run(capsys, "cluster", "export", NAME, "-o", str(exported))
    assert code == 0, err
    assert stat.S_IMODE(exported.stat().st_mode) == 0o600
    assert "credentials" in out and "0600" in out
    _no_secret(out, started)

    other = tmp_path / "other-home"
    monkeypatch.setenv("AZMANAGERS_HOME", str(other))
    code, out, err = run(capsys, "cluster", "import", str(exported), "--json")
    assert code == 0, err
    assert json.loads(out)["name"] == NAME
    _no_secret(out, started)
    assert stat.S_IMODE(_record_file(other).stat().st_mode) == 0o600
    code, _, err = run(capsys, "cluster", "import", str(exported))
    assert code == 2 and "--replace" in err
    code, out, err = run(capsys, "cluster", "import", str(exported), "--replace")
    assert code == 0 and f"recorded cluster {NAME}" in out, err

    code, out, err = run(capsys, "cluster", "nodes", NAME)  # the head answers this home too
    assert code == 0 and f"cluster {NAME}: 2 of 2 nodes joined" in out, err


def test_a_silent_head_names_itself_and_says_stop_works(
    started: Started,
    tmp_path: Path,
    capsys: pytest.CaptureFixture[str],
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    from azmanagers.named.handle import STORE, load_record

    # A copy of the record, elsewhere, whose head's port answers nothing (port 9: discard).
    monkeypatch.setenv("AZMANAGERS_HOME", str(tmp_path / "silent-home"))
    code, _, err = run(capsys, "cluster", "import", str(_record_file(started.home)))
    assert code == 0, err
    STORE.save(replace(load_record(NAME), port=9))

    code, out, err = run(capsys, "cluster", "nodes", NAME)
    assert code == 1, out + err
    assert f"the head of cluster {NAME} ({NAME}-head, 127.0.0.1:9) does not answer" in err
    assert f"`azm cluster stop {NAME}` still works" in err
    assert load_record(NAME).status == "up"  # without --refresh: nothing changed

    code, _, err = run(capsys, "cluster", "nodes", NAME, "--refresh")
    assert code == 1 and "status stopped" in err and "is gone" in err, err
    assert load_record(NAME).status == "stopped"
    code, out, err = run(capsys, "cluster", "list", "--refresh")
    assert code == 0 and out.splitlines()[1].split()[:2] == [NAME, "stopped"]
    assert f"cluster {NAME}: nothing tagged with it is left" in err


def test_stop_asks_for_yes_when_stdin_is_not_a_terminal(
    started: Started, home: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    code, _, err = run(capsys, "cluster", "stop", NAME)
    assert code == 2 and "pass --yes" in err and f"{NAME}-head" in err, err
    assert _record_file(home).exists()
    result = azm(home, "cluster", "stop", NAME)  # stdin /dev/null, as in a script
    assert result.returncode == 2 and "pass --yes" in result.stderr
    assert _record_file(home).exists()


def test_stop_on_a_terminal_asks_and_no_keeps_the_cluster(started: Started, home: Path) -> None:
    primary, secondary = pty.openpty()
    try:
        os.write(primary, b"n\n")
        result = subprocess.run(
            [sys.executable, "-m", "azmanagers", "cluster", "stop", NAME],
            stdin=secondary,
            capture_output=True,
            text=True,
            timeout=CLI_TIMEOUT_S,
            env=_offline_env(home),
            check=False,
        )
    finally:
        os.close(primary)
        os.close(secondary)
    assert result.returncode == 1, result.stdout + result.stderr
    assert f"Delete cluster {NAME}'s pool {NAME} (2 nodes)" in result.stdout
    assert "Aborted." in result.stderr
    assert _record_file(home).exists()


def test_stop_yes_leaves_nothing(
    started: Started, home: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    code, out, err = run(capsys, "cluster", "stop", NAME, "--yes")
    assert code == 0, err
    assert f"cluster {NAME} stopped" in out
    assert f"cluster {NAME}: deleting its head {NAME}-head" in err
    code, out, _ = run(capsys, "cluster", "list", "--json")
    assert code == 0 and json.loads(out) == []
    code, out, _ = run(capsys, "cluster", "list")
    assert "no named clusters" in out
    eventually(lambda: processes_under(home) == [], "the cluster's processes to end", timeout=30)
    assert not list((home / "state" / "local" / "vms").iterdir())
    assert not list((home / "state" / "local" / "pools").iterdir())
