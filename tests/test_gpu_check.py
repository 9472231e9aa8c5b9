"""gpu_check.py: its CPU run (the kernels in Triton's interpreter, a tiny compiled model), its report and JSON."""

import importlib.util
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))

from dev import gpu_check  # noqa: E402

EXPECTED = ["environment", "launcher tools", "kernel self-check", "kernel forward", "kernel backward",
            "kernel long phases", "kernel bfloat16", "compiled steps rope", "compiled steps carope",
            "compiled steps carope-fused", "speed model", "speed rotation"]


def gpu_check_cli(*argv, timeout=300, **env):
    """gpu_check.py in its own process: TRITON_INTERPRET=1 must be set before Triton's first import,
    which pytest's other test files may already have done in this one."""
    env = {**os.environ, "OMP_NUM_THREADS": "1", **env}
    return subprocess.run([sys.executable, "-m", "dev.gpu_check", *argv], cwd=REPO, env=env,
                          capture_output=True, text=True, timeout=timeout)


@pytest.mark.skipif(importlib.util.find_spec("triton") is None, reason="the kernel checks need Triton")
def test_cpu_run_passes_every_check_it_can_and_names_what_it_skips(tmp_path):
    out = tmp_path / "gpu_check.json"
    run = gpu_check_cli("--device", "cpu", "--json", str(out), TRITON_INTERPRET="1")
    assert run.returncode == 0, run.stdout[-3000:] + run.stderr[-3000:]
    report = json.loads(out.read_text())
    assert [p.name for p in tmp_path.iterdir()] == ["gpu_check.json"]  # written by rename: no temp file left
    checks = {c["name"]: c for c in report["checks"]}
    assert list(checks) == EXPECTED and report["passed"] is True
    lines = run.stdout.strip().splitlines()
    assert len(lines) == len(EXPECTED) + 1 and lines[-1].startswith(f"{len(EXPECTED)} checks in ")
    for line, c in zip(lines, report["checks"]):  # one line per check, as in the JSON
        assert line == f"{c['status']:<4} {c['name']}: {c['detail']}"
    assert report["environment"]["device"] == "cpu" and report["environment"]["interpreter"] is True
    assert checks["launcher tools"]["status"] == "SKIP"  # only CUDA builds a launcher
    assert all(checks[n]["status"] == "PASS" for n in EXPECTED if n != "launcher tools")
    long = checks["kernel long phases"]
    assert long["forward_ulps"] <= long["bound_ulps"] == 1.25 and long["backward_ulps"] <= 1.25
    for pe in ("rope", "carope", "carope-fused"):  # finite, equal, and learning
        c = checks[f"compiled steps {pe}"]
        assert c["max_rel_diff"] <= 1e-4 and c["eager"][-1] < c["eager"][0]
    # the fused model computes the reference model's losses; rope's differ (the check can tell them apart)
    fused, ref, rope = (checks[f"compiled steps {pe}"]["eager"] for pe in ("carope-fused", "carope", "rope"))
    assert max(abs(a - b) for a, b in zip(fused, ref)) < 1e-4 < max(abs(a - b) for a, b in zip(ref, rope))
    for name in ("speed model", "speed rotation"):  # the interpreter's speed is not reported as one
        speeds = checks[name]["tokens_per_s"]
        assert set(speeds) == {"rope", "carope"} and min(speeds.values()) > 0
        assert "carope-fused skipped (interpreter: no speed)" in checks[name]["detail"]


def test_without_the_interpreter_the_kernel_checks_are_skipped_with_the_reason(monkeypatch, capsys):
    monkeypatch.setenv("TRITON_INTERPRET", "0")  # main() would set it for a first import of Triton: not in here
    monkeypatch.setattr(gpu_check, "model_checks", lambda report, device, gpu: None)
    monkeypatch.setattr(gpu_check, "rotation_speed", lambda device, gpu: ("SKIP", "not here", {}))
    from support import carope_triton
    monkeypatch.setattr(carope_triton, "fused_available", lambda t: False)
    assert gpu_check.main(["--device", "cpu"]) == 0
    out = capsys.readouterr().out
    assert out.count("SKIP kernel ") == 5
    assert ("not in Triton's interpreter (TRITON_INTERPRET=1 before Triton's first import)" in out
            or "Triton is not installed" in out)


