"""
Token shards in llm.c's format: what prepare_data.py writes and train.py reads.

A shard is one file of token ids (GPT-2's or bytes', see tokenizer.py):

    header: 256 little-endian int32   [0] magic 20240520, [1] version 1, [2] token count n, the rest 0
    body:   n little-endian uint16    the tokens (GPT-2's 50257 ids and bytes' 257 all fit in 16 bits)

so its size is exactly 1024 + 2 * n bytes. A data folder holds val_000000.bin (the validation split),
then train_000001.bin, train_000002.bin, ... and usually a manifest.json written by prepare_data.py: its
"shards" list names the shards of the build in order (each with "file", "split", "tokens", "sha256" and
"end", where the next shard starts in the input; manifests.py checks it), and when it is there, only the shards
it lists are read.

Every file is written atomically (a temp file NAME.carope-save-PID.tmp, then a rename), so a killed process leaves
either the old file or the new one, never half of one; remove_stale_temps clears the temp files it leaves. Only
regular files are replaced so: a device or a pipe given as a file name (/dev/null) is written in place.
Only numpy and the standard library are needed here.
"""

import errno
import hashlib
import json
import os
import re
import shlex
import stat
import sys
from pathlib import Path

import numpy as np

from support.manifests import load_manifest  # the folder's manifest.json, checked

HEADER_MAGIC = 20240520
HEADER_VERSION = 1
HEADER_INTS = 256
HEADER_BYTES = HEADER_INTS * 4

# where data folders go by default: data/ next to prepare_data.py (which lives next to this file)
DATA_DIR = Path(__file__).resolve().parent.parent / "data"  # the repository's data/


def default_dir(name, tokenizer="gpt2"):
    """data/NAME for GPT-2 tokens, data/NAME-bytes for bytes: a default folder's name says its tokenizer."""
    return DATA_DIR / (name if tokenizer == "gpt2" else f"{name}-{tokenizer}")


# the folder `python prepare_data.py --source embedded` fills
DEFAULT_EMBEDDED_DIR = default_dir("kjv")
# the text files prepare_data.py reads (readers.py): a data folder of these holds no shards yet
TEXT_FORMATS = (".parquet", ".jsonl", ".jsonl.gz", ".jsonl.xz", ".txt")

# -----------------------------------------------------------------------------
# writing files atomically, hashing them


def sha256_file(path):
    with open(path, "rb") as f:
        return hashlib.file_digest(f, "sha256").hexdigest()


def atomic_write(path, write):
    """Call write(f) on a temp file in path's directory, fsync, then rename it to path, so that path is
    either absent/old or complete, never half-written (os.replace is atomic within one filesystem).
    train.py saves its checkpoints through this too. Only a regular file is replaced: a symlink's target is, and
    a character device or a pipe (/dev/null, a terminal, >(...)) is written in place; anything else is refused."""
    if in_place(path):
        with open(path, "wb") as f:
            write(f)
        return
    path = Path(os.path.realpath(path)) if os.path.islink(path) else Path(path)  # the link stays a link
    tmp = path.with_name(f"{path.name}.{TEMP_TAG}-{os.getpid()}.tmp")  # a name only this project writes
    try:
        with open(tmp, "wb") as f:
            write(f)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:  # Ctrl-C included: leave no temp file behind
        tmp.unlink(missing_ok=True)
        raise


def in_place(path):
    """True if path is a character device or a pipe, which a rename would replace (as root, --json /dev/null would
    replace the system's /dev/null); False for a regular file or none; OSError for a folder or a block device."""
    try:
        mode = os.stat(path).st_mode
    except OSError:  # nothing there (yet): a new regular file
        return False
    if stat.S_ISREG(mode):
        return False
    if stat.S_ISCHR(mode) or stat.S_ISFIFO(mode):
        return True
    what = "a folder" if stat.S_ISDIR(mode) else "a block device" if stat.S_ISBLK(mode) else "a socket"
    raise OSError(errno.EEXIST, f"{what}, not a file: give a file name", str(path))


def _atomic_write(path, chunks):
    """atomic_write of byte chunks; returns the sha256 of what was written."""
    h = hashlib.sha256()

    def write(f):
        for chunk in chunks:
            f.write(chunk)
            h.update(chunk)
    atomic_write(path, write)
    return h.hexdigest()


def _write_json(path, obj):
    _atomic_write(path, [json.dumps(obj, indent=1).encode() + b"\n"])


TEMP_TAG = "carope-save"


