"""A user's drawing or upload -> a digit in the zoo's format (1 x 16 x 16, strokes +1 on -1).

Anything PIL reads is accepted (sketchpad layers arrive as RGBA arrays): transparency is laid
over white; light backgrounds are inverted (people draw dark on light, the digits are light on
dark); the ink is cropped to its bounding box, centred on a square with the digits' margin and
resized with area averaging. Every step that changed the image is reported in ``notes`` so the
tab can say what happened to the input.
"""

from __future__ import annotations

import io
import warnings

import numpy as np
from PIL import Image, UnidentifiedImageError

from studio.errors import UserError
from studio.data.digits import IMAGE_SIZE

MAX_BYTES = 5 * 1024 * 1024  # upload size the tab and this parser accept
MAX_PIXELS = 4096 * 4096
MIN_INK = 0.08  # brightness range (0..1) below which a drawing counts as blank
MARGIN = 0.12  # share of the side left empty around the ink (sklearn digits fill ~3/4 of their box)


class DrawingError(UserError):
    """An input that cannot become a digit; the message is meant for the user."""


def open_image(source) -> tuple[Image.Image, list[str]]:
    """A PIL image from bytes, a path-like upload, a numpy array or a PIL image."""
    notes: list[str] = []
    if isinstance(source, Image.Image):
        return source, notes
    if isinstance(source, np.ndarray):
        if source.size == 0 or source.ndim not in (2, 3):
            raise DrawingError("the image is empty")
        arr = source
        if arr.dtype != np.uint8:
            arr = np.clip(arr, 0, 255).astype(np.uint8)
        return Image.fromarray(arr), notes
    if isinstance(source, (bytes, bytearray)):
        data = bytes(source)
    else:
        try:
            with open(source, "rb") as fh:
                data = fh.read(MAX_BYTES + 1)
        except OSError as exc:
            raise DrawingError(f"could not read the upload: {exc.strerror or exc}") from None
    if len(data) > MAX_BYTES:
        raise DrawingError(f"the file is larger than {MAX_BYTES // (1024 * 1024)} MB; upload a smaller image")
    try:
        with warnings.catch_warnings():  # the size is checked below, before any pixel is decoded
            warnings.simplefilter("ignore", Image.DecompressionBombWarning)
            img = Image.open(io.BytesIO(data))
        if img.width * img.height > MAX_PIXELS:
            raise DrawingError(f"the image is {img.width} x {img.height} pixels; the limit is 4096 x 4096")
        img.load()
    except (UnidentifiedImageError, OSError, Image.DecompressionBombError, SyntaxError, ValueError) as exc:
        if isinstance(exc, DrawingError):
            raise
        raise DrawingError("that file is not an image PIL can read (use PNG, JPEG, WebP, BMP or GIF)") from None
    return img, notes


def over_white(img: Image.Image, notes: list[str]) -> Image.Image:
    """The first frame, laid over white where transparent (a note for an animated image)."""
    if getattr(img, "n_frames", 1) > 1:
        notes.append("an animated image: its first frame is used")
    if img.mode in ("RGBA", "LA", "PA") or (img.mode == "P" and "transparency" in img.info):
        rgba = img.convert("RGBA")
        img = Image.alpha_composite(Image.new("RGBA", rgba.size, (255, 255, 255, 255)), rgba)
    return img


def to_digit(source) -> tuple[np.ndarray, list[str]]:
    """``(image (1, 16, 16) float32 in [-1, 1], notes)``; raises :class:`DrawingError` for a blank
    or unreadable input."""
    img, notes = open_image(source)
    if img.width * img.height > MAX_PIXELS:
        raise DrawingError(f"the image is {img.width} x {img.height} pixels; the limit is 4096 x 4096")
    img = over_white(img, notes)
    if img.mode != "L":
        notes.append(f"converted from {img.mode} to greyscale")
    gray = np.asarray(img.convert("L"), dtype=np.float32) / 255.0
    lo, hi = float(gray.min()), float(gray.max())
    if hi - lo < MIN_INK:
        raise DrawingError("the drawing is blank: draw a digit (any colour) or upload an image of one")
    border = np.concatenate([gray[0], gray[-1], gray[:, 0], gray[:, -1]])
    if np.median(border) > 0.5:
        gray = 1.0 - gray
        notes.append("inverted (light background): the digits are light strokes on black")
    gray = (gray - gray.min()) / max(gray.max() - gray.min(), 1e-6)
    ys, xs = np.nonzero(gray > 0.25)
    y0, y1, x0, x1 = ys.min(), ys.max() + 1, xs.min(), xs.max() + 1
    crop = gray[y0:y1, x0:x1]
    side = int(np.ceil(max(crop.shape) / (1 - 2 * MARGIN)))
    canvas = np.zeros((side, side), np.float32)
    oy, ox = (side - crop.shape[0]) // 2, (side - crop.shape[1]) // 2
    canvas[oy:oy + crop.shape[0], ox:ox + crop.shape[1]] = crop
    if (img.width, img.height) != (IMAGE_SIZE, IMAGE_SIZE):
        notes.append(f"cropped to the ink and resized from {img.width} x {img.height} to {IMAGE_SIZE} x {IMAGE_SIZE}")
    small = Image.fromarray((canvas * 255).astype(np.uint8), "L").resize((IMAGE_SIZE, IMAGE_SIZE), Image.Resampling.BOX)
    arr = np.asarray(small, dtype=np.float32) / 255.0
    arr = arr / max(arr.max(), 1e-6)
    return (arr * 2 - 1)[None].astype(np.float32), notes


def to_mask(source) -> np.ndarray | None:
    """A drawn mask (strokes over a blank canvas) -> bool (16, 16), True where hidden; None when blank.

    The mask keeps the canvas's frame (no cropping): what is painted over is what is hidden."""
    img, _ = open_image(source)
    alpha = np.asarray(img.convert("RGBA"), dtype=np.float32)[..., 3] / 255.0 if "A" in img.getbands() else None
    if alpha is not None and alpha.min() < 0.5:  # a stroke layer over transparency: painted = hidden
        ink = alpha
    else:
        gray = np.asarray(img.convert("L"), dtype=np.float32) / 255.0
        border = np.concatenate([gray[0], gray[-1], gray[:, 0], gray[:, -1]])
        ink = 1.0 - gray if np.median(border) > 0.5 else gray
    if ink.max() < MIN_INK:
        return None
    small = Image.fromarray((np.clip(ink, 0, 1) * 255).astype(np.uint8), "L").resize(
        (IMAGE_SIZE, IMAGE_SIZE), Image.Resampling.BOX)
    return np.asarray(small) > 40


def to_picture(source, size: int) -> tuple[np.ndarray, list[str]]:
    """Any image -> ``(RGB (3, size, size) float32 in [-1, 1], notes)`` for a text-to-image model: over
    white where transparent, centre-cropped to a square and resized (bicubic), as the Diffusion
    Classifier's code prepares its inputs (``Resize`` then ``CenterCrop``)."""
    img, notes = open_image(source)
    img = over_white(img, notes).convert("RGB")
    side = min(img.size)
    if img.width != img.height:
        left, top = (img.width - side) // 2, (img.height - side) // 2
        img = img.crop((left, top, left + side, top + side))
        notes.append(f"centre-cropped to {side} x {side}")
    if side != size:
        img = img.resize((size, size), Image.Resampling.BICUBIC)
        notes.append(f"resized to {size} x {size}")
    arr = np.asarray(img, dtype=np.float32).transpose(2, 0, 1) / 127.5 - 1.0
    return arr, notes
