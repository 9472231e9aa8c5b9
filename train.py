"""
Train a GPT with CARoPE (or another position encoding) on llm.c token shards.

    python train.py                                    # nano + carope on the embedded corpus (CPU, ~2 min)
    python train.py --pe rope --out-dir out-rope       # the same model with RoPE, to compare
    python train.py --eval-only --resume out/ckpt.pt --eval-lens 128,512,1024
    torchrun --nproc_per_node=2 train.py --preset gpt-tiny --data data/fineweb-edu-10BT  # the paper's recipe

The loop is build-nanogpt's: gradient accumulation up to a fixed number of tokens per update,
AdamW with linear warmup and cosine decay, gradient clipping, bf16 autocast and torch.compile
on GPUs, DDP through torchrun. Every setting is a flag (`python train.py --help`).
"""

import argparse
import ctypes
import dataclasses
import hashlib
import json
import math
import os
import random
import re
import shlex
import signal
import sys
import threading
import time
from contextlib import contextmanager, nullcontext

import numpy as np
import torch
import torch.distributed as dist
from torch.nn.parallel import DistributedDataParallel as DDP

import prepare_data
from carope import GPT, GPTConfig, PE_CHOICES, PRESETS

# -----------------------------------------------------------------------------
# Settings. Flags left out fall back to the preset's recipe, then to DEFAULTS; on --resume they
# fall back to the checkpoint's own settings first, so a resumed run continues the same recipe.

# The gpt-* recipes are the CARoPE paper's (= build-nanogpt's): 524,288 tokens per update,
# lr 6e-4 with 750 warmup steps and cosine decay to 6e-5, 10B tokens / 524,288 = 19,073 steps.
RECIPES = {
    # nano is sized for a 2-core CPU (~2 min): at ~2k tokens/s, many small steps learn more than
    # few big ones; random windows because the embedded corpus is small and ordered (book by book).
    "nano": dict(micro_batch=4, total_batch=None, lr=1.5e-3, warmup_steps=30, max_steps=350,
                 val_tokens=16384, eval_every=0, ckpt_every=0, data_order="random", log_every=25),
    "gpt-tiny": dict(micro_batch=64, total_batch=524288, lr=6e-4, warmup_steps=750, max_steps=19073,
                     val_tokens=20 * 524288, eval_every=250, ckpt_every=1000, data_order="sequential"),
    "gpt-small": dict(micro_batch=32, total_batch=524288, lr=6e-4, warmup_steps=750, max_steps=19073,
                      val_tokens=20 * 524288, eval_every=250, ckpt_every=1000, data_order="sequential"),
}
DEFAULTS = dict(preset="nano", pe="carope", data=None, out_dir="out", min_lr=None, lr_decay_steps=None,
                weight_decay=0.1, beta1=0.9, beta2=0.95, eps=1e-8, grad_clip=1.0, seed=1337,
                eval_lens=None, eval_only=False, resume=None, device=None, dtype=None, compile=None,
                num_samples=2, sample_tokens=64, log_every=1, overwrite=False)
NOT_INHERITED = ("device", "dtype", "compile", "eval_only", "resume", "data_dir", "out_dir", "overwrite")
RUN_FILES = ("log.jsonl", "config.json", "ckpt.pt")  # what a run leaves in its --out-dir

# What every numeric setting must be, checked by validate() on the resolved settings (flags, checkpoint,
# recipe) before anything is built or written. None means "not set": a default derived later.
RULES = [
    (("n_layer", "n_head", "n_embd", "block_size", "vocab_size", "micro_batch", "total_batch", "max_steps",
      "val_tokens", "log_every"), lambda v: v >= 1, "an integer >= 1"),
    (("warmup_steps", "lr_decay_steps", "eval_every", "ckpt_every", "num_samples", "sample_tokens"),
     lambda v: v >= 0, "an integer >= 0"),
    (("seed",), lambda v: 0 <= v < 2**32, "an integer in [0, 2**32) (numpy's seed range)"),
    (("lr", "eps", "rope_base"), lambda v: math.isfinite(v) and v > 0, "a finite number > 0"),
    (("min_lr", "weight_decay"), lambda v: math.isfinite(v) and v >= 0, "a finite number >= 0"),
    (("grad_clip",), lambda v: math.isfinite(v) and v >= 0, "a finite number >= 0 (0 = no clipping)"),
    (("dropout", "beta1", "beta2"), lambda v: 0 <= v < 1, "a number in [0, 1)"),
    (("device",), lambda v: re.fullmatch(r"cpu|mps|cuda(:\d+)?", v), "cpu, cuda, cuda:N or mps"),
]
MODEL_KEYS = ("n_layer", "n_head", "n_embd", "block_size", "vocab_size", "dropout", "rope_base")
PAPER_HINT = """next: the paper's recipe (GPT-Tiny, context 512, ~19k steps; a GPU, ideally two):
  python prepare_data.py --source fineweb-edu      # FineWeb-Edu 10BT -> data/fineweb-edu-10BT (~30 GB download)
  torchrun --nproc_per_node=2 train.py --preset gpt-tiny --pe carope --data data/fineweb-edu-10BT --out-dir out-tiny-carope
  then --pe rope / learned / sinusoidal for the baselines; eval lengths default to 512,1024,2048"""


