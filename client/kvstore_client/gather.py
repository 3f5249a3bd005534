"""Where the chunks of one threaded GET land, and which of them have (``Gather``, a Sink).

Placement of chunk ``i`` with ``meta``:

* ``out=`` given: received into ``out[i]`` (the caller's CPU buffer); with a GPU ``device`` also
  copied from it into a fresh GPU tensor, piece by piece while the rest arrives.
* a GPU ``device``, no ``out=``: received through the connection's pinned staging ring into a
  fresh GPU tensor (identity chunks and codecs that decode on the GPU; host-only codecs such as
  shuffle-lz4 land on the host and are decoded there).
* otherwise: a fresh CPU tensor.

Results are filled from the receiving threads as each chunk completes: ``PENDING`` (not arrived:
its connection failed first), None (a miss, or a checksum mismatch: counted in ``corrupt``),
(meta, flat uint8 tensor), or ``Decoded`` (a codec'd chunk decoded on the receiving thread).
A slot is written once, by the one thread that owns the key.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence

import torch

from kvstore.chunk import IDENTITY
from kvstore.errors import InvalidArgument
from kvstore.v1 import kvstore_pb2 as pb
from kvstore_client.receiver import Sink, Target

PENDING = object()


class Decoded:
    """A chunk already decoded on its receiving thread (``finish``)."""

    __slots__ = ("tensor",)

    def __init__(self, tensor: torch.Tensor) -> None:
        self.tensor = tensor


class Gather(Sink):
    """``finish(meta, raw)``, if given, decodes codec'd chunks on the receiving thread as each
    lands (on a GPU: queued after its copies), overlapping the decode with the transfer of the
    rest; their results are ``Decoded``."""

    def __init__(self, n: int, buffers: Sequence[torch.Tensor] | None,
                 device: torch.device | None,
                 finish: Callable[[pb.ChunkMeta, torch.Tensor], torch.Tensor] | None = None
                 ) -> None:
        self.results: list[object] = [PENDING] * n
        self._finish = finish
        self.corrupt: list[bytes] = []  # keys whose payload failed its checksum
        self._buffers = buffers
        self._gpu = device if device is not None and device.type == "cuda" else None

    def pending(self, indices: Sequence[int]) -> list[int]:
        return [i for i in indices if self.results[i] is PENDING]

    def target(self, index: int, meta: pb.ChunkMeta) -> Target:
        n = meta.payload_bytes
        gpu = None
        if self._gpu is not None and _decodes_on_device(meta.codec):
            gpu = torch.empty(n, dtype=torch.uint8, device=self._gpu)
        if self._buffers is not None:
            buf = self._buffers[index]
            if buf.numel() < n:
                raise InvalidArgument(f"output buffer {index} holds {buf.numel()} bytes; chunk "
                                      f"{meta.key.hex()} needs {n}")
            return Target(host=buf[:n], gpu=gpu)
        if gpu is not None:
            return Target(gpu=gpu)
        return Target(host=torch.empty(n, dtype=torch.uint8))

    def done(self, index: int, meta: pb.ChunkMeta, target: Target, ok: bool) -> None:
        if not ok:
            self.corrupt.append(meta.key)
            self.results[index] = None
            return
        raw = target.gpu if target.gpu is not None else target.host
        assert raw is not None
        if self._finish is not None and meta.codec not in ("", IDENTITY):
            if target.ready is not None:  # decode after the copies, on this thread's stream
                torch.cuda.current_stream(raw.device).wait_event(target.ready)
            self.results[index] = Decoded(self._finish(meta, raw))
            return
        self.results[index] = (meta, raw)

    def miss(self, index: int) -> None:
        self.results[index] = None


def _decodes_on_device(codec: str) -> bool:
    if codec in ("", IDENTITY):
        return True
    from kvstore.codecs.registry import get_codec  # loaded only when codec'd chunks arrive

    return not get_codec(codec).host_only
