"""Shared fixtures: tiny random models for fast contract tests, and the real zoo manager."""

from __future__ import annotations

import contextlib
import functools
import os

os.environ.setdefault("GRADIO_ANALYTICS_ENABLED", "False")
os.environ.setdefault("HF_HUB_OFFLINE", "1")

import pytest
import torch

torch.set_num_threads(min(2, os.cpu_count() or 1))


def tiny_digits_unet():
    from diffusers import UNet2DModel

    torch.manual_seed(0)
    return UNet2DModel(sample_size=16, in_channels=1, out_channels=1, block_out_channels=(8, 16),
                       layers_per_block=1, down_block_types=("DownBlock2D",) * 2, up_block_types=("UpBlock2D",) * 2,
                       add_attention=False, norm_num_groups=4, num_class_embeds=11).eval()


def tiny_shapes_unet(sample_size: int = 32, channels: int = 3):
    """A tiny text-conditional UNet (the shapes model's layout); ``sample_size`` / ``channels`` 8 / 4: a latent one."""
    from diffusers import UNet2DConditionModel

    torch.manual_seed(0)
    return UNet2DConditionModel(
        sample_size=sample_size, in_channels=channels, out_channels=channels, block_out_channels=(8, 16), layers_per_block=1,
        down_block_types=("DownBlock2D", "CrossAttnDownBlock2D"), up_block_types=("CrossAttnUpBlock2D", "UpBlock2D"),
        cross_attention_dim=384, attention_head_dim=4, norm_num_groups=4,
        class_embed_type="projection", projection_class_embeddings_input_dim=384).eval()


@functools.lru_cache(maxsize=1)
def shared_text_encoder():
    """The real MiniLM encoder, loaded once per test session (read-only everywhere)."""
    from studio.data.text import load_text_encoder

    return load_text_encoder()


@pytest.fixture
def tiny_manager():
    """A manager with random-init tiny 'digits-cond' and 'shapes-t2i' (real text encoder)."""
    from studio.core.models import DiffusionModel
    from studio.core.manager import ModelManager
    from studio.train.diffusion import noise_scheduler

    m = ModelManager(device="cpu")
    sched = dict(noise_scheduler().config)
    m.register("digits-cond", lambda: DiffusionModel("digits-cond", tiny_digits_unet(), sched, "epsilon", "class",
                                                     {"null_class": 10}),
               info={"kind": "diffusion", "conditioning": "class"})
    m.register("shapes-t2i", lambda: DiffusionModel("shapes-t2i", tiny_shapes_unet(), sched, "epsilon", "text", {}),
               info={"kind": "diffusion", "conditioning": "text"})
    m.register("text-encoder", shared_text_encoder, info={"kind": "text-encoder"})
    return m


@pytest.fixture
def sign_manager(tiny_manager):
    """``tiny_manager`` plus a random tiny idempotent generator under 'sign-digits'."""
    from studio.nets.idempotent import IdempotentNet

    tiny_manager.register("sign-digits", lambda: IdempotentNet(tiny_digits_unet(), name="sign-digits").eval(),
                          info={"kind": "idempotent"})
    return tiny_manager


@pytest.fixture(scope="session")
def zoo_manager():
    """The real zoo, shared across the session (as the app shares one manager)."""
    from studio.core.manager import ModelManager

    m = ModelManager(device="cpu")
    m.register_zoo()
    return m


def tiny_clip_tokenizer():
    """A CLIPTokenizer over the 256 byte-level symbols (with and without CLIP's end-of-word mark) and
    no merges: every character is a token. Built in memory, nothing downloaded."""
    from tokenizers.pre_tokenizers import ByteLevel
    from transformers import CLIPTokenizer

    chars = sorted(ByteLevel.alphabet())
    vocab = {tok: i for i, tok in enumerate(["<|startoftext|>", "<|endoftext|>", *chars, *(c + "</w>" for c in chars)])}
    return CLIPTokenizer(vocab=vocab, merges=[], model_max_length=16)