def build_parser():
    p = argparse.ArgumentParser(
        description="Train (or evaluate) a GPT with CARoPE or another position encoding on llm.c token\n"
                    "shards. Flags left out take the --preset's recipe; with --resume, the checkpoint's.",
        formatter_class=argparse.RawDescriptionHelpFormatter,
        epilog="examples:\n"
               "  python train.py                                   # nano + carope, embedded corpus, ~2 min on CPU\n"
               "  python train.py --pe rope --out-dir out-rope      # the same with RoPE\n"
               "  python train.py --resume out/ckpt.pt --max-steps 1000   # continue a run\n"
               "  python train.py --eval-only --resume out/ckpt.pt --eval-lens 128,512,2048\n"
               "  torchrun --nproc_per_node=2 train.py --preset gpt-tiny --data data/fineweb-edu-10BT")
    g = p.add_argument_group("model")
    g.add_argument("--preset", choices=sorted(PRESETS), help="model size and training recipe: nano (CPU "
                   "demo, the default), gpt-tiny (6x512, 44M) or gpt-small (12x768, 124M) with the "
                   "paper's recipe")
    g.add_argument("--pe", choices=PE_CHOICES, help="position encoding (default: carope)")
    g.add_argument("--n-layer", type=int, metavar="N", help="transformer blocks (default: the preset's)")
    g.add_argument("--n-head", type=int, metavar="N", help="attention heads (default: the preset's)")
    g.add_argument("--n-embd", type=int, metavar="C", help="model width (default: the preset's)")
    g.add_argument("--block-size", type=int, metavar="T", help="training context T in tokens (default: the preset's; "
                   "128 for nano, 512 for the paper)")
    g.add_argument("--vocab-size", type=int, metavar="V", help="embedding rows (default: 50304 = GPT-2's 50257 padded)")
    g.add_argument("--dropout", type=float, metavar="P", help="dropout rate (default: 0.0)")
    g.add_argument("--rope-base", type=float, metavar="BASE", help="RoPE base; CARoPE starts as RoPE with it (default: 10000)")

    g = p.add_argument_group("data")
    g.add_argument("--data", metavar="DIR", help="folder of llm.c shards from prepare_data.py (default: "
                   "the embedded King James corpus in data/kjv, built on first use)")
    g.add_argument("--data-order", choices=("sequential", "random"), help="read training windows in "
                   "order (the paper: one pass over shuffled documents) or at random offsets "
                   "(default: random for nano, sequential for gpt-*)")
    g.add_argument("--micro-batch", type=int, metavar="B", help="sequences per forward pass per process "
                   "(default: 4 nano, 64 gpt-tiny, 32 gpt-small)")
    g.add_argument("--total-batch", type=int, metavar="TOKENS", help="tokens per optimizer step over "
                   "all processes; gradient accumulation makes up the rest (default: 524288 for gpt-*; "
                   "nano: one micro-batch per process)")

    g = p.add_argument_group("optimisation")
    g.add_argument("--max-steps", type=int, metavar="N", help="optimizer steps (default: 350 nano, 19073 gpt-*)")
    g.add_argument("--lr", type=float, metavar="LR", help="peak learning rate (default: 1.5e-3 nano, 6e-4 gpt-*)")
    g.add_argument("--min-lr", type=float, metavar="LR", help="final learning rate of the cosine (default: lr / 10)")
    g.add_argument("--warmup-steps", type=int, metavar="N", help="linear warmup steps (default: 30 nano, 750 gpt-*)")
    g.add_argument("--lr-decay-steps", type=int, metavar="N", help="step where the cosine reaches min-lr "
                   "(default: max-steps; a resumed run keeps its checkpoint's, so its schedule is unchanged)")
    g.add_argument("--weight-decay", type=float, metavar="WD", help="AdamW weight decay on matrices only (default: 0.1)")
    g.add_argument("--beta1", type=float, metavar="B1", help="AdamW beta1 (default: 0.9)")
    g.add_argument("--beta2", type=float, metavar="B2", help="AdamW beta2 (default: 0.95)")
    g.add_argument("--eps", type=float, metavar="EPS", help="AdamW epsilon (default: 1e-8)")
    g.add_argument("--grad-clip", type=float, metavar="NORM", help="clip the global gradient norm to this; 0 = off "
                   "(default: 1.0)")
    g.add_argument("--seed", type=int, metavar="N", help="seed for the weights and the random data order (default: 1337)")

    g = p.add_argument_group("evaluation")
    g.add_argument("--eval-lens", type=lengths, metavar="L1,L2,...", help="contexts to evaluate the validation loss at, "
                   "all on the same tokens (default: 1x,2x,4x the training context)")
    g.add_argument("--val-tokens", type=int, metavar="N", help="evaluate on the first N tokens of the val shard, the "
                   "same for every run (default: 16384 nano, 10485760 gpt-*)")
    g.add_argument("--eval-every", type=int, metavar="N", help="evaluate every N steps at the first --eval-lens "
                   "length (a loss curve); every length at the end; 0 = only at the end (default: 0 nano, 250 gpt-*)")
    g.add_argument("--eval-only", action="store_true", default=None,
                   help="evaluate the --resume checkpoint and exit")
    g.add_argument("--num-samples", type=int, metavar="N", help="texts to generate at the end (default: 2)")
    g.add_argument("--sample-tokens", type=int, metavar="N", help="tokens per generated text; 0 = none (default: 64)")

    g = p.add_argument_group("checkpoints and logs")
    g.add_argument("--out-dir", metavar="DIR", help="where log.jsonl, config.json and ckpt.pt go "
                   "(default: out; with --resume, the checkpoint's own folder)")
    g.add_argument("--overwrite", action="store_true", default=None, help="start a new run in an --out-dir "
                   "that holds another run; its files are replaced once the new run starts")
    g.add_argument("--ckpt-every", type=int, metavar="N", help="also save ckpt.pt every N steps; it is "
                   "always saved at the end (default: 0 nano, 1000 gpt-*)")
    g.add_argument("--resume", metavar="PATH", help="continue training from this checkpoint, with its "
                   "settings unless flags override them")
    g.add_argument("--log-every", type=int, metavar="N", help="print every N-th step; log.jsonl gets "
                   "every step (default: 25 nano, 1 gpt-*)")

    g = p.add_argument_group("system")
    g.add_argument("--device", help="cpu, cuda, cuda:N or mps (default: the best available)")
    g.add_argument("--dtype", choices=("float32", "bfloat16"), help="autocast dtype for the forward pass "
                   "(default: bfloat16 on GPUs that support it; float32 on CPU, where bf16 is usually "
                   "slower, and on MPS)")
    g.add_argument("--compile", action=argparse.BooleanOptionalAction, default=None,
                   help="torch.compile the model (default: on for CUDA, off elsewhere)")
    return p


def lengths(text):
    """'512,1024,2048' -> [512, 1024, 2048] (an argparse type)."""
    try:
        lens = [int(s) for s in text.split(",")]
    except ValueError:
        lens = []
    if not lens or min(lens) < 1:
        raise argparse.ArgumentTypeError(f"{text!r} is not a comma-separated list of positive lengths, e.g. 512,1024")
    return lens


def resolve_args(argv):
    """Flags > checkpoint's settings (on --resume) > preset recipe > DEFAULTS."""
    given = {k: v for k, v in vars(build_parser().parse_args(argv)).items() if v is not None}
    if given.get("eval_only") and not given.get("resume"):
        raise SystemExit("--eval-only needs a checkpoint: --eval-only --resume out/ckpt.pt")
    ckpt = load_checkpoint(given["resume"]) if given.get("resume") else None
    # the machine (device, dtype, compile) and this invocation's mode are never taken from a checkpoint
    saved = {k: v for k, v in (ckpt["train_args"] if ckpt else {}).items() if k not in NOT_INHERITED}
    preset = given.get("preset") or saved.get("preset") or DEFAULTS["preset"]
    args = {**DEFAULTS, **RECIPES[preset], **{k: None for k in MODEL_KEYS}, **saved, **given}
    args["preset"] = preset
    if ckpt is not None and "out_dir" not in given:
        # a resumed run continues in the folder the checkpoint is in, wherever its run was first written
        args["out_dir"] = os.path.dirname(given["resume"]) or "."
    args = argparse.Namespace(**args)
    validate(args)
    return args, given, ckpt


