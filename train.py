"""
Train a GPT with CARoPE (or another position encoding) on llm.c token shards.

    python train.py                                    # CARoPE on bytes, beside RoPE's committed figures (CPU, ~5 min)
    python train.py --pe rope --out-dir out-rope       # the same recipe with RoPE, to compare
    python train.py --preset nano                      # the same model on GPT-2 tokens (CPU, about 1 min)
    python train.py --eval-only --resume out/ckpt.pt --eval-lens 128,512,1024
    torchrun --nproc_per_node=2 train.py --preset gpt-tiny --data data/fineweb-edu-10BT  # the paper's recipe

The loop is build-nanogpt's: gradient accumulation up to a fixed number of tokens per update,
AdamW with linear warmup and cosine decay, gradient clipping, bf16 autocast and torch.compile
on GPUs, DDP through torchrun. The file reads top to bottom: settings, model, data, the loop,
evaluation, report. The default run (the bytes preset) ends with its bits per byte at 1x..16x the
training context beside RoPE's and CARoPE's from the committed sweep of the same recipe (sweeps.py).
What keeps a run safe (its folder, checkpoints, Ctrl-C) is in runs.py and checkpoints.py; the checks
of its flags in settings.py; the machine's choices in devices.py.
"""

import argparse
import math
import os
import random
import sys
import time
from contextlib import nullcontext

import numpy as np
import torch
import torch.distributed as dist
import torch.nn.functional as F
from torch.nn.parallel import DistributedDataParallel as DDP

from support import carope_triton, checkpoints, cli, devices, runs, settings, shards, sweeps, tokenizer
import tasks
from carope import CAROPE_INITS, GPT, GPTConfig, PE_CHOICES, PRESETS
from support.runs import RUN_FILES  # noqa: F401  (what a run leaves in its --out-dir)

# -----------------------------------------------------------------------------
# Settings. A flag left out falls back to the checkpoint's setting on --resume (so a resumed run
# continues the same recipe), then to the preset's RECIPE, then to DEFAULTS.

# The gpt-* recipes are the CARoPE paper's (= build-nanogpt's): 524,288 tokens per update,
# lr 6e-4 with 750 warmup steps and cosine decay to 6e-5, 10B tokens / 524,288 = 19,073 steps.
RECIPES = {
    # nano (--preset nano, GPT-2 tokens) is sized for a 2-core CPU (about 1 min): at ~3k tokens/s, many small
    # steps learn more than few big ones; random windows because the embedded corpus is small and ordered.
    "nano": dict(micro_batch=4, total_batch=None, lr=1.5e-3, warmup_steps=30, max_steps=350,
                 val_tokens=16384, eval_every=0, ckpt_every=0, data_order="random", log_every=25),
    # bytes, the default: the nano model on UTF-8 bytes (tokenizer.py), 2,048 tokens a step; a 257-row output
    # layer leaves the CPU to the transformer, so it learns enough about position for the encodings to differ.
    # It is the recipe of the committed sweep results/bytes-kjv (COMMITTED), about 5 min on a 2-core CPU.
    "bytes": dict(tokenizer="bytes", micro_batch=32, total_batch=None, lr=2e-3, warmup_steps=50, max_steps=1000,
                  val_tokens=65536, eval_lens=[64, 128, 256, 512, 1024], eval_every=0, ckpt_every=0,
                  data_order="random", log_every=100),
    # task: the synthetic tasks of tasks.py on a 2-layer, 64-wide model (--task NAME picks it)
    "task": dict(micro_batch=64, total_batch=None, lr=3e-3, warmup_steps=50, max_steps=1000, val_tokens=1,
                 eval_every=0, ckpt_every=0, data_order="random", log_every=100),
    "gpt-tiny": dict(micro_batch=64, total_batch=524288, lr=6e-4, warmup_steps=750, max_steps=19073,
                     val_tokens=20 * 524288, eval_every=250, ckpt_every=1000, data_order="sequential"),
    "gpt-small": dict(micro_batch=32, total_batch=524288, lr=6e-4, warmup_steps=750, max_steps=19073,
                      val_tokens=20 * 524288, eval_every=250, ckpt_every=1000, data_order="sequential"),
}
DEFAULTS = dict(preset="bytes", pe="carope", data=None, task=None, task_option=None, tokenizer=None, out_dir="out",
                min_lr=None, lr_decay_steps=None, weight_decay=0.1, beta1=0.9, beta2=0.95, eps=1e-8, grad_clip=1.0,
                seed=1337, eval_lens=None, eval_only=False, resume=None, device=None, dtype=None, compile=None,
                fused_carope=None, num_samples=2, sample_tokens=64, log_every=1, overwrite=False)
