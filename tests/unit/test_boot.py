"""Tests of the boot script: rendered, then run for real with bash and a recording interpreter."""

from __future__ import annotations

import base64
import json
import os
import stat
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from azmanagers.errors import ConfigError
from azmanagers.providers.base import BootSpec
from azmanagers.providers.boot import CUSTOM_DATA_MAX_BYTES, decode_payload, encode_payload, render

RUN_TIMEOUT_S = 15.0
RECORD_NAME = "record.json"

RECORDER = f"""#!{sys.executable}
import json, os, sys
out = os.path.join(os.environ["AZMANAGERS_INSTANCE_DIR"], {RECORD_NAME!r})
with open(out, "w") as handle:
    json.dump({{"argv": sys.argv[1:], "env": dict(os.environ)}}, handle)
"""


@pytest.fixture
def recorder(tmp_path: Path) -> Path:
    """An 'interpreter' that records its arguments and environment (in a folder with a space)."""
    folder = tmp_path / "bin dir"
    folder.mkdir()
    path = folder / "recording-python"
    path.write_text(RECORDER)
    path.chmod(0o755)
    return path


def run_script(
    script: str, instance_dir: Path, python: Path | None, extra_env: dict[str, str] | None = None
) -> tuple[subprocess.CompletedProcess[str], dict[str, Any]]:
    """Run ``script`` with bash, as an instance would; return the result and the record."""
    instance_dir.parent.mkdir(parents=True, exist_ok=True)
    script_path = instance_dir.parent / f"{instance_dir.name}.sh"
    script_path.write_text(script)
    env = {
        "PATH": os.environ.get("PATH", "/usr/bin:/bin"),
        "AZMANAGERS_INSTANCE_DIR": str(instance_dir),
    }
    if python is not None:
        env["AZMANAGERS_PYTHON"] = str(python)
    env.update(extra_env or {})
    result = subprocess.run(
        ["bash", str(script_path)],
        env=env,
        capture_output=True,
        text=True,
        timeout=RUN_TIMEOUT_S,
        check=False,
        cwd=instance_dir.parent,
    )
    record_path = instance_dir / RECORD_NAME
    record = json.loads(record_path.read_text()) if record_path.exists() else {}
    return result, record


def spec(**kwargs: Any) -> BootSpec:
    kwargs.setdefault("role", "worker")
    kwargs.setdefault("payload", {"scheduler": "tls://127.0.0.1:8786", "n": 1})
    return BootSpec(**kwargs)


# -- the rendered script ----------------------------------------------------------------


def test_script_is_bash_and_parses() -> None:
    script = render(spec(env={"A": "1"}))
    assert script.startswith("#!/bin/bash\n")
    assert script.endswith("\n")
    result = subprocess.run(
        ["bash", "-n"], input=script, text=True, capture_output=True, timeout=RUN_TIMEOUT_S
    )
    assert result.returncode == 0, result.stderr


def test_render_is_deterministic() -> None:
    one = render(spec(env={"B": "2", "A": "1"}))
    two = render(spec(env={"A": "1", "B": "2"}))
    assert one == two


@pytest.mark.parametrize("role", ["worker", "detached"])
def test_running_the_script_writes_the_payload_and_starts_the_agent(
    tmp_path: Path, recorder: Path, role: str
) -> None:
    payload = {"scheduler": "tls://127.0.0.1:1234", "tls": {"ca": "PEM\nline"}, "n": [1, 2.5, None]}
    instance_dir = tmp_path / "instance"
    result, record = run_script(render(spec(role=role, payload=payload)), instance_dir, recorder)
    assert result.returncode == 0, result.stderr
    payload_file = instance_dir / "payload.json.gz"
    assert record["argv"] == ["-m", "azmanagers.agent", role, "--payload", str(payload_file)]
    assert stat.S_IMODE(payload_file.stat().st_mode) == 0o600
    assert decode_payload(payload_file.read_bytes()) == payload
    assert "azmanagers: boot" in result.stdout
    assert f"starting agent with {recorder}" in result.stdout


def test_instance_dir_is_created_when_missing(tmp_path: Path, recorder: Path) -> None:
    instance_dir = tmp_path / "deep" / "er" / "instance"
    result, record = run_script(render(spec()), instance_dir, recorder)
    assert result.returncode == 0, result.stderr
    assert (instance_dir / "payload.json.gz").is_file()
    assert record["argv"][2] == "worker"


