"""The detached service's OpenAPI 3.0 schema (served at ``/v1/openapi.json``)."""

from __future__ import annotations

from typing import Any

_ERROR = {
    "description": "An error, with a message saying what to do",
    "content": {
        "application/json": {
            "schema": {
                "type": "object",
                "required": ["error"],
                "properties": {"error": {"type": "string"}},
            }
        }
    },
}
_JOB = {
    "type": "object",
    "required": ["id", "name", "kind", "status", "created_at"],
    "properties": {
        "id": {"type": "string"},
        "name": {"type": "string"},
        "kind": {"type": "string", "enum": ["code", "call"]},
        "status": {
            "type": "string",
            "enum": ["queued", "running", "succeeded", "failed", "killed"],
        },
        "created_at": {"type": "number"},
        "started_at": {"type": "number", "nullable": True},
        "finished_at": {"type": "number", "nullable": True},
        "pid": {"type": "integer", "nullable": True},
        "exit_code": {"type": "integer", "nullable": True},
        "error_type": {"type": "string", "nullable": True},
        "error_message": {"type": "string", "nullable": True},
        "persist": {"type": "boolean"},
    },
}
_JOB_ID = {
    "name": "job_id",
    "in": "path",
    "required": True,
    "schema": {"type": "string"},
}
_AUTH_ERRORS = {"401": _ERROR, "404": _ERROR, "400": _ERROR, "413": _ERROR}


def _json(schema: dict[str, Any], description: str = "OK") -> dict[str, Any]:
    return {"description": description, "content": {"application/json": {"schema": schema}}}


def _number_query(name: str, description: str) -> dict[str, Any]:
    return {
        "name": name,
        "in": "query",
        "required": False,
        "description": description,
        "schema": {"type": "number", "minimum": 0},
    }


def schema() -> dict[str, Any]:
    """Return the OpenAPI document of the detached service."""
    run_request = {
        "type": "object",
        "description": "Exactly one of code or call.",
        "properties": {
            "code": {"type": "string", "description": "Python source run as __main__"},
            "call": {
                "type": "string",
                "format": "byte",
                "description": "base64 of a cloudpickled (function, args, kwargs)",
            },
            "bundle": {
                "type": "string",
                "format": "byte",
                "description": "base64 of a cloudpickled dict: variablebundle() in the job",
            },
            "env": {
                "type": "object",
                "additionalProperties": {"type": "string"},
                "description": "the job's variables; names starting AZMANAGERS_ are refused",
            },
            "name": {"type": "string", "maxLength": 200, "description": "no NUL character"},
            "persist": {"type": "boolean"},
        },
    }
    output = {
        "get": {
            "summary": "Read a job's stdout or stderr from a byte offset (for tailing)",
            "parameters": [
                _JOB_ID,
                {
                    "name": "stream",
                    "in": "path",
                    "required": True,
                    "schema": {"type": "string", "enum": ["stdout", "stderr"]},
                },
                _number_query("offset", "the first byte to return"),
                _number_query("limit", "the most bytes to return"),
            ],
            "responses": {
                "200": {
                    "description": "The bytes; X-Azm-Next-Offset says where to read next",
                    "content": {"application/octet-stream": {"schema": {"type": "string"}}},
                },
                **_AUTH_ERRORS,
            },
        }
    }
    return {
        "openapi": "3.0.3",
        "info": {"title": "azmanagers detached service", "version": "1"},
        "components": {
            "securitySchemes": {"bearer": {"type": "http", "scheme": "bearer"}},
            "schemas": {"Job": _JOB},
        },
        "security": [{"bearer": []}],
        "paths": {
            "/v1/ping": {
                "get": {
                    "summary": "Is the service up",
                    "responses": {"200": _json({"type": "object"}), "401": _ERROR},
                }
            },
            "/v1/vm": {
                "get": {
                    "summary": "The VM: name, versions, CPUs, running jobs",
                    "responses": {"200": _json({"type": "object"}), "401": _ERROR},
                }
            },
            "/v1/jobs": {
                "get": {
                    "summary": "Every job, oldest first",
                    "responses": {
                        "200": _json(
                            {
                                "type": "object",
                                "properties": {"jobs": {"type": "array", "items": _JOB}},
                            }
                        ),
                        "401": _ERROR,
                    },
                },
                "post": {
                    "summary": "Run a job",
                    "requestBody": {
                        "required": True,
                        "content": {"application/json": {"schema": run_request}},
                    },
                    "responses": {
                        "201": _json(_JOB, "The job's record"),
                        "400": _ERROR,
                        "401": _ERROR,
                        "413": _ERROR,
                    },
                },
            },
            "/v1/jobs/{job_id}": {
                "get": {
                    "summary": "A job's record",
                    "parameters": [_JOB_ID],
                    "responses": {"200": _json(_JOB), **_AUTH_ERRORS},
                }
            },
            "/v1/jobs/{job_id}/{stream}": output,
            "/v1/jobs/{job_id}/wait": {
                "post": {
                    "summary": "Wait up to timeout seconds (at most 60) for the job to finish",
                    "parameters": [_JOB_ID, _number_query("timeout", "seconds to wait")],
                    "responses": {"200": _json(_JOB), **_AUTH_ERRORS},
                }
            },
            "/v1/jobs/{job_id}/kill": {
                "post": {
                    "summary": "Kill the job's process group",
                    "parameters": [_JOB_ID],
                    "responses": {"200": _json(_JOB), **_AUTH_ERRORS},
                }
            },
            "/v1/jobs/{job_id}/result": {
                "get": {
                    "summary": "A finished job's value (base64 cloudpickle) or its error",
                    "parameters": [_JOB_ID],
                    "responses": {
                        "200": _json(
                            {
                                "type": "object",
                                "properties": {
                                    "job": _JOB,
                                    "result": {"type": "string", "nullable": True},
                                    "error": {"type": "object", "nullable": True},
                                },
                            }
                        ),
                        "409": _ERROR,
                        **_AUTH_ERRORS,
                    },
                }
            },
            "/v1/openapi.json": {
                "get": {
                    "summary": "This document (no token needed)",
                    "security": [],
                    "responses": {"200": _json({"type": "object"})},
                }
            },
        },
    }