# the machine and this invocation's mode are never taken from a checkpoint
NOT_INHERITED = ("device", "dtype", "compile", "fused_carope", "eval_only", "resume", "data_dir", "out_dir",
                 "overwrite")
MODEL_KEYS = ("n_layer", "n_head", "n_embd", "block_size", "vocab_size", "dropout", "rope_base", "carope_init",
              "tapa_alpha")
# the committed compare.py sweep of a preset's recipe: a run of that very recipe ends beside its figures
COMMITTED = dict(bytes=os.path.join(os.path.dirname(os.path.abspath(__file__)), "results", "bytes-kjv"))
# settings that follow from another when not given (min_lr = lr / 10, ...): on --resume they follow it again
# when that flag changes, rather than keep the value the checkpoint derived from the old one
DERIVED = dict(min_lr=("lr",), lr_decay_steps=("max_steps",), total_batch=("micro_batch",), eval_lens=("task",))


def per_preset(key):
    """A setting's default for each preset, for the help text: '4 nano, 64 gpt-tiny, 32 gpt-small'."""
    values = {name: {**DEFAULTS, **PRESETS[name], **RECIPES[name]}[key] for name in RECIPES}
    return ", ".join(f"{v:g} {name}" if isinstance(v, float) else f"{v} {name}"
                     for name, v in values.items() if v is not None)


parser = cli.Parser(prog="train.py", formatter_class=argparse.RawDescriptionHelpFormatter, description="Train (or "
                    "evaluate) a GPT with CARoPE or another position encoding on llm.c token shards.\nFlags left out "
                    "take the --preset's recipe; with --resume, the checkpoint's.", epilog=__doc__.split("\n\n")[1])
g = parser.add_argument_group("model")
g.add_argument("--preset", choices=sorted(PRESETS), help="model size and recipe: bytes (the default: 4x128 on "
               "UTF-8 bytes, context 64, the recipe of results/bytes-kjv), nano (the same model on GPT-2 tokens, "
               "context 128), "
               "gpt-tiny (6x512, 44M) or gpt-small (12x768, 124M) with the paper's recipe")
g.add_argument("--pe", choices=PE_CHOICES, help="position encoding (default: carope)")
g.add_argument("--n-layer", type=cli.positive, metavar="N", help="transformer blocks (default: the preset's)")
g.add_argument("--n-head", type=cli.positive, metavar="H", help="attention heads (default: the preset's)")
g.add_argument("--n-embd", type=cli.positive, metavar="C", help="model width (default: the preset's)")
g.add_argument("--block-size", type=cli.positive, metavar="T", help=f"training context ({per_preset('block_size')})")
g.add_argument("--vocab-size", type=cli.positive, metavar="V", help="embedding rows (default: the tokenizer's padded "
               "to a multiple of 64: 50304 for GPT-2, 320 for bytes)")
g.add_argument("--dropout", type=cli.fraction, metavar="RATE", help="dropout rate (default: 0.0)")
g.add_argument("--rope-base", type=cli.rate, metavar="BASE", help="RoPE's base; CARoPE starts as RoPE (default: 1e4)")
g.add_argument("--carope-init", choices=CAROPE_INITS, help="the carope encodings' initial bias b: rope (the ratio f "
               "starts at RoPE's theta_1 = base^(-2/D)) or zero (b = 0, f = 1/(1 + ln 2) = 0.591) (default: rope)")
g.add_argument("--tapa-alpha", type=cli.amount, metavar="ALPHA", help="--pe tapa: the exponent of the distance "
               "|m - n|^alpha in its phase; 0 = no distance, 1 = linear (default: 0.1)")
g = parser.add_argument_group("data")
g.add_argument("--data", metavar="DIR", help="folder of shards from prepare_data.py (default: the embedded King "
               "James corpus, built on first use: data/kjv-bytes, or data/kjv with --preset nano)")
g.add_argument("--task", choices=tasks.TASKS, help="train on a synthetic task of tasks.py, drawn on the fly, "
               "instead of shards; accuracy by length (the preset then defaults to task)")
g.add_argument("--task-option", action="append", metavar="NAME=VALUE", help="a task's option, repeatable: "
               "--task-option variables=3 (the options: python tasks.py)")
g.add_argument("--tokenizer", choices=tokenizer.TOKENIZERS, help="the tokens the model reads (default: the data's)")
g.add_argument("--data-order", choices=("sequential", "random"), help="training windows in order (one pass, as "
               f"the paper) or at random offsets ({per_preset('data_order')})")
g.add_argument("--micro-batch", type=cli.positive, metavar="B", help=f"sequences per forward pass per process "
               f"({per_preset('micro_batch')})")
