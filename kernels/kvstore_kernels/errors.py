"""The one exception hierarchy of kvstore_kernels.

KernelError is the root. Bad arguments raise KernelInputError, which is also a ValueError so callers
that only know the builtin still catch it. A backend that was asked for by name but cannot run here
raises BackendUnavailableError (also a RuntimeError); "auto" never raises it except where running
the torch fallback would hide a misconfiguration (see _backend.select_backend).
"""


class KernelError(Exception):
    """Root of every error raised on purpose by kvstore_kernels."""


class KernelInputError(KernelError, ValueError):
    """A tensor argument has the wrong shape, dtype, device or value range."""


class BackendUnavailableError(KernelError, RuntimeError):
    """The requested backend cannot run for these tensors on this machine."""
