"""Result types that carry the exact parameters that produced them.

Images are saved as PNG with the generation parameters as JSON in the ``parameters`` text
chunk, so a saved image can be reproduced: ``read_png_parameters(path)`` gives them back.
"""

from __future__ import annotations

import io
import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
from PIL import Image, PngImagePlugin

from studio import lazy

torch = lazy.load("torch")

PNG_KEY = "parameters"
DISPLAY_SIZE = 128  # pixels; small models are upscaled (nearest) to about this for display


def to_pil(images: torch.Tensor, upscale: int = 1) -> list[Image.Image]:
    """(B, C, H, W) in [-1, 1] -> PIL images (L for one channel, RGB for three), nearest upscale."""
    arr = ((images.detach().float().cpu().clamp(-1, 1) + 1) * 127.5).round().to(torch.uint8).numpy()
    out = []
    for a in arr:
        img = Image.fromarray(a[0], "L") if a.shape[0] == 1 else Image.fromarray(np.transpose(a, (1, 2, 0)), "RGB")
        if upscale > 1:
            img = img.resize((img.width * upscale, img.height * upscale), Image.Resampling.NEAREST)
        out.append(img)
    return out


def to_strip(images: torch.Tensor, upscale: int = 1, pad: int = 2) -> Image.Image:
    """(N, C, H, W) in [-1, 1] -> one image, the N side by side on white (a row of a process: z, f(z), ...)."""
    return to_grid(images[None], upscale, pad)


def to_grid(rows: torch.Tensor, upscale: int = 1, pad: int = 2) -> Image.Image:
    """(R, N, C, H, W) in [-1, 1] -> one image: R rows of N images each, on white."""
    tiles = to_pil(rows.flatten(0, 1), upscale)
    n = rows.shape[1]
    w, h = tiles[0].size
    out = Image.new(tiles[0].mode, (n * w + (n - 1) * pad, rows.shape[0] * h + (rows.shape[0] - 1) * pad),
                    255 if tiles[0].mode == "L" else "white")
    for i, tile in enumerate(tiles):
        out.paste(tile, ((i % n) * (w + pad), (i // n) * (h + pad)))
    return out


def png_bytes(image: Image.Image, parameters: dict[str, Any]) -> bytes:
    """PNG bytes with ``parameters`` (JSON) in the text chunk."""
    info = PngImagePlugin.PngInfo()
    info.add_text(PNG_KEY, json.dumps(parameters, sort_keys=True))
    buf = io.BytesIO()
    image.save(buf, format="PNG", pnginfo=info)
    return buf.getvalue()


def save_png(image: Image.Image, parameters: dict[str, Any], path: str | Path) -> Path:
    path = Path(path)
    path.write_bytes(png_bytes(image, parameters))
    return path


def read_png_parameters(source: str | Path | bytes | Image.Image) -> dict[str, Any]:
    """The parameters stored by :func:`png_bytes` (raises ``ValueError`` if there are none)."""
    if isinstance(source, Image.Image):
        img = source
    elif isinstance(source, bytes):
        img = Image.open(io.BytesIO(source))
    else:
        img = Image.open(source)
    text = getattr(img, "text", {}) or img.info
    if PNG_KEY not in text:
        raise ValueError("this image carries no studio parameters (was it saved as PNG by the studio?)")
    return json.loads(text[PNG_KEY])


@dataclass
class ImageResult:
    """Final images plus everything needed to make them again."""

    images: list[Image.Image]  # display size
    parameters: dict[str, Any]  # method, model, seed, scheduler, steps, guidance, ...
    seeds: list[int] = field(default_factory=list)  # one per image
    tensors: torch.Tensor | None = None  # (B, C, H, W) in [-1, 1], model resolution
    seconds: float = 0.0

    def image_parameters(self, i: int) -> dict[str, Any]:
        return {**self.parameters, "index": i, "image_seed": self.seeds[i] if self.seeds else None}

    def caption(self, i: int) -> str:
        """A one-line caption for image ``i`` (methods add what they measured)."""
        return f"seed {self.seeds[i]}" if self.seeds else f"image {i}"

    def png(self, i: int) -> bytes:
        return png_bytes(self.images[i], self.image_parameters(i))

    def save(self, folder: str | Path, stem: str = "image") -> list[Path]:
        folder = Path(folder)
        folder.mkdir(parents=True, exist_ok=True)
        return [save_png(img, self.image_parameters(i), folder / f"{stem}-{i:02d}.png")
                for i, img in enumerate(self.images)]
