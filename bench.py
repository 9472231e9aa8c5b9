"""
Throughput and peak memory of each positional encoding, side by side on one machine.

    python bench.py                                   # nano, every encoding, train steps, T=128
    python bench.py --mode eval --seq-lens 512,2048   # forward only at long contexts
    python bench.py --preset gpt-small --batch-size 32 --seq-lens 1024 --dtype bfloat16 --compile

Each (encoding, length) case runs in a fresh Python process: a process's peak memory never
goes down, so cases sharing one would see each other's peaks. Speeds are reported as ratios
to RoPE measured in the same run; only those ratios compare across machines.
"""

import argparse
import json
import os
import platform
import subprocess
import sys
import time

import torch

from carope import GPT, GPTConfig, PE_CHOICES


def rss_mib():
    """Resident memory of this process now (Linux), in MiB."""
    with open("/proc/self/status") as f:
        for line in f:
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) / 1024
    return float("nan")


def peak_rss_mib():
    import resource  # Unix only; imported here so that bench.py --help works elsewhere
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024  # Linux reports KiB


def run_case(args, pe, T):
    """Time `--steps` steps of one encoding at length T; return a dict of measurements."""
    device = torch.device(args.device)
    torch.manual_seed(0)
    config = GPTConfig.from_preset(args.preset, pe=pe)
    model = GPT(config).to(device)
    model.train(args.mode == "train")
    optimizer = model.configure_optimizers(0.1, 1e-4, (0.9, 0.95), device.type) if args.mode == "train" else None
    step_model = torch.compile(model) if args.compile else model
    idx = torch.randint(0, config.vocab_size, (args.batch_size, T + 1), device=device)
    x, y = idx[:, :-1], idx[:, 1:]
    autocast = torch.autocast(device.type, dtype=torch.bfloat16, enabled=args.dtype == "bfloat16")

    def step():
        if optimizer is None:
            with torch.no_grad(), autocast:
                step_model(x)
            return
        with autocast:
            _, loss = step_model(x, y)
        loss.backward()
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)

    def sync():
        if device.type == "cuda":
            torch.cuda.synchronize()

    base_rss = rss_mib()
    for _ in range(args.warmup):
        step()
    sync()
    if device.type == "cuda":
        torch.cuda.reset_peak_memory_stats()
    t0 = time.perf_counter()
    for _ in range(args.steps):
        step()
    sync()
    dt = (time.perf_counter() - t0) / args.steps
    if device.type == "cuda":
        peak = torch.cuda.max_memory_allocated() / 2**20  # all tensors on the GPU, weights included
    else:
        peak = peak_rss_mib() - base_rss  # what the steps added to the process: activations, grads, Adam
    return dict(pe=pe, T=T, ms=1e3 * dt, tokens_per_s=args.batch_size * T / dt, peak_mib=peak)


def describe_device(device):
    if device.startswith("cuda"):
        return torch.cuda.get_device_name(device)
    return f"{platform.processor() or platform.machine()} CPU, {torch.get_num_threads()} threads"


def main():
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--preset", default="nano", help="model size from carope.PRESETS (default nano)")
    parser.add_argument("--pe", default=",".join(PE_CHOICES), help="comma-separated encodings (default all)")
    parser.add_argument("--seq-lens", default="128", help="comma-separated sequence lengths (default 128)")
    parser.add_argument("--batch-size", type=int, default=8, help="sequences per step (default 8)")
    parser.add_argument("--mode", choices=("train", "eval"), default="train",
                        help="train: forward, backward and AdamW step; eval: forward under no_grad")
    parser.add_argument("--steps", type=int, default=5, help="timed steps per case (default 5)")
    parser.add_argument("--warmup", type=int, default=2, help="untimed steps first (default 2)")
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    parser.add_argument("--dtype", choices=("float32", "bfloat16"), default="float32",
                        help="bfloat16 runs under autocast (default float32)")
    parser.add_argument("--compile", action="store_true", help="torch.compile the model (CUDA)")
    parser.add_argument("--json", help="also write the results to this JSON file")
    parser.add_argument("--case", help=argparse.SUPPRESS)  # internal: PE:T, run one case, print JSON
    args = parser.parse_args()

    if args.case:
        pe, T = args.case.split(":")
        print(json.dumps(run_case(args, pe, int(T))))
        return

    encodings = sorted(args.pe.split(","), key=lambda pe: pe != "rope")  # RoPE first: the reference
    unknown = [pe for pe in encodings if pe not in PE_CHOICES]
    if unknown:
        sys.exit(f"bench.py: unknown encoding(s) {', '.join(unknown)}; choose from {', '.join(PE_CHOICES)}")
    lengths = [int(t) for t in args.seq_lens.split(",")]
    print(f"device: {describe_device(args.device)} | torch {torch.__version__} | preset {args.preset} | "
          f"batch {args.batch_size} | mode {args.mode} | dtype {args.dtype} | compile {args.compile} | "
          f"{args.steps} timed steps after {args.warmup} warm-up")
    results = []
    for T in lengths:
        print(f"\nT = {T}\n| pe | ms/step | tokens/s | vs rope | peak MiB | vs rope |\n|---|---:|---:|---:|---:|---:|")
        rows = []
        for pe in encodings:
            if pe == "learned" and T > GPTConfig.from_preset(args.preset).block_size:
                print(f"| learned | – | – | – | – | – |  (T beyond its table)")
                continue
            out = subprocess.run([sys.executable, __file__, *sys.argv[1:], "--case", f"{pe}:{T}"],
                                 capture_output=True, text=True, env={**os.environ, "PYTHONUNBUFFERED": "1"})
            if out.returncode != 0:
                sys.exit(f"bench.py: case {pe} at T={T} failed:\n{out.stderr.strip()}")
            rows.append(json.loads(out.stdout.strip().splitlines()[-1]))
            ref = next((r for r in rows if r["pe"] == "rope"), None)
            r = rows[-1]
            speed = f"{r['tokens_per_s'] / ref['tokens_per_s']:.2f}x" if ref else "–"
            mem = f"{r['peak_mib'] / ref['peak_mib']:.2f}x" if ref and ref["peak_mib"] > 0 else "–"
            print(f"| {pe} | {r['ms']:.1f} | {r['tokens_per_s']:,.0f} | {speed} | {r['peak_mib']:.0f} | {mem} |",
                  flush=True)
        results.extend(rows)
    if args.json:
        with open(args.json, "w") as f:
            json.dump(dict(device=describe_device(args.device), torch=torch.__version__, args=vars(args),
                           results=results), f, indent=1)


if __name__ == "__main__":
    main()