g.add_argument("--total-batch", type=cli.positive, metavar="TOKENS", help="tokens per optimizer step over all "
               f"processes, by gradient accumulation ({per_preset('total_batch')}; nano: one micro-batch)")
g = parser.add_argument_group("optimisation")
g.add_argument("--max-steps", type=cli.positive, metavar="N", help=f"optimizer steps ({per_preset('max_steps')})")
g.add_argument("--lr", type=cli.rate, metavar="LR", help=f"peak learning rate ({per_preset('lr')})")
g.add_argument("--min-lr", type=cli.amount, metavar="LR", help="the cosine's final learning rate (default: lr / 10)")
g.add_argument("--warmup-steps", type=cli.natural, metavar="N", help=f"linear warmup ({per_preset('warmup_steps')})")
g.add_argument("--lr-decay-steps", type=cli.natural, metavar="N", help="where the cosine reaches --min-lr (--max-steps)")
g.add_argument("--weight-decay", type=cli.amount, metavar="WD", help="AdamW weight decay, matrices only (default: 0.1)")
g.add_argument("--beta1", type=cli.fraction, metavar="B1", help="AdamW beta1 (default: 0.9)")
g.add_argument("--beta2", type=cli.fraction, metavar="B2", help="AdamW beta2 (default: 0.95)")
g.add_argument("--eps", type=cli.rate, metavar="EPS", help="AdamW epsilon (default: 1e-8)")
g.add_argument("--grad-clip", type=cli.amount, metavar="NORM", help="global gradient norm clip, 0 = off (default: 1)")
g.add_argument("--seed", type=cli.seed, metavar="N", help="seed of the weights and the data order (default: 1337)")
g = parser.add_argument_group("evaluation")
g.add_argument("--eval-lens", type=cli.lengths, metavar="T1,T2,...", help="contexts to evaluate at, all on the same "
               "tokens (default: 1x..16x the training context for bytes, else 1x,2x,4x)")
g.add_argument("--val-tokens", type=cli.positive, metavar="N", help="evaluate on the first N val tokens "
               f"({per_preset('val_tokens')})")
g.add_argument("--eval-every", type=cli.natural, metavar="N", help="evaluate every N steps at the first length, every "
               f"length at the end; 0 = at the end only ({per_preset('eval_every')})")
g.add_argument("--eval-only", action="store_true", default=None, help="evaluate the --resume checkpoint and exit")
g.add_argument("--num-samples", type=cli.natural, metavar="N", help="texts to generate at the end (default: 2)")
g.add_argument("--sample-tokens", type=cli.natural, metavar="N", help="tokens per text; 0 = none (default: 64)")
g = parser.add_argument_group("checkpoints and logs")
g.add_argument("--out-dir", metavar="DIR", help="for log.jsonl, config.json and ckpt.pt (default: out; on --resume "
               "the checkpoint's folder)")
g.add_argument("--overwrite", action="store_true", default=None, help="replace the run an --out-dir holds")
g.add_argument("--ckpt-every", type=cli.natural, metavar="N", help="save ckpt.pt every N steps too, always at the end "
               f"({per_preset('ckpt_every')})")
g.add_argument("--resume", "--ckpt", metavar="PATH", help="continue this checkpoint, with its settings unless flags "
               "override them")
g.add_argument("--log-every", type=cli.positive, metavar="N", help="print every N-th step; log.jsonl has every step "
               f"({per_preset('log_every')})")
g = parser.add_argument_group("system")
g.add_argument("--device", type=cli.device, help="cpu, cuda, cuda:N or mps (default: the best available)")
g.add_argument("--dtype", choices=("float32", "bfloat16"), help="autocast dtype (default: bfloat16 on GPUs that "
               "have it, else float32)")
g.add_argument("--compile", action=argparse.BooleanOptionalAction, help="torch.compile (default: on CUDA only)")
g.add_argument("--fused-carope", action=argparse.BooleanOptionalAction, help="CARoPE's fused Triton kernel on CUDA, "
               "checked against the reference first (default: on)")


