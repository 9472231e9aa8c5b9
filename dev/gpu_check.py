"""
The first command on a new GPU machine: does this project's CUDA path work here?

    python -m dev.gpu_check                          # every check (meant to take at most 3 minutes on an H100)
    python -m dev.gpu_check --json gpu_check.json    # the results as JSON too, written whole or not at all
    python -m dev.gpu_check --registers              # no GPU needed: both kernels' registers and spills (ptxas)

One line per check: PASS, FAIL or SKIP, its name, then what it measured or why it could not run.
The exit status is 1 if any check failed.

    environment       torch and its CUDA, the driver, Triton, the GPU; FAIL when an NVIDIA GPU is here but
                      torch cannot use it (a driver older than this torch's CUDA needs: the line says what to do)
    launcher tools    the C compiler and Python headers Triton builds its CUDA launcher with at run time
    kernel ...        carope_triton's fused kernels against carope.rotate: the model's own self-check, then
                      forward and backward (float32, several head sizes), long phases, bfloat16
    compiled ...      a few gpt-tiny training steps, torch.compile against eager, for rope, carope (the
                      reference rotation) and carope-fused: finite losses that agree
    speed ...         tokens/s of rope, carope and carope-fused: the rotation alone (forward and backward),
                      then the whole compiled training step; ratios to rope

Without CUDA it runs what a CPU can, at small sizes: the kernels in Triton's interpreter, a tiny model
compiled with the aot_eager backend; it skips, and names, what only a GPU can show (the launcher, the
fused kernel's speed). No speed of this project on a GPU has been measured yet: this prints the first.
"""

import json
import math
import os
import re
import subprocess
import sys
import tempfile
import time

if not __package__:  # run as a file: the repository's root is then not on the import path
    sys.exit("dev/gpu_check.py: run it from the repository's root as: python -m dev.gpu_check")

import torch

from support import cli, devices, files
MAX_ERR = {torch.float32: 1e-4, torch.bfloat16: 2 ** -7}  # tests/test_carope_triton.py's tolerances


class Report:
    """The checks so far; each add() prints its line at once."""

    def __init__(self):
        self.checks = []

    def add(self, status, name, detail, **values):
        self.checks.append(dict(status=status, name=name, detail=detail, **values))
        print(f"{status:<4} {name}: {detail}", flush=True)

    def run(self, name, check, *args):
        """check(*args) -> (status, detail, values); an exception is a FAIL that names it."""
        t0 = time.perf_counter()
        try:
            status, detail, values = check(*args)
        except Exception as e:  # report and go on: the next checks may still tell something
            lines = str(e).strip().splitlines()
            status, detail, values = "FAIL", f"{type(e).__name__}: {lines[0][:300] if lines else ''}", {}
        self.add(status, name, detail, seconds=round(time.perf_counter() - t0, 2), **values)
        return status

    @property
    def failed(self):
        return [c["name"] for c in self.checks if c["status"] == "FAIL"]


def rel_err(a, e):
    """max |a - e| over max |e|: an error relative to the values' scale (NaN if anything is NaN)."""
    a, e = a.detach().float(), e.detach().float()
    return ((a - e).abs().max() / e.abs().max().clamp_min(1e-30)).item()


def sync(device):
    if device.type == "cuda":
        torch.cuda.synchronize(device)


# -----------------------------------------------------------------------------
# The checks. Each returns (status, detail, values).


def environment(name):
    """What this machine is, and the device the other checks use (the driver check of devices.pick_device)."""
    try:
        import triton
        triton_version = triton.__version__
    except ImportError:
        triton_version = None
    smi = devices.nvidia_smi()
    env = dict(torch=torch.__version__, cuda=torch.version.cuda, driver=smi[1] if smi else None,
               triton=triton_version, interpreter=os.environ.get("TRITON_INTERPRET") == "1")
    try:
        device = torch.device(devices.pick_device(name))
    except SystemExit as e:
        return "FAIL", str(e.code), dict(env, device="cpu")
    if device.type == "cuda":
        major, minor = torch.cuda.get_device_capability(device)
        env.update(gpu=torch.cuda.get_device_name(device), capability=f"sm_{major}{minor}")
        where = f"{env['gpu']} ({env['capability']}), driver {env['driver'] or '?'}"
    else:
        where = (f"{device.type.upper()}, no CUDA: kernels in Triton's interpreter, tiny sizes"
                 if env["interpreter"] else f"{device.type.upper()}, no CUDA")
    return "PASS", (f"torch {env['torch']} (CUDA {env['cuda'] or 'none'}), Triton {triton_version or 'not installed'}"
                    f"; {where}"), dict(env, device=str(device))


