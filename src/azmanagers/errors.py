"""The exception tree of azmanagers: every error we raise derives from ``AzManagersError``.

::

    AzManagersError
    ├── ConfigError               a bad or missing manifest, template or setting
    ├── ProviderError             a provider call failed (mapped at the provider seam)
    │   ├── ProviderUnavailableError   the template asks for a provider this install lacks
    │   ├── NotFoundError         the resource does not exist
    │   ├── NotAuthorisedError    the cloud refused our credentials or permissions
    │   ├── QuotaError            not enough quota (cores, spot cores, SKU) for the request
    │   └── ThrottledError        the cloud's request limit is spent; ``retry_after_s`` says when
    ├── InstanceFailedError       an instance failed to boot or join, past its replacements
    ├── WaitTimeoutError          a bounded wait ran out (says how far it got)
    ├── ClusterClosedError        the cluster was used after ``close()``
    ├── MpiCallError              a rank of an ``mpi_call`` raised, or mpiexec failed
    ├── DetachedServiceError      a detached VM's service refused or could not be reached
    │   ├── ServiceRefusedError   it answered an HTTP error (``status``)
    │   ├── JobNotFoundError      no such job on that VM
    │   └── JobFailedError        the job raised, exited non-zero, or was killed
    ├── StorageError              a storage back-end refused or could not be reached
    │   ├── StorageNotFoundError  no object (or container) at that URL or key
    │   ├── StorageAccessError    the credential lacks a permission, or has expired
    │   └── IntegrityError        downloaded bytes do not match their recorded SHA-256
    └── BatchError                a batch job could not be submitted, found or finished
        └── BatchJobNotFoundError no job of that name in that storage
"""

from __future__ import annotations


class AzManagersError(Exception):
    """Root of every error raised by azmanagers."""


class ConfigError(AzManagersError, ValueError):
    """A configuration value is missing or wrong; the message names the file, key and fix."""


class ProviderError(AzManagersError):
    """A provider operation failed."""


class ProviderUnavailableError(ProviderError):
    """The requested provider is not available in this installation."""


class NotFoundError(ProviderError, LookupError):
    """The resource does not exist."""


class NotAuthorisedError(ProviderError, PermissionError):
    """The cloud refused our credentials, or they lack a permission."""


class QuotaError(ProviderError):
    """Not enough quota for the request."""


class ThrottledError(ProviderError):
    """The cloud refused the request for now; try again after ``retry_after_s`` seconds."""

    def __init__(self, message: str, *, retry_after_s: float = 0.0) -> None:
        super().__init__(message)
        self.retry_after_s = retry_after_s


class InstanceFailedError(AzManagersError):
    """An instance failed (to boot, or to join) more often than the replacement budget allows."""

    def __init__(self, message: str, *, instance: str = "", log_tail: str = "") -> None:
        super().__init__(message)
        self.instance = instance
        self.log_tail = log_tail


class WaitTimeoutError(AzManagersError, TimeoutError):
    """A wait with a deadline ran out."""


class ClusterClosedError(AzManagersError):
    """The cluster was used after it was closed."""


class MpiCallError(AzManagersError):
    """A rank of an ``mpi_call`` raised (its traceback in the message), or mpiexec failed."""


class DetachedServiceError(AzManagersError):
    """A detached VM's service could not be reached, or refused a request."""


class ServiceRefusedError(DetachedServiceError):
    """The service answered with an HTTP error; ``status`` holds its code."""

    def __init__(self, message: str, status: int) -> None:
        super().__init__(message)
        self.status = status


class JobNotFoundError(DetachedServiceError, LookupError):
    """The detached VM has no job with that id."""


class JobFailedError(DetachedServiceError):
    """A detached job failed; ``remote_traceback`` holds the traceback from the VM."""

    def __init__(self, message: str, *, error_type: str = "", remote_traceback: str = "") -> None:
        super().__init__(message)
        self.error_type = error_type
        self.remote_traceback = remote_traceback


class StorageError(AzManagersError):
    """A storage back-end (``file://``, ``az://``) refused a request or could not be reached."""


class StorageNotFoundError(StorageError, LookupError):
    """No object, folder or container at that key or URL."""


class StorageAccessError(StorageError, PermissionError):
    """The storage credential lacks a permission for that key, or has expired."""


class IntegrityError(StorageError):
    """Bytes read from storage do not match the SHA-256 recorded when they were written."""


class BatchError(AzManagersError):
    """A batch job could not be submitted, found, or brought to an end."""


class BatchJobNotFoundError(BatchError, LookupError):
    """No batch job of that name in that storage."""
