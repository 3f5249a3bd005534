"""One error hierarchy for kvstore, mapped to gRPC status codes in one table.

A miss is a result (``None`` / ``found=False``), never an exception. Server code raises these;
the service layer turns them into statuses with ``status_for``; the client turns statuses back
into the same classes with ``error_for_status`` so callers catch one family everywhere.
"""

from __future__ import annotations

import grpc


class KVStoreError(Exception):
    """Root of every error kvstore raises on purpose."""

    code: grpc.StatusCode = grpc.StatusCode.INTERNAL


class InvalidArgument(KVStoreError, ValueError):
    code = grpc.StatusCode.INVALID_ARGUMENT


class KeySchemeError(InvalidArgument):
    """Token ids or namespace fields that cannot be keyed."""


class ConfigError(InvalidArgument):
    """A configuration value that is missing, of the wrong type or out of range."""


class FailedPrecondition(KVStoreError):
    code = grpc.StatusCode.FAILED_PRECONDITION


class SchemeMismatch(FailedPrecondition):
    """The client's key scheme, model, dtype, layout or chunk size differs from the node's."""


class SessionRequired(FailedPrecondition):
    """A data call came without a valid session from Handshake."""


class ResourceExhausted(KVStoreError):
    code = grpc.StatusCode.RESOURCE_EXHAUSTED


class CapacityError(ResourceExhausted):
    """A chunk does not fit in any tier, or a tier cannot make room."""


class DataLoss(KVStoreError):
    code = grpc.StatusCode.DATA_LOSS


class ChecksumMismatch(DataLoss):
    """Bytes do not match their checksum (corrupt in transit or at rest)."""


class NotFound(KVStoreError):
    code = grpc.StatusCode.NOT_FOUND


class Unavailable(KVStoreError):
    code = grpc.StatusCode.UNAVAILABLE


class DeadlineExceeded(KVStoreError):
    code = grpc.StatusCode.DEADLINE_EXCEEDED


class Unauthenticated(KVStoreError):
    """No bearer token, or one the node does not know (docs/SECURITY.md)."""

    code = grpc.StatusCode.UNAUTHENTICATED


class PermissionDenied(KVStoreError):
    """An authenticated caller asked for something its tenant or role may not do."""

    code = grpc.StatusCode.PERMISSION_DENIED


class QuotaExceeded(ResourceExhausted):
    """A put would take a tenant past its byte quota on this node (nothing is stored)."""


_BY_CODE: dict[grpc.StatusCode, type[KVStoreError]] = {
    grpc.StatusCode.INVALID_ARGUMENT: InvalidArgument,
    grpc.StatusCode.FAILED_PRECONDITION: FailedPrecondition,
    grpc.StatusCode.RESOURCE_EXHAUSTED: ResourceExhausted,
    grpc.StatusCode.DATA_LOSS: DataLoss,
    grpc.StatusCode.NOT_FOUND: NotFound,
    grpc.StatusCode.UNAVAILABLE: Unavailable,
    grpc.StatusCode.DEADLINE_EXCEEDED: DeadlineExceeded,
    grpc.StatusCode.UNAUTHENTICATED: Unauthenticated,
    grpc.StatusCode.PERMISSION_DENIED: PermissionDenied,
}


ERROR_METADATA = "kvstore-error"  # trailing metadata naming the exact error class


def _subclasses(cls: type[KVStoreError]) -> dict[str, type[KVStoreError]]:
    out = {cls.__name__: cls}
    for sub in cls.__subclasses__():
        out.update(_subclasses(sub))
    return out


def error_for_status(code: grpc.StatusCode, message: str, name: str = "") -> KVStoreError:
    """The kvstore error for a gRPC status: the exact class when the node named one in trailing
    metadata and it has the same code, else the class for the code (INTERNAL etc. -> root)."""
    cls = _subclasses(KVStoreError).get(name)
    if cls is None or cls.code != code:
        cls = _BY_CODE.get(code, KVStoreError)
    err = cls(message)
    err.code = code
    return err