HOSTILE_VALUES = {
    "DOLLAR_PAREN": "$(touch @MARKER@1)",
    "BACKTICK": "`touch @MARKER@2`",
    "QUOTES": "it's \"quoted\" 'twice'",
    "BREAKOUT": "'; touch @MARKER@3; echo '",
    "SPACES": "  leading and trailing  ",
    "NEWLINES": "line one\nline two\n\n$(touch @MARKER@4)\n",
    "VARS": "$HOME ${PATH} $AZM_DIR",
    "GLOB": "* ? [a-z] ~",
    "HEREDOC": "AZM_PAYLOAD_EOF",
    "EMPTY": "",
    "BACKSLASH": "a\\b\\\\c\\n",
    "UNICODE": "h\u00e9llo \u2603",
}


def test_env_values_are_exported_exactly_without_shell_injection(
    tmp_path: Path, recorder: Path
) -> None:
    marker = tmp_path / "pwned"
    env = {name: value.replace("@MARKER@", str(marker)) for name, value in HOSTILE_VALUES.items()}
    instance_dir = tmp_path / "instance"
    result, record = run_script(render(spec(env=env)), instance_dir, recorder)
    assert result.returncode == 0, result.stderr
    for name, value in env.items():
        assert record["env"][name] == value, name
    assert not list(tmp_path.glob("pwned*")), "a value was run as a command"
    assert decode_payload((instance_dir / "payload.json.gz").read_bytes()) == spec().payload


def test_spec_env_overrides_the_interpreter_from_the_environment(
    tmp_path: Path, recorder: Path
) -> None:
    broken = tmp_path / "broken-python"
    broken.write_text("#!/bin/bash\nexit 42\n")
    broken.chmod(0o755)
    script = render(spec(env={"AZMANAGERS_PYTHON": str(recorder)}))
    result, record = run_script(script, tmp_path / "instance", broken)
    assert result.returncode == 0, result.stderr
    assert record["argv"][:3] == ["-m", "azmanagers.agent", "worker"]


def test_spec_python_is_used_when_no_interpreter_is_set(tmp_path: Path) -> None:
    plain = tmp_path / "plain-python"
    plain.write_text(RECORDER)
    plain.chmod(0o755)
    result, record = run_script(render(spec(python=str(plain))), tmp_path / "instance", None)
    assert result.returncode == 0, result.stderr
    assert record["argv"][2] == "worker"


def test_spec_python_with_a_space_in_its_path_is_used(tmp_path: Path, recorder: Path) -> None:
    assert " " in str(recorder)
    result, record = run_script(render(spec(python=str(recorder))), tmp_path / "instance", None)
    assert result.returncode == 0, result.stderr
    assert record["argv"][2] == "worker"


def test_the_agent_exit_status_is_the_script_exit_status(tmp_path: Path) -> None:
    failing = tmp_path / "failing-python"
    failing.write_text(
        '#!/bin/bash\n[ "$1" = -c ] && exit 0  # has azmanagers\necho "agent args: $*"\nexit 7\n'
    )
    failing.chmod(0o755)
    result, _ = run_script(render(spec()), tmp_path / "instance", failing)
    assert result.returncode == 7
    assert "agent args: -m azmanagers.agent worker --payload" in result.stdout


# -- a stock image: the script installs azmanagers into a virtualenv ---------------------

STOCK_PYTHON = r"""#!/bin/bash
# A stock image's python3: no azmanagers; '-m venv DIR' makes DIR/bin/python (FAKE_VENV_PYTHON).
if [ "$1" = -c ]; then exit 1; fi
if [ "$1 $2" = "-m venv" ]; then
    [ -n "${FAIL_VENV:-}" ] && { echo "No module named venv"; exit 1; }
    for last; do :; done
    mkdir -p "$last/bin" && cp "$FAKE_VENV_PYTHON" "$last/bin/python" && exit 0
fi
exit 9
"""

VENV_PYTHON = r"""#!/bin/bash
# The bootstrap virtualenv's python: has azmanagers once pip has installed it.
here="$(dirname "$0")"
if [ "$1" = -c ]; then
    [ -f "$here/installed" ] && [ "$(cat "$here/installed")" = "${!#}" ] && exit 0
    exit 1
fi
if [ "$1 $2 $3" = "-m pip install" ]; then
    printf '%s\n' "$@" > "$here/pip-args"
    [ -n "${FAIL_PIP:-}" ] && { echo "ERROR: no matching distribution"; exit 1; }
    echo "${INSTALLS_VERSION:-0.1.0}" > "$here/installed"
    exit 0
fi
printf '%s\n' "$@" > "$here/agent-args"
"""


