"""
Checkpoints (support module): what a run saves, checked when it is read back.

A checkpoint is a dict: model and optimizer state, the step, the RNG states and data position after
that step, the model's config and the run's settings, and a sha256 of all of it. torch.load reads
flipped bytes in tensor data without complaint, so only the checksum tells a damaged file from a good
one. Files are written atomically (files.atomic_write): a crash mid-write never leaves a broken ckpt.pt.
"""

import hashlib
import os
import random

import numpy as np
import torch

from support import files

REQUIRED = {"model", "model_config", "train_args", "step"}
# what train.py saves under each key: a checkpoint without a checksum (an older or an edited one) is checked by these
TYPES = dict(model=dict, model_config=dict, train_args=dict, step=int, optimizer=dict, rng=dict)


def load_checkpoint(path, flag="--resume"):
    """The checkpoint at path, verified; one line naming `flag` and the fix if it cannot be used."""
    if os.path.isdir(path):  # a run's folder: its checkpoint is the ckpt.pt in it
        inside = os.path.join(path, "ckpt.pt")
        raise SystemExit(f"{flag} {path} is a folder, not a checkpoint file: pass {flag} {inside}" if os.path.isfile(
            inside) else f"{flag} {path} is a folder with no ckpt.pt in it: pass the ckpt.pt train.py wrote (in its "
                         f"--out-dir)")
    if not os.path.isfile(path):
        raise SystemExit(f"{flag} {path or repr(path)}: no such checkpoint file")
    try:  # weights_only: a checkpoint is data, never code
        ckpt = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as e:
        raise SystemExit(f"{flag} {path}: not a readable checkpoint ({type(e).__name__}); pass a ckpt.pt "
                         "written by train.py")
    if not isinstance(ckpt, dict) or not REQUIRED <= ckpt.keys():
        raise SystemExit(f"{flag} {path}: not a train.py checkpoint (keys model, model_config, ...)")
    saved = ckpt.pop("sha256", None)
    if saved is None:
        if os.environ.get("RANK", "0") == "0":
            print(f"note: {path} has no checksum (an older train.py wrote it): loaded unverified")
    elif state_sha256(ckpt) != saved:
        raise SystemExit(f"{flag} {path}: checksum mismatch, the file is corrupt: resume from another "
                         f"checkpoint or start again")
    if wrong := _wrong_field(ckpt):
        raise SystemExit(f"{flag} {path}: its {wrong}, not what train.py writes: the checkpoint was edited or is "
                         "damaged; use another one")
    return ckpt


def real_path(path):
    """path with its links resolved (links/latest.pt -> runs/a/ckpt.pt), so a resumed run writes beside the real
    checkpoint, in its run's folder; a path without links is kept as given."""
    real = os.path.realpath(path)
    if real == os.path.abspath(path):
        return path
    if os.environ.get("RANK", "0") == "0":
        print(f"note: {path} is a link to {real}: continuing that run, in {os.path.dirname(real)}")
    return real


def continued(path, saved, given, derived_from, parse_options):
    """The settings a resumed run takes from its checkpoint (train_args), once what the flags would change is
    checked: another task, or a task on a language model's checkpoint, is refused in one line (--eval-only may
    evaluate on another task: it writes nothing); a value derived from a flag (derived_from: {setting: flags})
    is dropped when that flag changes, to be derived again; the checkpoint's other values stay."""
    saved, eval_only = dict(saved), bool(given.get("eval_only"))
    old, new = saved.get("task"), given.get("task", saved.get("task"))
    if new != old and old is None:
        raise SystemExit(f"{path} is a language model's checkpoint: --task {new} can neither continue nor evaluate "
                         f"it; train the task in a new run (no --resume)")
    if new != old and not eval_only:
        raise SystemExit(f"{path} is a checkpoint of --task {old}, not {new}: drop --task to continue it, train "
                         f"{new} in a new run (no --resume), or evaluate it on {new} with --eval-only")
    if new is None and given.get("tokenizer", saved["tokenizer"]) != saved["tokenizer"]:
        raise SystemExit(f"{path} was trained on {saved['tokenizer']} tokens: its embedding rows are theirs, so "
                         f"--tokenizer {given['tokenizer']} cannot read with it; drop --tokenizer")
    if new == old and not eval_only and "task_option" in given and (
            parse_options(new, given["task_option"]) != parse_options(new, saved.get("task_option"))):
        raise SystemExit(f"{path} was trained with --task-option {' '.join(saved.get('task_option') or []) or '(none)'}"
                         f": --task-option {' '.join(given['task_option'])} would change the task mid-run; drop it "
                         f"to continue, or start a new run")
    if new != old:
        saved.pop("task_option", None)  # the old task's
    derived = saved.pop("derived", None)
    if derived is None:  # a checkpoint from before "derived" was saved: derived if it equals what would be
        derived = [k for k, v in (("min_lr", saved.get("lr", 0) / 10), ("lr_decay_steps", saved.get("max_steps")))
                   if saved.get(k) == v]
    changed = {k for k, v in given.items() if k in saved and v != saved[k]} | ({"task"} if new != old else set())
    for key, flags in derived_from.items():
        if key in derived and changed & set(flags):
            saved.pop(key, None)
    saved["derived"] = derived  # still derived, if kept: derived again when its flag changes on a later resume
    return saved


