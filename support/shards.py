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

Shards are written atomically (files.py: a temp file, then a rename), so a killed process never leaves half of one.
Only numpy and the standard library are needed here.
"""

import os
import shlex
import sys
from pathlib import Path

import numpy as np

from support.files import _atomic_write, sha256_file
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
