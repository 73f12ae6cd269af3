"""Networks built while another thread loads a model (:mod:`studio.threads`).

diffusers' ``from_pretrained`` turns ``torch.nn.init`` off process-wide while it builds its model,
so a LoRA adapter, a series model or a cell built in another thread at that moment would keep
uninitialised weights (Tune's training "diverged at step 1 (loss nan)" when every tab's first
action came at once). Here a model load is held inside that window on purpose; every build the
app does with fresh weights must still come out exactly as it does on a quiet machine.
"""

from __future__ import annotations

import threading
import time

import pytest
import torch

from studio.core import loading
from studio.data import series as S
from studio.nets.lora import with_lora
from studio.train import forecast as TF
from studio.train.nasbench import train_group
from tests.conftest import tiny_digits_unet

HOLD_SECONDS = 0.6


@pytest.fixture
def slow_load(tmp_path, monkeypatch):
    """Start a real zoo-style load in a thread that stays inside from_pretrained's no-init window for
    ``HOLD_SECONDS``; returns (start, join). ``start()`` returns once the window is open."""
    from diffusers import UNet2DModel

    tiny_digits_unet().save_pretrained(tmp_path / "model", safe_serialization=True)
    original = UNet2DModel.from_config  # from_pretrained builds the model with it, inside the window
    entered, seen = threading.Event(), {}

    def slow_from_config(*args, **kwargs):
        model = original(*args, **kwargs)
        seen["init_off"] = torch.nn.init.normal_.__name__ != "normal_"  # the window is real
        entered.set()
        time.sleep(HOLD_SECONDS)
        return model

    monkeypatch.setattr(UNet2DModel, "from_config", slow_from_config)
    thread = threading.Thread(target=loading.load_module_folder, args=(tmp_path / "model", "UNet2DModel"))

    def start():
        thread.start()
        assert entered.wait(30)
        assert seen["init_off"], "diffusers no longer turns torch.nn.init off while loading: revisit studio.threads"

    yield start, thread.join
    thread.join()


def lora_weights(net: torch.nn.Module) -> dict[str, torch.Tensor]:
    return {k: v.clone() for k, v in net.state_dict().items() if "lora_" in k}


def test_a_lora_adapter_built_during_a_model_load_is_initialised_as_on_a_quiet_machine(slow_load):
    start, join = slow_load
    base = tiny_digits_unet()
    quiet = lora_weights(with_lora(base, 2, seed=0))
    assert all(not v.any() for k, v in quiet.items() if "lora_B" in k)  # B starts at zero
    start()
    busy = lora_weights(with_lora(base, 2, seed=0))
    join()
    assert quiet.keys() == busy.keys()
    assert all(torch.equal(quiet[k], busy[k]) for k in quiet)


def test_a_series_model_and_cells_trained_from_a_tab_start_from_their_seeded_weights(slow_load):
    start, join = slow_load
    series = S.bundled("co2")
    quiet = TF.build(series, series.train_end, seed=3).unet.state_dict()
    cells = "|nor_conv_3x3~0|+|nor_conv_3x3~0|skip_connect~1|+|skip_connect~0|nor_conv_3x3~1|avg_pool_3x3~2|"
    quiet_cells = next(train_group([cells], "all ten", stop=lambda: True))
    start()
    busy = TF.build(series, series.train_end, seed=3).unet.state_dict()
    busy_cells = next(train_group([cells], "all ten", stop=lambda: True))
    join()
    assert all(torch.equal(quiet[k], busy[k]) for k in quiet)
    assert quiet_cells == busy_cells  # an untrained cell's accuracy reads its initial weights
