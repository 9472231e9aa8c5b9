"""
Train a GPT with CARoPE (or another position encoding) on llm.c token shards.

    python train.py                                    # nano + carope on the embedded corpus (CPU, about 1 min)
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
import shards
from carope import GPT, GPTConfig, PE_CHOICES, PRESETS

# -----------------------------------------------------------------------------
# Settings. Flags left out fall back to the preset's recipe, then to DEFAULTS; on --resume they
# fall back to the checkpoint's own settings first, so a resumed run continues the same recipe.

# The gpt-* recipes are the CARoPE paper's (= build-nanogpt's): 524,288 tokens per update,
# lr 6e-4 with 750 warmup steps and cosine decay to 6e-5, 10B tokens / 524,288 = 19,073 steps.
RECIPES = {
    # nano is sized for a 2-core CPU (about 1 min): at ~3k tokens/s, many small steps learn more than
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


# -----------------------------------------------------------------------------
# A run, top to bottom: settings, device, setup, the loop, the report.

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
    """One run on this process: setup, train(), report(); with --eval-only, one evaluation instead."""
    r = setup_model_and_data(args, given, ckpt, rank, world, device)
    if args.eval_only:
        return evaluate_checkpoint(r)
    setup_optimizer(r)
    setup_out_dir(r)  # the first write
    log_run_header(r)
    losses, results = train(r)
    return report(r, losses, results)


# -----------------------------------------------------------------------------
# The training loop. run() above sets it up (setup_*), calls train(), then report().


def train(r):
    """Train from r.start_step to --max-steps; returns (the train losses of this call, the last eval results).

    One step: set the learning rate, accumulate the gradient of total_batch tokens over grad_accum_steps
    micro-batches, clip it, update, log; now and then evaluate and save a checkpoint. Ctrl-C saves the
    last completed step (`done`), with the RNG states and the data position after it, then exits.
    """
    args, raw_model, optimizer, loader = r.args, r.raw_model, r.optimizer, r.loader
    train_model, device, autocast = r.train_model, r.device, r.autocast
    B, T, grad_accum_steps, world = r.B, r.T, r.grad_accum_steps, r.world
    losses = []
    results = eval_missed_step(r)  # None unless a Ctrl-C cut the resumed step's evaluation short
    done, after_done = r.start_step, rng_states(loader)
    interrupts = Interrupts().install()
    try:
        for step in range(r.start_step, args.max_steps):
            t0 = time.time()
            lr = get_lr(step, args)  # warmup, then cosine decay: set by hand on every param group
            for group in optimizer.param_groups:
                group["lr"] = lr
            optimizer.zero_grad(set_to_none=True)
            loss_accum = torch.zeros((), device=device)  # the step's mean loss, for the log only
            for micro_step in range(grad_accum_steps):
                x, y = loader.next_batch()
                x, y = x.to(device, non_blocking=True), y.to(device, non_blocking=True)
                # DDP: all-reduce the gradients only after the last micro-step, not after each one
                last = micro_step == grad_accum_steps - 1
                with (nullcontext() if world == 1 or last else train_model.no_sync()):
                    with autocast:
                        _, loss = train_model(x, y)
                    # Gradient accumulation, sum vs mean. Each micro-batch's loss is a mean over its
                    # B*T tokens, and backward() adds each micro-step's gradients to those already
                    # in .grad: a sum. Summing grad_accum_steps means would make the gradient
                    # grad_accum_steps times too large. Dividing each loss by grad_accum_steps makes
                    # the summed gradient the gradient of the mean over all B*T*grad_accum_steps
                    # tokens, as one big batch of that many tokens would give. With DDP, the
                    # all-reduce then averages that over the ranks: the mean over total_batch tokens.
                    loss = loss / grad_accum_steps
                    loss_accum += loss.detach()
                    loss.backward()
            if world > 1:
                dist.all_reduce(loss_accum)  # SUM (gloo has no AVG), then divide
                loss_accum /= world
            # clip the global gradient norm, so that one unlucky batch cannot throw the weights far
            norm = torch.nn.utils.clip_grad_norm_(raw_model.parameters(),
                                                  args.grad_clip if args.grad_clip > 0 else float("inf"))
            loss_val, norm_val = loss_accum.item(), norm.item()
            if not (math.isfinite(loss_val) and math.isfinite(norm_val)):
                # stop before the update: the weights and the last checkpoint stay good
                raise SystemExit(nonfinite_message(step, loss_val, norm_val, r))
            with interrupts:  # Ctrl-C waits for the update and its log line: a step is done or not begun
                optimizer.step()
                if r.kind == "cuda":
                    torch.cuda.synchronize()  # so dt measures the GPU's work, not the launch
                dt = time.time() - t0
                losses.append(loss_val)
                tokens_per_s = args.total_batch / dt
                mfu = raw_model.estimate_mfu(B * T * grad_accum_steps, dt, seq_len=T, device=device)
                record = dict(type="train", step=step + 1, loss=loss_val, lr=lr, grad_norm=norm_val, ms=dt * 1000,
                              tokens_per_s=tokens_per_s, mfu=mfu, tokens=(step + 1) * args.total_batch)
                if r.master:  # log.jsonl gets every step, flushed so a crash loses none
                    with disk_errors(args.out_dir, r.kept):
                        r.log_file.write(json.dumps(record) + "\n")
                        r.log_file.flush()
                done, after_done = step + 1, rng_states(loader)
            if r.master and ((step + 1) % args.log_every == 0 or step == r.start_step or step + 1 == args.max_steps):
                r.log(f"step {step + 1:5d}/{args.max_steps} | loss {loss_val:.4f} | lr {lr:.2e} | norm {norm_val:.3f} "
                      f"| {dt * 1000:7.1f} ms | {tokens_per_s:8.0f} tok/s "
                      f"| mfu {'n/a' if mfu is None else f'{mfu:.1%}'}")

            # evaluation: every --eval-every steps at the first length (a loss curve), at the end at every length
            last_step = step + 1 == args.max_steps
            if last_step or (args.eval_every > 0 and (step + 1) % args.eval_every == 0):
                results = r.evaluate_and_log(step + 1, interrupts)
                if not last_step:
                    r.log("val " + " | ".join(f"ctx {L}: loss {res['loss']:.4f} ppl {res['ppl']:.2f}"
                                              for L, res in results.items()))
            # checkpoint: every --ckpt-every steps and at the end; only rank 0 writes (the weights are
            # the same on every rank), every rank remembers it as the last good one
            if last_step or (args.ckpt_every > 0 and (step + 1) % args.ckpt_every == 0):
                if r.master:
                    with disk_errors(args.out_dir, r.kept):
                        save_checkpoint(r.ckpt_path, raw_model, optimizer, done, after_done, r.cfg, args)
                r.last_good = (r.ckpt_path, done)
    except KeyboardInterrupt:
        save_on_interrupt(r, done, after_done, interrupts)  # exits with 130
    finally:
        interrupts.uninstall()
    return losses, results


def eval_missed_step(r):
    """On resume: if Ctrl-C came during the checkpoint's step's evaluation, the step was saved without its
    eval lines; evaluate it now, as the uninterrupted run did (evaluation draws no random numbers, so the
    run continues the same). Returns those results, or None when nothing was missed."""
    args, step = r.args, r.start_step
    evaluated = {rec["step"] for rec in map(json.loads, r.kept_log) if rec.get("type") == "eval"}
    due = step == args.max_steps or (args.eval_every > 0 and step % args.eval_every == 0)
    if r.ckpt is None or step == 0 or step in evaluated or not due:
        return None
    return r.evaluate_and_log(step)


def save_on_interrupt(r, done, after_done, interrupts):
    """Ctrl-C in the loop: rank 0 saves step `done` (unless that checkpoint exists already) and says how to go on."""
    if interrupts.previous is not None:  # a second Ctrl-C (or torchrun's) must not cut the save short
        signal.signal(signal.SIGINT, signal.SIG_IGN)
    if not r.master:  # rank 0 saves; the weights are the same on every rank after a completed step
        raise SystemExit(130)
    with disk_errors(r.args.out_dir, r.kept):
        if r.last_good != (r.ckpt_path, done):
            save_checkpoint(r.ckpt_path, r.raw_model, r.optimizer, done, after_done, r.cfg, r.args)
        r.log_file.close()
    print(f"interrupted: step {done} is saved in {r.ckpt_path}; continue with: "
          f"{resume_command(r.ckpt_path, r.given, r.world)}", file=sys.stderr)
    raise SystemExit(130)


def nonfinite_message(step, loss_val, norm_val, r):
    return (f"step {step + 1}: the loss is {loss_val} (grad norm {norm_val}), training "
            f"stopped without applying it; {r.kept()}. Try a lower --lr or more --warmup-steps.")


def get_lr(it, args):
    """Linear warmup to lr, cosine decay to min_lr at lr_decay_steps, then flat."""
    if it < args.warmup_steps:
        return args.lr * (it + 1) / args.warmup_steps
    if it >= args.lr_decay_steps:
        return args.min_lr
    ratio = (it - args.warmup_steps) / max(1, args.lr_decay_steps - args.warmup_steps)
    return args.min_lr + 0.5 * (1.0 + math.cos(math.pi * ratio)) * (args.lr - args.min_lr)


# -----------------------------------------------------------------------------
# Before the loop: a run's settings, model, data, optimizer and output folder, in one namespace.

@dataclasses.dataclass
class Run:
    """What the loop and the report read. setup_model_and_data fills the first group; an --eval-only
    run stops there. setup_optimizer and setup_out_dir fill the rest."""
    args: argparse.Namespace
    given: dict  # the flags as typed (for the resume command)
    ckpt: dict | None  # the --resume checkpoint
    rank: int
    world: int
    device: str
    t_start: float = 0.0
    # setup_model_and_data
    cfg: GPTConfig = None
    raw_model: GPT = None  # the plain module: state_dict, generate, estimate_mfu
    model: torch.nn.Module = None  # raw_model, torch.compile'd with --compile: evaluation runs it
    autocast: object = None  # bf16 autocast, or nullcontext for float32
    dtype_why: str = None  # why that precision and compile setting, for the log
    compile_why: str = None
    data_dir: str = None
    train: list = None  # the train shards (memmaps)
    train_paths: list = None
    val_tokens: torch.Tensor = None  # the validation span, the same for every run
    lens: list = None  # evaluation lengths
    B: int = 0  # micro-batch: sequences per forward pass per process
    T: int = 0  # training context
    # setup_optimizer
    grad_accum_steps: int = 1
    loader: "TokenLoader" = None
    train_model: torch.nn.Module = None  # model, in DDP when world > 1: training runs it
    optimizer: torch.optim.Optimizer = None
    start_step: int = 0
    # setup_out_dir
    ckpt_path: str = None
    log_path: str = None
    config_path: str = None
    kept_log: list = None  # the log lines kept from the resumed run
    log_file: object = None  # log.jsonl, open for appending (rank 0)
    last_good: tuple = (None, 0)  # (checkpoint, step) that a failure leaves behind

    @property
    def kind(self):  # cuda, cpu or mps
        return self.device.split(":")[0]

    @property
    def master(self):  # only rank 0 prints and writes files
        return self.rank == 0

    @property
    def tokens_per_forward(self):  # eval batches as many tokens per forward pass as training does
        return self.B * self.T

    def log(self, *a, **k):
        if self.master:
            print(*a, **k)

    def lens_at(self, step):
        """The curve during training needs one length (the first); the end gets every length."""
        return self.lens if step == self.args.max_steps else self.lens[:1]

    def evaluate_and_log(self, step, interrupts=nullcontext()):
        """Validation loss at lens_at(step); rank 0 writes the step's eval lines, all of them or none."""
        results = evaluate(self.model, self.val_tokens, self.lens_at(step), self.tokens_per_forward, self.device,
                           self.autocast, self.rank, self.world)
        if self.master:
            with interrupts, disk_errors(self.args.out_dir, self.kept):
                for L, res in results.items():
                    self.log_file.write(json.dumps(dict(type="eval", step=step, len=L, **res)) + "\n")
                self.log_file.flush()
        return results

    def kept(self):
        """What a failure now leaves behind, for its message."""
        return f"the last good checkpoint is {self.last_good[0]} (step {self.last_good[1]})" if self.last_good[0] \
            else "no checkpoint was saved yet (--ckpt-every N keeps one)"