def test_a_failed_check_fails_the_run(monkeypatch, capsys, tmp_path):
    """A check that raises is a FAIL line naming the exception (first line only), the others still run,
    the exit status is 1 and the JSON says passed: false."""
    monkeypatch.setenv("TRITON_INTERPRET", "0")

    def broken(report, device, gpu):
        report.run("compiled steps rope", lambda: 1 / 0)
    monkeypatch.setattr(gpu_check, "kernel_checks", lambda report, device, gpu: None)
    monkeypatch.setattr(gpu_check, "model_checks", broken)
    monkeypatch.setattr(gpu_check, "rotation_speed", lambda device, gpu: ("PASS", "fast", {}))
    out = tmp_path / "r.json"
    assert gpu_check.main(["--device", "cpu", "--json", str(out)]) == 1
    lines = capsys.readouterr().out.strip().splitlines()
    assert "FAIL compiled steps rope: ZeroDivisionError: division by zero" in lines
    assert lines[-2] == "PASS speed rotation: fast"
    assert lines[-1].endswith("1 failed (compiled steps rope)")
    report = json.loads(out.read_text())
    assert report["passed"] is False and [c["status"] for c in report["checks"]][-2:] == ["FAIL", "PASS"]


def test_an_unusable_gpu_is_a_failed_environment_and_the_rest_runs_on_the_cpu(monkeypatch, capsys):
    from support import devices
    import torch
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    monkeypatch.setattr(torch.version, "cuda", "13.0")
    monkeypatch.delenv("CUDA_VISIBLE_DEVICES", raising=False)
    monkeypatch.setattr(devices, "nvidia_smi", lambda: ("NVIDIA H100 80GB HBM3", "570.86.15"))
    status, detail, values = gpu_check.environment(None)
    assert status == "FAIL" and "needs NVIDIA driver R580 or newer" in detail and values["device"] == "cpu"
    assert values["driver"] == "570.86.15" and values["cuda"] == "13.0"


@pytest.mark.parametrize("argv, message", [
    (["--json", "/nonexistent-dir/g.json"], "--json /nonexistent-dir/g.json: not a file in an existing directory"),
    (["--device", "gpu"], "--device gpu: must be cpu, cuda, cuda:N or mps"),
    (["--head-sizes", "0"], "--head-sizes 0: must be comma-separated positive lengths"),
])
def test_bad_arguments_are_one_line(argv, message):
    with pytest.raises(SystemExit) as e:
        gpu_check.main(argv)
    assert str(e.value.code).startswith(f"gpu_check.py: {message}")
    assert "\n" not in str(e.value.code)


def ptxas_ships():
    try:
        from triton.backends.nvidia.compiler import get_ptxas
        return os.path.isfile(get_ptxas(90).path)
    except Exception:
        return False


@pytest.mark.skipif(not ptxas_ships(), reason="needs Triton's NVIDIA backend and its ptxas")
def test_registers_of_both_kernels_without_a_gpu():
    """The backward kernel at the tiles carope_triton chose compiles for sm_90 without spilling (it spilled
    at the 255-register cap with the tiles before)."""
    run = gpu_check_cli("--registers", "--head-sizes", "64")
    assert run.returncode == 0, run.stdout[-3000:] + run.stderr[-3000:]
    lines = run.stdout.strip().splitlines()
    assert len(lines) == 5 and all(line.startswith("PASS registers rotate_") for line in lines[:4])
    assert all("spills 0 B stored / 0 B loaded (sm_90a" in line for line in lines[:4])


def test_json_to_a_device_or_a_pipe_is_written_in_place(tmp_path, monkeypatch):
    """--json /dev/null must not rename a regular file over the device (as root, over the system's /dev/null):
    a pipe given as --json receives the report and stays a pipe; a block device (a disk) is refused in one line."""
    import threading
    report = gpu_check.Report()
    report.add("PASS", "stand-in", "a check")
    monkeypatch.setattr(gpu_check, "registers", lambda *a: report)  # no ptxas needed
    fifo = tmp_path / "pipe"
    os.mkfifo(fifo)
    got = []
    reader = threading.Thread(target=lambda: got.append(fifo.read_bytes()), daemon=True)
    reader.start()
    assert gpu_check.main(["--registers", "--json", str(fifo)]) == 0
    reader.join(timeout=10)
    assert fifo.is_fifo() and json.loads(got[0])["checks"][0]["name"] == "stand-in"
    try:
        os.mknod(tmp_path / "disk", 0o600 | __import__("stat").S_IFBLK, os.makedev(7, 0))  # root only
    except OSError:
        return
    with pytest.raises(SystemExit) as e:
        gpu_check.main(["--registers", "--json", str(tmp_path / "disk")])
    assert str(e.value.code) == f"gpu_check.py: --json {tmp_path / 'disk'}: a block device, not a file: give a file name"
    assert (tmp_path / "disk").is_block_device()