@pytest.fixture(scope="session", params=["epsilon", "v_prediction"], ids=["sd1-epsilon", "sd2-v"])
def tiny_sd_folder(tmp_path_factory, request):
    """A randomly initialised Stable Diffusion pipeline (tiny UNet, VAE, CLIP text encoder) saved as
    a diffusers folder with safetensors: the real-model code path, with nothing downloaded. Two
    flavours: epsilon prediction (SD 1.x, SD-Turbo) and v prediction (SD 2.x at 768 px)."""
    from diffusers import AutoencoderKL, DDIMScheduler, StableDiffusionPipeline, UNet2DConditionModel
    from transformers import CLIPTextConfig, CLIPTextModel

    tokenizer = tiny_clip_tokenizer()
    torch.manual_seed(0)
    unet = UNet2DConditionModel(
        sample_size=8, in_channels=4, out_channels=4, block_out_channels=(8, 16), layers_per_block=1,
        down_block_types=("DownBlock2D", "CrossAttnDownBlock2D"), up_block_types=("CrossAttnUpBlock2D", "UpBlock2D"),
        cross_attention_dim=16, attention_head_dim=4, norm_num_groups=4)
    vae = AutoencoderKL(in_channels=3, out_channels=3, block_out_channels=(8, 16), latent_channels=4,
                        down_block_types=("DownEncoderBlock2D",) * 2, up_block_types=("UpDecoderBlock2D",) * 2,
                        norm_num_groups=4)
    text_encoder = CLIPTextModel(CLIPTextConfig(
        vocab_size=len(tokenizer), hidden_size=16, intermediate_size=32, num_attention_heads=2, num_hidden_layers=2,
        max_position_embeddings=16, bos_token_id=0, eos_token_id=1, pad_token_id=1))
    scheduler = DDIMScheduler(beta_start=0.00085, beta_end=0.012, beta_schedule="scaled_linear", clip_sample=False,
                              set_alpha_to_one=False, steps_offset=1, prediction_type=request.param)
    pipe = StableDiffusionPipeline(unet=unet, vae=vae, text_encoder=text_encoder, tokenizer=tokenizer,
                                   scheduler=scheduler, safety_checker=None, feature_extractor=None,
                                   requires_safety_checker=False)
    folder = tmp_path_factory.mktemp("pipelines") / f"tiny-sd-{request.param}"
    pipe.save_pretrained(folder, safe_serialization=True)
    return folder


@pytest.fixture
def fewstep_manager(tiny_manager):
    """``tiny_manager`` plus a random tiny few-step (x0-predicting) model under 'digits-fewstep'."""
    from studio.core.models import DiffusionModel
    from studio.train.boot import DISTILLED, scheduler_config

    info = {"kind": "diffusion", "domain": "digits", "conditioning": "class", "null_class": 10, "few_step": list(DISTILLED),
            "prediction_type": "sample", "default_scheduler": "ddim", "default_steps": 4, "default_guidance": 1.0}
    tiny_manager.register("digits-fewstep", lambda: DiffusionModel(
        "digits-fewstep", tiny_digits_unet(), scheduler_config(), "sample", "class", info), info=info)
    return tiny_manager


@pytest.fixture
def nag_manager(tiny_manager):
    """``tiny_manager`` plus a random one-layer DiffusionNAG pair under 'nag-digits'."""
    from studio.core.models import NAGModel
    from studio.nets.nag import AccuracyPredictor, ScoreNet

    info = {"kind": "nag", "score_split_seed": 0}

    def load():
        torch.manual_seed(0)
        return NAGModel("nag-digits", ScoreNet(n_layers=1).eval(), AccuracyPredictor(n_layers=1).eval(), info)

    tiny_manager.register("nag-digits", load, info=info)
    return tiny_manager


