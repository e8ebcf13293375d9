"""tfgen's on-disk caches: where they live, how entries are keyed, written whole, checked and evicted.

Layout under `root()` ($TFGEN_CACHE, else $XDG_CACHE_HOME/tfgen or ~/.cache/tfgen):

    programs/<digest>/   traced decoding programs with their compiled XLA executables
                         (`tfgen.decoding.engine`): manifest.json + payload files
    exports/<digest>/    the XLA executables an export's validator compiled, keyed by the export's
                         graph (`tfgen.export.exporter`): a re-export of the same graph starts warm
    xla/<pid>-<tag>/     one directory per running process for TensorFlow's persistent XLA cache
                         (`xla_flag`); removed when the process ends
    packages/, *.arrays  assembled packaged models and converted GGUF weights (`tfgen.loading`,
                         `tfgen.models.gguf`), not counted in the size bound

An entry is a directory written under a unique temporary name and renamed into place, so readers see
a whole entry or none, and two processes filling the same entry both succeed (the last rename wins).
Its manifest names the full key it was made for and the size and sha256 of each file; `read_entry`
checks both and deletes an entry that fails, so a torn, corrupt or foreign entry is rebuilt by the
caller, never used. Keys hold the environment (`environment`: tfgen's version and source digest,
TensorFlow's version, the CPU's features), so an entry made elsewhere is a different entry.
Reading an entry touches its manifest; `evict` removes the least recently used entries until the
managed sections fit `max_bytes()` ($TFGEN_CACHE_MAX_BYTES). TFGEN_CACHE=off turns it all off.

This module imports no TensorFlow: `tfgen._keras_env` calls it before TensorFlow loads.
"""
from __future__ import annotations

import atexit
import contextlib
import functools
import hashlib
import json
import os
import platform
import shutil
import sys
import time
import uuid
from typing import Dict, NamedTuple, Optional

OFF = "off"
DEFAULT_MAX_BYTES = 2 * 1024 ** 3
SECTIONS = ("programs", "exports")  # the sections entries live in; they share the size bound
XLA_SECTION = "xla"
_MANIFEST = "manifest.json"
_FORMAT = 1
_STALE_SECONDS = 3600  # leftovers of a killed writer (temporary and trash directories)


class Entry(NamedTuple):
    """A verified entry: its directory, its key, the caller's metadata and its payload file names."""

    path: str
    key: dict
    meta: dict
    files: tuple


# -- where ----------------------------------------------------------------------------------------
def root() -> Optional[str]:
    """The cache's root directory, or None when TFGEN_CACHE=off."""
    value = os.environ.get("TFGEN_CACHE", "").strip()
    if value.lower() == OFF:
        return None
    if value:
        return os.path.abspath(os.path.expanduser(value))
    base = os.environ.get("XDG_CACHE_HOME") or os.path.join(os.path.expanduser("~"), ".cache")
    return os.path.join(base, "tfgen")


@contextlib.contextmanager
def redirected(value: str):
    """TFGEN_CACHE=value while the block runs ("off", or a private directory): a benchmark that
    measures a cold start in a warm process, a test fixture that must not touch the user's cache.
    The environment is the process's, so use it where nothing else runs tfgen meanwhile."""
    previous = os.environ.get("TFGEN_CACHE")
    os.environ["TFGEN_CACHE"] = value
    try:
        yield
    finally:
        if previous is None:
            del os.environ["TFGEN_CACHE"]
        else:
            os.environ["TFGEN_CACHE"] = previous


def enabled() -> bool:
    return root() is not None


def directory() -> str:
    """`root()`, or with TFGEN_CACHE=off a private temporary directory removed when the process
    ends: callers that must write somewhere (converted weights, an assembled packaged model) still
    work, and nothing is kept."""
    base = root()
    return base if base is not None else _scratch_directory()


@functools.lru_cache(maxsize=None)  # one per process
def _scratch_directory() -> str:
    import tempfile

    path = tempfile.mkdtemp(prefix="tfgen-cache-off-")
    atexit.register(shutil.rmtree, path, True)
    return path


def max_bytes() -> int:
    """The size bound of the entry sections: $TFGEN_CACHE_MAX_BYTES (bytes), default 2 GiB."""
    value = os.environ.get("TFGEN_CACHE_MAX_BYTES", "").strip()
    if not value:
        return DEFAULT_MAX_BYTES
    try:
        limit = int(value)
    except ValueError:
        raise ValueError(f"TFGEN_CACHE_MAX_BYTES must be a whole number of bytes, got {value!r}") from None
    if limit < 0:
        raise ValueError(f"TFGEN_CACHE_MAX_BYTES must be >= 0, got {limit}")
    return limit


