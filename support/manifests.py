"""
A data folder's manifest.json (support module): what prepare_data.py records about a build, and the check that
a manifest read back is one it could have written.

prepare_data.py writes the manifest before its first shard and again after each one; train.py, sample.py and
compare.py read it for a folder's tokenizer and shards. A hand-edited, torn or foreign file is refused in one line
naming the file and the first thing wrong in it, rather than met later as a traceback in a build or a run.
Hand-made folders (the tests' tiny ones) may write only some keys; those they write must have these types.
"""

import json
import re
from pathlib import Path

FORMAT = "llm.c shards: 256 int32 header (20240520, 1, n_tokens), then n_tokens uint16"
# every top-level key prepare_data.py writes, and its type (every int here is a count or an id: >= 0)
KEYS = dict(source=str, description=str, format=str, tokenizer=str, vocab_size=int, eot_token=int, eot_position=str,
            settings=dict, val_tokens_target=int, inputs=list, shards=list, total_tokens=int, complete=bool,
            stopped_at_max_tokens=bool, val_tokens=int, train_tokens=int)
BUILD_KEYS = ("settings", "inputs", "val_tokens_target", "complete", "total_tokens")  # what a re-run goes on from
# the keys of one entry of "shards" and of "inputs", and the ones each must have
ENTRY_KEYS = dict(shards=dict(file=str, split=str, tokens=int, sha256=str, end=list),
                  inputs=dict(name=str, size=int, path=str))
REQUIRED = dict(shards=("file", "split", "tokens"), inputs=("name", "size", "sha256"))  # the hub's may be null
# a shard's file name says its split: val_000000.bin, train_000001.bin (llm.c: fineweb_val_000000.bin); no folders
SHARD_NAME = re.compile(r"(?:[\w.-]*_)?(val|train)_[\w.-]*\.bin")
JSON_NAMES = {str: "a string", int: "a whole number >= 0", bool: "true or false", list: "a list", dict: "an object"}


def new_manifest(settings, tok, files, val_tokens, description):
    """The manifest of a fresh build, before any shard: inputs, settings, tokenizer, the validation size."""
    return {"source": settings["source"], "description": description, "format": FORMAT, "tokenizer": tok.name,
            "vocab_size": tok.vocab_size, "eot_token": tok.eot, "eot_position": "before each document",
            "settings": settings, "val_tokens_target": val_tokens, "inputs": files, "shards": [], "total_tokens": 0,
            "complete": False}


def load_manifest(data_dir, build=False):
    """The directory's manifest.json as a dict, or None if there is none; a file that is not valid UTF-8 JSON or
    not a manifest (see problem) raises ValueError naming it. build: it must be a prepare_data.py build's."""
    path = Path(data_dir) / "manifest.json"
    if not path.is_file():
        return None
    try:
        manifest = json.loads(path.read_bytes().decode("utf-8"))
    except UnicodeDecodeError as e:
        raise ValueError(f"{path}: not UTF-8 text (byte 0x{e.object[e.start]:02x} at offset {e.start}), not a "
                         "manifest; delete the directory and re-run prepare_data.py") from None
    except json.JSONDecodeError as e:
        raise ValueError(f"{path}: not valid JSON ({e}); delete the directory and re-run prepare_data.py") from None
    except OSError as e:
        raise ValueError(f"{path}: cannot read it ({e.strerror})") from None
    wrong = problem(manifest)
    if not wrong and build and manifest["shards"]:
        wrong = next((f"no {k!r}: not a build prepare_data.py can go on with" for k in BUILD_KEYS
                      if k not in manifest), None)
    if wrong:
        raise ValueError(f"{path}: not a prepare_data.py manifest ({wrong}); delete it to use the shard files as "
                         "they are, or re-make the directory")
    return manifest


def problem(manifest):
    """What is wrong with a manifest as read from JSON, None if nothing: a key it never has, a value of another
    type, an entry of "shards" or "inputs" that lacks a key, a shard whose split its file name contradicts."""
    if not isinstance(manifest, dict):
        return f"the file holds {manifest!r:.40}, not an object"
    if "shards" not in manifest:
        return "no shard list"
    for key, value in manifest.items():
        if key not in KEYS:
            return f"unknown key {key!r}"
        if wrong := _type_problem(f'"{key}"', value, KEYS[key]):
            return wrong
    for what, keys in ENTRY_KEYS.items():
        for i, entry in enumerate(manifest.get(what, [])):
            if not isinstance(entry, dict):
                return f"{what}[{i}] is {entry!r:.40}, not an object"
            if missing := [k for k in REQUIRED[what] if k not in entry]:
                return f"{what}[{i}] has no {missing[0]!r}"
            for key, kind in keys.items():
                if key in entry and (wrong := _type_problem(f'"{key}" of {what}[{i}]', entry[key], kind)):
                    return wrong
    return _shards_problem(manifest["shards"])


def _shards_problem(listed):
    names = [s["file"] for s in listed]
    for i, s in enumerate(listed):
        name = SHARD_NAME.fullmatch(s["file"])
        if not name or name[1] != s["split"]:
            return (f"shards[{i}] is {s['file']!r} with split {s['split']!r}: a shard's split must be the one its file "
                    "name says, val_*.bin or train_*.bin, in this folder")
        if names.count(s["file"]) > 1:
            return f"{s['file']!r} is listed {names.count(s['file'])} times"
        if "end" in s and (len(s["end"]) != 3 or any(_type_problem("", v, int) for v in s["end"])):
            return f'"end" of shards[{i}] is {s["end"]!r}, not [file, document, token] (three whole numbers >= 0)'
    return None


def _type_problem(name, value, kind):
    """None if value is a `kind` (an int: >= 0, and not a bool), else what it is instead."""
    if isinstance(value, kind) and not (kind is int and (isinstance(value, bool) or value < 0)):
        return None
    return f"{name} is {value!r:.40}, not {JSON_NAMES[kind]}"
