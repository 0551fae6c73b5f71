"""Blob, index and manifest codecs: round trips, and refusal of every kind of damage."""

from __future__ import annotations

import struct
import zlib

import pytest
import zstandard
from hypothesis import given, settings
from hypothesis import strategies as st

from asyncsync.datastore import blob
from asyncsync.datastore.index import (
    DYNAMIC_MAGIC,
    FIXED_MAGIC,
    DynamicIndex,
    FixedIndex,
    decode_index,
    index_digests,
)
from asyncsync.datastore.manifest import FileEntry, Manifest
from asyncsync.errors import ChunkTooLarge, CorruptBlob, CorruptIndex, CorruptManifest, DigestMismatch
from asyncsync.names import BackupType, GroupId, SnapshotId

digest_bytes = st.binary(min_size=32, max_size=32)


def _zstd_blob(payload: bytes) -> bytes:
    return blob.ZSTD_MAGIC + struct.pack("<I", zlib.crc32(payload)) + payload


# ---------------------------------------------------------------- blob


@given(data=st.binary(max_size=70_000), compress=st.booleans())
@settings(max_examples=60, deadline=None)
def test_blob_round_trip(data: bytes, compress: bool) -> None:
    enc = blob.encode(data, compress=compress)
    assert enc[:8] in (blob.RAW_MAGIC, blob.ZSTD_MAGIC)
    assert blob.decode(enc) == data
    assert blob.decode_verified(enc, blob.digest_of(data)) == data
    # zstd is kept only when smaller than the raw data
    assert len(enc) <= len(data) + blob.HEADER_SIZE


def test_blob_picks_zstd_only_when_smaller() -> None:
    assert blob.encode(bytes(100_000))[:8] == blob.ZSTD_MAGIC
    import os

    assert blob.encode(os.urandom(10_000))[:8] == blob.RAW_MAGIC
    assert blob.encode(bytes(100_000), compress=False)[:8] == blob.RAW_MAGIC


def test_blob_crc_and_header_layout() -> None:
    enc = blob.encode(b"hello", compress=False)
    assert enc == blob.RAW_MAGIC + struct.pack("<I", zlib.crc32(b"hello")) + b"hello"


def test_zstd_bomb_refused_before_decompressing() -> None:
    # 17 MiB of zeros compresses to a few hundred bytes but declares > 16 MiB.
    payload = zstandard.ZstdCompressor(level=1, write_content_size=True).compress(bytes(17 * 1024 * 1024))
    assert len(payload) < 32 * 1024
    with pytest.raises(ChunkTooLarge):
        blob.decode(_zstd_blob(payload))


def test_zstd_frame_without_content_size_refused() -> None:
    payload = zstandard.ZstdCompressor(level=1, write_content_size=False).compress(b"x" * 1000)
    with pytest.raises(CorruptBlob, match="content size"):
        blob.decode(_zstd_blob(payload))


def test_zstd_frame_lying_about_size_refused() -> None:
    good = zstandard.ZstdCompressor(level=1, write_content_size=True).compress(b"y" * 5000)
    # frame header with a content size of 4000 glued to the data of a 5000-byte frame
    fake = zstandard.ZstdCompressor(level=1, write_content_size=True).compress(b"y" * 4000)
    forged = fake[:6] + good[6:]
    with pytest.raises(CorruptBlob):
        blob.decode(_zstd_blob(forged))


def test_corrupt_crc_refused() -> None:
    enc = bytearray(blob.encode(b"some data that is here" * 10))
    enc[-1] ^= 0x01
    with pytest.raises(CorruptBlob, match="CRC"):
        blob.decode(bytes(enc))
    enc2 = bytearray(blob.encode(b"abc"))
    enc2[9] ^= 0xFF  # the stored CRC itself
    with pytest.raises(CorruptBlob):
        blob.decode(bytes(enc2))