@pytest.fixture
def stock_image(tmp_path: Path) -> tuple[Path, dict[str, str]]:
    """A stock interpreter without azmanagers, and the environment its fakes need."""
    folder = tmp_path / "image"
    folder.mkdir()
    stock, venv = folder / "python3", folder / "venv-python"
    stock.write_text(STOCK_PYTHON)
    venv.write_text(VENV_PYTHON)
    stock.chmod(0o755)
    venv.chmod(0o755)
    return stock, {"FAKE_VENV_PYTHON": str(venv)}


def test_a_stock_image_installs_the_callers_version_into_a_virtualenv(
    tmp_path: Path, stock_image: tuple[Path, dict[str, str]]
) -> None:
    from azmanagers._version import __version__

    stock, env = stock_image
    instance_dir = tmp_path / "instance"
    pip_args = ("--index-url", "https://user:secret@pkgs.example/simple", "--pre")
    script = render(spec(bootstrap_pip_args=pip_args))
    result, _ = run_script(script, instance_dir, stock, env)
    assert result.returncode == 0, result.stdout + result.stderr
    venv_bin = instance_dir / f"venv-{__version__}" / "bin"
    pip_call = (venv_bin / "pip-args").read_text().splitlines()
    assert pip_call[:3] == ["-m", "pip", "install"]
    assert pip_call[-4:] == [*pip_args, f"azmanagers=={__version__}"]
    agent = (venv_bin / "agent-args").read_text().splitlines()
    assert agent[:3] == ["-m", "azmanagers.agent", "worker"]
    assert "installing it into" in result.stdout
    assert f"starting agent with {venv_bin / 'python'}" in result.stdout
    assert "secret" not in result.stdout + result.stderr  # an index token is never echoed
    # A second boot on the same disk reuses the virtualenv: no second install.
    (venv_bin / "pip-args").unlink()
    result, _ = run_script(script, instance_dir, stock, env)
    assert result.returncode == 0, result.stdout + result.stderr
    assert not (venv_bin / "pip-args").exists()
    assert "installing" not in result.stdout


def test_a_chosen_requirement_is_installed(
    tmp_path: Path, stock_image: tuple[Path, dict[str, str]]
) -> None:
    stock, env = stock_image
    wheel = "/mnt/wheels/azmanagers-0.1.0-py3-none-any.whl"
    script = render(spec(bootstrap_requirement=wheel))
    result, _ = run_script(script, tmp_path / "instance", stock, env)
    assert result.returncode == 0, result.stdout + result.stderr
    pip_args = next((tmp_path / "instance").glob("venv-*/bin/pip-args")).read_text()
    assert pip_args.splitlines()[-1] == wheel


@pytest.mark.parametrize(
    ("fault", "message"),
    [
        ({"FAIL_PIP": "1"}, "pip could not install azmanagers"),
        ({"FAIL_VENV": "1"}, "cannot make a virtualenv"),
        ({"INSTALLS_VERSION": "0.0.9"}, "installed a different version"),
    ],
)
def test_a_failed_bootstrap_stops_the_boot_with_the_reason(
    tmp_path: Path, stock_image: tuple[Path, dict[str, str]], fault: dict[str, str], message: str
) -> None:
    stock, env = stock_image
    result, _ = run_script(render(spec()), tmp_path / "instance", stock, {**env, **fault})
    assert result.returncode == 3
    assert message in result.stdout
    assert not list((tmp_path / "instance").glob("venv-*/bin/agent-args"))


# -- validation -------------------------------------------------------------------------


@pytest.mark.parametrize(
    "name", ["1ABC", "A-B", "A B", "", "A=B", "A;B", "$(x)", "A\nB", "\u00c9T\u00c9"]
)
def test_bad_env_names_raise(name: str) -> None:
    with pytest.raises(ConfigError, match="not valid"):
        render(spec(env={name: "x"}))


def test_env_name_with_trailing_newline_raises() -> None:
    with pytest.raises(ConfigError, match="not valid"):
        render(spec(env={"FOO\n": "x"}))