def setup_model_and_data(args, given, ckpt, rank, world, device):
    """The model (from the checkpoint on --resume), precision, compilation, data and evaluation lengths.
    Reads only: nothing is written yet."""
    r = Run(args, given, ckpt, rank, world, device, t_start=time.time())
    # ---- model
    r.cfg = model_config(args, given, ckpt)
    torch.manual_seed(args.seed)  # the same seed on every rank: identical initial weights
    random.seed(args.seed)
    np.random.seed(args.seed)
    r.raw_model = GPT(r.cfg).to(device)
    if ckpt is not None:
        load_state(r.raw_model, ckpt["model"], args.resume)
    r.autocast, r.dtype_why = pick_dtype(args, r.kind)
    r.compile_why = pick_compile(args, r.kind)
    if r.kind == "cuda":
        torch.set_float32_matmul_precision("high")  # TF32 for the float32 matmuls that remain

    # ---- data and evaluation lengths
    r.data_dir, val, r.train, r.train_paths = open_shards(args, r.cfg.vocab_size, r.master)
    args.data_dir = r.data_dir
    r.lens = eval_lengths(args, r.cfg, r.log)
    r.val_tokens = val_span(val, r.lens, args.val_tokens, r.cfg.vocab_size, f"{r.data_dir} (val shard)")
    r.B, r.T = args.micro_batch, r.cfg.block_size
    r.model = torch.compile(r.raw_model) if args.compile else r.raw_model
    return r