@pytest.fixture
def guide_manager(tiny_manager):
    """``tiny_manager`` plus tiny random guiding classifiers, expert banks and a tiny judge."""
    from studio.nets.classifiers import ExpertBank, GuideNet
    from studio.nets.judges import DigitsNet

    def tiny(seed: int, **kw):
        torch.manual_seed(seed)
        return GuideNet(width=8, **kw).eval().requires_grad_(False)

    tiny_manager.register("guide-clean", lambda: tiny(1), info={"kind": "classifier"})
    tiny_manager.register("guide-noisy", lambda: tiny(2, time_conditional=True), info={"kind": "classifier"})
    for key in ("guide-ppap", "guide-experts"):
        tiny_manager.register(key, lambda: ExpertBank([tiny(10 + i) for i in range(5)]), info={"kind": "experts"})
    tiny_manager.register("judge-digits", lambda: DigitsNet(width=4).eval(), info={"kind": "judge"})
    return tiny_manager


def free_port() -> int:
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture
def app_manager(tiny_manager):
    """The manager :func:`app_client` builds the app on; a test module overrides it (e.g. with
    ``sign_manager``), as diffusers' pipeline tests supply only their own dummy components."""
    return tiny_manager


@contextlib.contextmanager
def serving(manager):
    """The whole studio built on ``manager``, launched in-process at a free local port; yields the Blocks."""
    from components import build_app

    demo = build_app(manager)
    for attempt in range(3):
        try:
            demo.launch(prevent_thread_lock=True, server_name="127.0.0.1", server_port=free_port(), ssr_mode=False,
                        quiet=True)
            break
        except ValueError as exc:
            # gradio's start-up probe gives the new server 3 s per request and gives up at once on a refused
            # connection; a server a moment slow to answer fails it ("Couldn't start the app ... localhost is
            # accessible", "When localhost is not accessible, ..."): retry
            if "localhost" not in str(exc) or attempt == 2:
                raise
            demo.close()
    try:
        yield demo
    finally:
        demo.close()


def sketch_value(tmp_path, blank=False) -> dict:
    """A Sketchpad value as the API takes it: a black "1" (one vertical stroke) on a transparent
    256 x 256 canvas, or nothing drawn."""
    import numpy as np
    from gradio_client import handle_file
    from PIL import Image

    canvas = np.zeros((256, 256, 4), np.uint8)
    if not blank:
        canvas[60:200, 120:140, 3] = 255
    path = tmp_path / ("blank.png" if blank else "one.png")
    Image.fromarray(canvas, "RGBA").save(path)
    return {"background": None, "layers": [], "composite": handle_file(str(path))}


@pytest.fixture
def app_client(app_manager, tmp_path):
    """The studio on ``app_manager`` (:func:`serving`); yields ``(gradio_client.Client, manager)``.
    Building the app must not load any model."""
    from gradio_client import Client

    with serving(app_manager) as demo:
        assert all(row["where"] == "not loaded" for row in app_manager.status()), "building the app loaded a model"
        yield Client(demo.local_url, verbose=False, download_files=str(tmp_path)), app_manager


CHROMIUM = "/usr/bin/chromium"  # Debian's chromium (CI installs it); never `playwright install`
CHROMIUM_ARGS = ["--no-sandbox", "--disable-gpu", "--disable-background-networking", "--disable-component-update",
                 "--disable-sync", "--no-first-run"]


@pytest.fixture
def browser():
    """Headless Debian chromium driven by playwright; the test is skipped where it is not installed."""
    if not os.path.exists(CHROMIUM):
        pytest.skip(f"{CHROMIUM} is missing (apt-get install chromium); CI installs it")
    from playwright.sync_api import expect, sync_playwright

    # ``expect`` waits 5 s by default, whatever a page's timeout is; a loaded 2-core machine needs more
    expect.set_options(timeout=20_000)
    with sync_playwright() as p:
        b = p.chromium.launch(executable_path=CHROMIUM, headless=True, args=CHROMIUM_ARGS)
        try:
            yield b
        finally:
            b.close()
            expect.set_options(timeout=5_000)


def wait_for_job(client, api_name: str, seconds: float = 300) -> dict:
    """Poll a background job's status endpoint (e.g. ``/nag_job``) until it ends; its last state."""
    import time

    end = time.time() + seconds
    while time.time() < end:
        job = client.predict(api_name=api_name)
        if job["status"] in ("done", "stopped", "failed"):
            return job
        time.sleep(0.2)
    raise AssertionError(f"the job did not end in {seconds} s: {job}")