def resolve_args(argv=None):
    """The run's settings, resolved once: returns (args, the flags given, the --resume checkpoint or None).
    Each setting comes from the first layer that has it: the flags; on --resume the checkpoint's settings,
    except NOT_INHERITED and what it derived from a flag now changed; the preset's recipe; DEFAULTS. Then what
    follows from them is filled in."""
    given = {k: v for k, v in vars(parser.parse_args(argv)).items() if v is not None}
    ckpt, saved = settings.resumed(given, NOT_INHERITED, DERIVED, tasks.parse_options)  # None, {} without --resume
    task = given.get("task") or saved.get("task")
    preset = given.get("preset") or saved.get("preset") or ("task" if task else DEFAULTS["preset"])
    settings.check_data_flags(given, task, given.get("resume") if "task" not in given else None)
    s = {**DEFAULTS, **RECIPES[preset], **{k: None for k in MODEL_KEYS}, **saved, **given, "preset": preset}
    settings.check_pe_flags(given, s["pe"], s["carope_init"], given.get("resume"))
    settings.check_resume_steps(s, ckpt)
    derived = [k for k in DERIVED if s[k] is None or (k in s.get("derived", ()) and k not in given)]  # saved
    if ckpt is not None and "out_dir" not in given:  # a resumed run continues in its checkpoint's folder
        s["out_dir"] = os.path.dirname(given["resume"]) or "."
    if task:  # the task's vocabulary, its rows and the lengths it is tested at
        t = tasks.TASKS[task]
        s.update(vocab_size=s["vocab_size"] or len(t.vocab), block_size=s["block_size"] or t.T, data_dir=None,
                 eval_lens=s["eval_lens"] or list(t.lengths), tokenizer=None)
        if s["eval_only"] and "task_option" in given:
            settings.check_eval_options(t, given["task_option"], s["eval_lens"], tasks.parse_options)
    else:  # the data folder's tokenizer, which must be the model's, and the vocabulary it needs
        s.update(settings.text_data(s, given, ckpt))
    cfg = model_config(argparse.Namespace(**s), given, ckpt)
    s.update({k: getattr(cfg, k) for k in ("pe",) + MODEL_KEYS})  # the model as built
    if task and cfg.vocab_size < len(tasks.TASKS[task].vocab):  # --eval-only on another task's checkpoint
        raise SystemExit(f"{s['resume']}: its model reads {cfg.vocab_size} token ids, task {task} has "
                         f"{len(tasks.TASKS[task].vocab)}: it cannot be evaluated on {task}")
    B, T, world = s["micro_batch"], cfg.block_size, int(os.environ.get("WORLD_SIZE", 1))
    s["total_batch"] = s["total_batch"] or B * T * world  # total_batch = B * T * world * grad_accum_steps
    s["min_lr"] = s["lr"] / 10 if s["min_lr"] is None else s["min_lr"]
    s["lr_decay_steps"] = s["max_steps"] if s["lr_decay_steps"] is None else s["lr_decay_steps"]
    settings.check_batch(s, B, T, world)  # whole micro-batches, and a learning rate AdamW's step can take
    s["derived"] = [k for k in derived if s[k] is not None]
    return argparse.Namespace(**s), given, ckpt


def model_config(args, given, ckpt):
    """The model's config: from the checkpoint on --resume (model flags may only repeat it), else the preset."""
    fused = dict(fused_carope=args.fused_carope is not False)  # the machine's choice, never the checkpoint's
    if ckpt is not None:
        return checkpoints.model_config(ckpt, args.resume, given, ("pe", "preset") + MODEL_KEYS, GPTConfig, **fused)
    try:
        return GPTConfig.from_preset(args.preset, pe=args.pe, **fused, **{k: getattr(args, k) for k in MODEL_KEYS
                                                                          if getattr(args, k) is not None})
    except ValueError as e:  # a shape the model cannot have: say which flags, not where it failed
        raise SystemExit(f"model flags: {e}")


# -----------------------------------------------------------------------------
# A run, top to bottom: settings, machine, model, data, optimizer, the loop, the report.

def main(argv=None):
    devices.keep_freed_memory()
    try:
        args, given, ckpt = resolve_args(argv)
        if not args.eval_only:
            runs.check_out_dir(args.out_dir, args.resume, args.overwrite)  # before anything is written
        with devices.processes(args.device) as (rank, world, device):
            return run(args, given, ckpt, rank, world, device)
    except KeyboardInterrupt:  # outside the training loop (which saves a checkpoint first): nothing to keep
        print("interrupted", file=sys.stderr)
        raise SystemExit(130)