def setup_optimizer(r):
    """Batch arithmetic, the data loader, DDP and AdamW; on --resume their saved states. Reads only."""
    args, B, T, world = r.args, r.B, r.T, r.world
    r.grad_accum_steps = accumulation_steps(args, B, T, world)
    args.min_lr = args.lr / 10 if args.min_lr is None else args.min_lr
    args.lr_decay_steps = args.max_steps if args.lr_decay_steps is None else args.lr_decay_steps

    r.loader = TokenLoader(r.train, r.train_paths, B, T, r.rank, world, args.data_order, args.seed, r.cfg.vocab_size)
    # DDP averages gradients over ranks in backward; the raw model keeps the state_dict names clean
    r.train_model = DDP(r.model, device_ids=[torch.cuda.current_device()] if r.kind == "cuda" else None) \
        if world > 1 else r.model
    r.optimizer = r.raw_model.configure_optimizers(args.weight_decay, args.lr, (args.beta1, args.beta2), r.kind,
                                                   args.eps)
    if r.ckpt is not None:
        load_state(r.optimizer, r.ckpt["optimizer"], args.resume)
        restore_position(r)
        r.start_step = r.ckpt["step"]
        r.last_good = (args.resume, r.start_step)


def setup_out_dir(r):
    """The output folder: config.json, log.jsonl, ckpt.pt. Everything before only read; from here on we write."""
    args, ckpt = r.args, r.ckpt
    r.ckpt_path = os.path.join(args.out_dir, "ckpt.pt")
    r.log_path = os.path.join(args.out_dir, "log.jsonl")
    r.config_path = os.path.join(args.out_dir, "config.json")
    # on resume, the log so far is the checkpoint's run's (in its folder), cut back to the checkpoint's step
    r.kept_log = read_log(os.path.join(os.path.dirname(args.resume) or ".", "log.jsonl"), r.start_step, r.master) \
        if ckpt is not None else []
    run_info = dict(args=vars(args), model=dataclasses.asdict(r.cfg), world_size=r.world, device=r.device,
                    grad_accum_steps=r.grad_accum_steps, num_params=r.raw_model.num_params(), torch=torch.__version__)
    if r.master:
        with disk_errors(args.out_dir, r.kept):
            os.makedirs(args.out_dir, exist_ok=True)
            removed = shards.remove_stale_temps(args.out_dir)
            if removed:
                r.log(f"removed {len(removed)} temp file(s) left by a killed save: {', '.join(map(str, removed))}")
            # a new run (--overwrite) first drops the old run's checkpoint, which must not outlive its log
            if os.path.exists(r.ckpt_path) and not (ckpt is not None and same_file(r.ckpt_path, args.resume)):
                os.remove(r.ckpt_path)
            shards.atomic_write(r.config_path, lambda f: f.write(json.dumps(run_info, indent=2).encode()))
            shards.atomic_write(r.log_path, lambda f: f.write("".join(r.kept_log).encode()))
            r.log_file = open(r.log_path, "a")


