"""
Text from a checkpoint written by train.py.

    python sample.py --ckpt out/ckpt.pt --prompt "And God said" --sample-tokens 200
    python sample.py --ckpt out/ckpt.pt --temperature 0 --no-cache    # greedy, the whole context every step

Without --prompt, each sample starts from the end-of-text token, as every training document
does; an explicitly empty --prompt "" is refused. The samples generate as one batch with the
KV cache (carope.GPT.generate); --no-cache recomputes the whole context every step and, at the
same seed, gives the same text. Text is encoded and decoded with the checkpoint's own tokenizer
(GPT-2's BPE, or bytes), the one its run trained on.
"""

import time

import torch

from support import checkpoints, cli, devices, tokenizer
from carope import GPT, GPTConfig


def parse_args(argv):
    p = cli.Parser(prog="sample.py", description="Generate text from a train.py checkpoint.")
    p.add_argument("--ckpt", default="out/ckpt.pt", help="checkpoint written by train.py (default: out/ckpt.pt)")
    p.add_argument("--prompt", help="text to continue (default: start a new document)")
    p.add_argument("--sample-tokens", "--tokens", type=cli.positive, default=200, metavar="N",
                   help="new tokens per sample, as train.py's flag (default: 200; --tokens is the old name)")
    p.add_argument("--temperature", type=cli.amount, default=0.8, help="0 = greedy (default: 0.8)")
    p.add_argument("--top-k", type=cli.positive, default=50, help="sample among the k likeliest tokens (default: 50)")
    p.add_argument("--num-samples", type=cli.checked(int, lambda v: 1 <= v <= 4096, "an integer in [1, 4096]"),
                   default=3, help="samples, generated as one batch (default: 3)")
    p.add_argument("--seed", type=cli.seed, default=1337, help="random seed (default: 1337)")
    p.add_argument("--no-cache", action="store_true", help="recompute the whole context every step")
    p.add_argument("--device", type=cli.device, help="cpu, cuda, cuda:N or mps (default: the best available)")
    args = p.parse_args(argv)
    if args.prompt == "":
        exit_with('--prompt "": empty; leave --prompt out to start a new document (the end-of-text token)')
    return args


def exit_with(message):
    raise SystemExit(f"sample.py: {message}")


def pick_device(name):
    """devices.pick_device (train.py's and bench.py's checks, the driver check included), as sample.py's line."""
    try:
        return devices.pick_device(name)
    except SystemExit as e:
        exit_with(e.code)


def load_model(path, device):
    """(model in eval mode on device, its step, its tokenizer) from a train.py checkpoint."""
    try:
        ckpt = checkpoints.load_checkpoint(path, flag="--ckpt")  # one-line errors naming --ckpt
    except SystemExit as e:
        exit_with(e.code)
    if task := ckpt["train_args"].get("task"):
        exit_with(f"--ckpt {path}: a model of the {task} task, which reads that task's symbols, not text; "
                  f"evaluate it with python train.py --eval-only --resume {path}")
    try:
        model = GPT(GPTConfig(**ckpt["model_config"]))
        model.load_state_dict(ckpt["model"])
        tok = tokenizer.get_tokenizer(ckpt["train_args"].get("tokenizer") or "gpt2")  # older runs: all GPT-2
    except (TypeError, ValueError, RuntimeError, AttributeError) as e:
        exit_with(f"--ckpt {path}: not a model this carope.py can build ({type(e).__name__}); "
                  "pass a ckpt.pt written by train.py")
    return model.to(device).eval(), ckpt["step"], tok


def prompt_ids(tok, prompt, vocab_size, path):
    """The tokens that start each sample: the prompt's, else the end-of-text token; one line if the model has no
    embedding row for one of them (a run trained with a --vocab-size below its tokenizer's)."""
    if prompt is None:
        ids = [tok.eot]
    elif tok.name == "bytes":  # bytes that are not UTF-8 reach argv as surrogates (surrogateescape): read them back
        ids = list(prompt.encode("utf-8", errors="surrogateescape"))
    else:
        ids = tok.encode(prompt)  # tiktoken reads such a surrogate as U+FFFD
    if max(ids) >= vocab_size:
        what = (f"the end-of-text token {tok.eot} that starts a new document" if prompt is None else
                f"token {max(ids)} of the prompt")
        exit_with(f"--ckpt {path}: the model has {vocab_size} embedding rows (its --vocab-size), none for {what} "
                  f"({tok.name}); pass a --prompt whose {tok.name} tokens are all below {vocab_size}")
    return ids


def main(argv=None):
    args = parse_args(argv)
    device = pick_device(args.device)
    model, step, tok = load_model(args.ckpt, device)
    cfg = model.config
    ids = prompt_ids(tok, args.prompt, cfg.vocab_size, args.ckpt)
    if cfg.pe == "learned" and len(ids) > cfg.block_size:  # generate would use the same window
        print(f"note: pe=learned sees {cfg.block_size} positions; the prompt is cropped to its last "
              f"{cfg.block_size} of {len(ids)} tokens")
        ids = ids[-cfg.block_size:]
    idx = torch.tensor([ids] * args.num_samples, dtype=torch.long, device=device)

    torch.manual_seed(args.seed)
    t0 = time.perf_counter()
    out = model.generate(idx, args.sample_tokens, temperature=args.temperature, top_k=args.top_k,
                         use_cache=not args.no_cache).tolist()  # .tolist() waits for the device
    dt = time.perf_counter() - t0

    start = 1 if args.prompt is None else 0  # the end-of-text token that opened the sample is not text
    for i, row in enumerate(out):
        print(f"---------- sample {i + 1} of {args.num_samples} ({args.ckpt}, step {step}, pe={cfg.pe})")
        print(tok.decode(row[start:]))  # decode drops ids past the vocabulary (the embedding's padding rows)
    n = args.num_samples * args.sample_tokens
    print(f"----------\n{n} tokens in {dt:.2f} s: {n / dt:.1f} tokens/s, "
          f"KV cache {'off' if args.no_cache else 'on'}, {device}")


if __name__ == "__main__":
    main()