@given(st.binary(min_size=1, max_size=5000), st.data())
@settings(max_examples=40, deadline=None)
def test_truncated_blob_refused(data: bytes, pick: st.DataObject) -> None:
    enc = blob.encode(data)
    cut = pick.draw(st.integers(0, len(enc) - 1))
    with pytest.raises(CorruptBlob):
        blob.decode(enc[:cut])


def test_unknown_magic_refused() -> None:
    payload = b"abc"
    with pytest.raises(CorruptBlob, match="magic"):
        blob.decode(b"NOTMAGIC" + struct.pack("<I", zlib.crc32(payload)) + payload)


def test_raw_over_limit_refused() -> None:
    with pytest.raises(ChunkTooLarge):
        blob.encode(b"x" * 101, max_size=100)
    enc = blob.encode(b"x" * 101, compress=False, max_size=200)
    with pytest.raises(ChunkTooLarge):
        blob.decode(enc, max_size=100)


def test_digest_mismatch() -> None:
    enc = blob.encode(b"content")
    with pytest.raises(DigestMismatch) as info:
        blob.decode_verified(enc, "0" * 64)
    assert info.value.expected == "0" * 64
    assert info.value.actual == blob.digest_of(b"content")


# ---------------------------------------------------------------- indexes


@st.composite
def fixed_indexes(draw: st.DrawFn) -> FixedIndex:
    chunk_size = draw(st.integers(1, 1 << 22))
    n = draw(st.integers(0, 20))
    size = 0 if n == 0 else (n - 1) * chunk_size + draw(st.integers(1, chunk_size))
    digests = tuple(draw(st.lists(digest_bytes, min_size=n, max_size=n)))
    return FixedIndex(
        digests, size, chunk_size, draw(st.binary(min_size=16, max_size=16)), draw(st.integers(0, 2**40))
    )


@st.composite
def dynamic_indexes(draw: st.DrawFn) -> DynamicIndex:
    sizes = draw(st.lists(st.integers(1, blob.MAX_CHUNK_SIZE), max_size=20))
    ends, pos = [], 0
    for s in sizes:
        pos += s
        ends.append(pos)
    digests = draw(st.lists(digest_bytes, min_size=len(ends), max_size=len(ends)))
    return DynamicIndex(tuple(zip(ends, digests, strict=True)), draw(st.binary(min_size=16, max_size=16)))


@given(fixed_indexes())
@settings(max_examples=60, deadline=None)
def test_fixed_index_round_trip(idx: FixedIndex) -> None:
    enc = idx.encode()
    assert enc[:8] == FIXED_MAGIC
    assert len(enc) == 80 + 32 * len(idx.digests)
    assert decode_index(enc) == idx
    assert sum(n for _, n in idx.chunk_sizes()) == idx.size


@given(dynamic_indexes())
@settings(max_examples=60, deadline=None)
def test_dynamic_index_round_trip(idx: DynamicIndex) -> None:
    enc = idx.encode()
    assert enc[:8] == DYNAMIC_MAGIC
    assert len(enc) == 64 + 40 * len(idx.entries)
    dec = decode_index(enc)
    assert dec == idx
    assert sum(n for _, n in dec.chunk_sizes()) == idx.total_size
    assert index_digests([dec]) == {d.hex() for d in idx.digests}


@given(dynamic_indexes().filter(lambda i: len(i.entries) > 0), st.data())
@settings(max_examples=40, deadline=None)
def test_index_bit_flip_refused(idx: DynamicIndex, pick: st.DataObject) -> None:
    enc = bytearray(idx.encode())
    # any flip in the checksum or the entries is caught (uuid/ctime are informational)
    pos = pick.draw(st.integers(32, len(enc) - 1))
    enc[pos] ^= 1 << pick.draw(st.integers(0, 7))
    with pytest.raises(CorruptIndex):
        decode_index(bytes(enc))