def log_run_header(r):
    """Four lines: the model, the data, the machine, the batch and schedule."""
    args, cfg, world = r.args, r.cfg, r.world
    r.log(f"model: {args.preset}, pe={cfg.pe}, {cfg.n_layer} layers x {cfg.n_head} heads x {cfg.n_embd} wide, "
          f"{r.raw_model.num_params() / 1e6:.2f}M params")
    r.log(f"data: {r.data_dir}: {sum(len(s) for s in r.train):,} train tokens in {len(r.train)} shard(s), "
          f"{args.data_order} windows; validation on the first {len(r.val_tokens) - 1:,} val tokens")
    r.log(f"device {r.device} x {world} process(es), {args.dtype} ({r.dtype_why}), "
          f"compile {'on' if args.compile else 'off'}{f' ({r.compile_why})' if r.compile_why else ''}")
    r.log(f"batch: {r.B} x {r.T} tokens x {world} process(es) x {r.grad_accum_steps} accumulation step(s) = "
          f"{args.total_batch:,} tokens per step; steps {r.start_step + 1}..{args.max_steps}, "
          f"lr {args.lr:g} -> {args.min_lr:g}, warmup {args.warmup_steps}")


def accumulation_steps(args, B, T, world):
    """total_batch tokens per update = B * T * world * grad_accum_steps; returns grad_accum_steps."""
    if args.total_batch is None:
        args.total_batch = B * T * world
    if args.total_batch % (B * T * world) != 0:
        raise SystemExit(f"--total-batch {args.total_batch} must be a multiple of micro-batch x context x "
                         f"processes = {B} x {T} x {world} = {B * T * world}")
    return args.total_batch // (B * T * world)