def remove_stale_temps(folder):
    """Delete the temp files that atomic_write left in folder (not its subfolders) when its process was killed
    mid-save: NAME.carope-save-PID.tmp whose PID is no running process; nobody else's. Returns the removed paths."""
    if os.name == "nt" or not Path(folder).is_dir():  # on Windows os.kill(pid, 0) would terminate the process
        return []
    removed = []
    for p in sorted(Path(folder).glob(f"*.{TEMP_TAG}-*.tmp")):
        m = re.fullmatch(rf".+\.{TEMP_TAG}-(\d+)\.tmp", p.name)
        if not m or not p.is_file() or int(m[1]) in (0, os.getpid()):  # pid 0 would signal our own group
            continue
        try:
            os.kill(int(m[1]), 0)  # signal 0 only checks that the process exists
            continue
        except ProcessLookupError:
            pass
        except (PermissionError, OverflowError):  # alive under another user / not a pid: not ours to delete
            continue
        p.unlink(missing_ok=True)
        removed.append(p)
    return removed

class FolderLock:
    """An exclusive lock on a folder for as long as it is held (fcntl.flock on FOLDER/.lock, which records the
    holder's pid), so two processes never write one run or one build at once; without fcntl (Windows) nothing
    is locked. `with FolderLock(folder, "train.py"):` or acquire() ... release()."""

    def __init__(self, folder, tool):
        self.folder, self.tool, self.file = Path(folder), tool, None

    def acquire(self, wait=False):
        """wait=True: if another process holds the folder, say so once and wait for it (a build of seconds)."""
        try:
            import fcntl
        except ImportError:
            return self
        self.created = not self.folder.exists()  # then release() removes it again if nothing was written
        self.folder.mkdir(parents=True, exist_ok=True)
        f = open(self.folder / ".lock", "a+")
        try:
            fcntl.flock(f, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            f.seek(0)
            holder = f.read().strip() or "?"
            if not wait:
                f.close()
                raise SystemExit(f"{self.folder} is in use by another {self.tool} (pid {holder}): wait until it is "
                                 "done, or use another folder") from None
            print(f"{self.folder} is in use by another {self.tool} (pid {holder}): waiting until it is done", flush=True)
            fcntl.flock(f, fcntl.LOCK_EX)
        f.seek(0)
        f.truncate()
        f.write(f"{os.getpid()}\n")
        f.flush()
        self.file = f
        return self

    def release(self):
        if self.file is not None:
            self.file.close()  # closing the file drops the lock
            self.file = None
            if self.created and [p.name for p in self.folder.iterdir()] == [".lock"]:
                (self.folder / ".lock").unlink(missing_ok=True)  # a run or build that stopped before its first write
                self.folder.rmdir()

    def __enter__(self):
        return self.acquire()

    def __exit__(self, *exc):
        self.release()

# -----------------------------------------------------------------------------
# one shard


def write_shard(path, tokens):
    """Atomically write a 1-D array of token ids (each < 65536) as an llm.c shard; returns its sha256."""
    tokens = np.asarray(tokens)
    if tokens.ndim != 1:
        raise ValueError(f"{path}: tokens must be a 1-D array, got shape {tokens.shape}")
    if tokens.dtype != np.uint16 and tokens.size and (tokens.min() < 0 or tokens.max() >= 2**16):
        raise ValueError(f"{path}: token ids must be in [0, 65535] to be stored as uint16")
    if len(tokens) >= 2**31:
        raise ValueError(f"{path}: {len(tokens)} tokens do not fit the int32 count in the header")
    header = np.zeros(HEADER_INTS, dtype="<i4")
    header[:3] = HEADER_MAGIC, HEADER_VERSION, len(tokens)
    return _atomic_write(path, [header.tobytes(), tokens.astype("<u2").tobytes()])


def read_shard(path):
    """Memory-map a shard's tokens (uint16, 1-D) after checking magic, version and exact file size."""
    path = Path(path)
    fix = "(re-run prepare_data.py with the same options: it rebuilds shards that fail this check)"
    if not path.is_file():
        raise FileNotFoundError(f"{path}: no such shard {fix}")
    size = path.stat().st_size
    if size < HEADER_BYTES:
        raise ValueError(f"{path}: truncated shard, {size} bytes is less than the {HEADER_BYTES}-byte header {fix}")
    header = np.fromfile(path, dtype="<i4", count=HEADER_INTS)
    if header[0] != HEADER_MAGIC:
        raise ValueError(f"{path}: bad magic {header[0]} (expected {HEADER_MAGIC}), not an llm.c token shard {fix}")
    if header[1] != HEADER_VERSION:
        raise ValueError(f"{path}: unsupported version {header[1]} (expected {HEADER_VERSION}) {fix}")
    n = int(header[2])
    if size != HEADER_BYTES + 2 * n:
        raise ValueError(f"{path}: file is {size} bytes but its header says {n} tokens "
                         f"({HEADER_BYTES + 2 * n} bytes): truncated or corrupt {fix}")
    if n == 0:  # mmap cannot map zero bytes
        return np.zeros(0, dtype=np.uint16)
    return np.memmap(path, dtype="<u2", mode="r", offset=HEADER_BYTES, shape=(n,))

# -----------------------------------------------------------------------------
# a data folder: its shards and manifest


def finished_shards(data_dir, listed):
    """The manifest's shards up to the first one that is missing or damaged (its size, token count or sha256 not
    the manifest's), and what is wrong with that one (None if every one is fine): a build keeps the first ones and
    rebuilds from there. Hashing reads each shard once: little next to tokenising it."""
    for k, s in enumerate(listed):
        path = Path(data_dir) / s["file"]
        try:
            problem = None if len(read_shard(path)) == s["tokens"] else f"{path}: token count differs from manifest"
            if not problem and s.get("sha256") not in (None, sha256_file(path)):
                problem = f"{path}: damaged, its sha256 differs from the manifest's"
        except (OSError, ValueError) as e:
            problem = str(e)
        if problem:
            return listed[:k], problem
    return listed, None


def _make_command(data_dir):
    """The prepare_data.py command that makes data_dir (named in the errors below)."""
    for tokenizer in ("gpt2", "bytes"):
        if Path(data_dir).resolve() == default_dir("kjv", tokenizer):
            return "python prepare_data.py --source embedded" + ("" if tokenizer == "gpt2" else " --tokenizer bytes")
    return (f"python prepare_data.py --out-dir {shlex.quote(str(data_dir))} (that is FineWeb-Edu, a ~30 GB download; "
            "add --input FILES for your own text or --source embedded for the King James Bible)")


def list_shards(data_dir):
    """Sorted (val_paths, train_paths) of a data directory: the shards its manifest lists when it has one
    (a stray shard of an older build must not be trained on), else every val_*.bin and train_*.bin in it."""
    d = Path(data_dir)
    if not d.is_dir():
        raise FileNotFoundError(f"{d}: no such data directory; make it with: {_make_command(d)}")
    found = sorted(d.glob("val_*.bin")) + sorted(d.glob("train_*.bin"))
    manifest = load_manifest(d)
    if manifest is None:
        val, train = [p for p in found if p.name.startswith("val_")], [p for p in found if p.name.startswith("train_")]
    else:
        listed = [(s["file"], s["split"]) for s in manifest["shards"]]  # load_manifest checked them
        val = [d / f for f, split in listed if split == "val"]
        train = [d / f for f, split in listed if split == "train"]
        strays = [p.name for p in found if p.name not in {f for f, _ in listed}]
        if strays:
            print(f"note: {d} has {len(strays)} shard file(s) not in its manifest ({', '.join(strays[:3])}"
                  f"{', ...' if len(strays) > 3 else ''}): ignored", file=sys.stderr)
    if not val or not train:
        raise FileNotFoundError(f"{d}: needs val_*.bin and train_*.bin shards (found {len(val)} val, "
                                f"{len(train)} train{' in its manifest' if manifest else ''}); make them with: "
                                f"{_make_command(d)}")
    return val, train


def open_data(data_dir):
    """(val memmap, train memmaps, train paths, manifest or None) of a data folder, memory-mapped; one line
    naming the problem and the command that fixes it when the folder holds no shards of its own."""
    data_dir = str(data_dir)
    files = os.listdir(data_dir) if os.path.isdir(data_dir) else []
    texts = sorted(f for f in files if f.lower().endswith(TEXT_FORMATS))
    if texts and not any(f.endswith(".bin") for f in files):  # the corpus itself, not yet tokenised
        ext = next(e for e in TEXT_FORMATS if texts[0].lower().endswith(e))
        raise SystemExit(f"{data_dir} holds {ext} files ({texts[0]}, ...), not token shards: make shards of them "
                         f"with python prepare_data.py --input {shlex.quote(data_dir)}/*{ext} --out-dir "
                         f"{shlex.quote(data_dir.rstrip('/') + '-shards')}, then --data that folder")
    try:
        val_paths, train_paths = list_shards(data_dir)
        manifest = load_manifest(data_dir)
        val, train = read_shard(val_paths[0]), [read_shard(p) for p in train_paths]
    except (FileNotFoundError, ValueError) as e:  # their messages name the file and the command that fixes it
        raise SystemExit(str(e))
    if manifest and not manifest.get("complete", True):
        print(f"note: {data_dir} is an unfinished build ({len(train)} train shard(s) so far); re-run the "
              f"prepare_data.py command that made it to finish it")
    return val, train, train_paths, manifest


def check_ids(tokens, vocab_size, where):
    """One line if a token id does not fit the model's vocabulary (data made with another tokenizer)."""
    top = int(tokens.max()) if tokens.size else 0
    if top >= vocab_size:
        raise SystemExit(f"{where}: token id {top} >= the model's vocab_size {vocab_size}: this data was made "
                         f"with another vocabulary; re-make it with prepare_data.py or pass --vocab-size")
