"""bench.py: one worker process per case, interleaved rounds, ratios to RoPE, one-line errors."""

import argparse
import json
import os
import statistics
import subprocess
import sys
from pathlib import Path

import pytest
import torch

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))

from dev import bench  # noqa: E402
from support import devices  # noqa: E402

CPU_ONLY = pytest.mark.skipif(torch.cuda.is_available(), reason="asserts what happens without CUDA")


def bench_cli(*argv, timeout=300):
    return subprocess.run([sys.executable, "-m", "dev.bench", *argv], cwd=REPO, capture_output=True, text=True,
                          timeout=timeout)


@pytest.fixture(scope="module")
def eval_run(tmp_path_factory):
    """One tiny run shared by the tests below: 2 encodings x 2 lengths x 3 rounds."""
    out = tmp_path_factory.mktemp("bench") / "bench.json"
    run = bench_cli("--pe", "carope,rope", "--seq-lens", "16,64", "--batch-size", "1", "--rounds", "3",
                    "--steps", "1", "--warmup", "0", "--mode", "eval", "--json", str(out))
    assert run.returncode == 0, run.stderr
    return run, json.loads(out.read_text()), out


def test_bench_reports_each_encoding_against_rope(eval_run):
    run, report, out = eval_run
    assert "| rope |" in run.stdout and "| carope |" in run.stdout and "1.00x" in run.stdout
    assert {"device", "torch", "args", "results"} <= report.keys() and report["args"]["preset"] == "nano"
    results = report["results"]
    assert [(r["pe"], r["T"]) for r in results] == [("rope", 16), ("carope", 16), ("rope", 64), ("carope", 64)]
    assert all(r["tokens_per_s"] > 0 and r["peak_mib"] == r["peak_mib"] for r in results)  # not NaN
    for r in results:  # the ratio is of the medians; RoPE's own is 1
        rope = next(x for x in results if x["pe"] == "rope" and x["T"] == r["T"])
        assert r["vs_rope"] == pytest.approx(r["tokens_per_s"] / rope["tokens_per_s"])
        assert r["vs_rope_min"] <= r["vs_rope"] <= r["vs_rope_max"]
    assert [p.name for p in out.parent.iterdir()] == ["bench.json"]  # written by rename: no .tmp left behind


def test_rounds_median_and_range(eval_run):
    _, report, _ = eval_run
    for r in report["results"]:
        assert len(r["rounds"]) == 3
        assert r["tokens_per_s"] == pytest.approx(statistics.median(r["rounds"]))
        assert (r["tokens_per_s_min"], r["tokens_per_s_max"]) == (min(r["rounds"]), max(r["rounds"]))
        assert r["ms"] == pytest.approx(1e3 * r["T"] / r["tokens_per_s"])  # batch 1: ms per token times T


def test_mfu_is_not_invented_on_cpu(eval_run):
    run, report, _ = eval_run
    assert all(r["mfu"] is None for r in report["results"]) and "| n/a |" in run.stdout


def test_rotation_mode_on_cpu(tmp_path):
    out = tmp_path / "rot.json"
    run = bench_cli("--mode", "rotation", "--seq-lens", "32", "--batch-size", "1", "--rounds", "2", "--steps", "1",
                    "--warmup", "0", "--json", str(out))
    assert run.returncode == 0, run.stderr
    report = json.loads(out.read_text())
    done = [r["pe"] for r in report["results"]]
    assert done[:2] == ["rope", "carope"] and all(len(r["rounds"]) == 2 for r in report["results"])
    if "carope-fused" not in done:  # no Triton or no CUDA: skipped with a note, not a failure
        assert report["skipped"] == [dict(pe="carope-fused", T=32, reason=bench.FUSED_UNAVAILABLE)]
        assert "(fused kernel unavailable here)" in run.stdout


