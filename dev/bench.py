"""
Throughput and peak memory of each positional encoding, side by side on one machine.

    python -m dev.bench                                   # nano, every encoding, train steps, T=128
    python -m dev.bench --mode eval --seq-lens 512,2048   # forward only at long contexts
    python -m dev.bench --mode rotation --seq-lens 512    # only the rotation of q and k, fwd + bwd
    python -m dev.bench --preset gpt-small --batch-size 32 --seq-lens 1024 --dtype bfloat16 --compile

Each (encoding, length) case lives in its own worker process: a process's peak memory never
goes down, so cases sharing one would see each other's peaks. The workers are started and
warmed up once, then timed in rounds, every case once per round (A B C, C B A, A B C, ...), so
a slow moment of a shared machine lands on all cases alike instead of on one. Reported: the
median tokens/s over the rounds, its min-max, and the ratio to RoPE of the medians with the
min-max of the per-round ratios. Only ratios to RoPE compare across machines.

--mode rotation times only the rotation of q and k (B, n_head, T, head_dim of the preset),
forward and backward: rope (RoPE's cached cos, sin), carope (the reference CARoPE module: f
from x, phases, cos, sin, rotate) and carope-fused (carope_triton's kernel, CUDA only; skipped,
with the reason, where it is unavailable or fails its self-check). In train and eval modes, carope
uses the fused kernel where it runs, as train.py does; --no-fused-carope times the reference path.
"""

import argparse
import json
import os
import platform
import signal
import statistics
import subprocess
import sys
import tempfile
import time

if not __package__:  # run as a file: the repository's root is then not on the import path
    sys.exit("dev/bench.py: run it from the repository's root as: python -m dev.bench")

import torch

from support import cli, devices, files
from carope import GPT, GPTConfig, PE_CHOICES, PRESETS, CARoPE, RoPE, rotate

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))  # the repository: workers run from there

ROTATION_PE = ("rope", "carope", "carope-fused")
FUSED_UNAVAILABLE = "fused kernel unavailable here"  # no Triton, or neither CUDA nor the interpreter
FUSED_FAILED = "fused kernel failed its self-check here"


def check_device(name):
    """Fail now, in one line, on a device this machine does not have (devices.pick_device's checks: the
    driver check, cuda:N in range), or one bench.py cannot time."""
    try:
        device = devices.pick_device(name)
    except SystemExit as e:
        sys.exit(f"bench.py: {e.code}")
    return device


def check_writable(path):
    """Fail before the benchmark, not after it, if the results could not be written."""
    folder = os.path.dirname(os.path.abspath(path))
    if os.path.isdir(path):
        sys.exit(f"bench.py: --json {path} is a directory; give a file name, e.g. {os.path.join(path, 'bench.json')}")
    try:
        if files.in_place(path):  # /dev/null or a pipe: written in place, never replaced
            if not os.access(path, os.W_OK):
                sys.exit(f"bench.py: --json {path}: not writable; choose a writable path")
            return
    except OSError as e:
        sys.exit(f"bench.py: --json {path}: {e.strerror}")
    if not os.path.isdir(folder):
        sys.exit(f"bench.py: --json {path}: directory {folder} does not exist; create it or choose another path")
    try:
        tempfile.NamedTemporaryFile(dir=folder).close()  # the very thing the final write does
    except OSError as e:
        sys.exit(f"bench.py: --json {path}: cannot write in {folder} ({e.strerror}); choose a writable path")


# -----------------------------------------------------------------------------
# A worker: one case, built once, timed on request


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


class Unavailable(Exception):
    """A case this machine cannot run (the fused kernel without Triton or CUDA): skipped, not failed."""