def data_sha256(manifest):
    """sha256 over the shards a data folder's manifest lists (name, split, tokens, sha256), or None without one."""
    listed = (manifest or {}).get("shards") or []
    if not listed or not all(s.get("sha256") for s in listed):
        return None
    entries = [(s["file"], s["split"], s["tokens"], s["sha256"]) for s in listed]
    return hashlib.sha256(repr(entries).encode()).hexdigest()


def check_same_data(saved, args, path):
    """A resumed run trains on the data it was trained on: the same train tokens, and where both folders have a
    manifest with checksums, the same shards. Checkpoints from before this was saved are not checked."""
    tokens, sha = saved.get("data_tokens"), saved.get("data_sha256")
    if tokens is None or (tokens == args.data_tokens and (sha is None or args.data_sha256 in (None, sha))):
        return
    mark = lambda digest: f", shards sha256 {digest[:12]}" if digest else ""  # noqa: E731
    raise SystemExit(f"{path} was trained on {saved.get('data_dir')} ({tokens:,} train tokens{mark(sha)}), but "
                     f"{args.data_dir} now holds other data ({args.data_tokens:,} train tokens"
                     f"{mark(args.data_sha256)}): resume on the run's own data (--data), or start a new run")


def _wrong_field(ckpt):
    """The first field of a checkpoint that train.py would not have written so, or None."""
    for key, kind in TYPES.items():
        v = ckpt.get(key, {})  # optimizer and rng: only a resumed run needs them
        if not isinstance(v, kind) or isinstance(v, bool) or (kind is int and v < 0):
            return f"{key!r} is {v!r:.40}, not {'a step >= 0' if kind is int else 'a dict'}"
    if not all(isinstance(k, str) and isinstance(t, torch.Tensor) for k, t in ckpt["model"].items()):
        return "'model' holds entries that are not named tensors"
    return None


def _fits(value, default):
    """value is of the kind of a config field's default: a bool for a bool, an int for an int, a number for a float."""
    if isinstance(default, bool) or isinstance(value, bool):
        return isinstance(value, bool) and isinstance(default, bool)
    return default is None or isinstance(value, (int, float) if isinstance(default, float) else type(default))


def model_config(ckpt, path, given, keys, config_class, **machine):
    """The checkpoint's model config (a config_class); flags given on --resume for `keys` may only repeat it."""
    try:
        cfg = config_class(**{**ckpt["model_config"], **machine})
    except (TypeError, ValueError) as e:  # an edited or foreign model_config
        raise SystemExit(f"{path}: its model_config is not one train.py writes ({e}); use another checkpoint")
    wrong = [k for k, v in vars(cfg).items() if not _fits(v, getattr(config_class, k, None))]
    if wrong:
        raise SystemExit(f"{path}: its model_config is not one train.py writes ({wrong[0]}="
                         f"{getattr(cfg, wrong[0])!r:.40}); use another checkpoint")
    saved = dict(vars(cfg), preset=ckpt["train_args"].get("preset"))
    if cfg.pe == "learned" and given.get("block_size", 0) > cfg.block_size:
        raise SystemExit(f"context {given['block_size']} is longer than the learned position table "
                         f"({cfg.block_size} positions) of {path}; learned positions cannot go "
                         f"past their table: use --block-size {cfg.block_size} or a relative --pe")
    wanted = {k: given[k] for k in keys if k in given and given[k] != saved[k]}
    if wanted:
        raise SystemExit(f"{path} is a checkpoint of another config ({', '.join(f'{k}={saved[k]}' for k in wanted)}) "
                         f"than the flags ask for ({', '.join(f'{k}={v}' for k, v in wanted.items())}): drop "
                         f"those flags to use it, or start a new run in another --out-dir")
    return cfg