def test_rotation_gradients_reach_every_input():
    args = argparse.Namespace(preset="nano", batch_size=2, dtype="float32", compile=False)
    step, mfu = bench.rotation_case(args, "carope", 16, torch.device("cpu"))
    grads = step()  # q, k, x, W, b: the loss must depend on the phases, or f's inputs get zeros
    assert mfu is None and len(grads) == 5
    assert all(g.isfinite().all() and g.abs().sum() > 0 for g in grads)
    assert len(bench.rotation_case(args, "rope", 16, torch.device("cpu"))[0]()) == 2  # q, k only


@CPU_ONLY
def test_fused_case_is_unavailable_without_cuda():
    args = argparse.Namespace(preset="nano", batch_size=1, dtype="float32", compile=False)
    with pytest.raises(bench.Unavailable):
        bench.rotation_case(args, "carope-fused", 16, torch.device("cpu"))


def test_a_dying_worker_is_one_line_naming_its_case():
    # learned at T > its table raises in the worker's warm-up (the parent skips that case itself)
    with pytest.raises(SystemExit) as e:
        bench.Worker(["--mode", "eval", "--batch-size", "1", "--warmup", "1"], "learned", 200)
    msg = str(e.value.code)
    assert msg.startswith("bench.py: case learned at T=200 failed:") and "learned position table" in msg
    assert "\n" not in msg


BAD_ARGS = [
    (["--seq-lens", "abc"], "--seq-lens"), (["--seq-lens", "0"], "--seq-lens"), (["--seq-lens", "-5"], "--seq-lens"),
    (["--seq-lens", "128,"], "--seq-lens"), (["--batch-size", "0"], "--batch-size"),
    (["--batch-size", "-3"], "--batch-size"), (["--steps", "0"], "--steps"), (["--warmup", "-1"], "--warmup"),
    (["--rounds", "0"], "--rounds"), (["--preset", "huge"], "huge"), (["--device", "gpu"], "--device gpu"),
    (["--mode", "rotation", "--no-fused-carope"], "--no-fused-carope: for --mode train or eval"),
    (["--pe", "alibi"], "unknown encoding(s) alibi"),
    (["--mode", "rotation", "--pe", "tapa"], "unknown encoding(s) tapa"),
    (["--pe", "rope,"], "--pe 'rope,': unknown encoding(s) '' (an empty name: a stray comma?)"),
    (["--case", "rope"], "--case rope: must be PE:T"), (["--case", "rope:x"], "--case rope:x: must be PE:T"),
    (["--case", "alibi:16"], "--case alibi:16"), (["--case", "rope:0"], "--case rope:0"),
    (["--case", "carope-fused:16"], "PE one of nope, learned"),  # a rotation case, not a model one
]


@pytest.mark.parametrize("argv, names", BAD_ARGS, ids=lambda a: " ".join(a) if isinstance(a, list) else None)
def test_bad_arguments_fail_in_one_line_before_any_work(argv, names, monkeypatch, capsys):
    monkeypatch.setattr(bench, "Worker", None)  # starting a case would raise TypeError, not SystemExit
    with pytest.raises(SystemExit) as e:
        bench.main(argv)
    msg = str(e.value.code)
    assert msg.startswith("bench.py: ") and names in msg and "\n" not in msg
    assert capsys.readouterr().out == ""  # not even the header: nothing ran


def json_errors(tmp_path):
    yield str(tmp_path / "missing" / "b.json"), "does not exist"
    yield str(tmp_path), "is a directory"
    if os.geteuid() != 0:  # root writes into read-only directories
        ro = tmp_path / "ro"
        ro.mkdir(mode=0o555)
        yield str(ro / "b.json"), "cannot write"


def test_unwritable_json_is_found_before_the_benchmark(tmp_path, monkeypatch, capsys):
    monkeypatch.setattr(bench, "Worker", None)
    for path, why in json_errors(tmp_path):
        with pytest.raises(SystemExit) as e:
            bench.main(["--json", path])
        assert why in str(e.value.code) and "\n" not in str(e.value.code)
        assert capsys.readouterr().out == ""