def model_case(args, pe, T, device):
    """One step of the whole model (train: forward, backward, AdamW; eval: forward) and its MFU at 1 s."""
    fused = {} if args.fused_carope is None else dict(fused_carope=args.fused_carope)  # None: GPTConfig's default
    config = GPTConfig.from_preset(args.preset, pe=pe, **fused)
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

    mfu = model.estimate_mfu(args.batch_size * T, 1.0, seq_len=T, device=device)
    # estimate_mfu counts training flops (6N + 12LHQT per token); a forward pass is a third of
    # both terms (2N + 4LHQT), so eval's MFU is a third of it rather than "n/a".
    if mfu is not None and args.mode == "eval":
        mfu /= 3
    return step, mfu


def rotation_case(args, pe, T, device):
    """Rotating q and k only, forward + backward. step() returns the gradients (tests read them)."""
    config = GPTConfig.from_preset(args.preset, pe="carope")
    B, H, D, C = args.batch_size, config.n_head, config.head_dim, config.n_embd
    dtype = torch.bfloat16 if args.dtype == "bfloat16" else torch.float32
    q, k = (torch.randn(B, H, T, D, device=device, dtype=dtype, requires_grad=True) for _ in range(2))
    x = torch.randn(B, T, C, device=device, dtype=dtype, requires_grad=True)  # the layer input CARoPE reads
    # The loss is a fixed random projection of q_rot, k_rot: a |q_rot|^2 loss would not depend
    # on the phase, so CARoPE's f, W and b would get zero gradients.
    gq, gk = torch.randn_like(q), torch.randn_like(k)
    if pe == "rope":
        rope = RoPE(config).to(device)
        inputs = (q, k)

        def rot():
            cos, sin = rope(x)
            return rotate(q, cos, sin), rotate(k, cos, sin)
    else:
        carope = CARoPE(config).to(device)
        torch.nn.init.normal_(carope.weight, std=0.02)  # W = 0 (its init) would make f the same for every token
        inputs = (q, k, x, carope.weight, carope.bias)
        if pe == "carope":
            def rot():
                cos, sin = carope(x)
                return rotate(q, cos, sin), rotate(k, cos, sin)
        else:
            try:
                from support import carope_triton  # lazily: it needs Triton, which CPU machines lack
            except ImportError:
                raise Unavailable(FUSED_UNAVAILABLE)
            if not carope_triton.fused_available(q):
                raise Unavailable(FUSED_UNAVAILABLE)
            if not carope_triton.use_fused(q):  # its self-check failed: the warning above says why
                raise Unavailable(FUSED_FAILED)

            def rot():
                return carope_triton.carope_rotate(q, k, carope.frequencies(x))  # f: (B, T, H)
    if args.compile and pe != "carope-fused":  # the fused kernel is already one kernel
        rot = torch.compile(rot)

    def step():
        return torch.autograd.grad(rot(), inputs, (gq, gk))

    return step, None  # no MFU: the model's flop count does not describe a rotation alone


def worker(args, pe, T):
    """Build the case, warm it up, answer one JSON line per "run" line on stdin until EOF."""
    signal.signal(signal.SIGINT, signal.SIG_IGN)  # Ctrl-C is the parent's: it keeps what was measured, then stops us
    reply = os.fdopen(os.dup(1), "w", buffering=1)
    os.dup2(2, 1)  # anything else printed (library warnings) goes to stderr, not into the replies
    device = torch.device(check_device(args.device))  # the parent passes the one it checked
    torch.manual_seed(0)
    try:
        step, mfu = (rotation_case if args.mode == "rotation" else model_case)(args, pe, T, device)
    except Unavailable as e:
        reply.write(json.dumps(dict(skip=str(e))) + "\n")
        return

    def sync():
        if device.type == "cuda":
            torch.cuda.synchronize(device)

    base_rss = rss_mib()
    for _ in range(args.warmup):
        step()
    sync()
    if device.type == "cuda":
        torch.cuda.reset_peak_memory_stats(device)
    reply.write(json.dumps(dict(mfu_at_1s=mfu)) + "\n")
    for _ in sys.stdin:
        t0 = time.perf_counter()
        for _ in range(args.steps):
            step()
        sync()
        dt = (time.perf_counter() - t0) / args.steps
        if device.type == "cuda":
            peak = torch.cuda.max_memory_allocated(device) / 2**20  # all tensors on the GPU, weights included
            torch.cuda.empty_cache()  # while others run, this worker holds only its weights and optimizer state
        else:
            peak = peak_rss_mib() - base_rss  # what the steps added to the process: activations, grads, Adam
        reply.write(json.dumps(dict(dt=dt, peak_mib=peak)) + "\n")