def save_checkpoint(path, state):
    state = dict(state, sha256=state_sha256(state))
    files.atomic_write(path, lambda f: torch.save(state, f))


def state_sha256(state):
    """sha256 of a checkpoint's contents in a fixed order (dict entries sorted by key, tensors as dtype,
    shape and raw bytes, anything else by repr), so it is the same before torch.save and after torch.load."""
    h = hashlib.sha256()

    def feed(x):
        if isinstance(x, dict):
            h.update(b"{")
            for k in sorted(x, key=repr):
                h.update(repr(k).encode() + b":")
                feed(x[k])
            h.update(b"}")
        elif isinstance(x, (list, tuple)):  # pickle keeps tuples, but one rule for both is safer
            h.update(b"[")
            for v in x:
                feed(v)
            h.update(b"]")
        elif isinstance(x, torch.Tensor):
            h.update(f"tensor({x.dtype},{tuple(x.shape)})".encode())
            h.update(x.detach().cpu().contiguous().reshape(-1).view(torch.uint8).numpy())
        else:
            h.update(repr(x).encode() + b",")
    feed(state)
    return h.hexdigest()


def load_state(target, state, path):
    """model/optimizer.load_state_dict, with a mismatch (an edited checkpoint) as one line."""
    if state is None:  # a checkpoint without it (edited): it can be evaluated, not continued
        raise SystemExit(f"{path}: holds no saved {type(target).__name__} state, so it cannot be continued; "
                         f"--eval-only --resume {path} evaluates it")
    try:
        target.load_state_dict(state)
    except (RuntimeError, ValueError, KeyError) as e:
        first = str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__
        raise SystemExit(f"{path}: its saved {type(target).__name__} state does not fit its model_config "
                         f"({first}); the checkpoint was edited or is damaged: use another one")


def rng_states(loader):
    """Every random state a step draws from, and the data position: saved with each checkpoint."""
    np_state = np.random.get_state()
    return dict(torch=torch.get_rng_state(),
                cuda=torch.cuda.get_rng_state_all() if torch.cuda.is_available() else None,
                numpy=(np_state[0], np_state[1].tolist(), *np_state[2:]),  # plain types: weights_only loads it
                python=random.getstate(), loader=loader.state_dict())


def restore_position(ckpt, loader, path, data_dir):
    """The RNG states and the data position of the checkpoint's step, or one line if the data cannot hold it."""
    try:
        restore_rng_states(ckpt["rng"], loader)
    except ValueError as e:  # sequential order, other (shorter, fewer) shards than the run's
        raise SystemExit(f"{path}: {e} in {data_dir}: resume on the data it was trained on "
                         f"({ckpt['train_args'].get('data_dir')}) or with --data-order random")
    except (KeyError, TypeError, IndexError, RuntimeError) as e:  # an edited checkpoint without a checksum
        raise SystemExit(f"{path}: its saved RNG states and data position are not what train.py writes "
                         f"({type(e).__name__}); the checkpoint was edited or is damaged: use another one")


def restore_rng_states(states, loader):
    """Raises ValueError (from the loader) if the data position is past the end of its shards."""
    torch.set_rng_state(states["torch"])
    cuda = states["cuda"] if torch.cuda.is_available() else None
    if cuda is not None:
        visible = torch.cuda.device_count()
        if len(cuda) > visible:  # saved on more GPUs than this machine shows: the first ones are the ones used
            print(f"note: the checkpoint holds {len(cuda)} CUDA RNG states, {visible} GPU(s) are visible: "
                  f"restored the first {visible}")
        for i, state in enumerate(cuda[:visible]):
            torch.cuda.set_rng_state(state, i)
    name, keys, *rest = states["numpy"]
    np.random.set_state((name, np.array(keys, dtype=np.uint32), *rest))
    random.setstate(states["python"])
    loader.load_state_dict(states["loader"])
