"""
A run's settings, checked (support module): train.py's flags against each other, against the checkpoint a
run resumes, and against the model and the data they are for. What would be ignored silently, or fail later,
is refused here in one line naming the flag and the fix.

- resumed: the --resume checkpoint and the settings it passes on to the run;
- check_data_flags, check_pe_flags, check_eval_options: a flag that would change nothing is refused;
- data_folder, text_data: the shards' folder, and the tokenizer they were made with, which must be the model's;
- check_resume_steps: a resumed run's --max-steps is not behind its checkpoint;
- check_batch: a total batch of whole micro-batches, learning rates and a weight decay AdamW can take;
- non_finite: what a NaN loss is blamed on (the flags that shape the model, if it is NaN before any update);
- eval_lengths, val_span: the lengths a model can be evaluated at, and the val tokens that hold each a whole
  number of times.
"""

import math
import os
import shlex

import numpy as np
import torch

from support import checkpoints, files, shards, tokenizer

TEXT_ONLY = ("data", "tokenizer", "data_order", "val_tokens", "num_samples", "sample_tokens")  # what a task ignores
TRAINING_ONLY = ("lr", "min_lr", "warmup_steps", "lr_decay_steps", "weight_decay", "beta1", "beta2", "eps", "grad_clip",
                 "max_steps", "total_batch", "data_order", "seed", "ckpt_every", "eval_every", "log_every", "out_dir",
                 "overwrite", "num_samples", "sample_tokens")  # what --eval-only ignores
# the settings only some encodings read: {setting: the --pe values that read it}; another --pe ignores it
CAROPE_PE = ("carope", "carope-static", "carope-embed")  # carope.make_rotary's CARoPE
PE_ONLY = dict(carope_init=CAROPE_PE, tapa_alpha=("tapa",),
               rope_base=("rope",) + CAROPE_PE + ("selective",))  # carope.ROTARY_PE: theta_i = base^(-2i/D)


def resumed(given, not_inherited, derived_from, parse_options):
    """(the --resume checkpoint, the settings it passes on), or (None, {}) without --resume: its train_args
    except not_inherited, as checkpoints.continued lets them through. given["resume"] becomes the real path."""
    if given.get("eval_only") and "resume" not in given:
        raise SystemExit("--eval-only needs a checkpoint: --eval-only --resume out/ckpt.pt")
    if "resume" not in given:
        return None, {}
    # a link to a run's checkpoint: the run is in the folder the link points into
    given["resume"] = checkpoints.real_path(given["resume"])
    ckpt = checkpoints.load_checkpoint(given["resume"])
    saved = {k: v for k, v in ckpt["train_args"].items() if k not in not_inherited}
    saved.setdefault("tokenizer", "gpt2")  # checkpoints from before the byte tokenizer are all GPT-2's
    return ckpt, checkpoints.continued(given["resume"], saved, given, derived_from, parse_options)


def check_data_flags(given, task, ckpt_path):
    """A flag that would be ignored silently is refused: --task-option without a task, text's flags with one,
    training's with --eval-only; and --preset task without a task, whose recipe it is."""
    if given.get("preset") == "task" and not task:
        raise SystemExit("--preset task is the synthetic tasks' recipe: add --task NAME (python tasks.py lists them)")
    if "task_option" in given and not task:
        raise SystemExit("--task-option sets an option of a --task: add --task NAME (python tasks.py shows each "
                         "task's options), or drop --task-option")
    asked = [k for k in given if given[k] != 0 or k not in ("num_samples", "sample_tokens")]  # "no samples" is true
    if task and (text := [f"--{k.replace('_', '-')}" for k in TEXT_ONLY if k in asked]):
        who = f"{ckpt_path} is a checkpoint of --task {task}, which" if ckpt_path else f"--task {task}"
        raise SystemExit(f"{' and '.join(text)} {'is' if len(text) == 1 else 'are'} for a language model's text, but "
                         f"{who} draws its own rows: drop {' and '.join(text)}")
    if given.get("eval_only") and (ignored := [f"--{k.replace('_', '-')}" for k in TRAINING_ONLY if k in asked]):
        raise SystemExit(f"--eval-only evaluates the checkpoint as it is and writes nothing: {' and '.join(ignored)} "
                         f"would change nothing; drop {'it' if len(ignored) == 1 else 'them'}")