def run(args, given, ckpt, rank, world, device):
    t_start, master, kind = time.time(), rank == 0, device.split(":")[0]
    log = print if master else (lambda *a, **k: None)
    raw_model, model, autocast, machine = build_model(args, given, ckpt, device, world, log)
    cfg = raw_model.config

    # ---- the data: training batches, and the same validation data for every run
    B, T = args.micro_batch, cfg.block_size
    loader, lens, evaluate_at, about, trained_at = open_data(args, ckpt, model, rank, world, device, autocast, log)
    if args.eval_only:  # the checkpoint's loss at each length, nothing trained or written
        log(f"evaluating {args.resume} (step {ckpt['step']}, pe={cfg.pe}) on {about}")
        print_eval(log, results := evaluate_at(lens), trained_at)
        return dict(step=ckpt["step"], val=results, eval_lens=lens, trained_at=trained_at, pe=cfg.pe,
                    checkpoint=args.resume)

    # ---- the optimizer, and on --resume where the run stopped
    # DDP averages gradients over ranks in backward; the raw model keeps the state_dict names clean
    train_model = DDP(model, device_ids=[torch.cuda.current_device()] if kind == "cuda" else None) \
        if world > 1 else model
    optimizer = raw_model.configure_optimizers(args.weight_decay, args.lr, (args.beta1, args.beta2), kind, args.eps)
    start_step = 0 if ckpt is None else ckpt["step"]
    if ckpt is not None:
        checkpoints.load_state(optimizer, ckpt.get("optimizer"), args.resume)
        checkpoints.restore_position(ckpt, loader, args.resume, args.data_dir)

    # ---- the run's folder: everything before only read; from here on we write
    grad_accum_steps = args.total_batch // (B * T * world)
    run = open_run(args, given, raw_model, optimizer, loader, machine, start_step, world, device, grad_accum_steps)
    log(f"data: {about}")
    log(f"batch: {B} x {T} tokens x {world} process(es) x {grad_accum_steps} accumulation step(s) = "
        f"{args.total_batch:,} tokens per step; steps {start_step + 1}..{args.max_steps}, "
        f"lr {args.lr:g} -> {args.min_lr:g}, warmup {args.warmup_steps}")

    with run:  # Ctrl-C from here saves the last completed step and prints how to continue
        losses, results = train(args, raw_model, train_model, optimizer, loader, run, evaluate_at, lens,
                                start_step, device, autocast)
    return report(args, run, raw_model, evaluate_at, lens, results, losses, dict(
        preset=args.preset, pe=cfg.pe, start_step=start_step, grad_accum_steps=grad_accum_steps,
        tokens_per_step=args.total_batch, world_size=world, trained_at=trained_at), t_start, about, device,
        autocast, log)


def open_run(args, given, raw_model, optimizer, loader, machine, start_step, world, device, grad_accum_steps):
    """The run's folder (runs.Run): config.json, log.jsonl, and what a checkpoint holds."""
    state = lambda step, position: dict(  # noqa: E731
        model=raw_model.state_dict(), optimizer=optimizer.state_dict(), step=step, rng=position,
        model_config=vars(raw_model.config).copy(), train_args=dict(vars(args), **machine))
    run = runs.Run(args.out_dir, world == 1 or dist.get_rank() == 0, state, lambda: checkpoints.rng_states(loader),
                   args.resume, start_step, given, world)
    run.open(dict(args=dict(vars(args), **machine), model=vars(raw_model.config), world_size=world, device=device,
                  grad_accum_steps=grad_accum_steps, num_params=raw_model.num_params(), torch=torch.__version__))
    return run


def build_model(args, given, ckpt, device, world, log):
    """The model (the same seed on every rank: identical initial weights), its precision and compilation."""
    cfg, kind = model_config(args, given, ckpt), device.split(":")[0]
    torch.manual_seed(args.seed)
    random.seed(args.seed)
    np.random.seed(args.seed)
    if kind == "cpu" and cfg.fused_carope and carope_triton.INTERPRET and "fused_carope" not in given:
        cfg.fused_carope = False  # Triton's interpreter runs the kernel in Python: CPU steps ~100x slower
        if cfg.pe.startswith("carope"):
            log("note: TRITON_INTERPRET=1 is set, but on a CPU CARoPE takes the PyTorch path (the interpreter is "
                "~100x slower); --fused-carope runs the kernel in the interpreter anyway")
    raw_model = GPT(cfg).to(device)  # the plain module: state_dict, generate, estimate_mfu
    if ckpt is not None:
        checkpoints.load_state(raw_model, ckpt["model"], args.resume)
    dtype, autocast, dtype_why = devices.pick_dtype(args.dtype, kind)
    compiled, compile_why = devices.pick_compile(args.compile, kind)
    if kind == "cuda":
        torch.set_float32_matmul_precision("high")  # TF32 for the float32 matmuls that remain
    log(f"model: {args.preset}, pe={cfg.pe}, {cfg.n_layer} layers x {cfg.n_head} heads x {cfg.n_embd} wide, "
        f"{raw_model.num_params() / 1e6:.2f}M params\ndevice {device} x {world} process(es), {dtype} ({dtype_why}), "
        f"compile {'on' if compiled else 'off'}{f' ({compile_why})' if compile_why else ''}")
    model = torch.compile(raw_model) if compiled else raw_model  # evaluation runs this one
    return raw_model, model, autocast, dict(dtype=dtype, compile=compiled)


