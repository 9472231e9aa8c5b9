"""Tests for prepare_data.py. No network: the hub is a local HTTP server that mimics its tree and
resolve endpoints (302 to a CDN path, Range requests), serving small parquet files written here."""

import errno
import gzip
import hashlib
import json
import lzma
import os
import re
import signal
import socket
import stat
import subprocess
import sys
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # the repo root, whatever the cwd
from support import hub as hub_client  # noqa: E402  (the fixture below is called hub)
import prepare_data as pd  # noqa: E402
from support import files  # noqa: E402
from support import readers  # noqa: E402
from support import shards  # noqa: E402
from support import tokenizer as tk  # noqa: E402

TREE = "/api/datasets/HuggingFaceFW/fineweb-edu/tree/main/sample/10BT"
RESOLVE = "/datasets/HuggingFaceFW/fineweb-edu/resolve/main/sample/10BT/"

# -----------------------------------------------------------------------------
# helpers


@pytest.fixture(autouse=True)
def small_shards(monkeypatch):
    """Tiny shards, so that a few kB of text crosses many shard boundaries (test_shard_tokens_minimum puts the
    real minimum back)."""
    monkeypatch.setattr(pd, "MIN_SHARD_TOKENS", 1)

WORDS = ("the light of day falls on water and stone while birds keep their old songs "
         "über café naïve 42 3.14 don't we'll").split()


def make_texts(n, seed):
    """n deterministic documents of varied length (10..120 words), a little punctuation and unicode."""
    rng = np.random.default_rng(seed)
    texts = []
    for i in range(n):
        words = rng.choice(WORDS, size=rng.integers(10, 120))
        texts.append(f"Doc {seed}-{i}. " + " ".join(words) + ("\n\nThe end." if i % 3 == 0 else ""))
    return texts


def expected_stream(texts, tokenizer="gpt2"):
    """What the shards must hold, for every document in order: EOT then its GPT-2 tokens (tiktoken's own), or
    256 then its UTF-8 bytes (Python's own), computed here without tokenizer.py's classes."""
    if tokenizer == "bytes":
        return np.concatenate([[256] + list(t.encode("utf-8")) for t in texts]).astype(np.uint16)
    enc = tk.get_encoding()
    return np.concatenate([[tk.EOT] + enc.encode_ordinary(t) for t in texts]).astype(np.uint16)


def read_stream(out_dir):
    val, train = shards.list_shards(out_dir)
    return np.concatenate([np.asarray(shards.read_shard(p)) for p in val + train])


def write_parquet(path, texts, row_group_size=7, pad=0):
    """A FineWeb-like parquet file; `pad` random characters per row make it big (and incompressible)."""
    rng = np.random.default_rng(len(texts))
    junk = ["".join(rng.choice(list("abcdefghijklmnopqrstuvwxyz0123456789"), size=pad)) for _ in texts]
    table = pa.table({"id": [f"id-{i}" for i in range(len(texts))], "text": texts,
                      "url": [f"https://example.org/{i}/{j}" for i, j in enumerate(junk)],
                      "score": [3.5] * len(texts)})
    pq.write_table(table, path, row_group_size=row_group_size)


def sha256(data):
    return hashlib.sha256(data).hexdigest()


def shard_files(out_dir):
    return sorted(p.name for p in Path(out_dir).iterdir() if p.suffix == ".bin")


def mtimes(out_dir):
    """Each file's mtime, but the build's lock (.lock, rewritten with the pid of every build that holds it)."""
    return {p.name: p.stat().st_mtime_ns for p in Path(out_dir).iterdir() if p.name != ".lock"}

# -----------------------------------------------------------------------------
# a fake hub


class FakeHub:
    def __init__(self):
        self.files = {}       # name -> bytes served
        self.texts = {}       # name -> the documents in it
        self.cut_once = set()  # names whose next transfer stops after half its bytes
        self.corrupt = set()  # names served with one byte flipped (same size, wrong sha256)
        self.fail = {}        # name -> number of 500s still to send (-1: forever)
        self.html = False     # answer the listing with an HTML page (status 200), like a captive portal
        self.list_fail = 0    # number of 503s still to send for the listing (-1: forever)
        self.log = []         # (path, Range header, Authorization header) of every request

    def add(self, tmp_path, name, texts, pad=0):
        write_parquet(tmp_path / name, texts, pad=pad)
        self.files[name] = (tmp_path / name).read_bytes()
        self.texts[name] = texts

    def requests(self, prefix):
        return [entry for entry in self.log if entry[0].startswith(prefix)]