def check_pe_flags(given, pe, carope_init, ckpt_path):
    """A flag that the model's encoding does not read (PE_ONLY) is refused, as is --rope-base for a CARoPE that
    starts from b = 0 (its only use of the base is the start b = softplus^-1(base^(2/D) - 1)). Only flags given
    count: a resumed run's inherited values are the model's own."""
    whose = f"--pe {pe}" if "pe" in given or not ckpt_path else f"{ckpt_path}, a --pe {pe} model,"
    whose += " (the default)" if "pe" not in given and not ckpt_path else ""
    for key, encodings in PE_ONLY.items():
        if key in given and pe not in encodings:
            flag = f"--{key.replace('_', '-')}"
            raise SystemExit(f"{flag} is read by --pe {', '.join(encodings)} only; {whose} ignores it: drop {flag}"
                             f"{'' if ckpt_path else f', or pass --pe {encodings[0]}'}")
    if "rope_base" in given and pe in CAROPE_PE and carope_init == "zero":
        raise SystemExit(f"--rope-base sets CARoPE's starting ratio theta_1 = base^(-2/D), but --carope-init zero "
                         f"starts from b = 0 and reads no base: drop --rope-base"
                         f"{', or --carope-init zero' if 'carope_init' in given else ''}")


def check_resume_steps(s, ckpt):
    """--max-steps below the step a resumed checkpoint is at would neither train nor stop where asked."""
    if ckpt is not None and not s["eval_only"] and s["max_steps"] < ckpt["step"]:
        raise SystemExit(f"{s['resume']} is at step {ckpt['step']}, past --max-steps {s['max_steps']}: give "
                         f"--max-steps {ckpt['step']} or more to continue it, or --eval-only to evaluate it")


def check_eval_options(task, options, lengths, parse_options):
    """--eval-only reports the test split: an option the test rows set themselves would change nothing
    (parse_options: tasks.py's, which reads --task-option values)."""
    fixed = {**task.test, **{k: "the test length" for n in lengths for k in task.at(n)[1]}}
    for text in options:
        name = text.partition("=")[0]
        if name in fixed and name in parse_options(task, [text]):
            raise SystemExit(f"--eval-only --task-option {text}: {task.name}'s test rows set {name} themselves "
                             f"({name}={fixed[name]}), so the figures would not change; drop it (it shapes "
                             f"training only)")