def validate(args):
    """One line naming the first setting that breaks a RULE, before anything is built or written."""
    for names, ok, what in RULES:
        for name in names:
            value = getattr(args, name)
            if value is not None and not ok(value):
                raise SystemExit(f"--{name.replace('_', '-')} {value}: must be {what}")


def check_out_dir(args):
    """Before the run touches anything: --out-dir must be a folder we can write, and hold no other run."""
    d = args.out_dir
    if os.path.exists(d) and not os.path.isdir(d):
        raise SystemExit(f"--out-dir {d} is a file, not a folder: pass another --out-dir")
    parent = os.path.abspath(d)
    while not os.path.exists(parent):  # the nearest folder that exists is where makedirs starts writing
        parent = os.path.dirname(parent)
    if not os.path.isdir(parent):
        raise SystemExit(f"--out-dir {d}: {parent} is a file, so the folder cannot be made: pass another --out-dir")
    if not os.access(parent, os.W_OK | os.X_OK):
        raise SystemExit(f"--out-dir {d}: cannot write in {parent} (read-only or no permission): "
                         f"pass another --out-dir")
    found = [f for f in RUN_FILES if os.path.exists(os.path.join(d, f))]
    resuming_here = args.resume and same_file(os.path.dirname(args.resume) or ".", d)
    if found and not resuming_here and not args.overwrite:
        raise SystemExit(f"{d} already holds a run ({', '.join(found)}): continue it with --resume "
                         f"{os.path.join(d, 'ckpt.pt')}, replace it with --overwrite, or pass another --out-dir")


def model_config(args, given, ckpt):
    """The model's config: from the checkpoint on --resume (flags may not change it), else the preset."""
    if ckpt is None:
        overrides = {k: getattr(args, k) for k in MODEL_KEYS if getattr(args, k) is not None}
        try:
            cfg = GPTConfig.from_preset(args.preset, pe=args.pe, **overrides)
        except ValueError as e:  # a shape the model cannot have: say which flags, not where it failed
            raise SystemExit(f"model flags: {e}")
    else:
        try:
            cfg = GPTConfig(**ckpt["model_config"])
        except (TypeError, ValueError) as e:  # an edited or foreign model_config
            raise SystemExit(f"{args.resume}: its model_config is not one train.py writes ({e}); use another checkpoint")
        saved = dataclasses.asdict(cfg)
        if cfg.pe == "learned" and given.get("block_size", 0) > cfg.block_size:
            raise SystemExit(f"context {given['block_size']} is longer than the learned position table "
                             f"({cfg.block_size} positions) of {args.resume}; learned positions cannot go "
                             f"past their table: use --block-size {cfg.block_size} or a relative --pe")
        wanted = {k: given[k] for k in ("pe",) + MODEL_KEYS if k in given and given[k] != saved[k]}
        if given.get("preset", ckpt["train_args"].get("preset")) != ckpt["train_args"].get("preset"):
            wanted["preset"] = given["preset"]
            saved["preset"] = ckpt["train_args"].get("preset")
        if wanted:
            have = ", ".join(f"{k}={saved[k]}" for k in wanted)
            ask = ", ".join(f"{k}={v}" for k, v in wanted.items())
            raise SystemExit(f"{args.resume} is a checkpoint of another config ({have}) than the flags ask "
                             f"for ({ask}): drop those flags to use it, or start a new run in another --out-dir")
    for k in ("pe",) + MODEL_KEYS:  # record the resolved model in the run's settings
        setattr(args, k, getattr(cfg, k))
    return cfg


# -----------------------------------------------------------------------------
# Data: llm.c shards (256 int32 header, then uint16 tokens), memory-mapped.

def open_shards(args, vocab_size, master):
    """Returns (data_dir, val_tokens memmap, train memmaps, train paths); exits with one line on bad data."""
    data_dir = args.data
    if data_dir is None:  # the default run trains on the embedded corpus; building it is idempotent
        if master:
            prepare_data.prepare_embedded()
        if dist.is_initialized():
            dist.barrier()  # the other ranks wait for rank 0 to build it
        data_dir = prepare_data.DEFAULT_EMBEDDED_DIR
    texts = sorted(f for f in os.listdir(data_dir) if f.lower().endswith(prepare_data.SUPPORTED)) \
        if os.path.isdir(data_dir) and not any(f.endswith(".bin") for f in os.listdir(data_dir)) else []
    if texts:  # the corpus itself, not yet tokenised: say how to make shards of it, not how to download one
        ext = next(e for e in prepare_data.SUPPORTED if texts[0].lower().endswith(e))
        raise SystemExit(f"{data_dir} holds {ext} files ({texts[0]}, ...), not token shards: make shards of them with "
                         f"python prepare_data.py --input {shlex.quote(str(data_dir))}/*{ext} --out "
                         f"{shlex.quote(str(data_dir).rstrip('/') + '-shards')}, then --data that folder")
    try:
        val_paths, train_paths = prepare_data.list_shards(data_dir)
        manifest = prepare_data.load_manifest(data_dir)
        val = prepare_data.read_shard(val_paths[0])
        train = [prepare_data.read_shard(p) for p in train_paths]
    except (FileNotFoundError, ValueError) as e:  # their messages name the file and the command that fixes it
        raise SystemExit(str(e))
    if master and manifest and not manifest.get("complete", True):
        print(f"note: {data_dir} is an unfinished build ({len(train)} train shard(s) so far); re-run the "
              f"prepare_data.py command that made it to finish it")
    if manifest and manifest.get("vocab_size", 0) > vocab_size:
        raise SystemExit(f"{data_dir} was made with a vocabulary of {manifest['vocab_size']} tokens "
                         f"({manifest.get('tokenizer', '?')}) but the model has {vocab_size} embedding rows: "
                         f"re-make the data with prepare_data.py (GPT-2 tokens) or pass --vocab-size")
    return str(data_dir), val, train, train_paths


def check_vocab(tokens, vocab_size, where):
    top = int(tokens.max()) if tokens.size else 0
    if top >= vocab_size:
        raise SystemExit(f"{where}: token id {top} >= the model's vocab_size {vocab_size}: this data was made "
                         f"with another vocabulary; re-make it with prepare_data.py or pass --vocab-size")