class Worker:
    """The parent's handle on one case's worker process."""

    def __init__(self, argv, pe, T):
        self.pe, self.T, self.stderr = pe, T, tempfile.TemporaryFile("w+")  # a file: a full pipe would block it
        self.proc = subprocess.Popen([sys.executable, "-m", "dev.bench", *argv, "--case", f"{pe}:{T}"], cwd=ROOT,
                                     stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=self.stderr, text=True,
                                     env={**os.environ, "PYTHONUNBUFFERED": "1"})
        self.ready = self.answer()  # after the build and the warm-up

    def answer(self):
        line = self.proc.stdout.readline()
        if not line:
            self.proc.wait()
            self.stderr.seek(0)
            rc, lines = self.proc.returncode, self.stderr.read().strip().splitlines()
            if rc < 0:  # a signal, with no message of its own: the kernel's out-of-memory killer, say
                last = f"killed by signal {-rc}"
            else:
                last = lines[-1] if lines else f"exited with status {rc}"
            sys.exit(f"bench.py: case {self.pe} at T={self.T} failed: {last}")
        return json.loads(line)

    def time(self):
        try:
            self.proc.stdin.write("run\n")
            self.proc.stdin.flush()
        except BrokenPipeError:
            pass  # it died while idle: answer() finds no reply and says why
        return self.answer()

    def close(self, wait=30):
        if self.proc.poll() is None:
            self.proc.stdin.close()  # EOF: the worker's loop ends
            try:
                self.proc.wait(timeout=wait)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
        self.stderr.close()


# -----------------------------------------------------------------------------
# The parent: rounds over the cases of each length, then one table per length


def run_length(args, argv, encodings, T):
    """Time every encoding at length T in interleaved rounds; return (results, skipped, rounds done). Ctrl-C ends
    the rounds: the results are those of the rounds every case finished."""
    workers, skipped, tps, peak, done = [], [], {}, {}, 0
    try:
        for pe in encodings:
            if pe == "learned" and T > GPTConfig.from_preset(args.preset).block_size:
                skipped.append(dict(pe=pe, T=T, reason="T beyond its table"))
                continue
            w = Worker(argv, pe, T)  # started one at a time: warm-ups do not overlap (nor their memory)
            if "skip" in w.ready:
                skipped.append(dict(pe=pe, T=T, reason=w.ready["skip"]))
                w.close()
            else:
                workers.append(w)
        tps = {w.pe: [] for w in workers}
        for r in range(args.rounds):
            # every other round in reverse: no case always follows the same neighbour
            for w in (workers if r % 2 == 0 else workers[::-1]):
                out = w.time()
                tps[w.pe].append(args.batch_size * T / out["dt"])
                peak[w.pe] = out["peak_mib"]  # the process's peak so far: the last round has the max
            print(f"  round {r + 1}/{args.rounds}: " + ", ".join(f"{pe} {v[-1]:,.0f}" for pe, v in tps.items()),
                  flush=True)
            done = r + 1
    except KeyboardInterrupt:
        pass  # main says so, after the table of the rounds done
    finally:
        for w in workers:
            w.close(wait=30 if done == args.rounds else 0)
    return summarise_length(args, T, [w for w in workers if done], tps, peak, done), skipped, done