def restore_position(r):
    """The RNG states and the data position of the checkpoint's step."""
    try:
        restore_rng_states(r.ckpt["rng"], r.loader)
    except ValueError as e:  # sequential order, other (shorter, fewer) shards than the run's
        raise SystemExit(f"{r.args.resume}: {e} in {r.data_dir}: resume on the data it was trained on "
                         f"({r.ckpt['train_args'].get('data_dir')}) or with --data-order random")


# -----------------------------------------------------------------------------
# After the loop: the final evaluation, a few samples, the summary.

PAPER_HINT = """next: the paper's recipe (GPT-Tiny, context 512, ~19k steps; a GPU, ideally two):
  python prepare_data.py --source fineweb-edu      # FineWeb-Edu 10BT -> data/fineweb-edu-10BT (~30 GB download)
  torchrun --nproc_per_node=2 train.py --preset gpt-tiny --pe carope --data data/fineweb-edu-10BT --out-dir out-tiny-carope
  then --pe rope / learned / sinusoidal for the baselines; eval lengths default to 512,1024,2048"""


def report(r, losses, results):
    """Perplexity at each length, a few samples, what to try next; returns the run's summary."""
    args = r.args
    if results is None:  # nothing to train (resumed at max_steps): still report the model
        r.log(f"the checkpoint is already at step {r.start_step} >= --max-steps {args.max_steps}: nothing to train")
        results = evaluate(r.model, r.val_tokens, r.lens, r.tokens_per_forward, r.device, r.autocast, r.rank, r.world)
    samples = []
    if r.master:
        r.log_file.close()
        r.log(f"\nvalidation ({len(r.val_tokens) - 1:,} tokens of {r.data_dir}, model trained at context {r.T}):")
        print_eval(r.log, results, r.T)
        samples = generate_samples(r.raw_model, args, r.device, r.autocast)
        if samples:
            r.log(f"\nsamples ({args.sample_tokens} tokens, temperature 0.8, top-k 50):")
            for text in samples:
                r.log("  " + text.strip().replace("\n", "\n  ") + "\n  ---")
        if args.preset == "nano":
            r.log("\n" + PAPER_HINT)
        files = [f for f in RUN_FILES if os.path.exists(os.path.join(args.out_dir, f))]
        r.log(f"\ndone in {time.time() - r.t_start:.0f} s; files in {args.out_dir}/: {', '.join(files)}")
    return dict(out_dir=args.out_dir, log=r.log_path, ckpt=r.ckpt_path, config=r.config_path, preset=args.preset,
                pe=r.cfg.pe, start_step=r.start_step, steps=args.max_steps if losses else r.start_step,
                losses=losses, final_train_loss=losses[-1] if losses else None, val=results, eval_lens=r.lens,
                grad_accum_steps=r.grad_accum_steps, tokens_per_step=args.total_batch, world_size=r.world,
                samples=samples, wall_s=time.time() - r.t_start)