class TokenLoader:
    """Batches (x, y) of B rows of T tokens, y shifted by one, from a list of token shards.

    Every rank walks the same global stream and takes its own slice of it (rank r reads the r-th
    B*T block of each world*B*T chunk), so N processes with micro-batch B see exactly the tokens
    one process with micro-batch N*B sees, and a checkpoint's position is the same on all ranks.
    """

    def __init__(self, shards, paths, B, T, rank, world, order, seed, vocab_size):
        self.shards, self.paths, self.B, self.T = shards, paths, B, T
        self.rank, self.world, self.order, self.vocab_size = rank, world, order, vocab_size
        if max(len(s) for s in shards) < B * T * world + 1:
            raise SystemExit(f"the training shards are too small for {world} x {B} x {T} tokens per "
                             f"micro-step (largest has {max(len(s) for s in shards)}): lower --micro-batch")
        self.shard, self.pos = 0, 0  # sequential position in the global stream
        # random order: a generator of its own (same seed on every rank), checkpointed with the run
        self.rng = np.random.Generator(np.random.PCG64(seed))
        self.starts = np.cumsum([max(0, len(s) - T) for s in shards])  # valid window starts per shard

    def next_batch(self):
        """The next (x, y), int64 tensors of shape (B, T); y is x shifted left by one token."""
        x, y, where = self._sequential() if self.order == "sequential" else self._random()
        for a in (x, y):
            check_vocab(a, self.vocab_size, where)  # cheap, and catches data of another tokenizer
        return torch.from_numpy(x.astype(np.int64)), torch.from_numpy(y.astype(np.int64))

    def _sequential(self):
        B, T = self.B, self.T
        if self.pos + B * T * self.world + 1 > len(self.shards[self.shard]):
            self.shard, self.pos = self._next_fitting_shard(), 0
        start = self.pos + self.rank * B * T
        chunk = np.asarray(self.shards[self.shard][start:start + B * T + 1])
        self.pos += B * T * self.world
        return chunk[:-1].reshape(B, T), chunk[1:].reshape(B, T), self.paths[self.shard]

    def _random(self):
        B, T = self.B, self.T
        # every rank draws all world*B starts so the generators stay in step, then keeps its own B
        picks = self.rng.integers(0, self.starts[-1], size=self.world * B)[self.rank * B:(self.rank + 1) * B]
        shard = np.searchsorted(self.starts, picks, side="right")  # which shard each start falls in
        offset = picks - np.concatenate(([0], self.starts))[shard]
        rows = np.stack([self.shards[i][o:o + T + 1] for i, o in zip(shard, offset)])
        return rows[:, :-1], rows[:, 1:], "the training shards"

    def _next_fitting_shard(self):
        i = self.shard
        while True:  # wraps around for another epoch; __init__ made sure one shard fits
            i = (i + 1) % len(self.shards)
            if len(self.shards[i]) >= self.B * self.T * self.world + 1:
                return i

    def state_dict(self):
        return dict(shard=self.shard, pos=self.pos, rng=self.rng.bit_generator.state)

    def load_state_dict(self, state):
        """Raises ValueError if a sequential position is past the end of these shards (other data)."""
        if self.order == "sequential" and not (0 <= state["shard"] < len(self.shards)
                                               and state["pos"] <= len(self.shards[state["shard"]])):
            raise ValueError(f"its data position (train shard {state['shard'] + 1}, token {state['pos']:,}) is past "
                             f"the end of these {len(self.shards)} train shard(s)")
        self.shard, self.pos = state["shard"], state["pos"]
        self.rng.bit_generator.state = state["rng"]


# -----------------------------------------------------------------------------
# Evaluation: the same validation tokens cut into windows of each length.

def eval_lengths(args, cfg, log):
    lens = list(args.eval_lens) if args.eval_lens else [cfg.block_size, 2 * cfg.block_size, 4 * cfg.block_size]
    if cfg.pe == "learned":  # a learned table has no rows past block_size: nothing to evaluate there
        skipped = [L for L in lens if L > cfg.block_size]
        lens = [L for L in lens if L <= cfg.block_size]
        if not lens:
            raise SystemExit(f"every eval length ({','.join(map(str, skipped))}) is longer than the learned position "
                             f"table ({cfg.block_size} positions): use --eval-lens {cfg.block_size} or a relative --pe")
        if skipped:
            log(f"note: pe=learned has {cfg.block_size} positions; eval at context {', '.join(map(str, skipped))} "
                f"skipped (the paper's '-')")
    return lens


def val_span(val, lens, want, vocab_size, path_hint):
    """The first `span` (+1 for the targets) val tokens, span a multiple of every eval length."""
    step = math.lcm(*lens)
    span = min(want, len(val) - 1) // step * step
    if span == 0 and want < step:
        raise SystemExit(f"--val-tokens {want} is fewer than one window of every eval length ({step} tokens for "
                         f"{','.join(map(str, lens))}): raise --val-tokens or lower --eval-lens")
    if span == 0:
        raise SystemExit(f"the val shard has {len(val)} tokens, too few for eval length {max(lens)}: "
                         f"lower --eval-lens or make more data")
    tokens = np.asarray(val[:span + 1])
    check_vocab(tokens, vocab_size, path_hint)
    return torch.from_numpy(tokens.astype(np.int64))


