"""bench.py runs its cases in subprocesses and reports every encoding against RoPE."""

import json
import subprocess
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent


def test_bench_reports_each_encoding_against_rope(tmp_path):
    out = tmp_path / "bench.json"
    cmd = [sys.executable, str(REPO / "bench.py"), "--pe", "carope,rope", "--seq-lens", "16,256",
           "--batch-size", "1", "--steps", "1", "--warmup", "0", "--mode", "eval", "--json", str(out)]
    run = subprocess.run(cmd, capture_output=True, text=True, timeout=300)
    assert run.returncode == 0, run.stderr
    assert "| rope |" in run.stdout and "| carope |" in run.stdout and "1.00x" in run.stdout
    results = json.loads(out.read_text())["results"]
    assert [(r["pe"], r["T"]) for r in results] == [("rope", 16), ("carope", 16), ("rope", 256), ("carope", 256)]
    assert all(r["tokens_per_s"] > 0 for r in results)


def test_bench_rejects_unknown_encoding():
    run = subprocess.run([sys.executable, str(REPO / "bench.py"), "--pe", "alibi"], capture_output=True, text=True)
    assert run.returncode != 0 and "unknown encoding(s) alibi" in run.stderr