# -- keys -----------------------------------------------------------------------------------------
@functools.lru_cache(maxsize=None)
def environment() -> Dict[str, str]:
    """What every key holds besides its own fields: an entry is only valid for the same tfgen code,
    TensorFlow and CPU. The source digest makes an edited checkout miss, version bump or not."""
    import tfgen

    return {"tfgen": tfgen.__version__, "tfgen_source": _source_digest(),
            "tensorflow": _tensorflow_version(), "cpu": _cpu_digest()}


def digest(key: dict) -> str:
    """A key's directory name: sha256 of its canonical JSON (every value must be JSON-able)."""
    return hashlib.sha256(json.dumps(key, sort_keys=True).encode()).hexdigest()[:32]


def _source_digest() -> str:
    package = os.path.dirname(os.path.abspath(__file__))
    sha = hashlib.sha256()
    for folder, directories, files in sorted(os.walk(package)):
        directories.sort()
        for name in sorted(files):
            if name.endswith(".py"):
                path = os.path.join(folder, name)
                sha.update(os.path.relpath(path, package).encode())
                with open(path, "rb") as handle:
                    sha.update(handle.read())
    return sha.hexdigest()[:16]


def _tensorflow_version() -> str:
    if "tensorflow" in sys.modules:
        return str(sys.modules["tensorflow"].__version__)
    from importlib import metadata

    for name in ("tensorflow", "tensorflow-cpu", "tf-nightly"):
        try:
            return metadata.version(name)
        except metadata.PackageNotFoundError:
            continue
    return "unknown"


def _cpu_digest() -> str:
    """The machine and its instruction-set flags: XLA's executables use what the CPU offers."""
    features = platform.machine() + "|" + platform.processor()
    try:
        with open("/proc/cpuinfo", encoding="utf-8", errors="replace") as handle:
            for line in handle:
                if line.startswith(("flags", "Features")):  # x86, ARM
                    features += "|" + " ".join(sorted(line.split(":", 1)[1].split()))
                    break
    except OSError:
        pass
    return hashlib.sha256(features.encode()).hexdigest()[:16]


# -- entries --------------------------------------------------------------------------------------
def read_entry(section: str, key: dict) -> Optional[Entry]:
    """The verified entry of `key`, touched as used; None if missing, or if it was torn, corrupt or
    made for another key (then it is deleted, so the caller's rebuild replaces it)."""
    base = root()
    if base is None:
        return None
    path = os.path.join(base, section, digest(key))
    try:
        with open(os.path.join(path, _MANIFEST), encoding="utf-8") as handle:
            manifest = json.load(handle)
    except FileNotFoundError:
        return None
    except (OSError, ValueError):
        _remove(path)
        return None
    if not _is_whole(path, manifest, key):
        _remove(path)
        return None
    try:
        os.utime(os.path.join(path, _MANIFEST))  # least recently used goes first
    except OSError:
        pass
    return Entry(path, manifest["key"], manifest.get("meta", {}), tuple(manifest["files"]))


def link_files(source: str, names, directory: str, strip: str = "") -> None:
    """Put an entry's files `names` into `directory`, each without the prefix `strip`; a file
    already there is kept. Hard links (entries are only ever replaced whole, never written in
    place, so a link always holds a checked file), copies where links fail."""
    os.makedirs(directory, exist_ok=True)
    for name in names:
        target = os.path.join(directory, name[len(strip):] if name.startswith(strip) else name)
        if os.path.exists(target):
            continue
        try:
            os.link(os.path.join(source, name), target)
        except OSError:
            shutil.copyfile(os.path.join(source, name), target)


def remove_entry(entry: Entry) -> None:
    """Delete an entry that passed its checks but proved unusable (it is rebuilt)."""
    _remove(entry.path)


def _is_whole(path: str, manifest, key: dict) -> bool:
    if not isinstance(manifest, dict) or manifest.get("format") != _FORMAT or manifest.get("key") != key:
        return False
    files = manifest.get("files")
    if not isinstance(files, dict):
        return False
    for name, record in files.items():
        try:
            if os.path.getsize(os.path.join(path, name)) != record["size"]:
                return False
            if _sha256(os.path.join(path, name)) != record["sha256"]:
                return False
        except (OSError, KeyError, TypeError):
            return False
    return True