# -----------------------------------------------------------------------------
# The training loop.

def train(args, raw_model, train_model, optimizer, loader, run, evaluate_at, lens, start_step, device, autocast):
    """Train from start_step to --max-steps; returns (the train losses of this call, the last eval results).

    One step: set the learning rate, accumulate the gradient of total_batch tokens over grad_accum_steps
    micro-batches, clip it, update, log; now and then evaluate and save a checkpoint.
    """
    world, kind, losses, results = dist.get_world_size() if dist.is_initialized() else 1, device.split(":")[0], [], None
    grad_accum_steps = args.total_batch // (loader.B * loader.T * world)
    if start_step > 0 and eval_due(start_step, args) and not run.evaluated(start_step):
        results = evaluate_and_log(run, evaluate_at, start_step, lens, args)  # one a Ctrl-C cut short
    for step in range(start_step, args.max_steps):
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
                # Gradient accumulation, sum vs mean. Each micro-batch's loss is a mean over its B*T tokens,
                # and backward() adds each micro-step's gradients to those already in .grad: a sum. Dividing
                # each loss by grad_accum_steps makes the summed gradient the gradient of the mean over all
                # B*T*grad_accum_steps tokens, as one big batch would give. With DDP, the all-reduce then
                # averages that over the ranks: the mean over total_batch tokens.
                loss = loss / grad_accum_steps
                loss_accum += loss.detach()
                loss.backward()
        if world > 1:
            dist.all_reduce(loss_accum)  # SUM (gloo has no AVG), then divide
            loss_accum /= world
        # clip the global gradient norm, so that one unlucky batch cannot throw the weights far
        norm = torch.nn.utils.clip_grad_norm_(raw_model.parameters(), args.grad_clip or float("inf"))
        loss_val, norm_val = loss_accum.item(), norm.item()
        if not (math.isfinite(loss_val) and math.isfinite(norm_val)):  # stop before the update
            raise SystemExit(settings.non_finite(step + 1, loss_val, norm_val, step == 0, run.given, run.kept()))
        with run.interrupts:  # Ctrl-C waits for the update and its log line: a step is done or not begun
            optimizer.step()
            if kind == "cuda":
                torch.cuda.synchronize()  # so dt measures the GPU's work, not the launch
            dt = time.time() - t0
            losses.append(loss_val)
            mfu = raw_model.estimate_mfu(args.total_batch // world, dt, seq_len=loader.T, device=device)
            run.log(dict(type="train", step=step + 1, loss=loss_val, lr=lr, grad_norm=norm_val, ms=dt * 1000,
                         tokens_per_s=args.total_batch / dt, mfu=mfu, tokens=(step + 1) * args.total_batch))
        if run.master and ((step + 1) % args.log_every == 0 or step == start_step or step + 1 == args.max_steps):
            print(f"step {step + 1:5d}/{args.max_steps} | loss {loss_val:.4f} | lr {lr:.2e} | norm {norm_val:.3f} "
                  f"| {dt * 1000:7.1f} ms | {args.total_batch / dt:8.0f} tok/s | mfu {'n/a' if mfu is None else f'{mfu:.1%}'}")
        if step + 1 == args.max_steps or (args.ckpt_every > 0 and (step + 1) % args.ckpt_every == 0):
            run.save()  # rank 0 writes it (the weights are the same on every rank); before evaluating, which may fail
        if eval_due(step + 1, args):
            results = evaluate_and_log(run, evaluate_at, step + 1, lens, args)
    return losses, results


def get_lr(it, args):
    """Linear warmup to lr, cosine decay to min_lr at lr_decay_steps, then flat."""
    if it < args.warmup_steps:
        return args.lr * (it + 1) / args.warmup_steps
    if it >= args.lr_decay_steps:
        return args.min_lr
    ratio = (it - args.warmup_steps) / max(1, args.lr_decay_steps - args.warmup_steps)
    return args.min_lr + 0.5 * (1.0 + math.cos(math.pi * ratio)) * (args.lr - args.min_lr)


# -----------------------------------------------------------------------------
# Data: llm.c shards (256 int32 header, then uint16 tokens), memory-mapped.

def open_data(args, ckpt, model, rank, world, device, autocast, log):
    """(training batches, eval lengths, evaluate_at(lengths) -> results, a line about the data, the length trained
    at): llm.c shards, or with --task a synthetic task drawn on the fly (tasks.py). Exits with one line on data it
    cannot use, or, resuming a run, on data other than the run's."""
    cfg, B, T = model.config, args.micro_batch, model.config.block_size
    if args.task:  # the loop is the same; evaluation measures accuracy on the task's test split
        task = tasks.with_options(args.task, args.task_option, T, args.eval_lens)
        lens = settings.eval_lengths(args.eval_lens, cfg, log, lambda n: task.at(n)[0], "length")
        evaluate_at = lambda some: tasks.evaluate(model, task, some, B, device, autocast)  # noqa: E731
        return (tasks.Loader(task, B, T, rank, world, args.seed), lens, evaluate_at,
                f"task {task.name}: {task.what}; {tasks.TEST_ROWS} test rows at each length",
                task.trained(T, task.train))
    if args.data is None:  # the default run trains on the embedded corpus; building it is idempotent
        if rank == 0:
            import prepare_data  # only here: it brings in the hub client and the tokenizers' packages
            prepare_data.prepare_embedded(tokenizer=args.tokenizer, wait=True)  # two runs at once: one builds it
        if dist.is_initialized():
            dist.barrier()  # the other ranks wait for rank 0 to build it
    val, train, paths, manifest = shards.open_data(args.data_dir)
    # what the run's checkpoints record of its data, and a resumed run checks: the same shards, not a look-alike
    args.data_tokens, args.data_sha256 = sum(len(s) for s in train), checkpoints.data_sha256(manifest)
    if ckpt is not None and not args.eval_only:
        checkpoints.check_same_data(ckpt["train_args"], args, args.resume)
    if manifest and manifest.get("vocab_size", 0) > cfg.vocab_size:
        raise SystemExit(f"{args.data_dir} was made with a vocabulary of {manifest['vocab_size']} tokens "
                         f"({manifest.get('tokenizer', '?')}) but the model has {cfg.vocab_size} embedding rows: "
                         f"re-make the data with prepare_data.py or pass --vocab-size")
    lens = settings.eval_lengths(args.eval_lens, cfg, log)
    val_tokens = settings.val_span(val, lens, args.val_tokens, cfg.vocab_size, f"{args.data_dir} (val shard)")
    token_bytes = tokenizer.get_tokenizer(args.tokenizer).token_bytes()  # UTF-8 bytes per id, for bits per byte
    token_bytes = np.pad(token_bytes, (0, max(0, cfg.vocab_size - len(token_bytes))))  # padding rows: no text
    evaluate_at = lambda some: evaluate(model, val_tokens, some, B * T, device, autocast, rank, world,  # noqa: E731
                                        token_bytes, max(lens))
    loader = TokenLoader(train, paths, B, T, rank, world, args.data_order, args.seed, cfg.vocab_size)
    return loader, lens, evaluate_at, (f"{args.data_dir}: {sum(len(s) for s in train):,} train tokens in {len(train)} "
                                       f"shard(s), {args.data_order} windows; {len(val_tokens) - 1:,} "
                                       f"{args.tokenizer} val tokens"), cfg.block_size


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
            shards.check_ids(a, self.vocab_size, where)  # cheap, and catches data of another tokenizer
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

@torch.no_grad()
def evaluate(model, tokens, lens, tokens_per_forward, device, autocast, rank, world, token_bytes=None,
             by_position_at=None):
    """Mean val loss, perplexity and bits per byte at each length T over the same tokens, batches split over
    ranks; at length by_position_at also the mean loss at each position of a window (where an encoding breaks)."""
    model.eval()
    results = {}
    n_bytes = int(token_bytes[tokens[1:].numpy()].sum()) if token_bytes is not None else 0  # what the targets spell
    for T in lens:
        x_all, y_all = tokens[:-1].view(-1, T), tokens[1:].view(-1, T)  # (windows, T)
        rows = max(1, tokens_per_forward // T)
        loss_at = torch.zeros(T, device=device)  # summed over windows, position by position
        for i, start in enumerate(range(0, x_all.size(0), rows)):
            if i % world != rank:
                continue
            x, y = x_all[start:start + rows].to(device), y_all[start:start + rows].to(device)
            with autocast:
                logits, _ = model(x)
            loss = F.cross_entropy(logits.float().flatten(0, 1), y.flatten(), reduction="none")  # (rows*T,)
            loss_at += loss.view(-1, T).sum(0)  # (T,)
        if world > 1:
            dist.all_reduce(loss_at)
        total = loss_at.sum().item()  # nats
        results[T] = dict(loss=total / y_all.numel(), ppl=math.exp(min(total / y_all.numel(), 700.0)))
        if n_bytes:  # bits per byte: the one figure that compares a byte model with a GPT-2 model
            results[T]["bpb"] = total / math.log(2) / n_bytes
        if T == by_position_at:
            results[T]["by_position"] = (loss_at / x_all.size(0)).tolist()
    model.train()
    return results


def eval_due(step, args):
    return step == args.max_steps or (args.eval_every > 0 and step % args.eval_every == 0)


def evaluate_and_log(run, evaluate_at, step, lens, args):
    """The curve needs the first length only; the last step gets every length. Logged all together."""
    results = evaluate_at(lens if step == args.max_steps else lens[:1])
    run.log(*(dict(type="eval", step=step, len=T, **res) for T, res in results.items()))
    if step != args.max_steps and run.master:
        print("val " + " | ".join(f"ctx {T}: loss {r['loss']:.4f}" + (f" ppl {r['ppl']:.2f}" if "ppl" in r else
                                  f" acc {r['acc']:.3f}") for T, r in results.items()))
    return results


# -----------------------------------------------------------------------------
# After the loop: the final evaluation, a few samples, the summary.

PAPER_HINT = """next: the paper's recipe (GPT-Tiny, context 512, ~19k steps; a GPU, ideally two):
  python prepare_data.py --source fineweb-edu      # FineWeb-Edu 10BT -> data/fineweb-edu-10BT (~30 GB download)
  torchrun --nproc_per_node=2 train.py --preset gpt-tiny --pe carope --data data/fineweb-edu-10BT --out-dir out-tiny-carope
  then --pe rope / learned / sinusoidal for the baselines; eval lengths default to 512,1024,2048"""


def report(args, run, raw_model, evaluate_at, lens, results, losses, summary, t_start, about, device, autocast, log):
    """Perplexity at each length, a few samples, what to try next; returns the run's summary."""
    if results is None:  # nothing to train (resumed at max_steps): still report the model
        log(f"the checkpoint is already at step {summary['start_step']} >= --max-steps {args.max_steps}: "
            f"nothing to train")
        results = evaluate_at(lens)
    samples = []
    run.close()
    T = summary["trained_at"]  # a task's lengths are its own (copy: the string's)
    log(f"\nvalidation ({about.split('; ')[-1]}, model trained at {'length' if args.task else 'context'} {T}):")
    print_eval(log, results, T)
    if run.master and args.preset in COMMITTED and not args.task:  # beside the committed sweep of this recipe
        model = vars(GPTConfig())  # a model setting (and its flag) added since the sweep ran: its default there
        defaults = dict(args=model, model=model)
        log("\n" + "\n".join(sweeps.beside_sweep(COMMITTED[args.preset], run.config_path, results, defaults=defaults)))
    if run.master:
        samples = generate_samples(raw_model, args, device, autocast)
    if samples:
        log(f"\nsamples ({args.sample_tokens} tokens, temperature 0.8, top-k 50):")
        for text in samples:
            log("  " + text.strip().replace("\n", "\n  ") + "\n  ---")
    if args.preset in ("bytes", "nano"):
        log("\n" + PAPER_HINT)
    files = [f for f in RUN_FILES if os.path.exists(os.path.join(args.out_dir, f))]
    log(f"\ndone in {time.time() - t_start:.0f} s; files in {args.out_dir}/: {', '.join(files)}")
    return dict(summary, out_dir=args.out_dir, log=run.log_path, ckpt=run.ckpt_path, config=run.config_path,
                steps=args.max_steps if losses else summary["start_step"], losses=losses,
                final_train_loss=losses[-1] if losses else None, val=results, eval_lens=lens, samples=samples,
                wall_s=time.time() - t_start)


def print_eval(log, results, T):
    names = dict(ppl="perplexity {:10.2f}", bpb="bits/byte {:.4f}", acc="accuracy {:.3f}", token_acc="per token {:.3f}")
    for n, r in results.items():
        log(f"  {'length' if 'acc' in r else 'context'} {n:6d} ({n / T:g}x): val loss {r['loss']:.4f}  "
            + "  ".join(f.format(r[k]) for k, f in names.items() if k in r))


@torch.no_grad()
def generate_samples(raw_model, args, device, autocast):
    """A few texts from the start of a document (the delimiter starts every document)."""
    if args.sample_tokens <= 0 or args.num_samples <= 0 or args.task:  # a task's rows are not text
        return []
    tok = tokenizer.get_tokenizer(args.tokenizer)
    torch.manual_seed(args.seed)  # after the final checkpoint, so it does not change any saved state
    idx = torch.full((args.num_samples, 1), tok.eot, dtype=torch.long, device=device)
    raw_model.eval()
    with autocast:
        out = raw_model.generate(idx, args.sample_tokens, temperature=0.8, top_k=50)
    raw_model.train()
    rows = [row[:row.index(tok.eot)] if tok.eot in row else row for row in out[:, 1:].tolist()]  # one document
    return [tok.decode(row) for row in rows]


if __name__ == "__main__":
    main()