def text_data(s, given, ckpt):
    """A language model's data folder (data_folder), the tokenizer it was made with, which must be the model's,
    and the vocabulary the model needs, as {data_dir, tokenizer, vocab_size} to update the settings s with."""
    data_dir = data_folder(s, given, ckpt["train_args"] if ckpt else {})
    default = "" if "preset" in given else " (the default; --preset nano reads GPT-2 tokens)"
    why = (f"the checkpoint {s['resume']} was trained on" if ckpt else "--tokenizer asks for"
           if "tokenizer" in given else f"--preset {s['preset']}{default} trains on")
    name, vocab = tokenizer.data_tokenizer(data_dir, s["tokenizer"], why)
    vocab_size = s["vocab_size"]
    if vocab_size is None and ckpt is None:  # padded to a multiple of 64, as GPT-2's 50257 to 50304
        vocab_size = -(-(vocab or tokenizer.get_tokenizer(name).vocab_size) // 64) * 64
    return dict(data_dir=data_dir, tokenizer=name, vocab_size=vocab_size)


def data_folder(s, given, trained):
    """The shards' folder, absolute: a checkpoint names its data wherever the run is resumed from."""
    if "data" in given:
        d = os.path.abspath(s["data"])
    elif s["data"] is not None:  # the checkpoint's (absolute since this was written; older ones as they were)
        d = trained.get("data_dir") or s["data"]
        if not os.path.isdir(d):
            raise SystemExit(f"{s['resume']} was trained on {d}, which is not there now: pass --data with the "
                             f"folder that data is in now")
    else:  # the embedded corpus: built on first use, the same wherever the repository is
        return str(shards.default_dir("kjv", s["tokenizer"] or "gpt2"))
    if os.path.exists(d) and not os.path.isdir(d):
        make = f"; make shards of it with python prepare_data.py --input {shlex.quote(d)} --out-dir DIR" \
            if d.lower().endswith(shards.TEXT_FORMATS) else ""
        raise SystemExit(f"--data {d} is a file, not a folder of token shards: pass the folder prepare_data.py "
                         f"wrote (its --out-dir){make}")
    if not os.path.isdir(parent := files.nearest_existing(d)):  # prepare_data.py could not make it either
        raise SystemExit(f"--data {d}: {parent} is a file, so no folder can be made under it: pass the folder of "
                         f"token shards prepare_data.py wrote (its --out-dir)")
    return str(d)


def check_batch(s, B, T, world):
    """A total batch that is not whole micro-batches of every process, and a learning rate whose first AdamW
    step overflows float32, are refused."""
    if s["total_batch"] % (B * T * world):
        raise SystemExit(f"--total-batch {s['total_batch']} must be a multiple of micro-batch x context x "
                         f"processes = {B} x {T} x {world} = {B * T * world}")
    if max(s["lr"], s["min_lr"]) / (1 - s["beta1"]) > torch.finfo(torch.float32).max:  # AdamW's first step size
        raise SystemExit(f"--lr {s['lr']:g} / --min-lr {s['min_lr']:g}: AdamW's step (lr / (1 - beta1)) overflows "
                         f"float32; choose a learning rate below 1e30 (the presets use 1e-3 or so)")
    if s["min_lr"] > s["lr"]:  # the cosine would climb from lr to min_lr
        raise SystemExit(f"--min-lr {s['min_lr']:g} is above --lr {s['lr']:g}: the cosine decays from --lr down to "
                         f"--min-lr; give --min-lr {s['lr']:g} or less (default: lr / 10)")
    if s["lr"] * s["weight_decay"] >= 1:  # AdamW's decoupled decay: w <- w * (1 - lr * weight_decay) each step
        raise SystemExit(f"--weight-decay {s['weight_decay']:g} with --lr {s['lr']:g}: AdamW multiplies the weights "
                         f"by 1 - lr x weight_decay = {1 - s['lr'] * s['weight_decay']:g} each step, which zeroes "
                         f"them or flips their sign; give --weight-decay below 1 / lr = {1 / s['lr']:g} "
                         f"(the presets use 0.1)")


def non_finite(step, loss, norm, first, given, kept):
    """The line a NaN or infinite loss (or gradient norm) stops a run with. At the first step of a new run (first)
    no update came before it: the lr is not the cause, the model as built is; its encoding's flags are named."""
    stopped = f"step {step}: the loss is {loss} (grad norm {norm}), training stopped without applying it; {kept}."
    if not first:
        return f"{stopped} Try a lower --lr or more --warmup-steps."
    named = " ".join(f"--{k.replace('_', '-')} {given[k]:g}" if isinstance(given[k], float) else
                     f"--{k.replace('_', '-')} {given[k]}" for k in ("pe",) + tuple(PE_ONLY) if k in given)
    cause = f"the model as built gives it, with {named}: try other values of those flags" if named else \
        "the model as built (its flags) or the data gives it"
    return f"{stopped} No update came before it, so neither --lr nor --warmup-steps is the cause: {cause}."


def eval_lengths(eval_lens, cfg, log, row=lambda n: n, word="context"):
    """The lengths to evaluate at; those whose rows (row(n) tokens) a learned table cannot hold are skipped."""
    lens = list(eval_lens) if eval_lens else [cfg.block_size, 2 * cfg.block_size, 4 * cfg.block_size]
    if cfg.pe == "learned":  # a learned table has no rows past block_size: nothing to evaluate there
        skipped = [n for n in lens if row(n) > cfg.block_size]
        lens = [n for n in lens if row(n) <= cfg.block_size]
        rows = "" if word == "context" else f" (rows of {', '.join(str(row(n)) for n in skipped)} tokens)"
        if not lens:
            raise SystemExit(f"every eval length ({','.join(map(str, skipped))}{rows}) is longer than the learned "
                             f"position table ({cfg.block_size} positions): use --eval-lens "
                             f"{cfg.block_size if word == 'context' else 'with shorter lengths'} or a relative --pe")
        if skipped:
            log(f"note: pe=learned has {cfg.block_size} positions; eval at {word} {', '.join(map(str, skipped))}"
                f"{rows} skipped (the paper's '-')")
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
    shards.check_ids(tokens, vocab_size, path_hint)
    return torch.from_numpy(tokens.astype(np.int64))