def test_index_structural_damage_refused() -> None:
    idx = DynamicIndex(((10, b"a" * 32), (20, b"b" * 32)))
    enc = idx.encode()
    with pytest.raises(CorruptIndex, match="whole number"):
        decode_index(enc[:-1])
    with pytest.raises(CorruptIndex, match="truncated"):
        decode_index(enc[:30])
    with pytest.raises(CorruptIndex, match="magic"):
        decode_index(b"XXXXXXXX" + enc[8:])
    with pytest.raises(CorruptIndex):
        DynamicIndex(((20, b"a" * 32), (10, b"b" * 32)))  # offsets must increase
    with pytest.raises(CorruptIndex):
        FixedIndex((b"a" * 32,), 100, 10)  # needs 10 digests


# ---------------------------------------------------------------- manifest

archive_names = st.from_regex(r"[A-Za-z0-9_][A-Za-z0-9_-]{0,20}\.(fidx|didx|blob)", fullmatch=True)
json_values = st.recursive(
    st.none() | st.booleans() | st.integers(-(2**53), 2**53) | st.text(max_size=20),
    lambda inner: st.lists(inner, max_size=3) | st.dictionaries(st.text(max_size=8), inner, max_size=3),
    max_leaves=10,
)


@given(
    btype=st.sampled_from(list(BackupType)),
    bid=st.from_regex(r"[A-Za-z0-9_][A-Za-z0-9_-]{0,20}", fullmatch=True),
    t=st.integers(0, 253402300799),
    names=st.lists(archive_names, unique=True, max_size=5),
    sizes=st.lists(st.integers(0, 2**50), min_size=5, max_size=5),
    unprotected=st.dictionaries(st.text(max_size=10), json_values, max_size=3),
)
@settings(max_examples=60, deadline=None)
def test_manifest_round_trip(
    btype: BackupType,
    bid: str,
    t: int,
    names: list[str],
    sizes: list[int],
    unprotected: dict[str, object],
) -> None:
    snap = SnapshotId(GroupId(btype, bid), t)
    files = [FileEntry(n, s, blob.digest_of(n.encode())) for n, s in zip(names, sizes, strict=False)]
    m = Manifest(snap, files, dict(unprotected))
    dec = Manifest.decode(m.encode())
    assert dec.snapshot == snap
    assert dec.files == files
    assert dec.unprotected == unprotected
    assert dec.content_digest() == m.content_digest()
    # the unprotected part is not part of the content digest
    dec.unprotected["notes"] = "changed"
    assert dec.content_digest() == m.content_digest()


def test_manifest_refuses_bad_content() -> None:
    snap = SnapshotId(GroupId(BackupType.VM, "100"), 1000)
    good = Manifest(snap, [FileEntry("a.didx", 1, "x")]).to_json()
    import json

    for mutate in (
        lambda o: o["files"].append(dict(o["files"][0])),  # listed twice
        lambda o: o["files"][0].update(filename="../a.didx"),  # traversal
        lambda o: o["files"][0].update(size=-1),
        lambda o: o.update({"backup-type": "disk"}),
        lambda o: o.pop("files"),
        lambda o: o.update(unprotected=[1]),
    ):
        obj = json.loads(json.dumps(good))
        mutate(obj)
        with pytest.raises(CorruptManifest):
            Manifest.decode(blob.encode(json.dumps(obj).encode()))
    with pytest.raises(CorruptManifest):
        Manifest.decode(blob.encode(b"{not json"))
    with pytest.raises(CorruptManifest):
        Manifest.decode(b"garbage that is not a blob")


def test_index_uuids_are_version_4_and_random() -> None:
    """An index's UUID is what ``uuid.uuid4().bytes`` would give: version 4, RFC 4122
    variant, the other 122 bits random (no two indexes share one)."""
    import uuid

    from asyncsync.datastore.index import uuid4_bytes

    seen = {uuid4_bytes() for _ in range(2000)}
    assert len(seen) == 2000
    for raw in list(seen)[:200]:
        u = uuid.UUID(bytes=raw)
        assert u.version == 4
        assert u.variant == uuid.RFC_4122
    assert all(len(FixedIndex((), 0, 4096).uuid) == 16 for _ in range(3))