def summarise_length(args, T, workers, tps, peak, done):
    """Each case's median tokens/s over its first `done` rounds, their range, and the ratios to RoPE."""
    results = []
    for w in workers:
        rounds = tps[w.pe][:done]
        median = statistics.median(rounds)
        mfu = w.ready["mfu_at_1s"]
        results.append(dict(pe=w.pe, T=T, tokens_per_s=median, tokens_per_s_min=min(rounds),
                            tokens_per_s_max=max(rounds), ms=1e3 * args.batch_size * T / median,
                            peak_mib=peak[w.pe], mfu=None if mfu is None else mfu * median / (args.batch_size * T),
                            rounds=rounds))
    ref = next((r for r in results if r["pe"] == "rope"), None)
    for r in results:  # ratios: of the medians, and their spread as the range of same-round ratios
        per_round = [a / b for a, b in zip(r["rounds"], ref["rounds"])] if ref else []
        r.update(vs_rope=r["tokens_per_s"] / ref["tokens_per_s"] if ref else None,
                 vs_rope_min=min(per_round, default=None), vs_rope_max=max(per_round, default=None))
    return results


def print_table(T, results, skipped):
    ref = next((r for r in results if r["pe"] == "rope"), None)
    print(f"\nT = {T}\n| pe | ms/step | tokens/s | min–max | vs rope | per round | peak MiB | vs rope | MFU |\n"
          "|---|---:|---:|---:|---:|---:|---:|---:|---:|")
    for r in results:
        speed = f"{r['vs_rope']:.2f}x | {r['vs_rope_min']:.2f}–{r['vs_rope_max']:.2f}x" if ref else "– | –"
        mem = f"{r['peak_mib'] / ref['peak_mib']:.2f}x" if ref and ref["peak_mib"] > 0 else "–"
        mfu = "n/a" if r["mfu"] is None else f"{100 * r['mfu']:.1f}%"
        print(f"| {r['pe']} | {r['ms']:.2f} | {r['tokens_per_s']:,.0f} | {r['tokens_per_s_min']:,.0f}–"
              f"{r['tokens_per_s_max']:,.0f} | {speed} | {r['peak_mib']:.0f} | {mem} | {mfu} |")
    for s in skipped:
        print(f"| {s['pe']} | – | – | – | – | – | – | – | – |  ({s['reason']})")


def describe_device(device):
    if device.startswith("cuda"):
        return torch.cuda.get_device_name(device)
    return f"{platform.processor() or platform.machine()} CPU, {torch.get_num_threads()} threads"


