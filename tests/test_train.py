"""The Train method: the contract (a real `accelerate launch` subprocess, a few steps of the small UNet), Stop,
Register, and the checks made before anything starts."""

from __future__ import annotations

import json
import math

import pytest
import torch

from studio.core.params import ParamError
from studio.methods import train
from tests.contract import MethodContract


@pytest.fixture(autouse=True)
def runs_in_tmp(tmp_path, monkeypatch):
    import studio.train.common as common

    monkeypatch.setattr(common, "RUNS_DIR", tmp_path / "runs")


def small(**changes) -> train.Params:
    base = dict(objective="rf-lognorm", steps=3, batch=8, evaluate_every=10, eval_images=20, seed=1)
    return train.Params(**{**base, **changes})


class TestTrainContract(MethodContract):
    method_id = "train"
    bad = [({"steps": 0}, "Steps"), ({"lr": math.nan}, "finite"), ({"lr": -0.1}, "Learning rate"),
           ({"batch": 65_536}, "GiB")]

    @pytest.fixture
    def manager(self, tiny_manager):
        return tiny_manager

    def params(self):
        return small()

    def output(self, result):
        return result.weights_sha256  # the same seed trains the same weights


def test_a_run_logs_every_step_evaluates_and_registers_a_model_generate_can_drive(tiny_manager):
    from studio.methods import generate
    from studio.core.sampling import run_to_end

    items = list(train.run(small(objective="eps", self_condition=True, steps=4), tiny_manager))
    result = items[-1]
    assert isinstance(result, train.TrainResult) and result.steps_done == 4 and not result.stopped
    assert [s for s, _ in result.curves["loss"]] == [1, 2, 3, 4]
    last = result.curves["evals"][-1]
    assert last["step"] == 4 and 0 <= last["judge_accuracy"]["value"] <= 1 and last["fd_digits"]["value"] > 0
    assert result.tensors is not None and result.tensors.shape[:2] == (1, 1)
    key = train.register(result, tiny_manager)
    assert tiny_manager.info(key)["train_parameters"]["self_condition"] is True
    with tiny_manager.use(key) as dm:
        assert type(dm.unet).__name__ == "SelfCondUNet2DModel"
    out = run_to_end(generate.run(generate.Params(model=key, steps=2, n_images=1, digit=3), tiny_manager))
    assert out.tensors.shape == (1, 1, 16, 16) and torch.isfinite(out.tensors).all()


def test_stop_ends_a_two_process_run_early_and_keeps_its_model(tiny_manager, tmp_path):
    def stop():  # ask to stop once the run has logged its first steps
        return any(tmp_path.glob("runs/lab-*/loss.jsonl"))

    items = list(train.run(small(steps=5000, evaluate_every=5000, processes=2), tiny_manager, stop=stop))
    result = items[-1]
    assert result.stopped and 0 < result.steps_done < 5000
    assert (result.model_folder / "studio.json").exists()
    # two processes trained together (not two copies side by side) and ended at one step
    assert json.loads((result.model_folder.parent / "result.json").read_text())["processes"] == 2
    assert [s for s, _ in result.curves["loss"]] == list(range(1, result.steps_done + 1))
    assert json.loads((result.model_folder / "studio.json").read_text())["prediction_type"] == "flow"


@pytest.mark.parametrize("changes, message", [({"steps": 0}, "Steps"), ({"lr": math.nan}, "finite"),
                                              ({"lr": -1e-3}, "Learning rate"), ({"batch": 10**6}, "Batch"),
                                              ({"batch": 65_536}, "use a batch of at most"),
                                              ({"objective": "ddim"}, "Objective")])
def test_bad_settings_are_refused_before_anything_starts(tmp_path, changes, message):
    with pytest.raises(ParamError, match=message):
        train.check(train.Params(**changes))
    assert not (tmp_path / "runs").exists()


def test_the_launch_command_is_accelerate_with_the_switches():
    cmd = train.launch_command(train.Params(objective="rf-mode", repa=0.5, self_condition=True), "lab-x", 2)
    assert cmd[1] == "launch" and "--multi_gpu" in cmd and cmd[cmd.index("--num_processes") + 1] == "2"
    assert cmd[cmd.index("-m") + 1] == "studio.train.lab"
    assert cmd[cmd.index("--objective") + 1] == "rf-mode" and "--self-condition" in cmd
    assert float(cmd[cmd.index("--repa") + 1]) == 0.5
    assert "--multi_gpu" not in train.launch_command(train.Params(), "lab-x", 1)


def test_messages_from_the_run_hide_server_paths():
    text = train.public_message("FileNotFoundError: [Errno 2] No such file: '/work/main/runs/lab-x/model.safetensors'")
    assert "/work" not in text and "<path>" in text
