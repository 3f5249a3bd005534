"""Framing of the bulk data plane, shared by the node and the client (see docs/PROTOCOL.md).

gRPC carries control calls; chunk bytes may instead travel on a plain TCP connection that the
client opens to the port Handshake returns, so payloads move with scatter/gather socket I/O
straight between the node's page pool and the client's tensor memory (gRPC's Python stack copies
each message several times and peaks near 1.1 GB/s here, a raw socket near 3 GB/s).

Every integer is little endian. A connection starts with HELLO and then carries one request at a
time:

  HELLO   c->s  b"KVDP" u8 version, u16 n, session id (n bytes)
          s->c  STATUS
  GET     c->s  u8 OP_GET, u32 n, n x 16-byte keys
          s->c  per key: u8 found; if found: u32 m, ChunkMeta (m bytes), payload
  PUT     c->s  u8 OP_PUT, u32 m, ChunkMeta (m bytes)
          s->c  STATUS            (room reserved, or why not; nothing is sent on error)
          c->s  payload           (only after an OK status)
          s->c  STATUS            (stored: message = tier name)
  GET_SHM c->s  u8 OP_GET_SHM, u32 n, n x 16-byte keys   (nodes with a shared-memory CPU tier)
          s->c  per key: u8 found; if found: u32 m, ChunkMeta (m bytes), u64 lease id,
                u16 k, k x (u64 offset, u64 length) spans of the payload in the shm file
                (k = 0: not in shared memory; lease id 0, nothing held: fetch it with GET)
  RELEASE c->s  u8 OP_RELEASE, u32 n, n x u64 lease ids
          s->c  STATUS
  STATUS  u8 grpc status code (0 = OK), u16 n, utf-8 message (n bytes)

A lease pins its chunk (never evicted or overwritten) until RELEASE or until the connection
closes, which releases every lease it still holds.
"""

from __future__ import annotations

import struct

MAGIC = b"KVDP"
VERSION = 1
OP_GET = 1
OP_PUT = 2
OP_GET_SHM = 3
OP_RELEASE = 4
HELLO = struct.Struct("<4sBH")
OP = struct.Struct("<B")
U32 = struct.Struct("<I")
STATUS = struct.Struct("<BH")
U64 = struct.Struct("<Q")
SPAN_HEAD = struct.Struct("<QH")  # lease id, span count
SPAN = struct.Struct("<QQ")       # offset, length
MAX_LEASES = 1 << 20              # per connection; a client holding more is cut off
MAX_META_BYTES = 1 << 16
MAX_KEYS = 65536


def pack_status(code: int, message: str = "") -> bytes:
    msg = message.encode()[:65535]
    return STATUS.pack(code, len(msg)) + msg