@pytest.mark.parametrize("value", [1, 2.5, None, True, b"bytes", ["a"], {"a": "b"}])
def test_non_string_env_values_raise(value: object) -> None:
    with pytest.raises(ConfigError, match="must be a string"):
        render(spec(env={"GOOD_NAME": value}))


@pytest.mark.parametrize("role", ["Worker", "scheduler", "", "worker "])
def test_unknown_role_raises(role: str) -> None:
    with pytest.raises(ConfigError, match="unknown boot role") as info:
        render(spec(role=role))
    assert "worker" in str(info.value) and "detached" in str(info.value)


def test_non_json_payload_raises() -> None:
    with pytest.raises(TypeError):
        render(spec(payload={"x": object()}))


def test_payload_too_large_for_custom_data_raises_with_advice() -> None:
    incompressible = base64.b64encode(os.urandom(CUSTOM_DATA_MAX_BYTES)).decode()
    with pytest.raises(ConfigError) as info:
        render(spec(payload={"blob": incompressible}))
    message = str(info.value)
    assert str(CUSTOM_DATA_MAX_BYTES) in message
    assert "customData" in message
    assert "fewer environment variables" in message


def test_env_too_large_for_custom_data_raises() -> None:
    with pytest.raises(ConfigError, match="customData"):
        render(spec(env={"BIG": "x" * CUSTOM_DATA_MAX_BYTES}))


def test_script_just_under_the_limit_is_accepted() -> None:
    base = len(render(spec(env={"PAD": "x"})).encode())
    room = CUSTOM_DATA_MAX_BYTES - base + 1
    script = render(spec(env={"PAD": "x" * room}))
    assert len(script.encode()) == CUSTOM_DATA_MAX_BYTES
    with pytest.raises(ConfigError):
        render(spec(env={"PAD": "x" * (room + 1)}))


def test_compressible_payload_well_over_the_limit_fits() -> None:
    payload = {"requirements": "numpy==1.26.4\n" * 20_000}
    assert len(json.dumps(payload)) > 4 * CUSTOM_DATA_MAX_BYTES
    assert len(render(spec(payload=payload)).encode()) <= CUSTOM_DATA_MAX_BYTES


# -- the payload encoding ---------------------------------------------------------------

json_values = st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats(allow_nan=False) | st.text(),
    lambda children: (
        st.lists(children, max_size=4) | st.dictionaries(st.text(), children, max_size=4)
    ),
    max_leaves=20,
)


@settings(max_examples=60, deadline=None)
@given(st.dictionaries(st.text(), json_values, max_size=6))
def test_payload_round_trips(payload: dict[str, Any]) -> None:
    text = encode_payload(payload)
    assert all(len(line) <= 76 for line in text.splitlines())
    assert decode_payload(base64.b64decode(text)) == payload


def test_encoding_is_deterministic() -> None:
    payload = {"b": 1, "a": [1, 2]}
    assert encode_payload(payload) == encode_payload({"a": [1, 2], "b": 1})


@pytest.mark.parametrize("value", [[1, 2], "text", 3, None])
def test_decode_rejects_a_payload_that_is_not_an_object(value: object) -> None:
    import gzip

    data = gzip.compress(json.dumps(value).encode())
    with pytest.raises(ConfigError, match="not a JSON object"):
        decode_payload(data)


def test_a_callers_env_cannot_make_a_process_vm_run_apt_get(
    tmp_path: Path, stock_image: tuple[Path, dict[str, str]]
) -> None:
    stock, env = stock_image
    stubs = tmp_path / "stubs"
    stubs.mkdir()
    for tool in ("apt-get", "id", "poweroff"):
        stub = stubs / tool
        stub.write_text(f'#!/bin/bash\necho 0\ntouch "{tmp_path}/ran-{tool}"\n')
        stub.chmod(0o755)
    script = render(spec(env={"AZMANAGERS_INSTANCE_DIR": ""}))
    path = f"{stubs}:{os.environ.get('PATH', '/usr/bin:/bin')}"
    result, _ = run_script(
        script, tmp_path / "instance", stock, {**env, "FAIL_VENV": "1", "PATH": path}
    )
    assert result.returncode == 3
    assert not (tmp_path / "ran-apt-get").exists()
    assert not (tmp_path / "ran-poweroff").exists()
