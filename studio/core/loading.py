"""Loading weights safely: zoo entries, local diffusers folders, hub ids.

Only safetensors are read. A folder whose weights are pickles (``.bin``, ``.pt``, ``.ckpt``,
``.pkl``) is refused with a message, and a corrupt or truncated safetensors file gives a
:class:`WeightsError` naming the file, never a crash. Zoo files are also checked against the
sha256 in ``studio/zoo/MANIFEST.json``. Hub ids work only when the hub can be reached (or the id
is in the local cache); offline they fail within seconds with a message naming the id.
"""

from __future__ import annotations

import hashlib
import json
import os
import re
import socket
from pathlib import Path
from typing import Any, Callable
from urllib.parse import urlparse

from studio import lazy
from studio.core.models import (DiffusionModel, INRDiffusionModel, InvDiffModule, NAGModel, SeriesDiffusion, VARModel,
                                WeightGenerator)
from studio.threads import building

torch = lazy.load("torch")

ZOO_DIR = Path(__file__).resolve().parent.parent / "zoo"
PICKLE_SUFFIXES = (".bin", ".pt", ".pth", ".ckpt", ".pkl", ".pickle")
# diffusers' low-memory loading builds the network under accelerate's ``init_empty_weights``, which
# patches ``nn.Module.register_parameter`` for the whole process while it runs: a module built in
# another thread at that moment (Tune's LoRA layers in a background job) gets its weights on the
# meta device ("expected device meta but got cpu" at its first backward). The studio serves several
# sessions and jobs at once, so it loads the plain way: the weights are built on the CPU, then filled.
LOW_CPU_MEM_USAGE = False
HUB_ID = re.compile(r"^[A-Za-z0-9][\w.-]*/[\w.-]+$")


