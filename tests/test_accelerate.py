"""The diffusion recipe under ``accelerate launch`` with two CPU processes (gloo): both ranks end with the
same weights, and the loss log has one line per step (the mean over both processes' batches)."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent


def test_two_processes_agree_and_log_one_line_per_step(tmp_path):
    steps = 3
    env = {**os.environ, "OUT": str(tmp_path), "STUDIO_RUNS": str(tmp_path / "runs"), "PYTHONPATH": str(ROOT),
           "OMP_NUM_THREADS": "1", "HF_HUB_OFFLINE": "1", "ACCELERATE_DISABLE_RICH": "1", "CUDA_VISIBLE_DEVICES": "", "ACCELERATE_USE_CPU": "true"}
    accelerate = Path(sys.executable).parent / "accelerate"
    run = subprocess.run([str(accelerate), "launch", "--multi_gpu", "--num_processes", "2", "--num_machines", "1",
                          "--mixed_precision", "no", "--dynamo_backend", "no", str(ROOT / "tests" / "accelerate_tiny.py"),
                          str(steps)], env=env, cwd=tmp_path, capture_output=True, text=True, timeout=300)
    assert run.returncode == 0, run.stderr[-3000:]
    ranks = [json.loads((tmp_path / f"rank{i}.json").read_text()) for i in (0, 1)]
    assert all(r["processes"] == 2 and r["step"] == steps for r in ranks)
    assert ranks[0]["weights_sha256"] == ranks[1]["weights_sha256"]  # gradients were averaged across ranks
    lines = [json.loads(line) for line in (tmp_path / "runs" / "digits-cond-rf-lognorm" / "loss.jsonl").read_text().splitlines()]
    assert [row["step"] for row in lines] == list(range(1, steps + 1))
    assert all(row["loss"] > 0 for row in lines)