def parse_args(argv):
    parser = cli.Parser(prog="bench.py", description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--preset", default="nano", choices=PRESETS, help="model size (default nano)")
    parser.add_argument("--mode", choices=("train", "eval", "rotation"), default="train",
                        help="train: forward, backward and AdamW step; eval: forward under no_grad; "
                        "rotation: only the rotation of q and k, forward and backward")
    parser.add_argument("--pe", help="comma-separated encodings (default: all; in rotation mode "
                        f"{','.join(ROTATION_PE)})")
    parser.add_argument("--seq-lens", type=cli.lengths, default=[128], help="comma-separated lengths (default 128)")
    parser.add_argument("--batch-size", type=cli.positive, default=8, help="sequences per step (default 8)")
    parser.add_argument("--rounds", type=cli.positive, default=5, help="timed rounds, each runs every case once (default 5)")
    parser.add_argument("--steps", type=cli.positive, default=3, help="timed steps per case per round (default 3)")
    parser.add_argument("--warmup", type=cli.natural, default=2, help="untimed steps first (default 2)")
    parser.add_argument("--device", type=cli.device, help="cpu, cuda, cuda:N or mps (default: the best available)")
    parser.add_argument("--dtype", choices=("float32", "bfloat16"), default="float32",
                        help="bfloat16: autocast for the model, bf16 q and k for the rotation (default float32)")
    parser.add_argument("--compile", action="store_true", help="torch.compile the model or the rotation (CUDA)")
    parser.add_argument("--fused-carope", action=argparse.BooleanOptionalAction, default=None,
                        help="train and eval modes: CARoPE's fused kernel where it runs (the default, as in "
                        "train.py) or never; rotation mode times both as carope and carope-fused")
    parser.add_argument("--json", help="also write the results to this JSON file")
    parser.add_argument("--case", help=argparse.SUPPRESS)  # internal: PE:T, be that case's worker
    return parser.parse_args(argv)


def main(argv=None):
    argv = sys.argv[1:] if argv is None else argv
    args = parse_args(argv)
    known = ROTATION_PE if args.mode == "rotation" else PE_CHOICES
    if args.case:
        pe, _, T = args.case.rpartition(":")
        if pe not in known or not T.isdigit() or int(T) < 1:
            sys.exit(f"bench.py: --case {args.case}: must be PE:T with PE one of {', '.join(known)} and T >= 1 "
                     "(an internal flag: bench.py gives it to the worker of each case)")
        return worker(args, pe, int(T))

    encodings = list(dict.fromkeys((args.pe or ",".join(known)).split(",")))
    unknown = [pe for pe in encodings if pe not in known]
    if unknown:
        names = ", ".join(pe or "'' (an empty name: a stray comma?)" for pe in unknown)
        sys.exit(f"bench.py: --pe {args.pe!r}: unknown encoding(s) {names} for --mode {args.mode}; "
                 f"choose from {', '.join(known)}")
    encodings.sort(key=lambda pe: pe != "rope")  # RoPE first: the reference
    args.pe = ",".join(encodings)  # what ran, for the JSON
    if args.fused_carope is not None and args.mode == "rotation":
        sys.exit("bench.py: --fused-carope/--no-fused-carope: for --mode train or eval; rotation mode times "
                 "the kernel as its own case, --pe carope-fused")
    args.device = check_device(args.device)
    argv = [*argv, "--device", args.device]  # the workers use the device the parent checked
    if args.json:
        check_writable(args.json)

    print(f"device: {describe_device(args.device)} | torch {torch.__version__} | preset {args.preset} | "
          f"batch {args.batch_size} | mode {args.mode} | dtype {args.dtype} | compile {args.compile} | "
          f"{args.rounds} rounds of {args.steps} timed steps after {args.warmup} warm-up", flush=True)
    results, skipped, stopped = [], [], None
    for T in args.seq_lens:
        print(f"\nT = {T}: warming up {len(encodings)} worker(s)", flush=True)
        res, skip, done = run_length(args, argv, encodings, T)
        if done:
            print_table(T, res, skip)
        results += res
        skipped += skip
        if done < args.rounds:  # Ctrl-C: keep what was measured, stop
            stopped = f"interrupted at T={T} after {done} of {args.rounds} round(s)"
            break
    report = dict(device=describe_device(args.device), torch=torch.__version__,
                  args={k: v for k, v in vars(args).items() if k != "case"}, results=results, skipped=skipped)
    if stopped:
        report["interrupted"] = stopped
    saved = write_report(args.json, report) if args.json else None
    if stopped:
        print(f"\nbench.py: {stopped}: kept {len(results)} result(s), of the rounds every case finished (the tables "
              f"above{f', and {args.json}' if saved else ''})", file=sys.stderr)
        sys.exit(130)
    if saved is False:
        sys.exit(1)


def write_report(path, report):
    """The --json file, whole or not at all (a rename): a reader never sees half a file. A folder removed while
    the benchmark ran is made again; if the file still cannot be written, the report goes to stdout instead of
    being lost. Returns whether the file was written."""
    folder = os.path.dirname(os.path.abspath(path))
    text = json.dumps(report, indent=1)
    try:
        if not os.path.isdir(folder):
            os.makedirs(folder)
            print(f"bench.py: note: {folder} was removed while the benchmark ran; made it again for --json",
                  file=sys.stderr)
        files.atomic_write(path, lambda f: f.write(text.encode()))
        return True
    except OSError as e:
        print(text)
        print(f"bench.py: --json {path}: cannot write it ({e.strerror or e}); the report is printed above instead",
              file=sys.stderr)
        return False

if __name__ == "__main__":
    main()
