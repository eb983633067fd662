"""Prometheus remote write: protobuf WriteRequest, snappy *block* compression. The only module
that imports protobuf or cramjam.

The message classes are compiled at import by the protobuf package from our own
``proto/remote_write.proto`` (parsed here: it holds only messages with scalar and message
fields). The hot path encodes the same wire format by hand with per-series caching, and
tests check its bytes equal protobuf's ``SerializeToString`` and decode back.

Remote write wants snappy's block format (``cramjam.snappy.compress_raw``), not the framed
stream format: VictoriaMetrics and Prometheus reject framed bodies.
"""

from __future__ import annotations

import re
import struct
from functools import lru_cache
from pathlib import Path
from typing import TYPE_CHECKING, Any

import cramjam

from ..kernel.keys import CACHE_MAX
from .series import FLOW_METRICS, LABELS, Batch

__all__ = ["PROTO_PATH", "messages", "RemoteWriteEncoder", "snappy_block", "unsnappy_block", "HEADERS"]

PROTO_PATH = Path(__file__).resolve().parent.parent / "proto" / "remote_write.proto"
HEADERS = {
    "Content-Type": "application/x-protobuf",
    "Content-Encoding": "snappy",
    "X-Prometheus-Remote-Write-Version": "0.1.0",
}

if TYPE_CHECKING:
    from google.protobuf import descriptor_pb2


def _parse_proto(text: str) -> descriptor_pb2.FileDescriptorProto:
    # protobuf is imported here, not at module import: the agent's hot path encodes by hand
    # and the message classes (tests, decoding) are not worth their RSS in every agent.
    from google.protobuf import descriptor_pb2

    scalars = {
        "double": descriptor_pb2.FieldDescriptorProto.TYPE_DOUBLE,
        "int64": descriptor_pb2.FieldDescriptorProto.TYPE_INT64,
        "string": descriptor_pb2.FieldDescriptorProto.TYPE_STRING,
    }
    text = re.sub(r"//[^\n]*", "", text)
    pkg = re.search(r"\bpackage\s+([\w.]+)\s*;", text)
    fdp = descriptor_pb2.FileDescriptorProto(name="xtrace_remote_write.proto", syntax="proto3",
                                             package=pkg.group(1) if pkg else "")
    for mname, body in re.findall(r"message\s+(\w+)\s*\{([^}]*)\}", text):
        msg = fdp.message_type.add(name=mname)
        for rep, ftype, fname, num in re.findall(r"(repeated\s+)?(\w+)\s+(\w+)\s*=\s*(\d+)\s*;", body):
            f = msg.field.add(name=fname, number=int(num))
            f.label = (descriptor_pb2.FieldDescriptorProto.LABEL_REPEATED if rep
                       else descriptor_pb2.FieldDescriptorProto.LABEL_OPTIONAL)
            if ftype in scalars:
                f.type = scalars[ftype]
            else:
                f.type = descriptor_pb2.FieldDescriptorProto.TYPE_MESSAGE
                f.type_name = f".{fdp.package}.{ftype}" if fdp.package else f".{ftype}"
    return fdp


@lru_cache(maxsize=1)
def messages() -> dict[str, Any]:
    """{'WriteRequest': cls, 'TimeSeries': cls, 'Label': cls, 'Sample': cls} from the .proto."""
    from google.protobuf import descriptor_pool, message_factory

    fdp = _parse_proto(PROTO_PATH.read_text())
    pool = descriptor_pool.DescriptorPool()
    fd = pool.Add(fdp)
    if not hasattr(fd, "message_types_by_name"):  # protobuf < 4.x returned None
        fd = pool.FindFileByName(fdp.name)
    out = {}
    for name, desc in fd.message_types_by_name.items():
        if hasattr(message_factory, "GetMessageClass"):
            out[name] = message_factory.GetMessageClass(desc)
        else:  # protobuf < 4.22
            out[name] = message_factory.MessageFactory(pool).GetPrototype(desc)
    return out


def snappy_block(data: bytes | bytearray) -> bytes:
    return bytes(cramjam.snappy.compress_raw(data))


def unsnappy_block(data: bytes) -> bytes:
    return bytes(cramjam.snappy.decompress_raw(data))


def _varint(n: int) -> bytes:
    out = bytearray()
    while n >= 0x80:
        out.append((n & 0x7F) | 0x80)
        n >>= 7
    out.append(n)
    return bytes(out)


def _ld(field: int, payload: bytes) -> bytes:
    """A length-delimited field."""
    return bytes(((field << 3) | 2,)) + _varint(len(payload)) + payload


