"""
Text from a checkpoint written by train.py.

    python sample.py --ckpt out/ckpt.pt --prompt "And God said" --tokens 200
    python sample.py --ckpt out/ckpt.pt --temperature 0 --no-cache    # greedy, the whole context every step

Without --prompt, each sample starts from the end-of-text token, as every training document
does; an explicitly empty --prompt "" is refused. The samples generate as one batch with the
KV cache (carope.GPT.generate); --no-cache recomputes the whole context every step and, at the
same seed, gives the same text.
"""

import argparse
import time

import torch

import prepare_data
import train
from carope import GPT, GPTConfig


def parse_args(argv):
    p = argparse.ArgumentParser(description="Generate text from a train.py checkpoint.")
    p.add_argument("--ckpt", default="out/ckpt.pt", help="checkpoint written by train.py (default: out/ckpt.pt)")
    p.add_argument("--prompt", help="text to continue (default: start a new document)")
    p.add_argument("--tokens", type=int, default=200, help="new tokens per sample (default: 200)")
    p.add_argument("--temperature", type=float, default=0.8, help="0 = greedy (default: 0.8)")
    p.add_argument("--top-k", type=int, default=50, help="sample among the k likeliest tokens (default: 50)")
    p.add_argument("--num-samples", type=int, default=3, help="samples, generated as one batch (default: 3)")
    p.add_argument("--seed", type=int, default=1337, help="random seed (default: 1337)")
    p.add_argument("--no-cache", action="store_true", help="recompute the whole context every step")
    p.add_argument("--device", help="cpu, cuda, cuda:N or mps (default: the best available)")
    p.error = lambda message: exit_with(message)  # one line, exit 1, not argparse's usage block
    args = p.parse_args(argv)
    for flag, ok, want in (("--tokens", args.tokens >= 1, "an integer >= 1"),
                           ("--temperature", args.temperature >= 0, "a number >= 0 (0 = greedy)"),
                           ("--top-k", args.top_k >= 1, "an integer >= 1"),
                           ("--num-samples", args.num_samples >= 1, "an integer >= 1")):
        if not ok:
            exit_with(f"{flag} {getattr(args, flag[2:].replace('-', '_'))}: must be {want}")
    if args.prompt == "":
        exit_with('--prompt "": empty; leave --prompt out to start a new document (the end-of-text token)')
    return args


def exit_with(message):
    raise SystemExit(f"sample.py: {message}")


def pick_device(name):
    if name is None:
        return "cuda" if torch.cuda.is_available() else "mps" if torch.backends.mps.is_available() else "cpu"
    kind, _, index = name.partition(":")
    if kind not in ("cpu", "cuda", "mps") or (index and not (kind == "cuda" and index.isdigit())):
        exit_with(f"--device {name}: unknown device; use cpu, cuda, cuda:N or mps")
    if kind == "cuda" and not torch.cuda.is_available():
        exit_with(f"--device {name}: this torch ({torch.__version__}) sees no CUDA GPU; use --device cpu")
    if kind == "mps" and not torch.backends.mps.is_available():
        exit_with(f"--device {name}: MPS is not available here; use --device cpu")
    return name


def load_model(path, device):
    try:
        ckpt = train.load_checkpoint(path)
    except SystemExit as e:  # its one-line messages name train.py's flag
        exit_with(str(e).replace("--resume", "--ckpt", 1))
    try:
        model = GPT(GPTConfig(**ckpt["model_config"]))
        model.load_state_dict(ckpt["model"])
    except (TypeError, ValueError, RuntimeError) as e:
        exit_with(f"--ckpt {path}: not a model this carope.py can build ({type(e).__name__}); "
                  "pass a ckpt.pt written by train.py")
    return model.to(device).eval(), ckpt["step"]


def main(argv=None):
    args = parse_args(argv)
    device = pick_device(args.device)
    model, step = load_model(args.ckpt, device)
    cfg = model.config
    enc = prepare_data.get_encoding()
    ids = [enc.eot_token] if args.prompt is None else enc.encode_ordinary(args.prompt)
    if cfg.pe == "learned" and len(ids) > cfg.block_size:  # generate would use the same window
        print(f"note: pe=learned sees {cfg.block_size} positions; the prompt is cropped to its last "
              f"{cfg.block_size} of {len(ids)} tokens")
        ids = ids[-cfg.block_size:]
    idx = torch.tensor([ids] * args.num_samples, dtype=torch.long, device=device)

    torch.manual_seed(args.seed)
    t0 = time.perf_counter()
    out = model.generate(idx, args.tokens, temperature=args.temperature, top_k=args.top_k,
                         use_cache=not args.no_cache).tolist()  # .tolist() waits for the device
    dt = time.perf_counter() - t0

    start = 1 if args.prompt is None else 0  # the end-of-text token that opened the sample is not text
    for i, row in enumerate(out):
        print(f"---------- sample {i + 1} of {args.num_samples} ({args.ckpt}, step {step}, pe={cfg.pe})")
        print(enc.decode([t for t in row[start:] if t < enc.n_vocab]))  # ids past GPT-2's vocab are padding
    n = args.num_samples * args.tokens
    print(f"----------\n{n} tokens in {dt:.2f} s: {n / dt:.1f} tokens/s, "
          f"KV cache {'off' if args.no_cache else 'on'}, {device}")


if __name__ == "__main__":
    main()
