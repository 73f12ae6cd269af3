"""Safe loading: safetensors only, corrupt and truncated files, zoo checksums, offline hub ids."""

from __future__ import annotations

import json
import time

import pytest
import torch

from studio.core import loading
from studio.core.loading import ModelNotFound, WeightsError
from studio.core.manager import ModelManager
from studio.train.common import write_manifest_entry
from studio.train.diffusion import noise_scheduler
from tests.conftest import tiny_digits_unet


@pytest.fixture
def unet_folder(tmp_path):
    folder = tmp_path / "tiny-unet"
    tiny_digits_unet().save_pretrained(folder, safe_serialization=True)
    noise_scheduler().save_pretrained(folder / "scheduler")
    return folder


def weights(folder):
    return next(folder.glob("*.safetensors"))


def test_a_diffusers_folder_loads_through_the_manager(unet_folder):
    m = ModelManager(device="cpu")
    key = m.add_source(str(unet_folder))
    with m.use(key) as dm:
        assert isinstance(dm, loading.DiffusionModel) and dm.sample_shape == (1, 16, 16)
        out = dm.model_fn(torch.zeros(1, 1, 16, 16), torch.tensor([10]), {"class_labels": torch.tensor([3])})
        assert out.shape == (1, 1, 16, 16)
        assert not any(p.requires_grad for p in dm.unet.parameters())


def test_pickled_weights_are_refused(unet_folder):
    w = weights(unet_folder)
    torch.save({"x": torch.zeros(1)}, unet_folder / "diffusion_pytorch_model.bin")
    w.unlink()
    with pytest.raises(WeightsError, match="safetensors only"):
        loading.load_folder(unet_folder)


def test_corrupt_safetensors_give_a_clear_error(unet_folder):
    weights(unet_folder).write_bytes(b"\x10\x00\x00\x00\x00\x00\x00\x00not json at all, definitely")
    with pytest.raises(WeightsError, match="not a readable safetensors file"):
        loading.load_folder(unet_folder)


def test_truncated_safetensors_give_a_clear_error(unet_folder):
    w = weights(unet_folder)
    data = w.read_bytes()
    w.write_bytes(data[: len(data) // 2])
    with pytest.raises(WeightsError, match="truncated|not a readable"):
        loading.load_folder(unet_folder)


def test_a_hub_id_offline_fails_fast_naming_the_id(monkeypatch, tmp_path):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setenv("HF_HUB_CACHE", str(tmp_path / "cache"))
    t0 = time.perf_counter()
    with pytest.raises(ModelNotFound, match=r"'someone/some-model'.*local folder"):
        loading.resolve("someone/some-model", zoo=tmp_path)
    assert time.perf_counter() - t0 < 10
    with pytest.raises(ModelNotFound, match="not a zoo entry"):
        loading.resolve("no such model", zoo=tmp_path / "nope")


def test_zoo_entries_are_checked_against_their_manifest(tmp_path):
    zoo = tmp_path / "zoo"
    entry = zoo / "tiny"
    tiny_digits_unet().save_pretrained(entry / "model", safe_serialization=True)
    noise_scheduler().save_pretrained(entry / "scheduler")
    (entry / "studio.json").write_text(json.dumps({"kind": "diffusion", "model_class": "UNet2DModel",
                                                   "conditioning": "class", "null_class": 10}))
    write_manifest_entry("tiny", {"recipe": "test"}, zoo=zoo)
    dm = loading.load_zoo("tiny", zoo)
    assert dm.conditioning == "class"
    config = entry / "model" / "config.json"
    config.write_text(config.read_text().replace('"layers_per_block": 1', '"layers_per_block": 2'))
    with pytest.raises(WeightsError, match="MANIFEST sha256"):
        loading.load_zoo("tiny", zoo)
    with pytest.raises(ModelNotFound, match="not in the zoo"):
        loading.load_zoo("other", zoo)