def _label(name: str, value: str) -> bytes:
    # proto3: a field holding its default ("" or 0) is not written, as SerializeToString does.
    return _ld(1, _ld(1, name.encode()) + (_ld(2, value.encode()) if value else b""))


_ZERO8 = bytes(8)
_ALL_LABELS = (*LABELS, "dst_qp")


def _sample(double: bytes, ts: bytes) -> bytes:
    """A Sample from its value's 8 little-endian bytes and the encoded timestamp field."""
    sample = (b"\x09" + double if double != _ZERO8 else b"") + ts
    return b"\x12" + _varint(len(sample)) + sample



class RemoteWriteEncoder:
    """Encodes batches to snappy-compressed WriteRequest bodies, caching encoded label pairs.
    Reads only the batch (its label values), never the SeriesTable."""

    def __init__(self) -> None:
        self._names = [_label("__name__", name) for name, *_ in FLOW_METRICS]
        # Label pairs are written sorted by name; the order is fixed, so sort the positions once.
        self._order = {n: sorted(range(n), key=lambda i: _ALL_LABELS[i]) for n in (len(LABELS), len(LABELS) + 1)}
        self._pairs: list[dict[str, bytes]] = [{} for _ in range(len(LABELS) + 1)]

    def _series_labels(self, vals: tuple[str, ...]) -> bytes:
        # A series' labels from encoded (name, value) pairs, per request: values repeat across
        # series (interface, host, ports, addresses), so most pairs are dictionary hits, and
        # no per-series bytes are kept between pushes.
        parts = []
        for i in self._order[len(vals)]:
            cache, v = self._pairs[i], vals[i]
            enc = cache.get(v)
            if enc is None:
                if len(cache) >= CACHE_MAX:
                    cache.clear()
                enc = cache[v] = _label(_ALL_LABELS[i], v)
            parts.append(enc)
        return b"".join(parts)

    def encode(self, batch: Batch) -> bytes:
        """The uncompressed WriteRequest for a batch (flow series + health)."""
        return bytes(self._encode(batch))

    def _encode(self, batch: Batch) -> bytearray:
        ts = b"\x10" + _varint(batch.ts_ms & 0xFFFFFFFFFFFFFFFF) if batch.ts_ms else b""
        lt = len(ts)
        out = bytearray()
        parts: list[bytes] = []
        ext = parts.extend
        labs = [self._series_labels(v) for v in batch.labels]
        # Hot path (400k samples at 100k flows): no per-sample concatenation. Each TimeSeries goes
        # out as its parts; its length prefix depends only on the label bytes' length, so it is
        # cached per length. A zero double is not written (proto3 default), as protobuf does.
        nz_tail = b"\x12" + _varint(9 + lt) + b"\x09"
        z_tail = b"\x12" + _varint(lt)
        for mi, (_name, _t, _h, col) in enumerate(FLOW_METRICS):
            name = self._names[mi]
            base_nz = len(name) + len(nz_tail) + 8 + lt
            base_z = len(name) + len(z_tail) + lt
            head_nz: dict[int, bytes] = {}
            head_z: dict[int, bytes] = {}
            d = batch.values[:, col].astype("<f8")
            raw = d.tobytes()
            nz = (d != 0).tolist()
            for i, lab in enumerate(labs):
                if len(parts) >= 4096:
                    # Joined into the body in groups: bytes.join keeps a buffer record per part,
                    # megabytes for one join over a whole request's parts.
                    out += b"".join(parts)
                    parts.clear()
                ln = len(lab)
                if nz[i]:
                    h = head_nz.get(ln)
                    if h is None:
                        h = head_nz[ln] = b"\x0a" + _varint(base_nz + ln)
                    ext((h, name, lab, nz_tail, raw[8 * i:8 * i + 8], ts))
                else:
                    h = head_z.get(ln)
                    if h is None:
                        h = head_z[ln] = b"\x0a" + _varint(base_z + ln)
                    ext((h, name, lab, z_tail, ts))
        for hname, _t, _h, labels, value in batch.health:
            lab = _label("__name__", hname) + b"".join(_label(k, v) for k, v in sorted(labels.items()))
            body = lab + _sample(struct.pack("<d", float(value)), ts)
            parts.append(b"\x0a" + _varint(len(body)) + body)
        out += b"".join(parts)
        return out

    def body(self, batch: Batch) -> bytes:
        """Snappy block-compressed body, ready to POST with :data:`HEADERS`."""
        return snappy_block(self._encode(batch))
