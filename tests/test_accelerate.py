"""Recipes under ``accelerate launch`` with two CPU processes (gloo): both ranks end with the same weights, and
the loss log has one line per step (the mean over both processes' batches). The diffusion recipe, then the digits
judge and plain IGN (several forward passes of one network per step, a frozen copy, EMA, checkpoints)."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent


def launch(tmp_path: Path, *args: str) -> None:
    env = {**os.environ, "OUT": str(tmp_path), "STUDIO_RUNS": str(tmp_path / "runs"), "PYTHONPATH": str(ROOT),
           "OMP_NUM_THREADS": "1", "HF_HUB_OFFLINE": "1", "ACCELERATE_DISABLE_RICH": "1", "CUDA_VISIBLE_DEVICES": "", "ACCELERATE_USE_CPU": "true"}
    accelerate = Path(sys.executable).parent / "accelerate"
    run = subprocess.run([str(accelerate), "launch", "--multi_gpu", "--num_processes", "2", "--num_machines", "1",
                          "--mixed_precision", "no", "--dynamo_backend", "no", str(ROOT / "tests" / "accelerate_tiny.py"),
                          *args], env=env, cwd=tmp_path, capture_output=True, text=True, timeout=300)
    assert run.returncode == 0, run.stderr[-3000:]


def loss_lines(path: Path) -> list[dict]:
    return [json.loads(line) for line in path.read_text().splitlines()]


def test_two_processes_agree_and_log_one_line_per_step(tmp_path):
    steps = 3
    launch(tmp_path, str(steps))
    ranks = [json.loads((tmp_path / f"rank{i}.json").read_text()) for i in (0, 1)]
    assert all(r["processes"] == 2 and r["step"] == steps for r in ranks)
    assert ranks[0]["weights_sha256"] == ranks[1]["weights_sha256"]  # gradients were averaged across ranks
    lines = loss_lines(tmp_path / "runs" / "digits-cond-rf-lognorm" / "loss.jsonl")
    assert [row["step"] for row in lines] == list(range(1, steps + 1))
    assert all(row["loss"] > 0 for row in lines)


def test_judge_and_ign_on_two_processes(tmp_path):
    steps = 2
    launch(tmp_path, str(steps), "others")
    judge = [json.loads((tmp_path / f"rank{i}-judge-digits.json").read_text()) for i in (0, 1)]
    assert [r["processes"] for r in judge] == [2, 2]
    assert judge[0]["weights_sha256"] == judge[1]["weights_sha256"]
    assert "test_accuracy" in judge[0] and "test_accuracy" not in judge[1]  # the main process evaluates and exports
    assert (tmp_path / "zoo" / "judge-digits" / "model" / "diffusion_pytorch_model.safetensors").exists()
    lines = loss_lines(tmp_path / "runs" / "judge-digits" / "loss.jsonl")
    assert [row["step"] for row in lines] == list(range(1, steps + 1))
    assert all(row["loss"] > 0 for row in lines)

    ign = [json.loads((tmp_path / f"rank{i}-ign-digits.json").read_text()) for i in (0, 1)]
    assert all(r["processes"] == 2 and r["steps"] == steps for r in ign)
    assert ign[0]["weights_sha256"] == ign[1]["weights_sha256"]
    run = tmp_path / "runs" / ign[0]["run"]
    lines = loss_lines(run / "loss.jsonl")  # kept across the checkpoint after every step
    assert [row["step"] for row in lines] == list(range(1, steps + 1))
    assert all({"rec", "idem", "tight"} <= set(row) for row in lines)
    assert json.loads((run / "state.json").read_text())["step"] == steps


def test_process_zero_keeps_the_one_process_streams_and_a_resumed_log_drops_steps_past_its_checkpoint(tmp_path):
    from types import SimpleNamespace

    import numpy as np
    import torch

    from studio.train.common import StepLog, process_entropy, process_seed

    zero, one = (SimpleNamespace(process_index=i, num_processes=2, is_main_process=i == 0) for i in (0, 1))
    assert process_seed(11, zero) == process_seed(11, None) == 11 and process_seed(11, one) != 11
    first = np.random.default_rng(process_entropy(zero, 3, 7)).random(4)
    assert np.array_equal(first, np.random.default_rng([3, 7]).random(4))  # the old stream
    assert not np.array_equal(first, np.random.default_rng(process_entropy(one, 3, 7)).random(4))
    solo = SimpleNamespace(process_index=0, num_processes=1, is_main_process=True)
    log = StepLog(solo, tmp_path)
    for step in (1, 2, 3):
        assert log.write(step, {"a": torch.tensor(0.5 * step)}) == {"a": 0.5 * step}
    StepLog(solo, tmp_path, start=2)  # resumed from the step-2 checkpoint: step 3 is trained again
    assert [row["step"] for row in loss_lines(tmp_path / "loss.jsonl")] == [1, 2]
    StepLog(solo, tmp_path)  # a fresh run starts the file anew
    assert loss_lines(tmp_path / "loss.jsonl") == []