@CPU_ONLY
def test_cuda_without_cuda(monkeypatch):
    monkeypatch.setattr(bench, "Worker", None)
    with pytest.raises(SystemExit) as e:
        bench.main(["--device", "cuda"])
    assert "no CUDA GPU" in str(e.value.code) and "--device cpu" in str(e.value.code)


@pytest.mark.parametrize("argv", [["--seq-lens", "abc"], ["--json", "/nonexistent-dir/b.json"]])
def test_command_line_errors_are_one_line(argv):
    run = bench_cli(*argv, timeout=60)
    assert run.returncode != 0 and run.stdout == ""
    assert "Traceback" not in run.stderr and len(run.stderr.strip().splitlines()) == 1, run.stderr


def test_a_gpu_torch_cannot_use_stops_in_one_line(monkeypatch, capsys):
    """An NVIDIA GPU with a driver too old for this torch's CUDA: not a quiet CPU run, but the cause
    and both ways out (devices.pick_device, shared with train.py and sample.py)."""
    monkeypatch.setattr(bench, "Worker", None)
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    monkeypatch.setattr(torch.version, "cuda", "13.0")
    monkeypatch.delenv("CUDA_VISIBLE_DEVICES", raising=False)
    monkeypatch.setattr(devices, "nvidia_smi", lambda: ("NVIDIA H100 80GB HBM3", "535.104.05"))
    monkeypatch.setattr(devices, "nvidia_dev_node", lambda: "/dev/nvidia0")
    for argv in ([], ["--device", "cuda"], ["--device", "cuda:1"]):
        with pytest.raises(SystemExit) as e:
            bench.main(argv)
        msg = str(e.value.code)
        assert msg.startswith("bench.py: ") and "\n" not in msg
        assert "NVIDIA H100 80GB HBM3, driver 535.104.05" in msg and "CUDA 13.0" in msg and "R580" in msg
        assert "--index-url https://download.pytorch.org/whl/cu126" in msg and "--device cpu" in msg
    assert bench.check_device("cpu") == "cpu"  # the way out works
    monkeypatch.setattr(devices, "nvidia_smi", lambda: None)  # only the device node: still found
    with pytest.raises(SystemExit, match="/dev/nvidia0 is present"):
        bench.main([])
    monkeypatch.setenv("CUDA_VISIBLE_DEVICES", "")  # GPUs hidden on purpose: the CPU, no complaint
    assert bench.check_device(None) == "cpu"
    assert capsys.readouterr().out == ""


@CPU_ONLY
def test_no_gpu_at_all_runs_on_the_cpu(monkeypatch):
    monkeypatch.setattr(devices, "nvidia_smi", lambda: None)
    monkeypatch.setattr(devices, "nvidia_dev_node", lambda: None)
    assert bench.check_device(None) == "cpu"


@pytest.mark.parametrize("flag, fused", [(None, True), (True, True), (False, False)])
def test_fused_carope_flag_reaches_the_model(monkeypatch, flag, fused):
    built = []
    real = bench.GPT
    monkeypatch.setattr(bench, "GPT", lambda config: built.append(config) or real(config))
    args = argparse.Namespace(preset="nano", batch_size=1, dtype="float32", compile=False, mode="eval",
                              fused_carope=flag)
    bench.model_case(args, "carope", 8, torch.device("cpu"))
    assert built[0].fused_carope is fused


def test_fused_rotation_that_fails_its_self_check_is_skipped(monkeypatch):
    from support import carope_triton
    monkeypatch.setattr(carope_triton, "_verdicts", {})
    monkeypatch.setattr(carope_triton, "fused_available", lambda t: True)

    def broken(q, k, f):
        raise RuntimeError("no kernel today")
    monkeypatch.setattr(carope_triton, "rotate_qk", broken)
    args = argparse.Namespace(preset="nano", batch_size=1, dtype="float32", compile=False)
    with pytest.raises(bench.Unavailable, match=bench.FUSED_FAILED):
        bench.rotation_case(args, "carope-fused", 16, torch.device("cpu"))


