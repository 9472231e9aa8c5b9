"""
Devices, precision, compilation and processes (support module): what train.py, sample.py and bench.py
ask of the machine, each answer a value plus the reason for it, so the log can say why.
"""

import ctypes
import os
import subprocess
import sys
from contextlib import contextmanager, nullcontext

import torch
import torch.distributed as dist


# CUDA major version -> the oldest NVIDIA driver branch that runs it (NVIDIA's CUDA compatibility
# tables: 13.x needs R580, 12.x R525 through minor-version compatibility, 11.x R450).
DRIVER_FOR_CUDA = {13: 580, 12: 525, 11: 450}
TORCH_INDEX = "https://download.pytorch.org/whl/"  # PyTorch's own index: one folder per CUDA build, e.g. cu126


def nvidia_dev_node():
    """'/dev/nvidia0' if the NVIDIA kernel driver exposes a GPU here, else None (a probe tests replace)."""
    return "/dev/nvidia0" if os.path.exists("/dev/nvidia0") else None


def nvidia_smi():
    """(first GPU's name, driver version) from `nvidia-smi`, or None without one (a probe tests replace)."""
    try:
        out = subprocess.run(["nvidia-smi", "--query-gpu=name,driver_version", "--format=csv,noheader"],
                             capture_output=True, text=True, timeout=20)
    except (OSError, subprocess.SubprocessError):
        return None
    rows = [line.split(",") for line in out.stdout.splitlines() if line.count(",") == 1]
    return (rows[0][0].strip(), rows[0][1].strip()) if out.returncode == 0 and rows else None


def cuda_unusable():
    """Why torch sees no CUDA although an NVIDIA GPU is here: one line naming the cause and both ways out;
    None when torch sees CUDA, when no NVIDIA GPU is here, or when CUDA_VISIBLE_DEVICES hides them on purpose."""
    if torch.cuda.is_available() or os.environ.get("CUDA_VISIBLE_DEVICES", "x").strip() in ("", "-1"):
        return None
    smi, node = nvidia_smi(), nvidia_dev_node()
    if smi is None and node is None:
        return None
    found = f"{smi[0]}, driver {smi[1]}" if smi else f"{node} is present"
    built, driver = torch.version.cuda, int(smi[1].split(".")[0]) if smi and smi[1][:1].isdigit() else None
    need = DRIVER_FOR_CUDA.get(int(built.split(".")[0])) if built else None
    if built is None:
        cause = f"this torch ({torch.__version__}) is a CPU-only build"
    elif need and driver and driver >= need:  # the driver is new enough: something else hides the GPU
        cause = (f"this torch ({torch.__version__}, CUDA {built}) sees no GPU although driver R{driver} runs "
                 f"CUDA {built}; check that nvidia-smi works and what CUDA_VISIBLE_DEVICES says")
    else:
        cause = (f"this torch ({torch.__version__}) is built for CUDA {built}"
                 + (f", which needs NVIDIA driver R{need} or newer" if need else ""))
    example = f"pip install torch=={torch.__version__.split('+')[0]} --index-url {TORCH_INDEX}cu126"
    return (f"an NVIDIA GPU is here ({found}) but torch cannot use it: {cause}. Either install the torch "
            f"build for your driver from PyTorch's index (nvidia-smi shows the newest CUDA it runs; e.g. "
            f"{example}), or pass --device cpu")


def pick_device(name=None):
    """The device to run on: `name` if this machine has it, else one line saying what it has.

    With no name: CUDA, else MPS, else the CPU; but never the CPU silently on a machine whose NVIDIA GPU
    torch cannot use (a driver older than this torch's CUDA needs): that stops with the cause and the fix."""
    kind = name.split(":")[0] if name else None
    if kind in (None, "cuda") and (why := cuda_unusable()):
        raise SystemExit(f"--device {name}: {why}" if name else why)
    device = name or ("cuda" if torch.cuda.is_available() else
                      "mps" if torch.backends.mps.is_available() else "cpu")
    kind, _, index = device.partition(":")
    if kind not in ("cpu", "cuda", "mps") or (index and not (kind == "cuda" and index.isdigit())):
        raise SystemExit(f"--device {device}: not a device name; use cpu, cuda, cuda:N or mps")
    if kind == "cuda" and not torch.cuda.is_available():
        raise SystemExit(f"--device {device}: this torch ({torch.__version__}) sees no CUDA GPU; use --device cpu")
    if kind == "cuda" and index and int(index) >= torch.cuda.device_count():
        n = torch.cuda.device_count()
        raise SystemExit(f"--device {device}: only {n} CUDA device(s) here; use cuda:0 .. cuda:{n - 1}")
    if kind == "mps" and not torch.backends.mps.is_available():
        raise SystemExit(f"--device {device}: MPS is not available here; use --device cpu")
    return device


def setup_device(name=None):
    """Returns (rank, world, device). Under torchrun (RANK, WORLD_SIZE set), joins the process group."""
    ddp = "RANK" in os.environ and "WORLD_SIZE" in os.environ
    rank, local_rank, world = (int(os.environ["RANK"]), int(os.environ["LOCAL_RANK"]),
                               int(os.environ["WORLD_SIZE"])) if ddp else (0, 0, 1)
    device = pick_device(name)
    kind = device.split(":")[0]
    if kind == "cuda" and ddp:
        device = f"cuda:{local_rank}"  # one GPU per process
    if kind == "cuda":
        torch.cuda.set_device(device)
    if ddp:  # NCCL moves CUDA tensors between GPUs; gloo is the CPU backend
        dist.init_process_group(backend="nccl" if kind == "cuda" else "gloo",
                                device_id=torch.device(device) if kind == "cuda" else None)
    return rank, world, device


