"""
Token shards in llm.c's format: what prepare_data.py writes and train.py reads.

A shard is one file of GPT-2 token ids:

    header: 256 little-endian int32   [0] magic 20240520, [1] version 1, [2] token count n, the rest 0
    body:   n little-endian uint16    the tokens (GPT-2's 50257 ids all fit in 16 bits)

so its size is exactly 1024 + 2 * n bytes. A data folder holds val_000000.bin (the validation split),
then train_000001.bin, train_000002.bin, ... and usually a manifest.json written by prepare_data.py: its
"shards" list names the shards of the build in order (each with "file", "split", "tokens", "sha256" and
"end", where the next shard starts in the input), and when it is there, only the shards it lists are read.

Every file is written atomically (a temp file NAME.PID.tmp, then a rename), so a killed process leaves
either the old file or the new one, never half of one; remove_stale_temps clears the temp files it leaves.
Only numpy and the standard library are needed here.
"""

import hashlib
import json
import os
import re
import sys
from pathlib import Path

import numpy as np

HEADER_MAGIC = 20240520
HEADER_VERSION = 1
HEADER_INTS = 256
HEADER_BYTES = HEADER_INTS * 4

# the folder `python prepare_data.py --source embedded` fills (prepare_data.py lives next to this file)
DEFAULT_EMBEDDED_DIR = Path(__file__).resolve().parent / "data" / "kjv"

# -----------------------------------------------------------------------------
# writing files atomically


def atomic_write(path, write):
    """Call write(f) on a temp file in path's directory, fsync, then rename it to path, so that path is
    either absent/old or complete, never half-written (os.replace is atomic within one filesystem).
    train.py saves its checkpoints through this too."""
    path = Path(path)
    tmp = path.with_name(f"{path.name}.{os.getpid()}.tmp")
    try:
        with open(tmp, "wb") as f:
            write(f)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:  # Ctrl-C included: leave no temp file behind
        tmp.unlink(missing_ok=True)
        raise


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


def remove_stale_temps(folder):
    """Delete the temp files that atomic_write left in folder (not its subfolders) when its process was killed
    mid-save: NAME.PID.tmp whose PID is no running process. Returns the removed paths."""
    if os.name == "nt" or not Path(folder).is_dir():  # on Windows os.kill(pid, 0) would terminate the process
        return []
    removed = []
    for p in sorted(Path(folder).glob("*.tmp")):
        m = re.fullmatch(r".+\.(\d+)\.tmp", p.name)
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


def load_manifest(data_dir):
    """The directory's manifest.json as a dict, or None if there is none."""
    path = Path(data_dir) / "manifest.json"
    if not path.is_file():
        return None
    try:
        return json.loads(path.read_text())
    except json.JSONDecodeError as e:
        raise ValueError(f"{path}: not valid JSON ({e}); delete the directory and re-run prepare_data.py")


def _make_command(data_dir):
    """The prepare_data.py command that makes data_dir (named in the errors below)."""
    if Path(data_dir).resolve() == DEFAULT_EMBEDDED_DIR:
        return "python prepare_data.py --source embedded"
    return f"python prepare_data.py --out {data_dir}"


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
        try:
            listed = [(s["file"], s["split"]) for s in manifest["shards"]]
        except (KeyError, TypeError):
            raise ValueError(f"{d / 'manifest.json'}: not a prepare_data.py manifest (no shard list); delete it "
                             "to use the shard files as they are, or re-make the directory") from None
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