@pytest.fixture
def hub(monkeypatch):
    state = FakeHub()

    class Handler(BaseHTTPRequestHandler):
        def log_message(self, *args):  # keep pytest's output clean
            pass

        def do_GET(self):
            state.log.append((self.path, self.headers.get("Range"), self.headers.get("Authorization")))
            if self.path == TREE and state.list_fail != 0:
                state.list_fail -= 1
                self.send_error(503)
            elif self.path == TREE and state.html:
                body = b"<!doctype html><html><body>Sign in to the on-board Wi-Fi</body></html>"
                self.send_response(200)
                self.send_header("Content-Type", "text/html; charset=utf-8")
                self.send_header("Content-Length", str(len(body)))
                self.end_headers()
                self.wfile.write(body)
            elif self.path == TREE:
                self.send_json([{"type": "directory", "path": "sample/10BT/extra", "size": 0}] +
                               [{"type": "file", "path": f"sample/10BT/{name}", "size": len(data),
                                 "lfs": {"oid": sha256(data), "size": len(data), "pointerSize": 134}}
                                for name, data in state.files.items()])
            elif self.path.startswith(RESOLVE) and self.path[len(RESOLVE):] in state.files:
                self.send_response(302)  # like the hub, which sends downloads to its CDN
                self.send_header("Location", "/cdn/" + self.path[len(RESOLVE):])
                self.send_header("Content-Length", "0")
                self.end_headers()
            elif self.path.startswith("/cdn/") and self.path[5:] in state.files:
                self.send_file(self.path[5:])
            else:
                self.send_error(404)

        def send_json(self, obj):
            body = json.dumps(obj).encode()
            self.send_response(200)
            self.send_header("Content-Type", "application/json")
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            self.wfile.write(body)

        def send_file(self, name):
            if state.fail.get(name, 0) != 0:
                state.fail[name] -= 1
                self.send_error(500)
                return
            data = state.files[name]
            if name in state.corrupt:
                data = data[:100] + bytes([data[100] ^ 0xFF]) + data[101:]
            start = 0
            if (rng := self.headers.get("Range")) is not None:
                start = int(re.fullmatch(r"bytes=(\d+)-", rng).group(1))
                self.send_response(206)
                self.send_header("Content-Range", f"bytes {start}-{len(data) - 1}/{len(data)}")
            else:
                self.send_response(200)
            body = data[start:]
            self.send_header("Content-Length", str(len(body)))  # the full length, even when cut below
            self.end_headers()
            if name in state.cut_once:
                state.cut_once.discard(name)
                self.wfile.write(body[:len(body) // 2])
                self.wfile.flush()
                self.close_connection = True
                return
            self.wfile.write(body)

    server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    monkeypatch.setenv("HF_ENDPOINT", f"http://127.0.0.1:{server.server_address[1]}")
    monkeypatch.delenv("HF_TOKEN", raising=False)
    monkeypatch.setattr(hub_client, "RETRY_BASE_DELAY", 0.0)
    yield state
    server.shutdown()
    server.server_close()


def hub_build(tmp_path, out="out", **kw):
    kw = dict(cache_dir=tmp_path / "cache", val_tokens=300, shard_tokens=1000, quiet=True) | kw
    return pd.prepare(tmp_path / out, "fineweb-edu", **kw)

# -----------------------------------------------------------------------------
# shard format


def test_shard_round_trip(tmp_path):
    tokens = np.array([tk.EOT, 0, 1, 15496, 995, 65535])
    sha = shards.write_shard(tmp_path / "s.bin", tokens)
    raw = (tmp_path / "s.bin").read_bytes()
    assert sha == sha256(raw) and len(raw) == 1024 + 2 * len(tokens)
    assert list(np.frombuffer(raw[:12], dtype="<i4")) == [20240520, 1, len(tokens)]
    got = shards.read_shard(tmp_path / "s.bin")
    assert isinstance(got, np.memmap) and got.dtype == np.uint16 and list(got) == list(tokens)
    assert [p.name for p in tmp_path.iterdir()] == ["s.bin"]  # no temp file left


def test_write_shard_rejects_bad_tokens(tmp_path):
    with pytest.raises(ValueError, match="65535"):
        shards.write_shard(tmp_path / "s.bin", [1, 70000])
    with pytest.raises(ValueError, match="1-D"):
        shards.write_shard(tmp_path / "s.bin", np.zeros((2, 2), dtype=np.uint16))
    assert not list(tmp_path.iterdir())


@pytest.mark.parametrize("damage, message", [
    ("truncate", "truncated or corrupt"), ("header", "truncated shard"),
    ("magic", "bad magic 12345"), ("version", "unsupported version 7"), ("missing", "no such shard")])
def test_read_shard_rejects_damaged_files(tmp_path, damage, message):
    path = tmp_path / "train_000001.bin"
    shards.write_shard(path, np.arange(100))
    raw = bytearray(path.read_bytes())
    if damage == "truncate":
        raw = raw[:-1]
    elif damage == "header":
        raw = raw[:500]
    elif damage == "magic":
        raw[0:4] = np.int32(12345).tobytes()
    elif damage == "version":
        raw[4:8] = np.int32(7).tobytes()
    path.write_bytes(bytes(raw))
    if damage == "missing":
        path.unlink()
    with pytest.raises((ValueError, FileNotFoundError)) as e:
        shards.read_shard(path)
    assert message in str(e.value) and str(path) in str(e.value) and "re-run prepare_data.py" in str(e.value)


def test_atomic_write_leaves_nothing_when_interrupted(tmp_path):
    def chunks():
        yield b"half a shard"
        raise KeyboardInterrupt
    with pytest.raises(KeyboardInterrupt):
        files._atomic_write(tmp_path / "val_000000.bin", chunks())
    assert not list(tmp_path.iterdir())


def test_list_shards(tmp_path):
    with pytest.raises(FileNotFoundError, match=f"{tmp_path / 'nope'}.*python prepare_data.py"):
        shards.list_shards(tmp_path / "nope")
    shards.write_shard(tmp_path / "val_000000.bin", [1, 2])
    with pytest.raises(FileNotFoundError, match="0 train.*python prepare_data.py"):
        shards.list_shards(tmp_path)
    for k in (2, 1):
        shards.write_shard(tmp_path / f"train_{k:06d}.bin", [1, 2])
    val, train = shards.list_shards(tmp_path)
    assert [p.name for p in val] == ["val_000000.bin"]
    assert [p.name for p in train] == ["train_000001.bin", "train_000002.bin"]
    assert shards.load_manifest(tmp_path) is None


def test_list_shards_reads_only_the_manifests_shards(tmp_path, capsys):
    """A stale shard of an older build beside a fresh one is not trained on; without a manifest, all are."""
    (tmp_path / "a.txt").write_text(" ".join(make_texts(30, 0)))
    m = pd.prepare(tmp_path / "out", "local", [str(tmp_path / "a.txt")], val_tokens=100, shard_tokens=300,
                   quiet=True)
    out = tmp_path / "out"
    built = [out / s["file"] for s in m["shards"]]
    for stray in ("train_000097.bin", "val_000001.bin"):
        shards.write_shard(out / stray, [1, 2, 3])
    capsys.readouterr()
    val, train = shards.list_shards(out)
    assert val + train == built
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and f"{out} has 2 shard file(s) not in its manifest" in err
    assert "train_000097.bin" in err and "val_000001.bin" in err and "ignored" in err
    (out / "manifest.json").unlink()  # hand-made data: every shard in the folder
    val, train = shards.list_shards(out)
    assert [p.name for p in val] == ["val_000000.bin", "val_000001.bin"] and train[-1].name == "train_000097.bin"
    (out / "manifest.json").write_text('{"shards": [{"file": "val_000000.bin"}]}')
    with pytest.raises(ValueError, match="manifest.json: not a prepare_data.py manifest"):
        shards.list_shards(out)


def test_remove_stale_temps(tmp_path):
    """Temp files of dead processes go; those of live ones (this one, its parent) and other files stay."""
    child = subprocess.Popen([sys.executable, "-c", "pass"])
    child.wait()  # reaped: its pid names no process now
    dead, me, parent = child.pid, os.getpid(), os.getppid()
    tag = files.TEMP_TAG
    stale = [tmp_path / f"ckpt.pt.{tag}-{dead}.tmp", tmp_path / f"train_000001.bin.{tag}-{dead}.tmp"]
    kept = [tmp_path / f"ckpt.pt.{tag}-{me}.tmp", tmp_path / f"val_000000.bin.{tag}-{parent}.tmp",
            tmp_path / "notes.tmp", tmp_path / f"thesis.{dead}.tmp",  # a user's file: the pattern of old, not ours
            tmp_path / f"ckpt.pt.{tag}-{dead}.tmp.bak", tmp_path / "log.txt", tmp_path / "sub" / f"x.{tag}-{dead}.tmp"]
    (tmp_path / "sub").mkdir()
    for p in stale + kept:
        p.write_bytes(b"x")
    assert sorted(files.remove_stale_temps(tmp_path)) == sorted(stale)
    assert all(p.exists() for p in kept) and not any(p.exists() for p in stale)
    assert files.remove_stale_temps(tmp_path / "absent") == []
    # a build cleans its output directory first
    (tmp_path / "a.txt").write_text(" ".join(make_texts(30, 0)))
    stale[0].write_bytes(b"x")
    pd.prepare(tmp_path, "local", [str(tmp_path / "a.txt")], val_tokens=100, shard_tokens=300, quiet=True)
    assert not stale[0].exists() and kept[0].exists()


def test_val_take_prefers_whole_documents():
    assert pd._val_take(0, 50, 100) == (50, False)      # room left
    assert pd._val_take(90, 30, 100) == (0, True)       # boundary before is nearer: stop there
    assert pd._val_take(80, 30, 100) == (30, True)      # boundary after is nearer: take the document
    assert pd._val_take(0, 1000, 100) == (100, True)    # no boundary near: cut at exactly 100

# -----------------------------------------------------------------------------
# the hub


def test_hub_download_to_shards(hub, tmp_path, monkeypatch):
    """End to end: listing, 302 to the CDN, download, verify, tokenise, split into shards."""
    monkeypatch.setenv("HF_TOKEN", "hf_secret")
    hub.add(tmp_path, "000_00000.parquet", make_texts(40, 0))
    hub.add(tmp_path, "001_00000.parquet", make_texts(30, 1))
    m = hub_build(tmp_path)
    texts = hub.texts["000_00000.parquet"] + hub.texts["001_00000.parquet"]
    want = expected_stream(texts)
    assert np.array_equal(read_stream(tmp_path / "out"), want)  # token counts equal direct tokenisation
    assert m["complete"] and m["total_tokens"] == len(want) == m["val_tokens"] + m["train_tokens"]
    assert m["tokenizer"] == "gpt2" and m["vocab_size"] == 50257 and m["eot_token"] == 50256
    assert [f["sha256"] for f in m["inputs"]] == [sha256(hub.files[f["name"]]) for f in m["inputs"]]
    # shard 0 is validation, whole documents; then full 1000-token shards and a shorter last one
    names = [s["file"] for s in m["shards"]]
    assert names[0] == "val_000000.bin" and names[1:] == [f"train_{k:06d}.bin" for k in range(1, len(names))]
    assert shard_files(tmp_path / "out") == sorted(names) and len(names) >= 5
    assert abs(m["shards"][0]["tokens"] - 300) < 150 and shards.read_shard(tmp_path / "out" / names[1])[0] == tk.EOT
    assert all(s["tokens"] == 1000 for s in m["shards"][1:-1]) and 0 < m["shards"][-1]["tokens"] <= 1000
    for s in m["shards"]:
        assert s["sha256"] == sha256((tmp_path / "out" / s["file"]).read_bytes())
    assert shards.load_manifest(tmp_path / "out") == m
    # the hub's API saw the token; downloads went through the redirect; the cache holds verified files
    assert hub.requests(TREE)[0][2] == "Bearer hf_secret" and len(hub.requests("/cdn/")) == 2
    assert sorted(p.name for p in (tmp_path / "cache").iterdir()) == sorted(hub.files)
    # the cache is reused by another build
    hub_build(tmp_path, out="out2")
    assert len(hub.requests("/cdn/")) == 2 and np.array_equal(read_stream(tmp_path / "out2"), want)


def test_hub_slice_downloads_only_what_it_needs(hub, tmp_path):
    hub.add(tmp_path, "000_00000.parquet", make_texts(40, 0))
    hub.add(tmp_path, "001_00000.parquet", make_texts(30, 1))
    m = hub_build(tmp_path, max_tokens=1234)
    assert m["total_tokens"] == 1234 and m["stopped_at_max_tokens"]
    assert np.array_equal(read_stream(tmp_path / "out"), expected_stream(hub.texts["000_00000.parquet"])[:1234])
    assert {p for p, _, _ in hub.requests("/cdn/")} == {"/cdn/000_00000.parquet"}
    m = hub_build(tmp_path, out="one-file", max_files=1)
    assert [f["name"] for f in m["inputs"]] == ["000_00000.parquet"]


def test_hub_cut_transfer_resumes(hub, tmp_path):
    name = "000_00000.parquet"
    # big enough that the half sent before the cut holds whole 64 KiB chunks: urllib3 drops a partial one
    hub.add(tmp_path, name, make_texts(60, 0), pad=6000)
    assert len(hub.files[name]) > 4 * 65536
    hub.cut_once.add(name)
    hub_build(tmp_path)
    assert sha256((tmp_path / "cache" / name).read_bytes()) == sha256(hub.files[name])
    ranges = [r for _, r, _ in hub.requests("/cdn/")]
    assert ranges[0] is None and re.fullmatch(r"bytes=\d+-", ranges[1]) and int(ranges[1][6:-1]) > 0
    # a partial file left by an earlier run is resumed, not restarted
    url = f"{hub_client.hub_endpoint()}{RESOLVE}{name}"
    half = len(hub.files[name]) // 2
    (tmp_path / "again.incomplete").write_bytes(hub.files[name][:half])
    hub_client.download_file(url, tmp_path / "again", len(hub.files[name]), sha256(hub.files[name]), quiet=True)
    assert (tmp_path / "again").read_bytes() == hub.files[name] and hub.log[-1][1] == f"bytes={half}-"
    assert not (tmp_path / "again.incomplete").exists()


def test_hub_wrong_sha256_is_never_promoted(hub, tmp_path):
    name = "000_00000.parquet"
    hub.add(tmp_path, name, make_texts(20, 0))
    hub.corrupt.add(name)
    with pytest.raises(ValueError, match=f"{name}: sha256 mismatch"):
        hub_build(tmp_path)
    assert not (tmp_path / "cache" / name).exists() and not shard_files(tmp_path / "out")
    with pytest.raises(SystemExit, match=f"{name}: sha256 mismatch"):  # the CLI: one line, no traceback
        pd.main(["--out", str(tmp_path / "out"), "--cache-dir", str(tmp_path / "cache"), "--val-tokens", "300",
                 "--shard-tokens", "1000", "--quiet"])
    assert not (tmp_path / "cache" / name).exists()


def test_hub_server_errors_are_retried_then_reported(hub, tmp_path):
    name = "000_00000.parquet"
    hub.add(tmp_path, name, make_texts(20, 0))
    hub.fail[name] = 2
    hub_build(tmp_path)  # two 500s, then it works
    assert len(hub.requests("/cdn/")) == 3
    (tmp_path / "cache" / name).unlink()
    hub.fail[name] = -1
    with pytest.raises(RuntimeError, match=rf"{name}: download failed {hub_client.RETRIES + 1} times in a row.*500"):
        hub_build(tmp_path, out="out2")
    assert len(hub.requests("/cdn/")) == 3 + hub_client.RETRIES + 1
    assert not (tmp_path / "cache" / name).exists()

def test_hub_listing_is_retried_then_reported(hub, tmp_path):
    hub.add(tmp_path, "000_00000.parquet", make_texts(20, 0))
    hub.list_fail = 2
    assert hub_client.list_hub_files(quiet=True)[0]["name"] == "000_00000.parquet"  # two 503s, then it works
    assert len(hub.requests(TREE)) == 3
    hub.list_fail = -1
    with pytest.raises(RuntimeError, match=f"cannot list .*{TREE}: 503 Server Error"):
        hub_client.list_hub_files(quiet=True)
    assert len(hub.requests(TREE)) == 3 + hub_client.RETRIES + 1


def test_hub_answering_html_is_a_clear_error(hub, tmp_path):
    hub.html = True
    with pytest.raises(SystemExit) as e:
        pd.main(["--out", str(tmp_path / "out"), "--cache-dir", str(tmp_path / "cache"), "--quiet"])
    msg = str(e.value.code)
    assert "\n" not in msg and TREE in msg and "text/html" in msg and "not the hub's JSON file listing" in msg
    assert "HF_ENDPOINT" in msg and not (tmp_path / "out").exists()


@pytest.fixture
def dead_endpoint(request, monkeypatch):
    """http://127.0.0.1:PORT where a socket listens but never answers ("silent") or nothing listens ("closed")."""
    sock = socket.socket()
    sock.bind(("127.0.0.1", 0))
    port = sock.getsockname()[1]
    if request.param == "silent":
        sock.listen(16)  # the kernel completes the handshakes; nobody ever reads or writes
    else:
        sock.close()
    monkeypatch.setenv("HF_ENDPOINT", f"http://127.0.0.1:{port}")
    monkeypatch.setattr(hub_client, "_hub_answered", False)
    monkeypatch.setattr(hub_client, "CONNECT_TIMEOUT", 0.5)
    monkeypatch.setattr(hub_client, "LIST_TIMEOUT", 0.5)
    monkeypatch.setattr(hub_client, "READ_TIMEOUT", 0.5)
    monkeypatch.setattr(hub_client, "RETRY_BASE_DELAY", 0.1)
    yield request.param, f"http://127.0.0.1:{port}"
    sock.close()


@pytest.mark.parametrize("dead_endpoint", ["silent", "closed"], indirect=True)
def test_unreachable_hub_fails_fast(dead_endpoint, tmp_path):
    """Before the hub has ever answered: two attempts (two timeouts for a silent server), then one line."""
    kind, endpoint = dead_endpoint
    t0 = time.time()
    with pytest.raises(SystemExit) as e:
        pd.main(["--out", str(tmp_path / "out"), "--cache-dir", str(tmp_path / "cache"), "--quiet"])
    took = time.time() - t0
    msg = str(e.value.code)
    assert "\n" not in msg and f"cannot reach {endpoint}" in msg and "--source embedded" in msg
    assert ("never answered" if kind == "silent" else "Connection refused") in msg
    # six attempts, as before, would take 3 s of timeouts alone
    assert (1.0 <= took < 2.5) if kind == "silent" else took < 1.5
    # a resumed build needs no listing, but downloading its next file fails just as fast
    t0 = time.time()
    with pytest.raises(RuntimeError, match=f"f.parquet: cannot reach {endpoint}"):
        hub_client.download_file(f"{endpoint}{RESOLVE}f.parquet", tmp_path / "f.parquet", 100)
    assert time.time() - t0 < 2.5


# -----------------------------------------------------------------------------
# local inputs


def write_local_inputs(d):
    """One file of every supported kind; returns (paths, their documents in order)."""
    d.mkdir(parents=True, exist_ok=True)
    docs = {}
    docs["a.parquet"] = make_texts(12, 10)
    write_parquet(d / "a.parquet", docs["a.parquet"], row_group_size=5)
    docs["b.jsonl"] = make_texts(5, 11)
    lines = [json.dumps({"text": t, "id": i}) for i, t in enumerate(docs["b.jsonl"])]
    (d / "b.jsonl").write_text("\n".join(lines[:2] + [""] + lines[2:]) + "\n")  # a blank line is no document
    docs["c.jsonl.gz"] = make_texts(4, 12)
    with gzip.open(d / "c.jsonl.gz", "wt", encoding="utf-8") as f:
        f.writelines(json.dumps({"text": t}) + "\n" for t in docs["c.jsonl.gz"])
    docs["d.jsonl.xz"] = make_texts(4, 13)
    with lzma.open(d / "d.jsonl.xz", "wt", encoding="utf-8") as f:
        f.writelines(json.dumps({"text": t}) + "\n" for t in docs["d.jsonl.xz"])
    docs["e.txt"] = ["\n\n".join(make_texts(6, 14))]  # one document per file
    (d / "e.txt").write_text(docs["e.txt"][0], encoding="utf-8")
    names = sorted(docs)
    return [d / n for n in names], [t for n in names for t in docs[n]]


def test_local_inputs_of_every_kind(tmp_path, capsys):
    paths, texts = write_local_inputs(tmp_path / "in")
    out = tmp_path / "out"
    # a plain path, and a quoted glob expanded by prepare_data.py (that also matches a.parquet again)
    pd.main(["--input", str(paths[0]), str(tmp_path / "in" / "*"), "--out", str(out),
             "--val-tokens", "200", "--shard-tokens", "700", "--quiet"])
    assert np.array_equal(read_stream(out), expected_stream(texts))
    m = shards.load_manifest(out)
    assert [f["name"] for f in m["inputs"]] == [p.name for p in paths] and m["source"] == "local"
    assert re.search(r"tokenised [\d,]+ tokens in .* = [\d,]+ tokens/s", capsys.readouterr().out)


def test_pool_and_in_process_give_identical_shards(tmp_path):
    paths, texts = write_local_inputs(tmp_path / "in")
    kw = dict(val_tokens=200, shard_tokens=700, quiet=True)
    one = pd.prepare(tmp_path / "one", "local", [str(p) for p in paths], workers=1, **kw)
    two = pd.prepare(tmp_path / "two", "local", [str(tmp_path / "in")], workers=2, **kw)  # a directory
    assert [s["sha256"] for s in one["shards"]] == [s["sha256"] for s in two["shards"]]
    assert np.array_equal(read_stream(tmp_path / "two"), expected_stream(texts))


@pytest.mark.parametrize("tokenizer", ["gpt2", "bytes"])
def test_default_validation_is_a_proportionate_slice_of_whole_documents(tmp_path, tokenizer):
    rng = np.random.default_rng(0)
    texts = [f"Note {i}: " + " ".join(rng.choice(WORDS, size=rng.integers(5, 30))) for i in range(150)]
    (tmp_path / "notes.jsonl").write_text("".join(json.dumps({"text": t}) + "\n" for t in texts))
    m = pd.prepare(tmp_path / "out", "local", [str(tmp_path / "notes.jsonl")], tokenizer=tokenizer,
                   shard_tokens=1000, quiet=True)
    n_val = m["shards"][0]["tokens"]
    assert n_val in np.cumsum([len(expected_stream([t], tokenizer)) for t in texts])  # whole documents
    assert 0.04 < n_val / m["total_tokens"] < 0.06  # about 5%: the estimate works in tokens or bytes per char
    assert np.array_equal(read_stream(tmp_path / "out"), expected_stream(texts, tokenizer))


def test_too_small_corpus_is_refused_and_can_be_retried(tmp_path):
    (tmp_path / "a.txt").write_text("A short text.")
    with pytest.raises(ValueError, match="all of which would go to validation.*smaller --val-tokens"):
        pd.prepare(tmp_path / "out", "local", [str(tmp_path / "a.txt")], val_tokens=100, quiet=True)
    (tmp_path / "b.txt").write_text("Another short text, a little longer than the first one.")
    m = pd.prepare(tmp_path / "out", "local", [str(tmp_path / "a.txt"), str(tmp_path / "b.txt")], val_tokens=4,
                   quiet=True)  # an empty build left behind does not block a retry with other settings
    sizes = [len(expected_stream([p.read_text()])) for p in (tmp_path / "a.txt", tmp_path / "b.txt")]
    assert [s["tokens"] for s in m["shards"]] == sizes  # 4 is nearest the 5-token first document: whole


def test_rerun_is_idempotent_and_repairs_damaged_shards(tmp_path, capsys):
    paths, texts = write_local_inputs(tmp_path / "in")
    args = dict(val_tokens=200, shard_tokens=700, quiet=True)
    first = pd.prepare(tmp_path / "out", "local", [str(p) for p in paths], **args)
    before = mtimes(tmp_path / "out")
    capsys.readouterr()
    assert pd.prepare(tmp_path / "out", "local", [str(p) for p in paths], **args) == first
    assert mtimes(tmp_path / "out") == before and "nothing to do" in capsys.readouterr().out
    # a truncated shard is detected and rebuilt, identical
    victim = tmp_path / "out" / first["shards"][2]["file"]
    victim.write_bytes(victim.read_bytes()[:-2])
    again = pd.prepare(tmp_path / "out", "local", [str(p) for p in paths], **args)
    assert again["shards"] == first["shards"] and np.array_equal(read_stream(tmp_path / "out"), expected_stream(texts))
    # other settings or other inputs are refused rather than mixed in
    with pytest.raises(ValueError, match="other settings"):
        pd.prepare(tmp_path / "out", "local", [str(p) for p in paths], val_tokens=200, shard_tokens=800, quiet=True)
    with pytest.raises(ValueError, match="other input files"):
        pd.prepare(tmp_path / "out", "local", [str(p) for p in paths[1:]], **args)


def test_rerun_checks_each_shards_sha256_before_nothing_to_do(tmp_path, capsys):
    """A flipped byte keeps a shard's size and header: only its sha256 shows it. The re-run names that shard in
    one line and rebuilds it, identical, instead of saying "nothing to do"."""
    (tmp_path / "a.txt").write_text(" ".join(make_texts(30, 0)))
    args = dict(val_tokens=100, shard_tokens=300, workers=1)
    first = pd.prepare(tmp_path / "out", "local", [str(tmp_path / "a.txt")], quiet=True, **args)
    victim = tmp_path / "out" / first["shards"][2]["file"]
    raw = bytearray(victim.read_bytes())
    raw[shards.HEADER_BYTES + 10] ^= 0x01
    victim.write_bytes(bytes(raw))
    capsys.readouterr()
    again = pd.prepare(tmp_path / "out", "local", [str(tmp_path / "a.txt")], quiet=False, **args)
    out, err = capsys.readouterr()
    said = [line for line in err.splitlines() if victim.name in line]
    assert said == [f"{victim}: damaged, its sha256 differs from the manifest's; rebuilding from shard 2 on"]
    assert "nothing to do" not in out and again["shards"] == first["shards"]
    assert sha256(victim.read_bytes()) == first["shards"][2]["sha256"]


def test_an_input_that_changes_while_it_is_read_is_refused(tmp_path, monkeypatch):
    """Another program still writing an input: its size or mtime differ after reading from when it was hashed,
    and the build stops in one line rather than record shards that are not of the recorded sha256."""
    path = tmp_path / "a.jsonl"
    path.write_text("".join(json.dumps({"text": t}) + "\n" for t in make_texts(30, 0)))
    argv = ["--input", str(path), "--out", str(tmp_path / "out"), "--val-tokens", "100", "--shard-tokens", "300",
            "--quiet"]
    real, calls = readers.iter_documents, []

    def written_meanwhile(p, start=0):  # call 1 checks the file (resolve_inputs), call 2 is the build's
        calls.append(p)
        for i, doc in enumerate(real(p, start)):
            yield doc
            if len(calls) == 2 and i == 3:
                with open(p, "a") as f:
                    f.write(json.dumps({"text": "a late document"}) + "\n")
    monkeypatch.setattr(readers, "iter_documents", written_meanwhile)
    with pytest.raises(SystemExit) as e:
        pd.main(argv)
    assert e.value.code == (f"prepare_data.py: error: {path}: changed while it was being read (its size or "
                            "modification time differ from when it was hashed); run again once nothing writes to it")
    assert not shards.load_manifest(tmp_path / "out")["complete"]
    # changed between its hash and its build: refused before a token of it is read
    real_sha = readers.sha256_file

    def touched_after_hashing(p):
        digest = real_sha(p)
        os.utime(p, ns=(time.time_ns(), time.time_ns() + 10**9))
        return digest
    monkeypatch.setattr(readers, "iter_documents", real)
    monkeypatch.setattr(readers, "sha256_file", touched_after_hashing)
    with pytest.raises(SystemExit, match="changed while it was being read"):
        pd.main(argv[:3] + [str(tmp_path / "out2")] + argv[4:])
    assert not (tmp_path / "out2").exists()


def _edited(m):
    """Hand edits of a built manifest, and what the one line must say about each."""
    yield dict(m, shards=[dict(m["shards"][0], tokens="abc")] + m["shards"][1:]), \
        """"tokens" of shards[0] is 'abc', not a whole number >= 0"""
    yield dict(m, shards=5), '"shards" is 5, not a list'
    yield dict(m, shards=[m["shards"][0], "train_000001.bin"]), "shards[1] is 'train_000001.bin', not an object"
    yield dict(m, notes="mine"), "unknown key 'notes'"
    yield dict(m, vocab_size=True), '"vocab_size" is True, not a whole number >= 0'
    yield dict(m, total_tokens=-5), '"total_tokens" is -5, not a whole number >= 0'
    yield [m], "the file holds [{"
    yield {k: v for k, v in m.items() if k != "shards"}, "no shard list"
    yield dict(m, shards=[dict(s, end=[0, 1]) for s in m["shards"]]), '"end" of shards[0] is [0, 1], not'
    yield dict(m, shards=[m["shards"][0], m["shards"][0]] + m["shards"][1:]), "'val_000000.bin' is listed 2 times"
    yield dict(m, shards=[dict(m["shards"][0], file="../val_000000.bin")] + m["shards"][1:]), "in this folder"
    # the split contradicts the file name: validation tokens would be trained on, or training tokens evaluated
    yield dict(m, shards=[dict(m["shards"][0], split="train")] + m["shards"][1:]), \
        "shards[0] is 'val_000000.bin' with split 'train': a shard's split must be the one its file name says"
    yield dict(m, shards=m["shards"][:1] + [dict(m["shards"][1], split="val")] + m["shards"][2:]), \
        "shards[1] is 'train_000001.bin' with split 'val'"


def test_a_hand_edited_or_torn_manifest_is_one_line_naming_it(tmp_path):
    """Wrong types, foreign keys, bytes that are not UTF-8 or not JSON: one line naming manifest.json and what
    is wrong, from prepare_data.py's re-run and from every reader of the folder (train.py's open_data, the
    tokenizer lookup), never a traceback; nothing in the folder is touched."""
    (tmp_path / "a.txt").write_text(" ".join(make_texts(30, 0)))
    argv = ["--input", str(tmp_path / "a.txt"), "--out", str(tmp_path / "out"), "--val-tokens", "100",
            "--shard-tokens", "300", "--quiet"]
    pd.main(argv)
    path = tmp_path / "out" / "manifest.json"
    good = path.read_bytes()
    cases = [(json.dumps(m).encode(), words) for m, words in _edited(json.loads(good))]
    cases += [(good[:len(good) // 2], "not valid JSON"), (b"\xff\xfe" + good, "not UTF-8 text (byte 0xff at offset 0)"),
              ('{"shards": [], "source": "caf\u00e9"}'.encode("latin-1"), "not UTF-8 text (byte 0xe9 at offset 29)")]
    for data, words in cases:
        path.write_bytes(data)
        before = mtimes(tmp_path / "out")
        for call in (lambda: pd.main(argv), lambda: shards.open_data(tmp_path / "out"),
                     lambda: tk.data_tokenizer(tmp_path / "out", None, "--tokenizer asks for")):
            with pytest.raises(SystemExit) as e:
                call()
            msg = str(e.value.code)
            assert "\n" not in msg and f"{path}: " in msg and words in msg, (words, msg)
        assert mtimes(tmp_path / "out") == before
    path.write_bytes(good)
    assert pd.prepare(tmp_path / "out", "local", [str(tmp_path / "a.txt")], val_tokens=100, shard_tokens=300,
                      quiet=True)["complete"]


def test_a_hand_made_manifest_is_not_a_build_to_go_on_with(tmp_path):
    """A folder with a manifest of only a shard list (hand-made, as the tests' tiny ones) trains, but
    prepare_data.py cannot resume it: one line, not a KeyError."""
    (tmp_path / "out").mkdir()
    shards.write_shard(tmp_path / "out" / "val_000000.bin", [1, 2, 3])
    shards.write_shard(tmp_path / "out" / "train_000001.bin", [4, 5, 6])
    (tmp_path / "out" / "manifest.json").write_text(json.dumps(dict(tokenizer="gpt2", shards=[
        dict(file="val_000000.bin", split="val", tokens=3), dict(file="train_000001.bin", split="train", tokens=3)])))
    assert len(shards.open_data(tmp_path / "out")[1]) == 1
    (tmp_path / "a.txt").write_text(" ".join(make_texts(30, 0)))
    with pytest.raises(SystemExit) as e:
        pd.main(["--input", str(tmp_path / "a.txt"), "--out", str(tmp_path / "out"), "--quiet"])
    assert "manifest.json: not a prepare_data.py manifest (no 'settings': not a build" in str(e.value.code)


def test_interrupted_build_resumes_to_identical_shards(tmp_path, monkeypatch):
    """Ctrl-C during a shard loses only that shard; the re-run resumes mid-file and mid-document."""
    paths, texts = write_local_inputs(tmp_path / "in")
    inputs = [str(p) for p in paths]
    args = dict(val_tokens=200, shard_tokens=300, quiet=True)
    clean = pd.prepare(tmp_path / "clean", "local", inputs, **args)
    real_write, calls = pd.write_shard, []

    def write_then_interrupt(path, tokens):
        calls.append(path)
        if len(calls) == 4:
            raise KeyboardInterrupt
        return real_write(path, tokens)
    monkeypatch.setattr(pd, "write_shard", write_then_interrupt)
    with pytest.raises(KeyboardInterrupt):
        pd.prepare(tmp_path / "out", "local", inputs, **args)
    m = shards.load_manifest(tmp_path / "out")
    assert not m["complete"] and len(m["shards"]) == 3 and shard_files(tmp_path / "out") == [
        "train_000001.bin", "train_000002.bin", "val_000000.bin"]
    i, j, k = m["shards"][-1]["end"]
    assert i == 0 and j >= 5 and k > 0  # inside a.parquet, past its first row group, inside a document
    monkeypatch.setattr(pd, "write_shard", real_write)
    resumed = pd.prepare(tmp_path / "out", "local", inputs, **args)
    assert [s["sha256"] for s in resumed["shards"]] == [s["sha256"] for s in clean["shards"]]


def test_cli_ctrl_c_exits_130_with_a_hint(monkeypatch, capsys):
    def interrupted(*args, **kw):
        raise KeyboardInterrupt
    monkeypatch.setattr(pd, "prepare", interrupted)
    with pytest.raises(SystemExit) as e:
        pd.main(["--source", "embedded"])
    assert e.value.code == 130 and "run the same command again to resume" in capsys.readouterr().err


def _bad_input(tmp_path, kind):
    if kind == "missing":
        return tmp_path / "nope.jsonl", FileNotFoundError, "no such file"
    if kind == "glob":
        return tmp_path / "nope*.jsonl", FileNotFoundError, "no files match"
    if kind == "empty":
        (tmp_path / "empty.txt").write_text("")
        return tmp_path / "empty.txt", ValueError, "empty file"
    if kind == "empty-gz":
        with gzip.open(tmp_path / "empty.jsonl.gz", "wt") as f:
            f.write("\n")
        return tmp_path / "empty.jsonl.gz", ValueError, "empty file"
    if kind == "extension":
        (tmp_path / "data.csv").write_text("text\nhello\n")
        return tmp_path / "data.csv", ValueError, "unsupported file type"
    if kind == "no-text-column":
        pq.write_table(pa.table({"content": ["hello"]}), tmp_path / "x.parquet")
        return tmp_path / "x.parquet", ValueError, "no 'text' column (columns: content)"
    if kind == "no-text-field":
        (tmp_path / "x.jsonl").write_text('{"content": "hello"}\n')
        return tmp_path / "x.jsonl", ValueError, 'x.jsonl:1: no "text" field'
    if kind == "bad-json":
        (tmp_path / "x.jsonl").write_text('{"text": "fine"}\n{"text": oops}\n')
        return tmp_path / "x.jsonl", ValueError, "x.jsonl:2: not valid JSON"
    # text in another encoding: refused with the byte offset, not read as replacement characters or NULs
    if kind == "latin1-txt":
        (tmp_path / "x.txt").write_bytes("Grüße aus Köln".encode("latin-1"))
        return tmp_path / "x.txt", ValueError, "not UTF-8 text (byte 0xfc at offset 2); re-encode it as UTF-8 first, " \
                                               "e.g. iconv -f latin1"
    if kind == "utf16-txt":
        (tmp_path / "x.txt").write_text("plain English", encoding="utf-16")  # with a byte-order mark
        return tmp_path / "x.txt", ValueError, "UTF-16 text (it starts with a UTF-16 byte-order mark)"
    if kind == "utf16le-txt":
        (tmp_path / "x.txt").write_text("plain English", encoding="utf-16-le")  # none
        return tmp_path / "x.txt", ValueError, "NUL byte at offset 1: UTF-16 or binary data"
    if kind == "random-txt":
        (tmp_path / "x.txt").write_bytes(bytes(np.random.default_rng(0).integers(0, 256, 10_000, dtype=np.uint8)))
        return tmp_path / "x.txt", ValueError, "not UTF-8 text (byte 0x"
    if kind == "latin1-jsonl":  # the bad byte deep in the file: found before any work, with its offset
        lines = ['{"text": "fine"}\n'] * 3 + ['{"text": "caf\u00e9"}\n']
        (tmp_path / "x.jsonl").write_bytes("".join(lines).encode("latin-1"))
        return tmp_path / "x.jsonl", ValueError, f"not UTF-8 text (byte 0xe9 at offset {3 * len(lines[0]) + 13})"
    if kind == "utf16-jsonl":
        (tmp_path / "x.jsonl").write_text('{"text": "fine"}\n', encoding="utf-16-le")
        return tmp_path / "x.jsonl", ValueError, "NUL byte at offset 1"
    if kind == "latin1-jsonl-gz":
        with gzip.open(tmp_path / "x.jsonl.gz", "wb") as f:
            f.write('{"text": "fine"}\n{"text": "caf\u00e9"}\n'.encode("latin-1"))
        return tmp_path / "x.jsonl.gz", ValueError, "not UTF-8 text (byte 0xe9 at offset 30)"
    # damaged files
    if kind in ("truncated-gz", "truncated-xz"):
        name, opener = ("x.jsonl.gz", gzip.open) if kind == "truncated-gz" else ("x.jsonl.xz", lzma.open)
        with opener(tmp_path / name, "wt", encoding="utf-8") as f:
            f.writelines(json.dumps({"text": t}) + "\n" for t in make_texts(50, 0))
        data = (tmp_path / name).read_bytes()
        (tmp_path / name).write_bytes(data[:len(data) // 2])
        return tmp_path / name, ValueError, "truncated: it ends inside its compressed data"
    if kind == "corrupt-gz":
        with gzip.open(tmp_path / "x.jsonl.gz", "wt", encoding="utf-8") as f:
            f.writelines(json.dumps({"text": t}) + "\n" for t in make_texts(50, 0))
        data = bytearray((tmp_path / "x.jsonl.gz").read_bytes())
        data[-6] ^= 0xFF  # the stored length of the uncompressed data
        (tmp_path / "x.jsonl.gz").write_bytes(bytes(data))
        return tmp_path / "x.jsonl.gz", ValueError, "unreadable or corrupt"
    if kind == "not-parquet":
        (tmp_path / "x.parquet").write_text("id,text\n1,hello\n")
        return tmp_path / "x.parquet", ValueError, "not a readable parquet file"
    if kind == "corrupt-parquet":
        write_parquet(tmp_path / "x.parquet", make_texts(40, 0))
        data = bytearray((tmp_path / "x.parquet").read_bytes())
        data[4:200] = bytes(196)  # the first data pages; the footer stays readable
        (tmp_path / "x.parquet").write_bytes(bytes(data))
        return tmp_path / "x.parquet", ValueError, "corrupt parquet file"
    if kind == "parquet-int-text":
        pq.write_table(pa.table({"text": [1, 2, 3]}), tmp_path / "x.parquet")
        return tmp_path / "x.parquet", ValueError, "the 'text' column holds int64, not strings"
    if kind == "lone-surrogate":  # JSON's \ud800 alone: no character, so no UTF-8 for the tokenizer
        (tmp_path / "x.jsonl").write_text('{"text": "fine"}\n{"text": "half \\ud800 a pair"}\n')
        return tmp_path / "x.jsonl", ValueError, 'x.jsonl:2: "text" holds a lone surrogate (\\ud800'


@pytest.mark.parametrize("kind", ["missing", "glob", "empty", "empty-gz", "extension", "no-text-column",
                                  "no-text-field", "bad-json", "latin1-txt", "utf16-txt", "utf16le-txt",
                                  "random-txt", "latin1-jsonl", "utf16-jsonl", "latin1-jsonl-gz", "truncated-gz",
                                  "truncated-xz", "corrupt-gz", "not-parquet", "corrupt-parquet",
                                  "parquet-int-text", "lone-surrogate"])
def test_bad_inputs_give_clear_errors(tmp_path, capsys, kind):
    path, error, message = _bad_input(tmp_path, kind)
    with pytest.raises(error, match=re.escape(message)):
        pd.prepare(tmp_path / "out", "local", [str(path)], val_tokens=10, workers=1, quiet=True)
    with pytest.raises(SystemExit) as e:  # the CLI turns it into one line naming the file
        pd.main(["--input", str(path), "--out", str(tmp_path / "out"), "--val-tokens", "10", "--quiet"])
    msg = str(e.value.code)
    assert msg.startswith("prepare_data.py: error: ") and str(path.name) in msg and "\n" not in msg
    assert not (tmp_path / "out").exists()  # refused before anything was written


def test_utf8_byte_order_mark_is_fine(tmp_path):
    bom = "\ufeff".encode()
    (tmp_path / "a.txt").write_bytes(bom + "Grüße, first document.".encode())
    (tmp_path / "b.jsonl").write_bytes(bom + '{"text": "café au lait"}\n{"text": "second"}\n'.encode())
    m = pd.prepare(tmp_path / "out", "local", [str(tmp_path / "a.txt"), str(tmp_path / "b.jsonl")], val_tokens=5,
                   quiet=True)
    assert m["complete"]
    assert np.array_equal(read_stream(tmp_path / "out"),
                          expected_stream(["Grüße, first document.", "café au lait", "second"]))


def test_cli_help_explains_every_option(capsys):
    with pytest.raises(SystemExit) as e:
        pd.main(["--help"])
    assert e.value.code == 0
    text = capsys.readouterr().out
    for option in ("--source", "--input", "--tokenizer", "--out-dir", "--out", "--max-files", "--max-tokens",
                   "--val-tokens", "--shard-tokens", "--cache-dir", "--endpoint", "--workers", "--quiet", "HF_ENDPOINT", "HF_TOKEN"):
        assert option in text
    args = pd.parse_args(["--max-tokens", "1B", "--val-tokens", "50k", "--shard-tokens", "1_000"])
    assert (args.max_tokens, args.val_tokens, args.shard_tokens) == (10**9, 50_000, 1000)
    with pytest.raises(SystemExit):
        pd.parse_args(["--shard-tokens", "0"])


@pytest.mark.parametrize("flag", ["--max-tokens", "--max-files", "--val-tokens", "--shard-tokens", "--workers"])
@pytest.mark.parametrize("value", ["inf", "1e400", "nan", "-5", "0", "2.5", "ten", "-inf"])
def test_bad_numbers_are_refused_in_one_line(capsys, flag, value):
    """A count of tokens or files gets token-count examples; --workers, a number of processes, its own."""
    with pytest.raises(SystemExit) as e:
        pd.parse_args([f"{flag}={value}"])
    what = "of processes, e.g. 2" if flag == "--workers" else "(examples: 1000, 50k, 100M, 1B)"
    assert e.value.code == f"prepare_data.py: {flag} {value}: must be a positive whole number {what}"
    assert capsys.readouterr().err == ""  # no usage block


@pytest.mark.parametrize("argv, message", [
    (["--shard-tokens", "10"], "shard_tokens 10 is outside [100,000, 2,147,483,647]"),
    (["--shard-tokens", "3B"], "shard_tokens 3,000,000,000 is outside"),
    (["--val-tokens", "2B"], "val_tokens 2,000,000,000 is too big"),
    (["--workers", "1000000"], "workers 1,000,000 is more than 4 per CPU core")])
def test_out_of_range_settings_are_refused_before_any_work(tmp_path, monkeypatch, argv, message):
    monkeypatch.setattr(pd, "MIN_SHARD_TOKENS", 100_000)  # the real minimum
    with pytest.raises(SystemExit) as e:
        pd.main(["--source", "embedded", "--out", str(tmp_path / "out"), "--quiet"] + argv)
    assert str(e.value.code).startswith("prepare_data.py: error: " + message) and "\n" not in str(e.value.code)
    assert not (tmp_path / "out").exists()

# -----------------------------------------------------------------------------
# the embedded corpus


def test_embedded_corpus(tmp_path):
    """The KJV through the process pool equals tokenising its books in-process; the re-run is instant."""
    m = pd.prepare(tmp_path / "kjv", "embedded", workers=2, quiet=True)
    docs = readers.kjv_documents(readers.kjv_path())
    assert len(docs) == 66 and docs[0].startswith("Genesis\n\nChapter 1\nIn the beginning God created")
    want = expected_stream(docs)
    assert np.array_equal(read_stream(tmp_path / "kjv"), want)
    assert 900_000 < m["total_tokens"] == len(want) < 1_100_000
    val = m["shards"][0]["tokens"]
    assert val == len(expected_stream(docs[:1])) and 0.03 < val / len(want) < 0.07  # Genesis, ~5%
    assert m["inputs"][0]["sha256"] == readers.KJV_SHA256
    before = mtimes(tmp_path / "kjv")
    t0 = time.time()
    assert pd.prepare_embedded(tmp_path / "kjv", quiet=True) == tmp_path / "kjv"
    assert time.time() - t0 < 2 and mtimes(tmp_path / "kjv") == before


def test_embedded_corpus_checks_its_sha256(tmp_path, monkeypatch):
    fake = tmp_path / "bible"
    (fake / "data").mkdir(parents=True)
    (fake / "data" / "kjv.jsonl").write_text('{"citation": "x", "text": "changed", "book": "B", "chapter": 1}\n')
    monkeypatch.setattr(readers, "_package_dir", lambda name: fake)
    with pytest.raises(ValueError, match="kjv.jsonl: sha256 mismatch"):
        pd.prepare_embedded(tmp_path / "kjv", quiet=True)

# -----------------------------------------------------------------------------
# --tokenizer bytes


def test_byte_build_of_every_input_kind(tmp_path):
    """Each document becomes 256 then its UTF-8 bytes, in the same llm.c shards; the manifest says which
    tokenizer, its vocabulary and its delimiter; a pool of workers writes the same shards."""
    paths, texts = write_local_inputs(tmp_path / "in")
    out = tmp_path / "out"
    pd.main(["--input", str(tmp_path / "in"), "--tokenizer", "bytes", "--out-dir", str(out), "--val-tokens", "500",
             "--shard-tokens", "2000", "--quiet"])
    want = expected_stream(texts, "bytes")
    assert np.array_equal(read_stream(out), want) and len(want) > sum(len(t) for t in texts)  # ü, é: 2 bytes
    m = shards.load_manifest(out)
    assert (m["tokenizer"], m["vocab_size"], m["eot_token"]) == ("bytes", 257, 256)
    assert m["settings"]["tokenizer"] == "bytes" and m["total_tokens"] == len(want)
    two = pd.prepare(tmp_path / "two", "local", [str(tmp_path / "in")], tokenizer="bytes", val_tokens=500,
                     shard_tokens=2000, workers=2, quiet=True)
    assert [s["sha256"] for s in two["shards"]] == [s["sha256"] for s in m["shards"]]


def test_embedded_byte_build_holds_out_the_same_book(tmp_path, monkeypatch):
    """prepare_embedded(tokenizer="bytes") fills data/kjv-bytes; its validation split is Genesis, as in the
    GPT-2 build (test_embedded_corpus): the same held-out text for both tokenizers."""
    monkeypatch.setattr(shards, "DATA_DIR", tmp_path / "data")
    with pytest.raises(FileNotFoundError, match="make it with: python prepare_data.py --source embedded "
                                                "--tokenizer bytes$"):
        shards.list_shards(tmp_path / "data" / "kjv-bytes")
    assert pd.prepare_embedded(tokenizer="bytes", quiet=True) == tmp_path / "data" / "kjv-bytes"
    docs = readers.kjv_documents(readers.kjv_path())
    want = expected_stream(docs, "bytes")
    assert np.array_equal(read_stream(tmp_path / "data" / "kjv-bytes"), want)
    m = shards.load_manifest(tmp_path / "data" / "kjv-bytes")
    assert docs[0].startswith("Genesis") and m["shards"][0]["tokens"] == len(expected_stream(docs[:1], "bytes"))
    assert m["tokenizer"] == "bytes" and m["total_tokens"] == len(want)
    assert sorted(p.name for p in (tmp_path / "data").iterdir()) == ["kjv-bytes"]


def test_default_folders_say_the_tokenizer(tmp_path, monkeypatch):
    monkeypatch.setattr(shards, "DATA_DIR", tmp_path / "data")
    (tmp_path / "a.txt").write_text(" ".join(make_texts(30, 0)))
    for tokenizer in ("gpt2", "bytes"):
        m = pd.prepare(None, "local", [str(tmp_path / "a.txt")], tokenizer=tokenizer, val_tokens=100, shard_tokens=300,
                       quiet=True)
        assert shards.load_manifest(tmp_path / "data" / {"gpt2": "local", "bytes": "local-bytes"}[tokenizer]) == m
        assert m["tokenizer"] == tokenizer
    assert sorted(p.name for p in (tmp_path / "data").iterdir()) == ["local", "local-bytes"]


def test_hub_byte_build_reuses_the_download(hub, tmp_path, monkeypatch):
    monkeypatch.setattr(shards, "DATA_DIR", tmp_path / "data")
    hub.add(tmp_path, "000_00000.parquet", make_texts(40, 0))
    hub_build(tmp_path)  # GPT-2 tokens
    m = pd.prepare(None, "fineweb-edu", tokenizer="bytes", cache_dir=tmp_path / "cache", val_tokens=1000,
                   shard_tokens=3000, quiet=True)
    out = tmp_path / "data" / "fineweb-edu-10BT-bytes"
    assert np.array_equal(read_stream(out), expected_stream(hub.texts["000_00000.parquet"], "bytes"))
    assert m["tokenizer"] == "bytes" and len(hub.requests("/cdn/")) == 1  # the parquet file came once


def test_another_tokenizer_into_the_same_folder_is_refused_in_one_line(tmp_path):
    (tmp_path / "a.txt").write_text(" ".join(make_texts(30, 0)))
    argv = ["--input", str(tmp_path / "a.txt"), "--out-dir", str(tmp_path / "out"), "--val-tokens", "100",
            "--shard-tokens", "300", "--quiet"]
    pd.main(argv)
    before = mtimes(tmp_path / "out")
    with pytest.raises(SystemExit) as e:
        pd.main(argv + ["--tokenizer", "bytes"])
    assert e.value.code == (f"prepare_data.py: error: {tmp_path / 'out'} holds a build with other settings "
                            "(tokenizer gpt2 -> bytes); use another --out-dir, or delete that directory to rebuild")
    assert mtimes(tmp_path / "out") == before  # nothing of the first build was touched
    with pytest.raises(SystemExit) as e:
        pd.main(argv + ["--tokenizer", "chars"])
    message = str(e.value.code)  # argparse quotes the choices or not, by Python version
    assert message.startswith("prepare_data.py: --tokenizer invalid choice: 'chars' (choose from ")
    assert "gpt2" in message and "bytes" in message and "\n" not in message


def test_one_build_per_folder(tmp_path):
    """While another process builds in a folder, a second build there is refused in one line naming its pid."""
    with files.FolderLock(tmp_path / "kjv", "prepare_data.py"):  # as a running build holds it
        with pytest.raises(SystemExit) as e:
            pd.main(["--source", "embedded", "--out-dir", str(tmp_path / "kjv"), "--quiet"])
    assert f"in use by another prepare_data.py (pid {os.getpid()})" in str(e.value.code)
    assert not (tmp_path / "kjv").exists()  # the lock's folder goes again when nothing was built in it


def test_the_embedded_build_can_wait_for_another(tmp_path, capfd):
    """train.py's first-use build (wait=True) waits for the process already building the folder, then finds it
    built, instead of stopping every run of a sweep started beside another."""
    import threading
    out = tmp_path / "kjv"
    other = files.FolderLock(out, "prepare_data.py").acquire()  # as a running build holds it
    done = []
    waiter = threading.Thread(target=lambda: done.append(pd.prepare_embedded(out, quiet=True, wait=True)), daemon=True)
    waiter.start()
    try:
        waiter.join(timeout=1.0)
        assert waiter.is_alive() and not done  # still waiting
        assert f"{out} is in use by another prepare_data.py (pid {os.getpid()}): waiting" in capfd.readouterr().out
    finally:
        other.release()
    waiter.join(timeout=60)
    assert done == [out] and json.loads((out / "manifest.json").read_text())["complete"]


def test_a_slice_with_workers_always_exits(tmp_path):
    """A --max-tokens slice of a bigger input, tokenised by a pool, stops the pool without killing workers mid-way:
    Pool.terminate killed a worker while it sent a result, and the pool then waited forever on the lock that worker
    held (about one build in 14 here, 1 in 12 in the issue). Forty builds in one child process, which must finish
    within the timeout (they take about 10 s); a hang fails the test instead of hanging the suite."""
    script = f"""
import json, sys
from pathlib import Path
sys.path.insert(0, {str(Path(__file__).resolve().parents[1])!r})
import prepare_data as pd
tmp = Path({str(tmp_path)!r})
src = tmp / "in.jsonl"
line = json.dumps({{"text": "the light of day falls on water and stone " * 20}}) + "\\n"
src.write_text(line * (2_000_000 // len(line)))  # 2 MB: the workers are still busy when the slice is full
for i in range(40):
    m = pd.prepare(tmp / f"d{{i}}", "local", [str(src)], tokenizer="bytes", max_tokens=200_000, val_tokens=50_000,
                   shard_tokens=100_000, workers=4, quiet=True)
    assert m["complete"] and m["stopped_at_max_tokens"] and m["total_tokens"] == 200_000
print("done", flush=True)
"""
    log = tmp_path / "log.txt"
    with open(log, "w") as f:  # a file, not a pipe: a hung pool's workers would hold a pipe open
        child = subprocess.Popen([sys.executable, "-c", script], stdout=f, stderr=subprocess.STDOUT,
                                 env={**os.environ, "OMP_NUM_THREADS": "1"}, start_new_session=True)
        try:
            child.wait(timeout=120)
        except subprocess.TimeoutExpired:
            os.killpg(child.pid, signal.SIGKILL)  # the child and its pool's workers
            child.wait()
            pytest.fail(f"a build hung after {log.read_text().count('tokens in 3 shards')} of 40 finished")
    out = log.read_text()
    assert child.returncode == 0, out[-2000:]
    assert out.count("200,000 tokens in 3 shards") == 40 and out.endswith("done\n")


def test_atomic_write_replaces_only_regular_files(tmp_path):
    """--json /dev/null (gpu_check.py, bench.py) must not rename a regular file over the device: a pipe or a device
    is written in place and stays what it was, a symlink keeps pointing at its file, a folder is refused."""
    fifo = tmp_path / "pipe"
    os.mkfifo(fifo)
    got = []
    reader = threading.Thread(target=lambda: got.append(fifo.read_bytes()), daemon=True)
    reader.start()
    files.atomic_write(fifo, lambda f: f.write(b"report"))
    reader.join(timeout=10)
    assert got == [b"report"] and fifo.is_fifo()  # the pipe was written, not replaced by a file
    (tmp_path / "real.json").write_text("old")
    (tmp_path / "link.json").symlink_to("real.json")
    files.atomic_write(tmp_path / "link.json", lambda f: f.write(b"new"))
    assert (tmp_path / "link.json").is_symlink() and (tmp_path / "real.json").read_text() == "new"
    (tmp_path / "folder").mkdir()
    with pytest.raises(OSError, match="a folder, not a file"):
        files.atomic_write(tmp_path / "folder", lambda f: f.write(b"x"))
    assert sorted(p.name for p in tmp_path.iterdir()) == ["folder", "link.json", "pipe", "real.json"]  # no temp
    try:
        os.mknod(tmp_path / "null", 0o666 | stat.S_IFCHR, os.makedev(1, 3))  # a /dev/null of our own (root only)
    except (PermissionError, OSError):
        return
    files.atomic_write(tmp_path / "null", lambda f: f.write(b"gone"))
    assert (tmp_path / "null").is_char_device()


@pytest.mark.parametrize("texts", [[""], [None, ""], [None]])
def test_an_input_without_text_says_so(tmp_path, texts):
    """Empty or null documents only: "no text in the input", not "pass a smaller --val-tokens" (even at 1)."""
    (tmp_path / "x.jsonl").write_text("".join(json.dumps({"text": t}) + "\n" for t in texts))
    with pytest.raises(SystemExit) as e:
        pd.main(["--input", str(tmp_path / "x.jsonl"), "--out", str(tmp_path / "out"), "--val-tokens", "1", "--quiet"])
    assert e.value.code == "prepare_data.py: error: no text in the input: every document of x.jsonl is empty or null"


def test_an_out_dir_that_is_a_file_is_one_line(tmp_path):
    (tmp_path / "afile").write_text("notes")
    for out, what in ((tmp_path / "afile", "it"), (tmp_path / "afile" / "sub", tmp_path / "afile")):
        with pytest.raises(SystemExit) as e:
            pd.main(["--source", "embedded", "--out-dir", str(out), "--quiet"])
        assert e.value.code == f"prepare_data.py: error: --out-dir {out}: {what} is a file, not a folder; pass a folder's name"
    assert (tmp_path / "afile").read_text() == "notes"


def test_a_finished_build_in_a_read_only_folder_needs_no_lock(tmp_path, monkeypatch, capsys):
    """A complete, verified folder on a read-only mount is confirmed ("nothing to do") without its .lock, so
    train.py reads it; an unfinished one there is one line. (Read-only is simulated: root ignores permissions.)"""
    (tmp_path / "a.txt").write_text(" ".join(make_texts(30, 0)))
    args = dict(val_tokens=100, shard_tokens=300, workers=1, quiet=True)
    first = pd.prepare(tmp_path / "out", "local", [str(tmp_path / "a.txt")], **args)
    before = mtimes(tmp_path / "out")
    capsys.readouterr()

    def read_only(self, wait=False):
        raise OSError(errno.EROFS, "Read-only file system", str(self.folder / ".lock"))
    monkeypatch.setattr(files.FolderLock, "acquire", read_only)
    assert pd.prepare(tmp_path / "out", "local", [str(tmp_path / "a.txt")], **args) == first
    assert "nothing to do" in capsys.readouterr().out and mtimes(tmp_path / "out") == before
    manifest = json.loads((tmp_path / "out" / "manifest.json").read_text())
    (tmp_path / "out" / "manifest.json").write_text(json.dumps(dict(manifest, complete=False)))
    for out in (tmp_path / "out", tmp_path / "new"):
        with pytest.raises(OSError, match="cannot write in it \\(Read-only file system\\), and it holds no finished "
                                          "build of these settings: pass a writable --out-dir"):
            pd.prepare(out, "local", [str(tmp_path / "a.txt")], **args)
    assert not (tmp_path / "new").exists()