def launcher_tools(device):
    from support import carope_triton
    missing = carope_triton.launcher_tools_missing()
    if device.type != "cuda":
        return "SKIP", "only CUDA launches are built" + (f" ({missing})" if missing else ""), {}
    if missing:
        return "FAIL", missing, {}
    import sysconfig
    cc = os.environ.get("CC") or carope_triton.shutil.which("gcc") or carope_triton.shutil.which("clang")
    return "PASS", f"C compiler {cc}, Python.h in {sysconfig.get_paths()['include']}", {}


def kernel_case(carope, carope_triton, device, B, H, T, D, dtype):
    """Relative errors (forward, backward) of the fused rotation against carope.rotate for one shape."""
    g = torch.Generator().manual_seed(B * 1000 + T + D)
    q, k = (torch.randn(B, T, H, D, generator=g).to(device, dtype).transpose(1, 2).requires_grad_() for _ in range(2))
    f = (0.05 + 0.9 * torch.rand(B, T, H, generator=g)).to(device).requires_grad_()
    w = [torch.randn(B, H, T, D, generator=g).to(device, dtype) for _ in range(2)]
    i = torch.arange(D // 2, dtype=torch.float32, device=device)
    phase = torch.cumsum(f.unsqueeze(-1) ** i, dim=1).transpose(1, 2)  # phi_i(m) = sum_{t<=m} f_t^i
    ref = carope.rotate(q, phase.cos(), phase.sin()), carope.rotate(k, phase.cos(), phase.sin())
    got = carope_triton.carope_rotate(q, k, f)
    fwd = max(rel_err(a, e) for a, e in zip(got, ref))
    grads = zip(torch.autograd.grad(got, (q, k, f), w), torch.autograd.grad(ref, (q, k, f), w))
    bwd = [rel_err(a, e) for a, e in grads]
    return fwd, max(bwd[:2]), bwd[2]  # forward; dq, dk; df


def kernel_checks(report, device, gpu):
    import carope
    from support import carope_triton
    probe = torch.zeros(1, device=device)
    if not carope_triton.fused_available(probe):
        why = ("Triton is not installed" if carope_triton.triton is None else
               "no CUDA, and not in Triton's interpreter (TRITON_INTERPRET=1 before Triton's first import)")
        for name in ("self-check", "forward", "backward", "long phases", "bfloat16"):
            report.add("SKIP", f"kernel {name}", why)
        return

    def self_check():
        why = carope_triton.self_check(device, 64, torch.float32)
        return ("FAIL", why, {}) if why else ("PASS", "head size 64, float32: as carope.rotate (the check "
                                              "the model runs before it uses the kernel)", {})
    report.run("kernel self-check", self_check)

    # head sizes 32, 64, 128 (P = 24 is padded to 32 and masked); T: one token, partial last tiles
    shapes = [(2, 3, 1, 32), (2, 2, 300, 64), (1, 2, 150, 48), (2, 2, 200, 128)] if gpu else \
        [(2, 3, 1, 16), (1, 2, 70, 16), (1, 1, 40, 48)]
    results = {}

    def forward():
        for shape in shapes:
            results[shape] = kernel_case(carope, carope_triton, device, *shape, torch.float32)
        worst = max(r[0] for r in results.values())
        return ("PASS" if worst <= MAX_ERR[torch.float32] else "FAIL",
                f"max error {worst:.2g} of the values' scale (bound 1e-4), (B, H, T, D) in {shapes}", dict(max_err=worst))

    def backward():
        if len(results) < len(shapes):
            return "SKIP", "the forward check did not finish", {}
        worst = max(max(r[1:]) for r in results.values())
        return ("PASS" if worst <= MAX_ERR[torch.float32] else "FAIL",
                f"dq, dk, df: max error {worst:.2g} of their scale (bound 1e-4)", dict(max_err=worst))

    def long_phases():
        B, H, T, D = 1, 1, 4500 if gpu else 1500, 16  # the interpreter: shorter, still phases of 1,500 rad
        P = D // 2
        g = torch.Generator().manual_seed(3)
        f = (0.98 + 0.0199 * torch.rand(B, T, H, generator=g)).to(device)
        q = torch.cat((torch.ones(B, H, T, P), torch.zeros(B, H, T, P)), dim=-1).to(device).requires_grad_()
        k = torch.randn(B, H, T, D, generator=g).to(device)
        exact = torch.cumsum(f.double().unsqueeze(-1) ** torch.arange(P, dtype=torch.float64, device=device),
                             dim=1).transpose(1, 2)
        bound = carope_triton.phase_error_bound(exact.max().item(), device)
        ulp = 2.0 ** (math.floor(math.log2(exact.max().item())) - 23)

        def error(c, s):  # |angle of (c, s) - exact phase|, modulo 2 pi
            d = torch.atan2(s.double(), c.double()) - exact
            return (torch.remainder(d + math.pi, 2 * math.pi) - math.pi).abs().max().item()
        q_rot, k_rot = carope_triton.carope_rotate(q, k, f)
        dq, = torch.autograd.grad((q_rot, k_rot), (q,), (q.detach(), torch.zeros_like(k_rot)))
        fwd, bwd = error(q_rot[..., :P], q_rot[..., P:]), error(dq[..., :P], -dq[..., P:])  # dq = (cos, -sin)
        ok = fwd <= bound and bwd <= bound
        return ("PASS" if ok else "FAIL", f"T = {T}, phases to {exact.max().item():.0f} rad: forward {fwd / ulp:.2f}, "
                f"backward {bwd / ulp:.2f} float32 ulps from exact (bound {bound / ulp:.2f})",
                dict(forward_ulps=fwd / ulp, backward_ulps=bwd / ulp, bound_ulps=bound / ulp))

    def bfloat16():
        shape = (2, 2, 150, 64) if gpu else (1, 2, 70, 16)
        fwd, dqk, df = kernel_case(carope, carope_triton, device, *shape, torch.bfloat16)
        ok = fwd <= MAX_ERR[torch.bfloat16] and dqk <= MAX_ERR[torch.bfloat16] and df <= MAX_ERR[torch.float32]
        return ("PASS" if ok else "FAIL", f"{shape}: q_rot, k_rot {fwd:.2g}, dq, dk {dqk:.2g} (bound 2^-7 = one bf16 "
                f"step), df {df:.2g} (bound 1e-4)", dict(forward=fwd, dqk=dqk, df=df))

    for name, check in (("forward", forward), ("backward", backward), ("long phases", long_phases),
                        ("bfloat16", bfloat16)):
        report.run(f"kernel {name}", check)


def model_checks(report, device, gpu):
    """Compiled training steps against eager for rope, carope and carope-fused; then each one's speed."""
    import copy

    import carope
    from support import carope_triton
    bf16 = gpu and torch.cuda.is_bf16_supported()
    dtype = torch.bfloat16 if bf16 else torch.float32
    if gpu:
        cfg, B, T, steps, timed, backend = dict(carope.PRESETS["gpt-tiny"]), 8, 512, 4, 10, "inductor"
    else:
        cfg = dict(n_layer=1, n_head=2, n_embd=32, block_size=64, vocab_size=256)
        B, T, steps, timed, backend = 2, 32, 2, 2, "aot_eager"
    tol = 2e-3 if bf16 else 1e-4  # |compiled - eager| / eager loss, per step (bf16: not yet seen on a GPU)
    setting = f"{'gpt-tiny' if gpu else 'a 1-layer model'}, B={B}, T={T}, {str(dtype)[6:]}, backend {backend}"
    speeds = {}
    for pe in ("rope", "carope", "carope-fused"):
        fused = pe == "carope-fused"

        def steps_check():
            if fused and not carope_triton.use_fused(torch.zeros(1, 1, 1, cfg["n_embd"] // cfg["n_head"],
                                                                 device=device, dtype=dtype)):
                return "SKIP", "the fused kernel does not run here (see the kernel checks)", {}
            torch.manual_seed(0)
            config = carope.GPTConfig(**cfg, pe="rope" if pe == "rope" else "carope", fused_carope=fused)
            eager = carope.GPT(config).to(device)
            with torch.no_grad():
                for m in eager.modules():
                    if isinstance(m, carope.CARoPE):  # W = 0 (its init) would make f the same for every token
                        torch.nn.init.normal_(m.weight, std=0.1)
                    if isinstance(m, carope.CausalSelfAttention):  # sharp attention: positions change the loss
                        m.c_attn.weight[:2 * config.n_embd] *= 30
            model = copy.deepcopy(eager)
            torch._dynamo.reset()
            compiled = torch.compile(model, backend=backend)
            idx = torch.randint(0, config.vocab_size, (B, T + 1), generator=torch.Generator().manual_seed(1)).to(device)
            x, y = idx[:, :-1], idx[:, 1:]
            losses = {}
            for name, net, raw in (("eager", eager, eager), ("compiled", compiled, model)):
                opt = raw.configure_optimizers(0.1, 1e-3, (0.9, 0.95), device.type)

                def step():
                    with torch.autocast(device.type, dtype=torch.bfloat16, enabled=bf16):
                        _, loss = net(x, y)  # the same batch every step: the loss must fall
                    loss.backward()
                    opt.step()
                    opt.zero_grad(set_to_none=True)
                    return loss.detach()
                losses[name] = [step().item() for _ in range(steps)]
                if name == "compiled" and not (fused and not gpu):  # the interpreter's speed means nothing
                    sync(device)
                    t0 = time.perf_counter()
                    for _ in range(timed):
                        step()
                    sync(device)
                    speeds[pe] = B * T * timed / (time.perf_counter() - t0)
            e, c = losses["eager"], losses["compiled"]
            diff = max(abs(a - b) / abs(b) for a, b in zip(c, e))
            ok = all(map(math.isfinite, e + c)) and diff <= tol and e[-1] < e[0]
            return ("PASS" if ok else "FAIL", f"{setting}: losses eager {', '.join(f'{v:.5f}' for v in e)}, "
                    f"compiled {', '.join(f'{v:.5f}' for v in c)}: max relative difference {diff:.1g} "
                    f"(bound {tol:g}), falling", dict(eager=e, compiled=c, max_rel_diff=diff))
        report.run(f"compiled steps {pe}", steps_check)
    report.run("speed model", lambda: speed_line(speeds, f"compiled training step (forward, backward, AdamW), "
                                                         f"{setting}", gpu))


def speed_line(speeds, setting, gpu):
    if "rope" not in speeds:
        return "SKIP", "rope did not run", {}
    line = ", ".join(f"{pe} {v / 1e6:.3g}M tokens/s" + ("" if pe == "rope" else f" ({v / speeds['rope']:.2f}x)")
                     for pe, v in speeds.items())
    if "carope-fused" not in speeds:
        line += ", carope-fused skipped (" + ("the kernel does not run here" if gpu else "interpreter: no speed") + ")"
    return "PASS", f"{line}; {setting}", dict(tokens_per_s=speeds)


def rotation_speed(device, gpu):
    import argparse

    from dev import bench
    args = argparse.Namespace(preset="gpt-tiny" if gpu else "nano", batch_size=8 if gpu else 1, compile=False,
                              dtype="bfloat16" if gpu and torch.cuda.is_bf16_supported() else "float32")
    T, timed = (1024, 20) if gpu else (64, 3)
    speeds = {}
    for pe in bench.ROTATION_PE:
        if pe == "carope-fused" and not gpu:
            continue  # the interpreter: a speed that means nothing
        try:
            step, _ = bench.rotation_case(args, pe, T, device)
        except bench.Unavailable:
            continue
        for _ in range(2):
            step()  # warm-up: Triton's compile, the caching allocator
        sync(device)
        t0 = time.perf_counter()
        for _ in range(timed):
            step()
        sync(device)
        speeds[pe] = args.batch_size * T * timed / (time.perf_counter() - t0)
    return speed_line(speeds, f"rotation of q and k, forward and backward, eager, {args.preset} heads, "
                              f"B={args.batch_size}, T={T}, {args.dtype}", gpu)


# -----------------------------------------------------------------------------
# --registers: what ptxas makes of both kernels, on any machine with Triton


def registers(head_sizes, arch):
    """One line per kernel, head size and dtype at carope_triton's tiles: registers a thread, spills."""
    os.environ.pop("TRITON_INTERPRET", None)
    os.environ.setdefault("TRITON_DEFAULT_FP_FUSION", "1")  # Triton 3.9's default, said aloud: no warning
    import triton
    from triton.backends.compiler import GPUTarget
    from triton.compiler import ASTSource

    from support import carope_triton
    try:
        from triton.backends.nvidia.compiler import get_ptxas
        ptxas = get_ptxas(arch).path
    except Exception:
        ptxas = triton.knobs.nvidia.ptxas.path
    report = Report()
    for D in head_sizes:
        block_t, block_p, warps = carope_triton._tiles(D // 2)
        for dtype in ("fp32", "bf16"):
            for kernel in (carope_triton._rotate_fwd, carope_triton._rotate_bwd):
                def check():
                    signature = {n: "constexpr" if n.startswith("BLOCK") else "i32" if not n.endswith("_ptr") else
                                 "*fp32" if n in ("f_ptr", "df_ptr") else f"*{dtype}" for n in kernel.arg_names}
                    src = ASTSource(fn=kernel, signature=signature, constexprs=dict(BLOCK_T=block_t, BLOCK_P=block_p))
                    ptx = triton.compile(src, target=GPUTarget("cuda", arch, 32), options=dict(num_warps=warps)).asm["ptx"]
                    with tempfile.TemporaryDirectory() as tmp:
                        path = os.path.join(tmp, "k.ptx")
                        with open(path, "w") as f:
                            f.write(ptx)
                        gpu_name = re.search(r"\.target (\w+)", ptx).group(1)
                        out = subprocess.run([ptxas, "-v", f"--gpu-name={gpu_name}", path, "-o", os.devnull],
                                             capture_output=True, text=True).stderr
                    regs = int(re.search(r"Used (\d+) registers", out).group(1))
                    spill = [int(n) for n in re.search(r"(\d+) bytes spill stores, (\d+) bytes spill loads", out).groups()]
                    return ("PASS" if spill == [0, 0] else "FAIL",
                            f"{regs} registers a thread, spills {spill[0]} B stored / {spill[1]} B loaded "
                            f"({gpu_name}, BLOCK_T {block_t}, BLOCK_P {block_p}, {warps} warps; Triton {triton.__version__})",
                            dict(registers=regs, spill_bytes=spill))
                report.run(f"registers {kernel.__name__[1:]} D={D} {dtype}", check)
    return report


# -----------------------------------------------------------------------------


def parse_args(argv):
    p = cli.Parser(prog="gpu_check.py", description="The first command on a new GPU machine (see the file's docstring).")
    p.add_argument("--device", type=cli.device, help="cuda, cuda:N or cpu (default: cuda if torch sees one)")
    p.add_argument("--json", help="also write the results to this JSON file")
    p.add_argument("--registers", action="store_true", help="only compile both kernels for --arch with ptxas and "
                   "report registers and spills (no GPU needed)")
    p.add_argument("--arch", type=cli.integer(70), default=90, help="--registers: compute capability (default 90)")
    p.add_argument("--head-sizes", type=cli.lengths, default=[32, 64, 128], help="--registers: head sizes D "
                   "(default 32,64,128)")
    args = p.parse_args(argv)
    if args.json:
        folder = os.path.dirname(os.path.abspath(args.json))
        if os.path.isdir(args.json) or not os.path.isdir(folder):
            p.error(f"--json {args.json}: not a file in an existing directory; give one, e.g. gpu_check.json")
        try:
            files.in_place(args.json)  # a device or a pipe is written in place; a block device is refused
        except OSError as e:
            p.error(f"--json {args.json}: {e.strerror}")
    return args


def main(argv=None):
    args = parse_args(argv)
    t0 = time.perf_counter()
    if args.registers:
        report = registers(args.head_sizes, args.arch)
        env = dict(triton_registers=True)
    else:
        if not torch.cuda.is_available() and "triton" not in sys.modules:
            os.environ.setdefault("TRITON_INTERPRET", "1")  # read when Triton is first imported (by carope)
        report = Report()
        env = {}

        def env_check():
            status, detail, values = environment(args.device)
            env.update(values)
            return status, detail, values
        report.run("environment", env_check)
        device = torch.device(env.get("device", "cpu"))
        gpu = device.type == "cuda"
        if not gpu:
            torch.set_num_threads(1)  # tiny sizes: more threads only wait on each other (and on a shared CPU)
        report.run("launcher tools", launcher_tools, device)
        kernel_checks(report, device, gpu)
        model_checks(report, device, gpu)
        report.run("speed rotation", rotation_speed, device, gpu)
    failed = report.failed
    total = time.perf_counter() - t0
    print(f"{len(report.checks)} checks in {total:.0f} s: " +
          (f"{len(failed)} failed ({', '.join(failed)})" if failed else "none failed"), flush=True)
    if args.json:
        result = dict(passed=not failed, seconds=round(total, 1), environment=env, checks=report.checks)
        files.atomic_write(args.json, lambda f: f.write(json.dumps(result, indent=1).encode()))
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
