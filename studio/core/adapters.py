"""Tuned models: what a tuning run trained plus the parameters that made it, saved, loaded and registered.

A tuned model is its base model (a manager key) with a tuned copy of the base's UNet. On disk it is
``<root>/<name>/`` (``root``: :func:`tuned_dir`): ``adapter.safetensors`` (safetensors only) and
``tuned.json`` (the run's parameters: ``method``, ``base``, ``weights``, ``lora_rank``, ...). What the
tensors are depends on ``weights``: ``lora`` (the default, also for files saved before it existed),
the LoRA factors alone (:mod:`studio.nets.lora`); ``sara``, the changed entries only
(:func:`studio.nets.sparse.apply_sparse`); ``full``, the whole UNet state; ``var-subject`` (the Subject
tab), a VAR transformer's tuned tensors and the placeholder block (:func:`studio.core.var.subject_state`). The name is a manager key, so it is checked
(:func:`check_name`) and never becomes a path outside ``root``. Messages name the model, never a
folder. Methods that tune (Tune's PSO) pass plain data here: a state dict, a parameters dict, a
base key.
"""

from __future__ import annotations

import copy
import json
import os
import re
from pathlib import Path

from studio import lazy
from studio.core.models import DiffusionModel
from studio.core.params import ParamError

torch = lazy.load("torch")

NAME_RE = re.compile(r"^[a-z0-9][a-z0-9-]{0,39}$")


def tuned_dir() -> Path:
    """Where named tuned adapters live: ``$STUDIO_HOME/tuned`` (default ``~/.diffusion-studio/tuned``)."""
    return Path(os.environ.get("STUDIO_HOME", Path.home() / ".diffusion-studio")) / "tuned"


def check_name(name: str) -> str:
    """``name`` stripped, if it is a valid tuned model name (1 to 40 of ``a-z 0-9 -``); else ParamError."""
    name = (name or "").strip()
    if not NAME_RE.match(name):
        raise ParamError("a name is 1 to 40 lower-case letters, digits or '-', starting with a letter or digit")
    return name


def tuned_model(base: DiffusionModel, unet: torch.nn.Module, name: str, params: dict) -> DiffusionModel:
    """The tuned model as a manager entry: ``base``'s description with ``unet`` (the LoRA-wrapped
    copy); ``info`` gains ``tuned_from`` and the run's parameters under its method's id."""
    tuned = copy.copy(base)
    tuned.name, tuned.unet = name, unet.eval()
    tuned.info = {**base.info, "tuned_from": params["base"], params.get("method", "tuned"): params}
    return tuned


def save_tuned(state: dict[str, torch.Tensor], params: dict, name: str, root: Path | None = None) -> Path:
    """The trained tensors ``state`` (LoRA factors, SaRA's changed entries or a full UNet state) as
    safetensors plus ``params`` (JSON, with ``base``, ``weights`` and ``lora_rank``) in ``<root>/<name>/``;
    never overwrites. Returns the folder."""
    from safetensors.torch import save_file

    name = check_name(name)
    folder = (root or tuned_dir()) / name
    if folder.exists():
        raise ParamError(f"a tuned model named {name!r} already exists; choose another name")
    folder.mkdir(parents=True)
    save_file(state, folder / "adapter.safetensors")
    (folder / "tuned.json").write_text(json.dumps(params, indent=2) + "\n")
    return folder


def load_tuned(folder: Path, base: DiffusionModel) -> DiffusionModel:
    """A saved tuned model (``adapter.safetensors``, safetensors only) applied to a copy of ``base``."""
    from safetensors.torch import load_file

    from studio.nets.lora import load_lora
    from studio.nets.sparse import apply_sparse

    meta = json.loads((folder / "tuned.json").read_text())
    state = load_file(folder / "adapter.safetensors")
    kind = meta.get("weights", "lora")
    if kind == "var-subject":  # the Subject tab's: a VAR model's tuned layers and placeholder block
        from studio.core.var import apply_subject_state

        return apply_subject_state(base, state, {"tuned_from": meta["base"], "subject": meta}, folder.name)
    if kind == "lora":
        unet = load_lora(base.unet, state, int(meta["lora_rank"]))
    elif kind == "sara":
        unet = apply_sparse(base.unet, state)
    elif kind == "full":
        unet = copy.deepcopy(base.unet).float().requires_grad_(False)
        unet.load_state_dict(state)
    else:
        raise ValueError(f"unknown tuned weights {kind!r}")
    return tuned_model(base, unet, folder.name, meta)


def tuned_info(manager, base: str) -> dict:
    """Registry info of a model tuned from ``base``: the base's (an image diffusion model), plus ``tuned_from``."""
    return {"kind": "diffusion", **manager.info(base), "tuned_from": base}


def register_tuned(manager, name: str, model: DiffusionModel, base: str, replace: bool = False) -> None:
    """Register an in-memory tuned ``model`` under ``name`` (RuntimeError while a replaced one is in use)."""
    manager.register(name, lambda: model, replace=replace, info=tuned_info(manager, base))


def register_saved(manager, root: Path | None = None) -> list[str]:
    """Register every saved tuned model (``<root>/<name>/``) whose base is a zoo entry; returns the names."""
    from studio.core.loading import load_zoo, read_manifest

    folder_root = root or tuned_dir()
    zoo = read_manifest()
    names = []
    for folder in sorted(folder_root.glob("*/tuned.json")) if folder_root.is_dir() else []:
        folder = folder.parent
        try:
            base = json.loads((folder / "tuned.json").read_text())["base"]
        except (ValueError, KeyError, OSError):
            continue
        if base not in zoo or folder.name in manager or not NAME_RE.match(folder.name):
            continue
        manager.register(folder.name, lambda f=folder, b=base: load_tuned(f, load_zoo(b)), info=tuned_info(manager, base))
        names.append(folder.name)
    return names