class FakeWorker:
    """A case that answers at once: each timing is 1 ms, and `on_time(case, call)` may act first (press Ctrl-C,
    remove a folder) on a given call."""
    on_time = staticmethod(lambda worker, call: None)
    calls = []

    def __init__(self, argv, pe, T):
        self.pe, self.T, self.ready = pe, T, dict(mfu_at_1s=None)

    def time(self):
        FakeWorker.calls.append((self.pe, self.T))
        FakeWorker.on_time(self, len(FakeWorker.calls))
        return dict(dt=1e-3, peak_mib=1.0)

    def close(self, wait=30):
        pass


@pytest.fixture
def fake_workers(monkeypatch):
    monkeypatch.setattr(bench, "Worker", FakeWorker)
    monkeypatch.setattr(FakeWorker, "calls", [])
    return FakeWorker


def test_ctrl_c_keeps_the_rounds_every_case_finished(tmp_path, fake_workers, monkeypatch, capsys):
    """Ctrl-C in round 3 at the second length: the first length's table and round 1-2 of the second are kept,
    printed and in --json; one line on stderr, exit 130."""
    def ctrl_c(worker, call):
        if call == 2 * 3 + 2 * 2 + 1:  # T=16: 3 rounds of 2 cases; T=32: 2 rounds, then the first case of round 3
            raise KeyboardInterrupt
    monkeypatch.setattr(FakeWorker, "on_time", staticmethod(ctrl_c))
    out = tmp_path / "b.json"
    with pytest.raises(SystemExit) as e:
        bench.main(["--pe", "rope,nope", "--seq-lens", "16,32", "--rounds", "3", "--json", str(out)])
    assert e.value.code == 130
    stdout, err = capsys.readouterr()
    assert err.strip() == (f"bench.py: interrupted at T=32 after 2 of 3 round(s): kept 4 result(s), of the rounds "
                           f"every case finished (the tables above, and {out})")
    assert "T = 16\n| pe |" in stdout and "T = 32\n| pe |" in stdout
    report = json.loads(out.read_text())
    assert [(r["pe"], r["T"], len(r["rounds"])) for r in report["results"]] == [
        ("rope", 16, 3), ("nope", 16, 3), ("rope", 32, 2), ("nope", 32, 2)]
    assert report["interrupted"] == "interrupted at T=32 after 2 of 3 round(s)"


def test_the_json_folder_removed_mid_run_loses_nothing(tmp_path, fake_workers, monkeypatch, capsys):
    """The --json folder deleted while the benchmark runs: made again, the report written, and said so; where it
    cannot be made again (a file took its place), the report is printed rather than lost."""
    folder = tmp_path / "results"
    folder.mkdir()
    monkeypatch.setattr(FakeWorker, "on_time", staticmethod(lambda w, call: call == 1 and folder.rmdir()))
    bench.main(["--pe", "rope", "--rounds", "1", "--json", str(folder / "b.json")])
    assert json.loads((folder / "b.json").read_text())["results"][0]["pe"] == "rope"
    assert capsys.readouterr().err.strip() == (f"bench.py: note: {folder} was removed while the benchmark ran; "
                                               "made it again for --json")

    def replaced_by_a_file(w, call):
        if call == 2:
            (folder / "b.json").unlink()
            folder.rmdir()
            folder.write_text("not a folder")
    monkeypatch.setattr(FakeWorker, "on_time", staticmethod(replaced_by_a_file))
    with pytest.raises(SystemExit) as e:
        bench.main(["--pe", "rope", "--rounds", "1", "--json", str(folder / "b.json")])
    stdout, err = capsys.readouterr()
    assert e.value.code == 1 and len(err.strip().splitlines()) == 1
    assert f"bench.py: --json {folder / 'b.json'}: cannot write it" in err and "printed above instead" in err
    report = json.loads(stdout[stdout.index("\n{") + 1:])
    assert report["results"][0]["tokens_per_s"] == pytest.approx(8 * 128 / 1e-3)