def evaluate_checkpoint(r):
    """--eval-only: the --resume checkpoint's loss at each length, nothing trained or written."""
    r.log(f"evaluating {r.args.resume} (step {r.ckpt['step']}, pe={r.cfg.pe}, {r.raw_model.num_params() / 1e6:.2f}M "
          f"params) on {len(r.val_tokens) - 1:,} tokens of {r.data_dir}")
    results = evaluate(r.model, r.val_tokens, r.lens, r.tokens_per_forward, r.device, r.autocast, r.rank, r.world)
    print_eval(r.log, results, r.cfg.block_size)
    return dict(step=r.ckpt["step"], val=results, eval_lens=r.lens, pe=r.cfg.pe, checkpoint=r.args.resume)


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


# -----------------------------------------------------------------------------
# The command line: flags, their checks, and how flags, checkpoint, recipe and DEFAULTS combine.

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


def per_preset(key, show=str):
    """A setting's default for each preset, for the help text: per_preset("micro_batch") is
    '4 nano, 64 gpt-tiny, 32 gpt-small'; presets that agree are joined ('19073 gpt-*'), unset ones left out.
    Looks in RECIPES, then the model's PRESETS, then DEFAULTS, as resolve_args does."""
    by_value = {}  # value -> presets, in RECIPES' order
    for name in RECIPES:
        value = {**DEFAULTS, **PRESETS[name], **RECIPES[name]}[key]
        if value is not None:
            by_value.setdefault(show(value), []).append(name)
    gpt = [name for name in RECIPES if name.startswith("gpt-")]
    return ", ".join(f"{value} {'gpt-*' if len(gpt) > 1 and names == gpt else '/'.join(names)}"
                     for value, names in by_value.items())


def short_float(v):
    """6e-4 as '6e-4' (not '0.0006'), as in the paper."""
    mantissa, exponent = f"{v:e}".split("e")
    return f"{float(mantissa):g}e{int(exponent)}"