def sha256(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()


def read_manifest(zoo: Path = ZOO_DIR) -> dict:
    """``studio/zoo/MANIFEST.json`` as a dict (empty when there is none)."""
    path = Path(zoo) / "MANIFEST.json"
    return json.loads(path.read_text()) if path.exists() else {}


class WeightsError(RuntimeError):
    """Weights that cannot or must not be loaded (pickles, corrupt or tampered files)."""


class ModelNotFound(LookupError):
    """A model source that is neither a zoo entry, a local folder, nor a reachable hub id."""


def entry_info(folder: Path) -> dict:
    """A zoo-style folder's studio.json (kind, domain, conditioning, ...), or {} when it has none."""
    try:
        return json.loads((Path(folder) / "studio.json").read_text())
    except (OSError, ValueError):
        return {}


def check_weight_files(folder: Path) -> list[Path]:
    """The safetensors files under ``folder``; refuses pickled weights and unreadable files."""
    from safetensors import safe_open

    files = [p for p in folder.rglob("*") if p.is_file()]
    safe = [p for p in files if p.suffix == ".safetensors"]
    pickles = [p for p in files if p.suffix in PICKLE_SUFFIXES]
    if pickles and not safe:
        raise WeightsError(
            f"{folder} holds only pickled weights ({', '.join(p.name for p in pickles[:3])}); "
            "the studio loads safetensors only, since unpickling can run code. Convert them with "
            "`save_pretrained(..., safe_serialization=True)` on a trusted machine."
        )
    for p in safe:
        try:
            with safe_open(str(p), framework="pt") as f:
                for key in f.keys():
                    f.get_slice(key)  # reads the header entry; size mismatches raise here
        except Exception as exc:  # safetensors raises its own error types and OSError
            raise WeightsError(f"{p} is not a readable safetensors file ({exc}); it may be corrupt or truncated") from exc
        expected = _safetensors_data_size(p)
        if expected is not None and p.stat().st_size < expected:
            raise WeightsError(f"{p} is truncated: {p.stat().st_size} bytes, header promises {expected}")
    return safe


def _safetensors_data_size(path: Path) -> int | None:
    """Total size the header describes (8 + header + data), or None if unreadable."""
    with open(path, "rb") as f:
        head = f.read(8)
        if len(head) < 8:
            return None
        n = int.from_bytes(head, "little")
        try:
            header = json.loads(f.read(n))
        except (ValueError, UnicodeDecodeError):
            return None
    ends = [v["data_offsets"][1] for k, v in header.items() if k != "__metadata__"]
    return 8 + n + max(ends, default=0)


def verify_zoo_entry(name: str, zoo: Path = ZOO_DIR) -> Path:
    """Folder of zoo entry ``name`` after checking every file against MANIFEST sha256."""
    manifest = read_manifest(zoo)
    if name not in manifest:
        raise ModelNotFound(f"{name!r} is not in the zoo; entries: {', '.join(sorted(manifest)) or 'none'}")
    folder = zoo / name
    for rel, meta in manifest[name].get("files", {}).items():
        p = folder / rel
        if not p.exists():
            raise WeightsError(f"zoo entry {name!r} is missing {rel}; rebuild it with `studio train {name}`")
        if sha256(p) != meta["sha256"]:
            raise WeightsError(f"zoo file {p} does not match its MANIFEST sha256 (corrupt or changed); "
                               f"restore it from git or rebuild with `studio train {name}`")
    return folder


GAUSSIAN_FILE = "gaussian.safetensors"  # a diffusion entry's data statistics (studio.core.gaussian)

# The studio's own network classes a zoo config.json may name, by module (diffusers' classes are
# found in diffusers). The loader and the app's warm-up both read this one map.
NET_MODULES: dict[str, tuple[str, ...]] = {
    "studio.nets.judges": ("DigitsNet", "ShapesGridNet"),
    "studio.nets.classifiers": ("GuideNet",),
    "studio.nets.tsdiff": ("TSDiffNet",),
    "studio.nets.nag": ("ScoreNet", "AccuracyPredictor"),
    "studio.nets.contrastive": ("ShapesCLIP",),
    "studio.nets.ssl": ("DigitsSSLEncoder",),
    "studio.nets.unets": ("SelfCondUNet2DModel",),
    "studio.nets.var": ("MultiScaleVQ", "NextScaleTransformer"),
    "studio.nets.inr": ("D2CVAE",),
    "studio.nets.weightgen": ("ParamAutoencoder", "LatentDenoiser", "WeightVAE", "DatasetEncoder",
                              "ConditionalLatentUNet"),
}
NET_CLASSES: dict[str, str] = {cls: mod for mod, names in NET_MODULES.items() for cls in names}


def model_class(name: str):
    """A diffusers model class, or one of the studio's own nets (:data:`NET_CLASSES`), by class name."""
    with lazy.hold():
        module = NET_CLASSES.get(name)
        cls = getattr(lazy.module(module), name, None) if module else getattr(lazy.module("diffusers"), name, None)
    if cls is None or not hasattr(cls, "from_pretrained"):
        raise WeightsError(f"unknown model class {name!r} in config.json")
    return cls


def load_module_folder(folder: Path, class_name: str | None = None) -> torch.nn.Module:
    """A diffusers-layout model folder (config.json + safetensors) as an eval-mode fp32 module."""
    check_weight_files(folder)
    if class_name is None:
        cfg = json.loads((folder / "config.json").read_text())
        class_name = cfg.get("_class_name")
    cls = model_class(class_name)
    try:
        with building():  # from_pretrained turns torch.nn.init off process-wide (studio.threads)
            module = cls.from_pretrained(folder, use_safetensors=True, torch_dtype=torch.float32,
                                         low_cpu_mem_usage=LOW_CPU_MEM_USAGE)
    except (OSError, ValueError, RuntimeError) as exc:
        raise WeightsError(f"could not load {class_name} from {folder}: {exc}") from exc
    return module.eval().requires_grad_(False)


def load_zoo(name: str, zoo: Path = ZOO_DIR) -> Any:
    """Zoo entry ``name``: a :class:`DiffusionModel` or a judge module."""
    return _load_entry(verify_zoo_entry(name, zoo))


def _load_entry(folder: Path) -> Any:
    """A zoo-layout folder (studio.json, model/, scheduler/), checked or not against a MANIFEST."""
    info = entry_info(folder)
    kind = info.get("kind", "diffusion")
    loader = LOADERS.get(kind)
    if loader is None:
        raise WeightsError(f"{folder.name}: unknown model kind {kind!r} in studio.json "
                           f"(known: {', '.join(sorted(LOADERS))})")
    return loader(folder, info)


def _load_module(folder: Path, info: dict) -> torch.nn.Module:
    """Judges and guiding classifiers: the network itself."""
    return load_module_folder(folder / "model", info["model_class"])


def _load_diffusion(folder: Path, info: dict) -> DiffusionModel:
    module = load_module_folder(folder / "model", info["model_class"])
    sched = json.loads((folder / "scheduler" / "scheduler_config.json").read_text())
    if info.get("domain") == "series":
        return SeriesDiffusion(name=folder.name, unet=module, scheduler_config=sched, info=info)
    return DiffusionModel(name=folder.name, unet=module, scheduler_config=sched,
                          prediction_type=info.get("prediction_type", "epsilon"),
                          conditioning=info.get("conditioning", "none"), info=info, gaussian=_gaussian_beside(folder))


def _gaussian_beside(folder: Path):
    """The Gaussian statistics written beside a zoo entry (``studio train NAME --gaussian-stats``), if any."""
    path = folder / GAUSSIAN_FILE
    if not path.exists():
        return None
    from studio.core.gaussian import GaussianStats

    try:
        return GaussianStats.load(path)
    except (ValueError, OSError) as exc:
        raise WeightsError(f"{folder.name}: {GAUSSIAN_FILE} could not be read ({exc})") from exc


def _load_idempotent(folder: Path, info: dict) -> torch.nn.Module:
    module = load_module_folder(folder / "model", info["model_class"])
    IdempotentNet = lazy.module("studio.nets.idempotent").IdempotentNet
    return IdempotentNet(module, info.get("timestep", 999), info.get("class_label"), folder.name, info).eval()


def _load_nag(folder: Path, info: dict) -> NAGModel:
    return NAGModel(folder.name, load_module_folder(folder / "score", "ScoreNet"),
                    load_module_folder(folder / "predictor", "AccuracyPredictor"), info)


def _load_experts(folder: Path, info: dict) -> Any:
    """PPAP-style expert bank: the base classifier entry (a sibling folder) plus each expert's state."""
    from safetensors.torch import load_file

    build_experts = lazy.module("studio.nets.classifiers").build_experts

    base_name = info.get("base", "")
    if not re.fullmatch(r"[A-Za-z0-9][\w-]*", str(base_name)) or not (folder.parent / base_name).is_dir():
        raise WeightsError(f"{folder} names base classifier {base_name!r}, which is not beside it")
    base = (load_zoo(base_name, folder.parent) if (folder.parent / "MANIFEST.json").exists()
            else _load_entry(folder.parent / base_name))
    files = sorted((folder / "experts").glob("expert_*.safetensors"), key=lambda p: int(p.stem.split("_")[1]))
    if len(files) != info.get("n_experts"):
        raise WeightsError(f"{folder} should hold {info.get('n_experts')} experts, found {len(files)}")
    check_weight_files(folder / "experts")
    try:
        return build_experts(base, [load_file(p) for p in files], info.get("adapter", ""), info.get("lora"),
                             info.get("num_train_timesteps", 1000))
    except (ValueError, RuntimeError) as exc:
        raise WeightsError(f"could not build the experts of {folder}: {exc}") from exc


def _load_probe(folder: Path, info: dict) -> torch.nn.Module:
    """A linear probe on a zoo diffusion model's decoder features (:class:`studio.core.features.LinearProbe`):
    the base model (a sibling folder), its (block, t) and the head in ``probe.safetensors``."""
    from safetensors.torch import load_file

    features = lazy.module("studio.core.features")
    base_name = info.get("base", "")
    if not re.fullmatch(r"[A-Za-z0-9][\w-]*", str(base_name)) or not (folder.parent / base_name).is_dir():
        raise WeightsError(f"{folder} names base model {base_name!r}, which is not beside it")
    base = (load_zoo(base_name, folder.parent) if (folder.parent / "MANIFEST.json").exists()
            else _load_entry(folder.parent / base_name))
    check_weight_files(folder)
    state = load_file(folder / "probe.safetensors")
    try:
        channels = features.block_channels(base.unet)[info["block"]]
        if state["weight"].shape[1] != channels or state["mean"].shape != (channels,):
            raise ValueError(f"head is {tuple(state['weight'].shape)}, block {info['block']} has {channels} channels")
        probe = features.LinearProbe(base.unet, features.alphas_cumprod(base.scheduler_config), info["block"],
                                     info["t"], state["mean"], state["std"], state["weight"], state["bias"],
                                     null_class=base.info.get("null_class"), seed=info.get("seed", 0),
                                     name=folder.name, info=info)
    except (KeyError, ValueError, RuntimeError) as exc:
        raise WeightsError(f"could not build the probe of {folder}: {exc}") from exc
    return probe.eval().requires_grad_(False)


def _load_weightgen(folder: Path, info: dict) -> WeightGenerator:
    """D2NWG (``vae/``, ``encoder/``, ``unet/``) or p-diff (``<task>/ae/``, ``<task>/denoiser/`` per task),
    with the training checkpoints (``checkpoints.safetensors``) and the scheduler config."""
    from safetensors.torch import load_file

    if info.get("method") == "d2nwg":
        keys = ["vae", "encoder", "unet"]
    elif info.get("method") == "pdiff":
        tasks = [str(t) for t in info.get("tasks", [])]
        if not all(re.fullmatch(r"[A-Za-z0-9][\w-]*", t) for t in tasks):
            raise WeightsError(f"{folder.name}: a task name in studio.json is not a plain name")
        keys = [f"{t}/{part}" for t in tasks for part in ("ae", "denoiser")]
    else:
        raise WeightsError(f"{folder.name}: unknown weight generator {info.get('method')!r}")
    nets = {key: load_module_folder(folder / key) for key in keys}
    check_weight_files(folder)
    tensors = load_file(folder / "checkpoints.safetensors")
    sched = json.loads((folder / "scheduler" / "scheduler_config.json").read_text())
    return WeightGenerator(folder.name, info["method"], nets, sched, tensors, info)


def _load_invdiff(folder: Path, info: dict) -> InvDiffModule:
    """InvDiff's ``delta/`` UNet and ``groups.safetensors`` (the soft groups and per-sample losses)."""
    from safetensors.torch import load_file

    delta = load_module_folder(folder / "delta")
    check_weight_files(folder)
    return InvDiffModule(folder.name, delta, load_file(folder / "groups.safetensors"), info)


def _load_var(folder: Path, info: dict) -> VARModel:
    """VAR's ``tokenizer/`` and ``transformer/``."""
    return VARModel(folder.name, load_module_folder(folder / "tokenizer"), load_module_folder(folder / "transformer"),
                    info)


def _load_inr(folder: Path, info: dict) -> INRDiffusionModel:
    """DDMI: the D2C-VAE (``vae/``), the latent denoiser (``model/``) and its ``scheduler/``."""
    sched = json.loads((folder / "scheduler" / "scheduler_config.json").read_text())
    return INRDiffusionModel(name=folder.name, unet=load_module_folder(folder / "model", info["model_class"]),
                             scheduler_config=sched, prediction_type=info.get("prediction_type", "epsilon"),
                             conditioning=info.get("conditioning", "none"), info=info,
                             vae=load_module_folder(folder / "vae", info.get("vae_class", "D2CVAE")))


# studio.json ``kind`` -> loader(folder, info): the one table a new kind of model is added to
LOADERS: dict[str, Callable[[Path, dict], Any]] = {
    "diffusion": _load_diffusion,
    "judge": _load_module,
    "classifier": _load_module,
    "contrastive": _load_module,
    "encoder": _load_module,
    "experts": _load_experts,
    "idempotent": _load_idempotent,
    "nag": _load_nag,
    "probe": _load_probe,
    "weightgen": _load_weightgen,
    "invdiff": _load_invdiff,
    "var": _load_var,
    "inr": _load_inr,
}


def load_folder(path: Path) -> Any:
    """Any local diffusers folder: a pipeline (model_index.json), a zoo-style entry, or a model."""
    path = Path(path)
    if (path / "studio.json").exists():
        return load_zoo(path.name, path.parent) if (path.parent / "MANIFEST.json").exists() else _load_entry(path)
    if (path / "model_index.json").exists():
        check_weight_files(path)
        with building():
            pipe = lazy.diffusers_attr("DiffusionPipeline").from_pretrained(path, use_safetensors=True,
                                                                            low_cpu_mem_usage=LOW_CPU_MEM_USAGE)
        from studio.core import pipelines

        if not pipelines.is_text_to_image(pipe):
            return pipe
        dm = pipelines.from_pipeline(pipe, path.name)
        dm.gaussian = _gaussian_beside(path)
        return dm
    if (path / "config.json").exists():
        module = load_module_folder(path)
        sched_dir = next((d for d in (path / "scheduler", path.parent / "scheduler") if d.is_dir()), None)
        if sched_dir is None:
            return module
        sched = json.loads((sched_dir / "scheduler_config.json").read_text())
        return DiffusionModel(name=path.name, unet=module, scheduler_config=sched,
                              prediction_type=sched.get("prediction_type", "epsilon"), gaussian=_gaussian_beside(path))
    raise ModelNotFound(f"{path} is not a diffusers folder (no model_index.json or config.json)")


def hub_reachable(timeout: float = 2.0) -> bool:
    """Whether the Hugging Face hub endpoint answers a TCP connect within ``timeout`` seconds."""
    if os.environ.get("HF_HUB_OFFLINE", "0") not in ("0", "", "false", "False"):
        return False
    from huggingface_hub import constants

    url = urlparse(constants.ENDPOINT)
    try:
        with socket.create_connection((url.hostname, url.port or 443), timeout=timeout):
            return True
    except OSError:
        return False


def load_hub(repo_id: str) -> Any:
    """A hub pipeline by id: from the local cache, or downloaded when the hub is reachable."""
    if not HUB_ID.match(repo_id):
        raise ModelNotFound(f"{repo_id!r} is not a hub id (expected 'owner/name')")
    from huggingface_hub import snapshot_download

    try:
        folder = snapshot_download(repo_id, local_files_only=True)
    except Exception:
        if not hub_reachable():
            raise ModelNotFound(
                f"cannot load {repo_id!r}: it is not in the local cache and the model hub cannot be "
                "reached (offline). Download it where there is internet and pass the local folder "
                "instead, e.g. `studio launch --model /path/to/folder`."
            ) from None
        folder = snapshot_download(repo_id, allow_patterns=["*.json", "*.safetensors", "*.txt", "*.model"])
    return load_folder(Path(folder))


def resolve(source: str, zoo: Path = ZOO_DIR) -> Any:
    """Load ``source``: a zoo entry name, a local folder, or a hub id, in that order."""
    if source in read_manifest(zoo):
        return load_zoo(source, zoo)
    if Path(source).is_dir():
        return load_folder(Path(source))
    if HUB_ID.match(source):
        return load_hub(source)
    raise ModelNotFound(f"{source!r} is not a zoo entry, a local folder or a hub id")


def module_bytes(obj: Any) -> int:
    """Bytes of parameters and buffers of every module in ``obj``."""
    return sum(t.numel() * t.element_size() for m in modules_of(obj) for t in (*m.parameters(), *m.buffers()))


def modules_of(obj: Any) -> list[torch.nn.Module]:
    if isinstance(obj, torch.nn.Module):
        return [obj]
    if isinstance(obj, DiffusionModel):
        return obj.modules
    components = getattr(obj, "components", None)  # diffusers pipelines
    if isinstance(components, dict):
        return [m for m in components.values() if isinstance(m, torch.nn.Module)]
    return []
