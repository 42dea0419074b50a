"""The detached service's wire format: routes and the records both ends exchange as JSON."""

from __future__ import annotations

import json
import re
from collections.abc import Mapping
from dataclasses import asdict, dataclass, field, fields
from typing import Any
from urllib.parse import quote

API_PREFIX = "/v1"
JOB_STATUSES = ("queued", "running", "succeeded", "failed", "killed")
FINISHED_STATUSES = frozenset({"succeeded", "failed", "killed"})
STREAMS = ("stdout", "stderr")
JOB_KINDS = ("code", "call")
MAX_JOB_NAME_CHARS = 200
RESERVED_ENV_PREFIX = "AZMANAGERS_"
"""A job's env may not set variables starting with this: the service sets them."""
MAX_INT_DIGITS = 100
"""The most digits a number in a request body may have (none needs more)."""
SIZE_HEADER = "X-Azm-Size"
"""An output read's header: the stream's size so far, in bytes."""
NEXT_OFFSET_HEADER = "X-Azm-Next-Offset"
"""An output read's header: the byte offset to read from next."""

_PARAM = re.compile(r"\{(\w+)(?::([^}]+))?\}")


class WireError(ValueError):
    """A message that does not have the shape of its record (the text says what is wrong)."""


@dataclass(frozen=True)
class Route:
    """One route of the service: its methods and its path template.

    A template names its parameters in braces, optionally with the values allowed
    (``{stream:stdout|stderr}``); other parameters match one path segment.
    """

    methods: tuple[str, ...]
    template: str

    def path(self, **params: str) -> str:
        """The route's path with ``params`` filled in (each quoted as one path segment)."""

        def fill(match: re.Match[str]) -> str:
            return quote(params[match.group(1)], safe="")

        return _PARAM.sub(fill, self.template)

    @property
    def pattern(self) -> str:
        """The route as a regular expression with a group per parameter (for tornado)."""
        parts = []
        last = 0
        for match in _PARAM.finditer(self.template):
            parts.append(re.escape(self.template[last : match.start()]))
            parts.append(f"({match.group(2)})" if match.group(2) else r"([^/]+)")
            last = match.end()
        parts.append(re.escape(self.template[last:]))
        return "".join(parts)


SCHEMA = Route(("GET",), f"{API_PREFIX}/openapi.json")
PING = Route(("GET",), f"{API_PREFIX}/ping")
VM = Route(("GET",), f"{API_PREFIX}/vm")
JOBS = Route(("GET", "POST"), f"{API_PREFIX}/jobs")
JOB = Route(("GET",), f"{API_PREFIX}/jobs/{{job_id}}")
JOB_OUTPUT = Route(("GET",), f"{API_PREFIX}/jobs/{{job_id}}/{{stream:stdout|stderr}}")
JOB_WAIT = Route(("POST",), f"{API_PREFIX}/jobs/{{job_id}}/wait")
JOB_KILL = Route(("POST",), f"{API_PREFIX}/jobs/{{job_id}}/kill")
JOB_RESULT = Route(("GET",), f"{API_PREFIX}/jobs/{{job_id}}/result")


def _object(value: object, what: str) -> Mapping[str, Any]:
    if not isinstance(value, Mapping):
        raise WireError(f"{what} must be a JSON object, got {type(value).__name__}")
    return value


def _take(cls: type[Any], value: object, what: str) -> dict[str, Any]:
    """The known fields of ``value`` (extra ones, from a newer peer, are ignored)."""
    data = _object(value, what)
    known = {f.name for f in fields(cls)}
    return {k: v for k, v in data.items() if k in known}


def check_text(value: str, what: str) -> str:
    """Return ``value`` when it is valid Unicode text; else raise a WireError saying where."""
    try:
        value.encode("utf-8")
    except UnicodeEncodeError as exc:
        bad = value[exc.start : exc.end].encode("unicode_escape", "backslashreplace").decode()
        raise WireError(
            f"{what} contains a lone surrogate ({bad}) at character {exc.start}: send valid "
            "Unicode text (encode binary data as base64)"
        ) from None
    return value


def encode_body(value: object) -> bytes:
    """A request body as the client sends it (JSON, UTF-8): its size is what counts."""
    return json.dumps(value).encode()


def decode_body(data: bytes) -> object:
    """Parse a request body as JSON; WireError saying what is wrong when it is not."""
    try:
        text = data.decode("utf-8")
    except UnicodeDecodeError as exc:
        raise WireError(
            f"the body is not UTF-8 text (byte {data[exc.start]:#04x} at offset {exc.start})"
        ) from None
    try:
        return json.loads(text or "null", parse_int=_bounded_int)
    except RecursionError:
        raise WireError("the body is nested too deeply: send a flat JSON object") from None
    except ValueError as exc:
        if isinstance(exc, WireError):
            raise
        raise WireError(f"the body is not JSON ({exc})") from None


def _bounded_int(text: str) -> int:
    digits = len(text.lstrip("-"))
    if digits > MAX_INT_DIGITS:
        raise WireError(
            f"the body holds a number of {digits} digits; a number may have at most "
            f"{MAX_INT_DIGITS}"
        )
    return int(text)


@dataclass(frozen=True)
class JobInfo:
    """A job's record as the service shows it (``GET /v1/jobs/{id}``)."""

    id: str
    name: str
    kind: str
    status: str
    created_at: float
    started_at: float | None = None
    finished_at: float | None = None
    pid: int | None = None
    exit_code: int | None = None
    error_type: str | None = None
    error_message: str | None = None
    persist: bool = True

    @property
    def finished(self) -> bool:
        """Whether the job has ended (succeeded, failed or was killed)."""
        return self.status in FINISHED_STATUSES

    def to_json(self) -> dict[str, Any]:
        """The record as JSON-ready data."""
        return asdict(self)

    @classmethod
    def from_json(cls, value: object) -> JobInfo:
        """Parse a job record; WireError when it is not one."""
        data = _take(cls, value, "a job record")
        try:
            info = cls(**data)
        except TypeError as exc:
            raise WireError(f"a job record lacks a field ({exc})") from None
        if not isinstance(info.id, str) or not isinstance(info.status, str):
            raise WireError("a job record's id and status must be strings")
        return info