def pick_dtype(dtype, kind):
    """Returns (dtype, autocast context, why): bf16 autocast where the GPU has it, float32 elsewhere."""
    bf16 = kind == "cuda" and torch.cuda.is_bf16_supported(including_emulation=False)
    if dtype is None:
        dtype, why = ("bfloat16", "bf16 autocast") if bf16 else \
            ("float32", {"cpu": "bf16 is usually slower on CPU; --dtype bfloat16 to try",
                         "mps": "bf16 autocast on MPS is new; --dtype bfloat16 to try",
                         "cuda": "this GPU has no bf16"}[kind])
    else:
        why = "from --dtype"
    if dtype == "bfloat16" and kind == "cuda" and not bf16:
        raise SystemExit("--dtype bfloat16: this GPU does not support bfloat16; use --dtype float32")
    # autocast keeps the weights and the optimizer in float32 and runs matmuls in bf16
    ctx = torch.autocast(device_type=kind, dtype=torch.bfloat16) if dtype == "bfloat16" else nullcontext()
    return dtype, ctx, why


def pick_compile(want, kind):
    """Returns (compile?, why or None). torch.compile pays off on CUDA (Triton kernels); elsewhere it mostly
    costs compile time."""
    reason = None if want is not None else ("default on CUDA" if kind == "cuda" else "default: CUDA only")
    want = want if want is not None else kind == "cuda"
    if want and sys.platform == "win32":
        return False, "torch.compile is not supported on Windows; running eagerly"
    if want and not torch._dynamo.is_dynamo_supported():
        return False, (f"torch {torch.__version__} cannot compile on Python "
                       f"{sys.version_info.major}.{sys.version_info.minor}; running eagerly")
    if want and kind == "cuda":
        try:
            import triton  # noqa: F401  (inductor's GPU code generator)
        except ImportError:
            return False, "Triton is not installed; running eagerly"
    if want and kind == "mps":
        return False, "torch.compile does not support MPS well yet; running eagerly"
    if want and kind == "cpu" and (missing := cpu_compiler_missing()):
        return False, f"{missing}; running eagerly"
    return want, reason


def cpu_compiler_missing():
    """Why inductor cannot compile for the CPU here, or None: it builds C++ with the compiler it finds (g++, or $CXX
    when torch was imported), and without one fails at the first forward pass, after the run has begun."""
    from torch._inductor import cpp_builder  # only on a CPU --compile: importing inductor takes seconds
    try:
        cpp_builder.get_cpp_compiler()
    except Exception as e:  # InvalidCxxCompiler, or whatever else keeps inductor from finding one
        return (f"torch.compile on a CPU needs a C++ compiler and found none ({type(e).__name__}; install g++ or "
                "set CXX)")
    return None


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


@contextmanager
def processes(name=None):
    """setup_device as a `with`: yields (rank, world, device); under torchrun every rank leaves together
    and the process group is torn down at the end, also after an error."""
    rank, world, device = setup_device(name)
    try:
        yield rank, world, device
        if dist.is_initialized():
            dist.barrier()  # all ranks leave together: tearing gloo down under a busy peer can abort it
    finally:
        if dist.is_initialized():
            dist.destroy_process_group()


# Dense bf16 tensor-core peaks in TFLOP/s, by the exact name torch.cuda.get_device_name reports. Source:
# NVIDIA's datasheets (H100, H200, A100, L40/L40S, L4, A10; the HGX B200 and GB200 NVL72 spec tables),
# row "BF16 Tensor Core"; they quote it with 2:4 sparsity, halved here (H100 SXM: 1,979 -> 989).
# GeForce RTX 4090: the Ada architecture whitepaper, bf16 with float32 accumulation (autocast's).
PEAK_BF16_TFLOPS = {
    "NVIDIA H100 80GB HBM3": 989,  # H100 SXM5
    "NVIDIA H100 PCIe": 756,
    "NVIDIA H100 NVL": 835,
    "NVIDIA H200": 989,  # H200 SXM
    "NVIDIA H200 NVL": 835,
    "NVIDIA A100-SXM4-40GB": 312, "NVIDIA A100-SXM4-80GB": 312,
    "NVIDIA A100-PCIE-40GB": 312, "NVIDIA A100 80GB PCIe": 312,
    "NVIDIA B200": 2250,
    "NVIDIA GB200": 2500,
    "NVIDIA L40S": 362,
    "NVIDIA L40": 181,
    "NVIDIA L4": 121,
    "NVIDIA A10": 125,
    "NVIDIA GeForce RTX 4090": 165,
}


def peak_flops(device):
    """Peak dense bf16 flop/s of a CUDA device, for MFU, looked up by its exact name; None for a GPU
    not in PEAK_BF16_TFLOPS (an MFU against a guessed peak would mislead) and for other devices."""
    device = torch.device(device)
    if device.type != "cuda":
        return None  # CPUs and Apple GPUs: no single published figure to measure against
    peak = PEAK_BF16_TFLOPS.get(torch.cuda.get_device_name(device))
    return None if peak is None else peak * 1e12