def write_entry(section: str, key: dict, files: Dict[str, bytes],
                meta: Optional[dict] = None) -> Optional[str]:
    """Write an entry whole: files (name -> contents) and a manifest, then rename it into place.

    A concurrent writer of the same key may win the rename; either entry is whole and right. A full
    or read-only cache only costs the next run its rebuild: returns None then, never raises.
    """
    base = root()
    if base is None:
        return None
    folder = os.path.join(base, section)
    target = os.path.join(folder, digest(key))
    temp = os.path.join(folder, f".tmp-{digest(key)[:8]}-{os.getpid()}-{uuid.uuid4().hex[:8]}")
    try:
        os.makedirs(temp)
        records = {}
        for name, data in files.items():
            with open(os.path.join(temp, name), "wb") as handle:
                handle.write(data)
            records[name] = {"size": len(data), "sha256": hashlib.sha256(data).hexdigest()}
        manifest = {"format": _FORMAT, "key": key, "meta": meta or {}, "files": records}
        with open(os.path.join(temp, _MANIFEST), "w", encoding="utf-8") as handle:
            json.dump(manifest, handle, sort_keys=True)
        _replace_directory(temp, target, folder)
    except OSError:
        _remove(temp)
        return None
    evict()
    return target


def _replace_directory(temp: str, target: str, folder: str) -> None:
    """Rename `temp` to `target`; an existing target is first renamed away (a directory cannot be
    renamed over a non-empty one). Readers see the old entry, none, or the new one."""
    try:
        os.rename(temp, target)
        return
    except OSError:
        if not os.path.isdir(target):
            raise
    trash = os.path.join(folder, f".trash-{uuid.uuid4().hex}")
    try:
        os.rename(target, trash)
    except OSError:
        pass  # another writer moved it first
    try:
        os.rename(temp, target)
    except OSError:
        _remove(temp)  # another writer's whole entry took the name between our renames: keep it
    shutil.rmtree(trash, ignore_errors=True)


def _remove(path: str) -> None:
    """Delete a directory: renamed aside first, so nobody finds half of it under its name."""
    if not os.path.exists(path):
        return
    trash = os.path.join(os.path.dirname(path), f".trash-{uuid.uuid4().hex}")
    try:
        os.rename(path, trash)
    except OSError:
        trash = path
    shutil.rmtree(trash, ignore_errors=True)


def _sha256(path: str) -> str:
    with open(path, "rb") as handle:
        return hashlib.file_digest(handle, "sha256").hexdigest()


# -- size -----------------------------------------------------------------------------------------
def _directory_bytes(path: str) -> int:
    total = 0
    for folder, _, files in os.walk(path):
        for name in files:
            try:
                total += os.path.getsize(os.path.join(folder, name))
            except OSError:
                pass
    return total


def _entries():
    """(last use, bytes, path) of every entry in the managed sections; leftovers of killed writers
    (temporary and trash directories older than an hour) are removed on the way."""
    base = root()
    found = []
    for section in SECTIONS:
        folder = os.path.join(base, section)
        try:
            names = os.listdir(folder)
        except OSError:
            continue
        for name in names:
            path = os.path.join(folder, name)
            if name.startswith("."):
                try:
                    if time.time() - os.path.getmtime(path) > _STALE_SECONDS:
                        shutil.rmtree(path, ignore_errors=True)
                except OSError:
                    pass
                continue
            try:
                used = os.path.getmtime(os.path.join(path, _MANIFEST))
            except OSError:
                used = 0.0
            found.append((used, _directory_bytes(path), path))
    return found


def _remove_stale_root_temporaries() -> None:
    """Temporary files killed writers left in the root (converted GGUF weights: `.tmp-*.arrays`)."""
    base = root()
    try:
        names = [name for name in os.listdir(base) if name.startswith(".tmp-")]
    except OSError:
        return
    for name in names:
        path = os.path.join(base, name)
        try:
            if os.path.isfile(path) and time.time() - os.path.getmtime(path) > _STALE_SECONDS:
                os.remove(path)
        except OSError:
            pass


def evict(limit: Optional[int] = None) -> int:
    """Remove least recently used entries until the managed sections hold at most `limit` bytes
    (default `max_bytes()`); returns how many were removed. Also removes the XLA directories of
    processes that are gone."""
    if root() is None:
        return 0
    limit = max_bytes() if limit is None else limit
    _remove_orphaned_xla_directories()
    _remove_stale_root_temporaries()
    entries = sorted(_entries())
    total = sum(size for _, size, _ in entries)
    removed = 0
    for _, size, path in entries:
        if total <= limit:
            break
        _remove(path)
        total -= size
        removed += 1
    return removed


