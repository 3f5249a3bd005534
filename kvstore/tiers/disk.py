"""Disk tier: one file per chunk under ``<data_dir>/chunks``, written atomically.

File format (little endian): b"KVC1", u32 header length, header = serialized ChunkMeta,
u16 namespace length, namespace id (utf-8), then the payload. Chunks of a tenant are written as
b"KVC2": the same plus u16 tenant length and the tenant name (utf-8) after the namespace, so
tenant quotas survive a warm restart. Both are read; untenanted chunks are still written as KVC1,
byte for byte as before. The payload is always the file's tail.

A chunk is written to ``<data_dir>/tmp`` and renamed into place, so a crash leaves either the old
state or the whole new file, never a torn chunk; leftover temporaries are removed on start. The
index is rebuilt from file headers on start (payload checksums are verified when a chunk is read,
not at start, so a restart costs one small read per chunk).
"""

from __future__ import annotations

import logging
import os
import struct
import uuid
from collections.abc import Iterable, Iterator
from dataclasses import dataclass
from pathlib import Path

from google.protobuf.message import DecodeError

from kvstore import wire
from kvstore.chunk import ChunkInfo, checksum
from kvstore.errors import CapacityError, ChecksumMismatch
from kvstore.v1 import kvstore_pb2 as pb

log = logging.getLogger(__name__)
MAGIC = b"KVC1"
MAGIC_TENANT = b"KVC2"  # KVC1 + the owning tenant after the namespace
_HEAD = struct.Struct("<4sI")
_NS = struct.Struct("<H")


@dataclass(frozen=True)
class DiskRecord:
    info: ChunkInfo
    namespace: str
    file_bytes: int
    mtime: float
    tenant: str = ""


class DiskTier:
    name = "disk"

    def __init__(self, data_dir: str | os.PathLike[str], capacity_bytes: int,
                 fsync: bool = False) -> None:
        self.root = Path(data_dir)
        self.chunks_dir = self.root / "chunks"
        self.tmp_dir = self.root / "tmp"
        try:
            self.chunks_dir.mkdir(parents=True, exist_ok=True)
            self.tmp_dir.mkdir(parents=True, exist_ok=True)
        except OSError as exc:
            raise CapacityError(f"disk tier cannot use {self.root}: {exc.strerror}") from exc
        self.capacity_bytes = capacity_bytes
        self.used_bytes = 0
        self.fsync = fsync

    def path(self, key: bytes) -> Path:
        h = key.hex()
        return self.chunks_dir / h[:2] / f"{h}.kvc"

    @staticmethod
    def _header(info: ChunkInfo, namespace: str, tenant: str = "") -> bytes:
        meta = wire.info_to_pb(info).SerializeToString()
        ns = namespace.encode()
        head = _HEAD.pack(MAGIC_TENANT if tenant else MAGIC, len(meta)) + meta
        head += _NS.pack(len(ns)) + ns
        if tenant:
            t = tenant.encode()
            head += _NS.pack(len(t)) + t
        return head

    def file_bytes(self, info: ChunkInfo, namespace: str, tenant: str = "") -> int:
        return len(self._header(info, namespace, tenant)) + info.payload_bytes

    def write(self, info: ChunkInfo, namespace: str, views: Iterable[memoryview],
              tenant: str = "") -> int:
        """Write the chunk atomically; returns bytes used. CapacityError if the disk is full."""
        header = self._header(info, namespace, tenant)
        final = self.path(info.key)
        tmp = self.tmp_dir / f"{info.key.hex()}.{uuid.uuid4().hex[:8]}"
        try:
            final.parent.mkdir(exist_ok=True)
            with open(tmp, "wb") as f:
                f.write(header)
                for v in views:
                    f.write(v)
                if self.fsync:
                    f.flush()
                    os.fsync(f.fileno())
            os.replace(tmp, final)
        except OSError as exc:
            tmp.unlink(missing_ok=True)
            raise CapacityError(f"disk tier write failed ({exc.strerror}); chunk not stored") \
                from exc
        size = len(header) + info.payload_bytes
        self.used_bytes += size
        return size

    def read(self, info: ChunkInfo, namespace: str) -> bytearray:
        """The chunk's payload, checked against its checksum (ChecksumMismatch if it fails)."""
        buf = bytearray(info.payload_bytes)
        try:
            with open(self.path(info.key), "rb") as f:
                # the payload is the tail whatever the header version; a short file fails here
                # or at the checksum
                f.seek(-info.payload_bytes, os.SEEK_END)
                n = f.readinto(buf)
        except OSError as exc:
            raise ChecksumMismatch(f"chunk file unreadable: {exc.strerror}") from exc
        if n != info.payload_bytes or checksum([buf]) != info.checksum:
            raise ChecksumMismatch(f"chunk {info.key.hex()} on disk fails its checksum")
        return buf

    def delete(self, key: bytes, file_bytes: int) -> None:
        try:
            self.path(key).unlink()
        except FileNotFoundError:
            pass
        self.used_bytes -= file_bytes

    def scan(self) -> Iterator[DiskRecord]:
        """Rebuild the index from file headers; unreadable files are removed and logged."""
        for tmp in self.tmp_dir.iterdir():
            tmp.unlink(missing_ok=True)
        for path in sorted(self.chunks_dir.glob("*/*.kvc")):
            try:
                rec = self._read_header(path)
            except (OSError, ValueError, struct.error, DecodeError) as exc:
                log.warning("removing unreadable chunk file %s: %s", path, exc)
                path.unlink(missing_ok=True)
                continue
            self.used_bytes += rec.file_bytes
            yield rec

    def _read_header(self, path: Path) -> DiskRecord:
        st = path.stat()
        with open(path, "rb") as f:
            magic, meta_len = _HEAD.unpack(f.read(_HEAD.size))
            if magic not in (MAGIC, MAGIC_TENANT) or meta_len > 1 << 20:
                raise ValueError("bad header")
            meta = pb.ChunkMeta.FromString(f.read(meta_len))
            (ns_len,) = _NS.unpack(f.read(_NS.size))
            namespace = f.read(ns_len).decode()
            head = _HEAD.size + meta_len + _NS.size + ns_len
            tenant = ""
            if magic == MAGIC_TENANT:
                (t_len,) = _NS.unpack(f.read(_NS.size))
                tenant = f.read(t_len).decode()
                head += _NS.size + t_len
        info = wire.info_from_pb(meta)
        if path.name != f"{info.key.hex()}.kvc":
            raise ValueError("file name does not match the key in its header")
        if st.st_size != head + info.payload_bytes:
            raise ValueError("file size does not match its header (truncated?)")
        return DiskRecord(info, namespace, st.st_size, st.st_mtime, tenant)