@torch.no_grad()
def evaluate(model, tokens, lens, tokens_per_forward, device, autocast, rank, world):
    """Mean val loss and perplexity at each length, over the same tokens; batches split over ranks."""
    model.eval()
    results = {}
    for L in lens:
        x_all, y_all = tokens[:-1].view(-1, L), tokens[1:].view(-1, L)
        rows = max(1, tokens_per_forward // L)
        loss_sum = torch.zeros((), device=device)
        for i, start in enumerate(range(0, x_all.size(0), rows)):
            if i % world != rank:
                continue
            x = x_all[start:start + rows].to(device)
            y = y_all[start:start + rows].to(device)
            with autocast:
                _, loss = model(x, y)
            loss_sum += loss.float() * y.numel()  # mean -> sum, so uneven batches weigh right
        if world > 1:
            dist.all_reduce(loss_sum)
        mean = loss_sum.item() / y_all.numel()
        results[L] = dict(loss=mean, ppl=math.exp(min(mean, 700.0)))
    model.train()
    return results


# -----------------------------------------------------------------------------
# Checkpoints, written atomically (prepare_data.atomic_write) so a crash mid-write never
# leaves a broken ckpt.pt.

def rng_states(loader):
    np_state = np.random.get_state()
    return dict(torch=torch.get_rng_state(),
                cuda=torch.cuda.get_rng_state_all() if torch.cuda.is_available() else None,
                numpy=(np_state[0], np_state[1].tolist(), *np_state[2:]),  # plain types: weights_only loads it
                python=random.getstate(), loader=loader.state_dict())


def restore_rng_states(states, loader):
    torch.set_rng_state(states["torch"])
    if states["cuda"] is not None and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(states["cuda"])
    name, keys, *rest = states["numpy"]
    np.random.set_state((name, np.array(keys, dtype=np.uint32), *rest))
    random.setstate(states["python"])
    loader.load_state_dict(states["loader"])


def load_checkpoint(path):
    if not os.path.isfile(path):
        raise SystemExit(f"--resume {path}: no such checkpoint file")
    try:  # weights_only: a checkpoint is data, never code
        ckpt = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as e:
        raise SystemExit(f"--resume {path}: not a readable checkpoint ({type(e).__name__}); pass a ckpt.pt "
                         "written by train.py")
    if not isinstance(ckpt, dict) or not {"model", "model_config", "train_args", "step"} <= ckpt.keys():
        raise SystemExit(f"--resume {path}: not a train.py checkpoint (keys model, model_config, ...)")
    # torch.load reads flipped bytes in the tensor data without complaint: only a checksum tells
    saved = ckpt.pop("sha256", None)
    if saved is None:
        if os.environ.get("RANK", "0") == "0":
            print(f"note: {path} has no checksum (an older train.py wrote it): loaded unverified")
    elif state_sha256(ckpt) != saved:
        raise SystemExit(f"--resume {path}: checksum mismatch, the file is corrupt: resume from another "
                         f"checkpoint or start again")
    return ckpt


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


def save_checkpoint(path, raw_model, optimizer, step, rng, cfg, args):
    state = dict(model=raw_model.state_dict(), optimizer=optimizer.state_dict(), step=step, rng=rng,
                 model_config=dataclasses.asdict(cfg), train_args=dict(vars(args)))
    state["sha256"] = state_sha256(state)
    prepare_data.atomic_write(path, lambda f: torch.save(state, f))


def read_log(path, resume_step, master=True):
    """The lines of a run's log.jsonl up to the checkpoint's step, so that on resume no step appears twice.
    A crash or a full disk can cut the last line short: that one is dropped; a bad line elsewhere is an error."""
    if not os.path.exists(path):
        return []
    with open(path, errors="replace") as f:
        lines = [line for line in f.read().split("\n") if line.strip()]
    kept = []
    for i, line in enumerate(lines):
        try:
            record = json.loads(line)
            step = record.get("step", 0)
        except (json.JSONDecodeError, AttributeError):
            if i == len(lines) - 1:
                if master:
                    print(f"note: {path}: dropped its last line, written only in part")
                break
            raise SystemExit(f"{path}: line {i + 1} of {len(lines)} is not a log record: delete or repair that "
                             f"line, then resume again")
        if step <= resume_step:
            kept.append(line + "\n")
    return kept


class Interrupts:
    """While installed, Ctrl-C (SIGINT) raises KeyboardInterrupt as usual, except inside `with interrupts:`
    blocks, where it is held until the block ends: an optimizer step and its log line happen entirely or
    not at all, so what is saved on Ctrl-C is exactly the last completed step."""

    def __init__(self):
        self.holding = self.pending = False
        self.previous = None

    def install(self):
        # only the main thread can set handlers; and a run started with SIGINT ignored (nohup, &) keeps it so
        if threading.current_thread() is threading.main_thread() and \
                signal.getsignal(signal.SIGINT) is signal.default_int_handler:
            self.previous = signal.signal(signal.SIGINT, self._handler)
        return self

    def uninstall(self):
        if self.previous is not None:
            signal.signal(signal.SIGINT, self.previous)
            self.previous = None

    def _handler(self, signum, frame):
        if self.holding:
            self.pending = True
        else:
            raise KeyboardInterrupt

    def __enter__(self):
        self.holding = True

    def __exit__(self, exc_type, *_):
        self.holding = False
        if self.pending and exc_type is None:
            self.pending = False
            raise KeyboardInterrupt


@contextmanager
def disk_errors(out_dir, kept):
    """A failed write of the log or a checkpoint (ENOSPC, EROFS, EIO...) as one line saying what was kept."""
    try:
        yield
    except OSError as e:
        raise SystemExit(f"disk full / cannot write {out_dir}: {e.strerror or e}; {kept()}")


def resume_command(ckpt_path, given, world):
    """The command that continues a run from ckpt_path (its settings come from the checkpoint)."""
    launcher = f"torchrun --nproc_per_node={world}" if world > 1 else "python"
    try:
        script = os.path.relpath(os.path.abspath(__file__))
    except ValueError:  # another drive on Windows
        script = os.path.abspath(__file__)
    machine = [f"--{k} {given[k]}" for k in ("device", "dtype") if k in given]
    if "compile" in given:
        machine.append("--compile" if given["compile"] else "--no-compile")
    return " ".join([launcher, shlex.quote(script), "--resume", shlex.quote(ckpt_path)] + machine)


def keep_freed_memory():
    """Ask glibc to keep freed memory instead of returning it to the kernel at once.

    Every CPU step allocates and frees the logits and their gradient (B x T x vocab floats, 100 MB for nano).
    glibc serves blocks that big with mmap and unmaps them on free, so each step maps, page-faults and zeroes
    them anew in the kernel. Raising the mmap and trim thresholds makes those blocks come from (and go back
    to) the heap, which is reused; the price is that the process keeps its peak memory. No-op without glibc."""
    if not sys.platform.startswith("linux"):
        return
    try:
        mallopt = ctypes.CDLL(None).mallopt
        mallopt.argtypes, mallopt.restype = [ctypes.c_int, ctypes.c_int], ctypes.c_int
        M_TRIM_THRESHOLD, M_MMAP_THRESHOLD, M_MMAP_MAX = -1, -3, -4
        mallopt(M_TRIM_THRESHOLD, 1 << 30)
        if not mallopt(M_MMAP_THRESHOLD, 1 << 30):  # mallopt(3) documents 32 MiB as the limit: then no mmap
            mallopt(M_MMAP_MAX, 0)
    except (OSError, AttributeError):  # no libc by that name, or one without mallopt (musl has a no-op)
        pass


# -----------------------------------------------------------------------------
# Devices, precision, compilation, processes.

def setup_device(args):
    """Returns (rank, world, device). Under torchrun (RANK, WORLD_SIZE set), joins the process group."""
    ddp = "RANK" in os.environ and "WORLD_SIZE" in os.environ
    rank, local_rank, world = (int(os.environ["RANK"]), int(os.environ["LOCAL_RANK"]),
                               int(os.environ["WORLD_SIZE"])) if ddp else (0, 0, 1)
    device = args.device or ("cuda" if torch.cuda.is_available() else
                             "mps" if torch.backends.mps.is_available() else "cpu")
    kind = device.split(":")[0]
    if kind == "cuda" and not torch.cuda.is_available():
        raise SystemExit(f"--device {device}: this torch ({torch.__version__}) sees no CUDA GPU; use --device cpu")
    if kind == "mps" and not torch.backends.mps.is_available():
        raise SystemExit(f"--device {device}: MPS is not available here; use --device cpu")
    if kind == "cuda" and ddp:
        device = f"cuda:{local_rank}"  # one GPU per process
    if kind == "cuda":
        torch.cuda.set_device(device)
    if ddp:  # NCCL moves CUDA tensors between GPUs; gloo is the CPU backend
        dist.init_process_group(backend="nccl" if kind == "cuda" else "gloo",
                                device_id=torch.device(device) if kind == "cuda" else None)
    return rank, world, device


def pick_dtype(args, kind):
    if args.dtype is None:
        if kind == "cuda" and torch.cuda.is_bf16_supported(including_emulation=False):
            args.dtype, why = "bfloat16", "bf16 autocast"
        else:
            args.dtype, why = "float32", {"cpu": "bf16 is usually slower on CPU; --dtype bfloat16 to try",
                                          "mps": "bf16 autocast on MPS is new; --dtype bfloat16 to try",
                                          "cuda": "this GPU has no bf16"}[kind]
    else:
        why = "from --dtype"
    if args.dtype == "bfloat16" and kind == "cuda" and not torch.cuda.is_bf16_supported(including_emulation=False):
        raise SystemExit("--dtype bfloat16: this GPU does not support bfloat16; use --dtype float32")
    # autocast keeps the weights and the optimizer in float32 and runs matmuls in bf16
    ctx = torch.autocast(device_type=kind, dtype=torch.bfloat16) if args.dtype == "bfloat16" else nullcontext()
    return ctx, why


def pick_compile(args, kind):
    """torch.compile pays off on CUDA (Triton kernels); elsewhere it mostly costs compile time."""
    want = args.compile if args.compile is not None else kind == "cuda"
    reason = None if args.compile is not None else ("default on CUDA" if want else "default: CUDA only")
    if want and sys.platform == "win32":
        want, reason = False, "torch.compile is not supported on Windows; running eagerly"
    elif want and not torch._dynamo.is_dynamo_supported():
        want, reason = False, (f"torch {torch.__version__} cannot compile on Python "
                               f"{sys.version_info.major}.{sys.version_info.minor}; running eagerly")
    elif want and kind == "cuda":
        try:
            import triton  # noqa: F401  (inductor's GPU code generator)
        except ImportError:
            want, reason = False, "Triton is not installed; running eagerly"
    elif want and kind == "mps":
        want, reason = False, "torch.compile does not support MPS well yet; running eagerly"
    args.compile = want
    return reason


def get_lr(it, args):
    """Linear warmup to lr, cosine decay to min_lr at lr_decay_steps, then flat."""
    if it < args.warmup_steps:
        return args.lr * (it + 1) / args.warmup_steps
    if it >= args.lr_decay_steps:
        return args.min_lr
    ratio = (it - args.warmup_steps) / max(1, args.lr_decay_steps - args.warmup_steps)
    return args.min_lr + 0.5 * (1.0 + math.cos(math.pi * ratio)) * (args.lr - args.min_lr)


# -----------------------------------------------------------------------------

def main(argv=None):
    keep_freed_memory()
    try:
        args, given, ckpt = resolve_args(argv)
        if not args.eval_only:
            check_out_dir(args)
        rank, world, device = setup_device(args)
        try:
            summary = run(args, given, ckpt, rank, world, device)
            if dist.is_initialized():
                dist.barrier()  # all ranks leave together: tearing gloo down under a busy peer can abort it
            return summary
        finally:
            if dist.is_initialized():
                dist.destroy_process_group()
    except KeyboardInterrupt:  # outside the training loop (which saves a checkpoint first): nothing to keep
        print("interrupted", file=sys.stderr)
        raise SystemExit(130)


def run(args, given, ckpt, rank, world, device):
    master = rank == 0  # only rank 0 prints and writes files
    log = print if master else (lambda *a, **k: None)
    kind = device.split(":")[0]
    t_start = time.time()

    # ---- model
    cfg = model_config(args, given, ckpt)
    torch.manual_seed(args.seed)  # the same seed on every rank: identical initial weights
    random.seed(args.seed)
    np.random.seed(args.seed)
    raw_model = GPT(cfg).to(device)
    if ckpt is not None:
        load_state(raw_model, ckpt["model"], args.resume)
    autocast, dtype_why = pick_dtype(args, kind)
    compile_why = pick_compile(args, kind)
    if kind == "cuda":
        torch.set_float32_matmul_precision("high")  # TF32 for the float32 matmuls that remain

    # ---- data and evaluation lengths
    data_dir, val, train, train_paths = open_shards(args, cfg.vocab_size, master)
    args.data_dir = data_dir
    lens = eval_lengths(args, cfg, log)
    val_tokens = val_span(val, lens, args.val_tokens, cfg.vocab_size, f"{data_dir} (val shard)")
    B, T = args.micro_batch, cfg.block_size
    tokens_per_forward = B * T  # eval batches as many tokens per forward pass as training does
    n_params = raw_model.num_params()

    if args.eval_only:
        log(f"evaluating {args.resume} (step {ckpt['step']}, pe={cfg.pe}, {n_params / 1e6:.2f}M params) on "
            f"{len(val_tokens) - 1:,} tokens of {data_dir}")
        model = torch.compile(raw_model) if args.compile else raw_model
        results = evaluate(model, val_tokens, lens, tokens_per_forward, device, autocast, rank, world)
        print_eval(log, results, cfg.block_size)
        return dict(step=ckpt["step"], val=results, eval_lens=lens, pe=cfg.pe, checkpoint=args.resume)

    # ---- batch arithmetic: total_batch tokens per update = B * T * world * grad_accum_steps
    if args.total_batch is None:
        args.total_batch = B * T * world
    if args.total_batch % (B * T * world) != 0:
        raise SystemExit(f"--total-batch {args.total_batch} must be a multiple of micro-batch x context x "
                         f"processes = {B} x {T} x {world} = {B * T * world}")
    grad_accum_steps = args.total_batch // (B * T * world)
    args.min_lr = args.lr / 10 if args.min_lr is None else args.min_lr
    args.lr_decay_steps = args.max_steps if args.lr_decay_steps is None else args.lr_decay_steps

    loader = TokenLoader(train, train_paths, B, T, rank, world, args.data_order, args.seed, cfg.vocab_size)
    model = torch.compile(raw_model) if args.compile else raw_model
    # DDP averages gradients over ranks in backward; the raw model keeps the state_dict names clean
    train_model = DDP(model, device_ids=[torch.cuda.current_device()] if kind == "cuda" else None) \
        if world > 1 else model
    optimizer = raw_model.configure_optimizers(args.weight_decay, args.lr, (args.beta1, args.beta2), kind, args.eps)
    start_step = 0
    if ckpt is not None:
        load_state(optimizer, ckpt["optimizer"], args.resume)
        try:
            restore_rng_states(ckpt["rng"], loader)
        except ValueError as e:  # sequential order, other (shorter, fewer) shards than the run's
            raise SystemExit(f"{args.resume}: {e} in {data_dir}: resume on the data it was trained on "
                             f"({ckpt['train_args'].get('data_dir')}) or with --data-order random")
        start_step = ckpt["step"]

    # ---- output folder: config.json, log.jsonl, ckpt.pt. Everything above only read; from here on we write.
    ckpt_path = os.path.join(args.out_dir, "ckpt.pt")
    log_path = os.path.join(args.out_dir, "log.jsonl")
    config_path = os.path.join(args.out_dir, "config.json")
    # on resume, the log so far is the checkpoint's run's (in its folder), cut back to the checkpoint's step
    kept_log = read_log(os.path.join(os.path.dirname(args.resume) or ".", "log.jsonl"), start_step, master) \
        if ckpt is not None else []
    last_good = (args.resume, start_step) if ckpt is not None else (None, 0)

    def kept():
        return f"the last good checkpoint is {last_good[0]} (step {last_good[1]})" if last_good[0] else \
            "no checkpoint was saved yet (--ckpt-every N keeps one)"

    run_info = dict(args=vars(args), model=dataclasses.asdict(cfg), world_size=world, device=device,
                    grad_accum_steps=grad_accum_steps, num_params=n_params, torch=torch.__version__)
    log_file = None
    if master:
        with disk_errors(args.out_dir, kept):
            os.makedirs(args.out_dir, exist_ok=True)
            removed = prepare_data.remove_stale_temps(args.out_dir)
            if removed:
                log(f"removed {len(removed)} temp file(s) left by a killed save: {', '.join(map(str, removed))}")
            # a new run (--overwrite) first drops the old run's checkpoint, which must not outlive its log
            if os.path.exists(ckpt_path) and not (ckpt is not None and same_file(ckpt_path, args.resume)):
                os.remove(ckpt_path)
            prepare_data.atomic_write(config_path, lambda f: f.write(json.dumps(run_info, indent=2).encode()))
            prepare_data.atomic_write(log_path, lambda f: f.write("".join(kept_log).encode()))
            log_file = open(log_path, "a")

    log(f"model: {args.preset}, pe={cfg.pe}, {cfg.n_layer} layers x {cfg.n_head} heads x {cfg.n_embd} wide, "
        f"{n_params / 1e6:.2f}M params")
    log(f"data: {data_dir}: {sum(len(s) for s in train):,} train tokens in {len(train)} shard(s), "
        f"{args.data_order} windows; validation on the first {len(val_tokens) - 1:,} val tokens")
    log(f"device {device} x {world} process(es), {args.dtype} ({dtype_why}), "
        f"compile {'on' if args.compile else 'off'}{f' ({compile_why})' if compile_why else ''}")
    log(f"batch: {B} x {T} tokens x {world} process(es) x {grad_accum_steps} accumulation step(s) = "
        f"{args.total_batch:,} tokens per step; steps {start_step + 1}..{args.max_steps}, "
        f"lr {args.lr:g} -> {args.min_lr:g}, warmup {args.warmup_steps}")

    def lens_at(step):  # the curve during training needs one length (the first); the end gets every length
        return lens if step == args.max_steps else lens[:1]

    # ---- the loop. Ctrl-C saves the last completed step: `done` and the RNG and data position after it.
    losses, results = [], None
    evaluated = {r["step"] for r in map(json.loads, kept_log) if r.get("type") == "eval"}
    if ckpt is not None and start_step > 0 and start_step not in evaluated and (
            start_step == args.max_steps or (args.eval_every > 0 and start_step % args.eval_every == 0)):
        # Ctrl-C during this step's evaluation saved the step without its eval lines: evaluate it now, as
        # the uninterrupted run did (evaluation draws no random numbers, so the run continues the same)
        results = evaluate(model, val_tokens, lens_at(start_step), tokens_per_forward, device, autocast, rank, world)
        if master:
            with disk_errors(args.out_dir, kept):
                for L, r in results.items():
                    log_file.write(json.dumps(dict(type="eval", step=start_step, len=L, **r)) + "\n")
                log_file.flush()
    done, after_done = start_step, rng_states(loader)
    interrupts = Interrupts().install()
    try:
        for step in range(start_step, args.max_steps):
            t0 = time.time()
            lr = get_lr(step, args)
            for group in optimizer.param_groups:
                group["lr"] = lr
            optimizer.zero_grad(set_to_none=True)
            loss_accum = torch.zeros((), device=device)
            for micro_step in range(grad_accum_steps):
                x, y = loader.next_batch()
                x, y = x.to(device, non_blocking=True), y.to(device, non_blocking=True)
                # DDP: all-reduce the gradients only after the last micro-step, not after each one
                last = micro_step == grad_accum_steps - 1
                with (nullcontext() if world == 1 or last else train_model.no_sync()):
                    with autocast:
                        _, loss = train_model(x, y)
                    # each micro-batch's loss is a mean; dividing by the count makes the sum of the
                    # accumulated gradients the gradient of the mean over the whole batch
                    loss = loss / grad_accum_steps
                    loss_accum += loss.detach()
                    loss.backward()
            if world > 1:
                dist.all_reduce(loss_accum)  # SUM (gloo has no AVG), then divide
                loss_accum /= world
            norm = torch.nn.utils.clip_grad_norm_(raw_model.parameters(),
                                                  args.grad_clip if args.grad_clip > 0 else float("inf"))
            loss_val, norm_val = loss_accum.item(), norm.item()
            if not (math.isfinite(loss_val) and math.isfinite(norm_val)):
                # stop before the update: the weights and the last checkpoint stay good
                raise SystemExit(f"step {step + 1}: the loss is {loss_val} (grad norm {norm_val}), training "
                                 f"stopped without applying it; {kept()}. Try a lower --lr or more --warmup-steps.")
            with interrupts:  # Ctrl-C waits for the update and its log line: a step is done or not begun
                optimizer.step()
                if kind == "cuda":
                    torch.cuda.synchronize()  # so dt measures the GPU's work, not the launch
                dt = time.time() - t0
                losses.append(loss_val)
                tokens_per_s = args.total_batch / dt
                mfu = raw_model.estimate_mfu(B * T * grad_accum_steps, dt, seq_len=T, device=device)
                record = dict(type="train", step=step + 1, loss=loss_val, lr=lr, grad_norm=norm_val, ms=dt * 1000,
                              tokens_per_s=tokens_per_s, mfu=mfu, tokens=(step + 1) * args.total_batch)
                if master:
                    with disk_errors(args.out_dir, kept):
                        log_file.write(json.dumps(record) + "\n")
                        log_file.flush()
                done, after_done = step + 1, rng_states(loader)
            if master and ((step + 1) % args.log_every == 0 or step == start_step or step + 1 == args.max_steps):
                log(f"step {step + 1:5d}/{args.max_steps} | loss {loss_val:.4f} | lr {lr:.2e} | norm {norm_val:.3f} "
                    f"| {dt * 1000:7.1f} ms | {tokens_per_s:8.0f} tok/s | mfu {'n/a' if mfu is None else f'{mfu:.1%}'}")

            last_step = step + 1 == args.max_steps
            if last_step or (args.eval_every > 0 and (step + 1) % args.eval_every == 0):
                results = evaluate(model, val_tokens, lens_at(step + 1), tokens_per_forward, device, autocast, rank, world)
                if master:
                    with interrupts, disk_errors(args.out_dir, kept):  # all of a step's eval lines, or none
                        for L, r in results.items():
                            log_file.write(json.dumps(dict(type="eval", step=step + 1, len=L, **r)) + "\n")
                        log_file.flush()
                    if not last_step:
                        log("val " + " | ".join(f"ctx {L}: loss {r['loss']:.4f} ppl {r['ppl']:.2f}"
                                                for L, r in results.items()))
            if last_step or (args.ckpt_every > 0 and (step + 1) % args.ckpt_every == 0):
                if master:
                    with disk_errors(args.out_dir, kept):
                        save_checkpoint(ckpt_path, raw_model, optimizer, done, after_done, cfg, args)
                last_good = (ckpt_path, done)
    except KeyboardInterrupt:
        if interrupts.previous is not None:  # a second Ctrl-C (or torchrun's) must not cut the save short
            signal.signal(signal.SIGINT, signal.SIG_IGN)
        if not master:  # rank 0 saves; the weights are the same on every rank after a completed step
            raise SystemExit(130)
        with disk_errors(args.out_dir, kept):
            if last_good != (ckpt_path, done):
                save_checkpoint(ckpt_path, raw_model, optimizer, done, after_done, cfg, args)
            log_file.close()
        print(f"interrupted: step {done} is saved in {ckpt_path}; continue with: "
              f"{resume_command(ckpt_path, given, world)}", file=sys.stderr)
        raise SystemExit(130)
    finally:
        interrupts.uninstall()

    # ---- the end: perplexity at each length, a few samples, what to try next
    if results is None:  # nothing to train (resumed at max_steps): still report the model
        log(f"the checkpoint is already at step {start_step} >= --max-steps {args.max_steps}: nothing to train")
        results = evaluate(model, val_tokens, lens, tokens_per_forward, device, autocast, rank, world)
    samples = []
    if master:
        log_file.close()
        log(f"\nvalidation ({len(val_tokens) - 1:,} tokens of {data_dir}, model trained at context {T}):")
        print_eval(log, results, T)
        samples = generate_samples(raw_model, args, device, autocast)
        if samples:
            log(f"\nsamples ({args.sample_tokens} tokens, temperature 0.8, top-k 50):")
            for text in samples:
                log("  " + text.strip().replace("\n", "\n  ") + "\n  ---")
        if args.preset == "nano":
            log("\n" + PAPER_HINT)
        files = [f for f in RUN_FILES if os.path.exists(os.path.join(args.out_dir, f))]
        log(f"\ndone in {time.time() - t_start:.0f} s; files in {args.out_dir}/: {', '.join(files)}")
    return dict(out_dir=args.out_dir, log=log_path, ckpt=ckpt_path, config=config_path, preset=args.preset,
                pe=cfg.pe, start_step=start_step, steps=args.max_steps if losses else start_step,
                losses=losses, final_train_loss=losses[-1] if losses else None, val=results, eval_lens=lens,
                grad_accum_steps=grad_accum_steps, tokens_per_step=args.total_batch, world_size=world,
                samples=samples, wall_s=time.time() - t_start)


def load_state(target, state, path):
    """model/optimizer.load_state_dict, with a mismatch (an edited checkpoint) as one line."""
    try:
        target.load_state_dict(state)
    except (RuntimeError, ValueError, KeyError) as e:
        first = str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__
        raise SystemExit(f"{path}: its saved {type(target).__name__} state does not fit its model_config "
                         f"({first}); the checkpoint was edited or is damaged: use another one")


def same_file(a, b):  # also for folders; either may not exist yet
    return os.path.realpath(a) == os.path.realpath(b)


def print_eval(log, results, T):
    for L, r in results.items():
        log(f"  context {L:6d} ({L / T:g}x): val loss {r['loss']:.4f}  perplexity {r['ppl']:10.2f}")


@torch.no_grad()
def generate_samples(raw_model, args, device, autocast):
    """A few texts from the start of a document (the end-of-text token starts every document)."""
    if args.sample_tokens <= 0 or args.num_samples <= 0:
        return []
    enc = prepare_data.get_encoding()
    torch.manual_seed(args.seed)  # after the final checkpoint, so it does not change any saved state
    idx = torch.full((args.num_samples, 1), enc.eot_token, dtype=torch.long, device=device)
    raw_model.eval()
    with autocast:
        out = raw_model.generate(idx, args.sample_tokens, temperature=0.8, top_k=50)
    raw_model.train()
    texts = []
    for row in out[:, 1:].tolist():
        row = row[:row.index(enc.eot_token)] if enc.eot_token in row else row  # stop at the document's end
        texts.append(enc.decode([t for t in row if t < enc.n_vocab]))
    return texts


if __name__ == "__main__":
    main()