def info() -> dict:
    """What the cache holds: root, bound, and per section the entries and bytes."""
    base = root()
    if base is None:
        return {"root": None, "enabled": False}
    entries = _entries()
    sections = {section: {"entries": 0, "bytes": 0} for section in SECTIONS}
    for _, size, path in entries:
        section = os.path.basename(os.path.dirname(path))
        sections[section]["entries"] += 1
        sections[section]["bytes"] += size
    total = _directory_bytes(base) if os.path.isdir(base) else 0
    managed = sum(item["bytes"] for item in sections.values())
    xla = _directory_bytes(os.path.join(base, XLA_SECTION))
    return {"root": base, "enabled": True, "max_bytes": max_bytes(), "sections": sections,
            "xla_in_use_bytes": xla, "other_bytes": total - managed - xla, "total_bytes": total}


def clear(everything: bool = False) -> int:
    """Remove every entry (with `everything`, also converted weights and assembled packages: all
    but the XLA directories of running processes). Returns the bytes freed."""
    base = root()
    if base is None or not os.path.isdir(base):
        return 0
    before = _directory_bytes(base)
    _remove_orphaned_xla_directories()
    names = os.listdir(base) if everything else [s for s in SECTIONS if os.path.isdir(os.path.join(base, s))]
    for name in names:
        if name == XLA_SECTION:
            continue
        path = os.path.join(base, name)
        if os.path.isdir(path):
            _remove(path)
        else:
            try:
                os.remove(path)
            except OSError:
                pass
    return before - _directory_bytes(base)


# -- TensorFlow's persistent XLA cache --------------------------------------------------------------
_FLAG = "--tf_xla_persistent_cache_directory"


def wants_xla_flag(flags: str) -> bool:
    """Whether tfgen would add its XLA cache directory to these TF_XLA_FLAGS: the cache is on and
    they name no persistent cache directory already."""
    return root() is not None and _FLAG not in flags


def xla_flag(flags: str) -> str:
    """TF_XLA_FLAGS with tfgen's per-process XLA cache directory added (before TensorFlow loads).

    TensorFlow writes its cache files in place, not atomically, and fails the op that reads a
    damaged one; so each process gets a directory of its own (`xla/<pid>-<tag>/`). The engine copies
    what is compiled there into its program entries, which are written whole and checked, and links
    a restored entry's files back in before the program runs. A directory the user chose is kept;
    one inherited from a parent process (its pid in the name) is replaced by this process's own.
    """
    base = root()
    if base is None:
        return flags
    parts = flags.split()
    mine = os.path.join(base, XLA_SECTION) + os.sep
    kept = []
    for part in parts:
        if part.startswith(_FLAG + "="):
            value = part.split("=", 1)[1]
            if not value.startswith(mine):
                return flags  # the user's own directory
            continue  # a parent process's
        kept.append(part)
    if not _writable(base):
        return flags  # TensorFlow fails every compiled op whose executable it cannot persist
    directory = os.path.join(base, XLA_SECTION, f"{os.getpid()}-{uuid.uuid4().hex[:8]}")
    atexit.register(shutil.rmtree, directory, True)
    return " ".join(kept + [f"{_FLAG}={directory}"])


def _writable(path: str) -> bool:
    """Whether `path` can be created or written, judged by its nearest existing ancestor."""
    while not os.path.exists(path):
        parent = os.path.dirname(path)
        if parent == path:
            return False
        path = parent
    return os.path.isdir(path) and os.access(path, os.W_OK | os.X_OK)


def xla_directory() -> Optional[str]:
    """This process's XLA cache directory (set by `xla_flag`), or None (off, or the user's own)."""
    base = root()
    if base is None:
        return None
    for part in os.environ.get("TF_XLA_FLAGS", "").split():
        if part.startswith(_FLAG + "="):
            value = part.split("=", 1)[1]
            name = os.path.basename(value)
            ours = os.path.dirname(value) == os.path.join(base, XLA_SECTION)
            if ours and name.startswith(f"{os.getpid()}-"):
                return value
    return None


def _remove_orphaned_xla_directories() -> None:
    folder = os.path.join(root(), XLA_SECTION)
    try:
        names = os.listdir(folder)
    except OSError:
        return
    for name in names:
        pid = name.split("-", 1)[0]
        if pid.isdigit() and int(pid) != os.getpid() and not process_alive(int(pid)):
            shutil.rmtree(os.path.join(folder, name), ignore_errors=True)


def process_alive(pid: int) -> bool:
    """Whether process `pid` runs (on this machine): whose temporary directories to keep."""
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except OSError:
        return True  # exists, owned by someone else
    return True