@dataclass(frozen=True)
class JobError:
    """Why a job failed: the exception's type and message, and the traceback on the VM."""

    type: str = ""
    message: str = ""
    traceback: str = ""


@dataclass(frozen=True)
class JobResult:
    """A finished job's outcome (``GET /v1/jobs/{id}/result``)."""

    job: JobInfo
    result: str | None = None
    """base64 of the cloudpickled return value (a function that succeeded)."""
    error: JobError | None = None

    def to_json(self) -> dict[str, Any]:
        """The outcome as JSON-ready data."""
        return asdict(self)

    @classmethod
    def from_json(cls, value: object) -> JobResult:
        """Parse a job's outcome; WireError when it is not one."""
        data = _object(value, "a job result")
        error = data.get("error")
        return cls(
            job=JobInfo.from_json(data.get("job")),
            result=data.get("result") if isinstance(data.get("result"), str) else None,
            error=JobError(**_take(JobError, error, "a job error")) if error else None,
        )


@dataclass(frozen=True)
class Ping:
    """The answer of ``GET /v1/ping``."""

    ok: bool
    name: str = ""

    @classmethod
    def from_json(cls, value: object) -> Ping:
        """Parse a ping answer."""
        data = _take(cls, value, "a ping answer")
        return cls(ok=bool(data.get("ok")), name=str(data.get("name", "")))


@dataclass(frozen=True)
class ServiceInfo:
    """The VM as its service describes it (``GET /v1/vm``)."""

    name: str
    azmanagers: str
    python: str
    cpus: int
    started_at: float
    running_jobs: int

    def to_json(self) -> dict[str, Any]:
        """The description as JSON-ready data."""
        return asdict(self)

    @classmethod
    def from_json(cls, value: object) -> ServiceInfo:
        """Parse a VM description; WireError when it is not one."""
        try:
            return cls(**_take(cls, value, "a VM description"))
        except TypeError as exc:
            raise WireError(f"a VM description lacks a field ({exc})") from None


@dataclass(frozen=True)
class OutputChunk:
    """Bytes of a job's stdout or stderr, and where to read next."""

    data: bytes
    size: int
    """The stream's size so far, in bytes."""
    next_offset: int


@dataclass(frozen=True)
class JobRequest:
    """A request to run a job (``POST /v1/jobs``): exactly one of ``code`` or ``call``."""

    name: str = ""
    code: str | None = None
    """Python source, run as ``__main__``."""
    call: str | None = field(default=None, repr=False)
    """base64 of a cloudpickled ``(function, args, kwargs)``."""
    bundle: str | None = field(default=None, repr=False)
    """base64 of a cloudpickled dict: what ``variablebundle()`` reads in the job."""
    env: dict[str, str] = field(default_factory=dict)
    persist: bool = True

    def to_json(self) -> dict[str, Any]:
        """The request as JSON-ready data (absent parts left out)."""
        return {k: v for k, v in asdict(self).items() if v is not None and v != {}}

    @classmethod
    def from_json(cls, value: object) -> JobRequest:
        """Check a run request; WireError with a message for the caller when it is bad."""
        data = _object(value, "the body")
        code, call = data.get("code"), data.get("call")
        if (code is None) == (call is None):
            raise WireError("give exactly one of 'code' (a string) or 'call' (base64)")
        if code is not None and not isinstance(code, str):
            raise WireError("'code' must be a string of Python source")
        name = data.get("name", "")
        if not isinstance(name, str) or len(name) > MAX_JOB_NAME_CHARS:
            raise WireError(f"'name' must be a string of at most {MAX_JOB_NAME_CHARS} characters")
        env = data.get("env")
        if env is None:
            env = {}
        if not isinstance(env, Mapping):
            raise WireError(
                f"'env' must be a JSON object mapping variable names to string values, "
                f"got {type(env).__name__}"
            )
        if not all(
            isinstance(k, str) and isinstance(v, str) and k and "=" not in k and "\0" not in k + v
            for k, v in env.items()
        ):
            raise WireError("'env' must map variable names to string values")
        reserved = sorted(k for k in env if k.upper().startswith(RESERVED_ENV_PREFIX))
        if reserved:
            raise WireError(
                f"'env' may not set {', '.join(reserved)}: variables starting with "
                f"{RESERVED_ENV_PREFIX} belong to azmanagers (they mark a job's processes so "
                "that a kill or a VM's deletion reaches them); rename the variable"
            )
        if "\0" in name:
            raise WireError("'name' must not hold a NUL character")
        persist = data.get("persist", True)
        if not isinstance(persist, bool):
            raise WireError("'persist' must be true or false")
        for key in ("call", "bundle"):
            if data.get(key) is not None and not isinstance(data[key], str):
                raise WireError(f"'{key}' must be a base64 string")
        check_text(name, "'name'")
        if code is not None:
            check_text(code, "'code'")
        for key, val in env.items():
            check_text(key, "an 'env' name")
            check_text(val, f"'env' value of {key.encode('utf-8', 'backslashreplace').decode()}")
        return cls(
            name=name,
            code=code,
            call=call,
            bundle=data.get("bundle"),
            env=dict(env),
            persist=persist,
        )