def build_parser():
    p = argparse.ArgumentParser(
        description="Train (or evaluate) a GPT with CARoPE or another position encoding on llm.c token\n"
                    "shards. Flags left out take the --preset's recipe; with --resume, the checkpoint's.",
        formatter_class=argparse.RawDescriptionHelpFormatter,
        epilog="examples:\n"
               "  python train.py                                   # nano + carope, embedded corpus, ~1 min on CPU\n"
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
                   f"{per_preset('block_size')})")
    g.add_argument("--vocab-size", type=int, metavar="V", help="embedding rows (default: 50304 = GPT-2's 50257 padded)")
    g.add_argument("--dropout", type=float, metavar="P", help="dropout rate (default: 0.0)")
    g.add_argument("--rope-base", type=float, metavar="BASE", help="RoPE base; CARoPE starts as RoPE with it (default: 10000)")

    g = p.add_argument_group("data")
    g.add_argument("--data", metavar="DIR", help="folder of llm.c shards from prepare_data.py (default: "
                   "the embedded King James corpus in data/kjv, built on first use)")
    g.add_argument("--data-order", choices=("sequential", "random"), help="read training windows in "
                   "order (the paper: one pass over shuffled documents) or at random offsets "
                   f"(default: {per_preset('data_order')})")
    g.add_argument("--micro-batch", type=int, metavar="B", help="sequences per forward pass per process "
                   f"(default: {per_preset('micro_batch')})")
    g.add_argument("--total-batch", type=int, metavar="TOKENS", help="tokens per optimizer step over "
                   "all processes; gradient accumulation makes up the rest (default: "
                   f"{per_preset('total_batch')}; nano: one micro-batch per process)")

    g = p.add_argument_group("optimisation")
    g.add_argument("--max-steps", type=int, metavar="N", help=f"optimizer steps (default: {per_preset('max_steps')})")
    g.add_argument("--lr", type=float, metavar="LR", help="peak learning rate "
                   f"(default: {per_preset('lr', short_float)})")
    g.add_argument("--min-lr", type=float, metavar="LR", help="final learning rate of the cosine (default: lr / 10)")
    g.add_argument("--warmup-steps", type=int, metavar="N", help="linear warmup steps "
                   f"(default: {per_preset('warmup_steps')})")
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
                   f"same for every run (default: {per_preset('val_tokens')})")
    g.add_argument("--eval-every", type=int, metavar="N", help="evaluate every N steps at the first --eval-lens "
                   "length (a loss curve); every length at the end; 0 = only at the end "
                   f"(default: {per_preset('eval_every')})")
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
                   f"always saved at the end (default: {per_preset('ckpt_every')})")
    g.add_argument("--resume", metavar="PATH", help="continue training from this checkpoint, with its "
                   "settings unless flags override them")
    g.add_argument("--log-every", type=int, metavar="N", help="print every N-th step; log.jsonl gets "
                   f"every step (default: {per_preset('log_every')})")

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
    """The run's settings as one Namespace; returns (args, the flags given, the --resume checkpoint or None).

    Each setting comes from the first of these four layers that has it:
      1. the flags given on the command line;
      2. on --resume, the checkpoint's own settings (so a resumed run continues the same recipe), except
         the machine and this invocation's mode (NOT_INHERITED);
      3. the preset's training recipe (RECIPES), with the model's shape left to its PRESETS entry;
      4. DEFAULTS.
    """
    given = {k: v for k, v in vars(build_parser().parse_args(argv)).items() if v is not None}
    if given.get("eval_only") and not given.get("resume"):
        raise SystemExit("--eval-only needs a checkpoint: --eval-only --resume out/ckpt.pt")
    ckpt = load_checkpoint(given["resume"]) if given.get("resume") else None
    saved = {k: v for k, v in (ckpt["train_args"] if ckpt else {}).items() if k not in NOT_INHERITED}
    preset = given.get("preset") or saved.get("preset") or DEFAULTS["preset"]

    args = dict(DEFAULTS)  # 4. DEFAULTS
    args.update(RECIPES[preset])  # 3. the preset's recipe ...
    args.update({k: None for k in MODEL_KEYS})  # ... and its model shape: None = the preset's (model_config)
    args.update(saved)  # 2. the checkpoint's settings
    args.update(given)  # 1. the flags
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
        check_flags_fit_checkpoint(args, given, ckpt, cfg)
    for k in ("pe",) + MODEL_KEYS:  # record the resolved model in the run's settings
        setattr(args, k, getattr(cfg, k))
    return cfg


def check_flags_fit_checkpoint(args, given, ckpt, cfg):
    """On --resume, model flags (and --preset) may only repeat the checkpoint's: one line naming each that differs."""
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
        data_dir = shards.DEFAULT_EMBEDDED_DIR
    texts = sorted(f for f in os.listdir(data_dir) if f.lower().endswith(prepare_data.SUPPORTED)) \
        if os.path.isdir(data_dir) and not any(f.endswith(".bin") for f in os.listdir(data_dir)) else []
    if texts:  # the corpus itself, not yet tokenised: say how to make shards of it, not how to download one
        ext = next(e for e in prepare_data.SUPPORTED if texts[0].lower().endswith(e))
        raise SystemExit(f"{data_dir} holds {ext} files ({texts[0]}, ...), not token shards: make shards of them with "
                         f"python prepare_data.py --input {shlex.quote(str(data_dir))}/*{ext} --out "
                         f"{shlex.quote(str(data_dir).rstrip('/') + '-shards')}, then --data that folder")
    try:
        val_paths, train_paths = shards.list_shards(data_dir)
        manifest = shards.load_manifest(data_dir)
        val = shards.read_shard(val_paths[0])
        train = [shards.read_shard(p) for p in train_paths]
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
# Checkpoints, written atomically (shards.atomic_write) so a crash mid-write never
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
    shards.atomic_write(path, lambda f: torch.save(state, f))


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


# -----------------------------------------------------------------------------
# Interrupts, disk errors, memory.


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


if __name__ == "__main__":
    main()
