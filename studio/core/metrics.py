"""Measuring: judge accuracy and Frechet distance on the zoo feature nets, with bootstrap intervals.

The Frechet distance here is computed on the zoo's own small feature networks (``fd-digits``,
``fd-shapes``), so it is called **FD-digits / FD-shapes**, never FID: the numbers are not
comparable with Inception-based FIDs in papers.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass

import numpy as np

from studio import lazy

torch = lazy.load("torch")
linalg = lazy.load("scipy.linalg")


@dataclass(frozen=True)
class Estimate:
    value: float
    low: float  # bootstrap percentile interval
    high: float
    n: int

    def __str__(self) -> str:
        return f"{self.value:.3f} [{self.low:.3f}, {self.high:.3f}] (n={self.n})"

    def to_dict(self) -> dict:
        return {k: (round(v, 5) if isinstance(v, float) else v) for k, v in asdict(self).items()}


def bootstrap_mean(values, n_boot: int = 1000, level: float = 0.95, seed: int = 0) -> Estimate:
    """Mean of ``values`` (e.g. 0/1 judge hits) with a percentile bootstrap interval."""
    v = np.asarray(values, dtype=np.float64)
    if v.size == 0:
        raise ValueError("no values to average")
    rng = np.random.default_rng(seed)
    means = v[rng.integers(0, v.size, size=(n_boot, v.size))].mean(1)
    a = (1 - level) / 2
    return Estimate(float(v.mean()), float(np.quantile(means, a)), float(np.quantile(means, 1 - a)), int(v.size))


def bootstrap_difference(a, b, n_boot: int = 1000, level: float = 0.95, seed: int = 0) -> Estimate:
    """mean(a) - mean(b) for two *independent* samples (e.g. accuracy on renders vs on generated
    images), each resampled on its own; for paired samples bootstrap the differences instead."""
    a, b = np.asarray(a, dtype=np.float64), np.asarray(b, dtype=np.float64)
    if a.size == 0 or b.size == 0:
        raise ValueError("no values to average")
    rng = np.random.default_rng(seed)
    diffs = (a[rng.integers(0, a.size, size=(n_boot, a.size))].mean(1)
             - b[rng.integers(0, b.size, size=(n_boot, b.size))].mean(1))
    q = (1 - level) / 2
    return Estimate(float(a.mean() - b.mean()), float(np.quantile(diffs, q)), float(np.quantile(diffs, 1 - q)),
                    int(min(a.size, b.size)))


def psnr(x: torch.Tensor, clean: torch.Tensor) -> torch.Tensor:
    """Per-image PSNR in dB on images in [-1, 1] (peak-to-peak 2); ``x`` is clipped to the range first."""
    mse = ((x.clamp(-1, 1) - clean) ** 2).flatten(1).mean(1).clamp_min(1e-10)
    return 10 * torch.log10(4.0 / mse)


def palette_labels(images: torch.Tensor) -> torch.Tensor:
    """(B, 3, H, W) shapes-world images in [-1, 1] -> (B, H, W) index of the nearest palette colour
    (0: the black background, k: ``shapes.COLOURS[k - 1]``)."""
    from studio.data.shapes import COLOURS, RGB

    palette = torch.tensor([(0, 0, 0), *(RGB[c] for c in COLOURS)], dtype=torch.float32) / 127.5 - 1  # (7, 3)
    d = (images.float().clamp(-1, 1)[:, None] - palette[None, :, :, None, None].to(images.device)).pow(2).sum(2)
    return d.argmin(1)


def colour_mask_iou(images: torch.Tensor, truth: torch.Tensor) -> torch.Tensor:
    """(B,) mean over the colours present in ``truth`` (background excluded) of the IoU between the
    pixels each image and the truth assign to that colour (nearest palette colour per pixel)."""
    a, b = palette_labels(images), palette_labels(truth)
    out = []
    for la, lb in zip(a, b):
        ious = [((la == k) & (lb == k)).sum() / ((la == k) | (lb == k)).sum() for k in lb.unique().tolist() if k]
        out.append(torch.stack(ious).mean() if ious else torch.tensor(float("nan")))
    return torch.stack(out).float()


def gradient_magnitude(images: torch.Tensor) -> torch.Tensor:
    """(B, 3, H, W) -> (B, H, W): the Sobel gradient magnitude of the channel mean (per pixel of the image)."""
    kx = torch.tensor([[1.0, 0.0, -1.0], [2.0, 0.0, -2.0], [1.0, 0.0, -1.0]]) / 8
    k = torch.stack([kx, kx.T])[:, None].to(images.device)
    g = torch.nn.functional.conv2d(torch.nn.functional.pad(images.float().mean(1, keepdim=True), [1] * 4,
                                                           mode="replicate"), k)
    return g.pow(2).sum(1).sqrt()


def edge_sharpness(images: torch.Tensor, truth: torch.Tensor, quantile: float = 0.9) -> torch.Tensor:
    """(B,) how steep the images' edges are where the truth has edges: the mean gradient magnitude of the
    image over the truth's edge pixels (its gradient above the ``quantile`` of its non-zero gradients),
    divided by the truth's own mean there. 1: as sharp as the true render; a blurred image is below 1."""
    ga, gb = gradient_magnitude(images), gradient_magnitude(truth)
    out = []
    for a, b in zip(ga, gb):
        nonzero = b[b > 1e-3]
        if nonzero.numel() == 0:
            out.append(torch.tensor(float("nan")))
            continue
        edges = b >= torch.quantile(nonzero, quantile)
        out.append(a[edges].mean() / b[edges].mean())
    return torch.stack(out).float()


def gaussian_stats(features: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    f = np.asarray(features, dtype=np.float64)
    return f.mean(0), np.cov(f, rowvar=False)


def frechet_distance(mu1, sigma1, mu2, sigma2, eps: float = 1e-6) -> float:
    """||mu1 - mu2||^2 + Tr(S1 + S2 - 2 (S1 S2)^(1/2)) (Dowson & Landau; the FID formula)."""
    diff = mu1 - mu2
    covmean, _ = linalg.sqrtm(sigma1 @ sigma2, disp=False)
    if not np.isfinite(covmean).all():
        offset = np.eye(sigma1.shape[0]) * eps
        covmean = linalg.sqrtm((sigma1 + offset) @ (sigma2 + offset))
    covmean = covmean.real
    return float(diff @ diff + np.trace(sigma1) + np.trace(sigma2) - 2 * np.trace(covmean))


def frechet_features(features_a: np.ndarray, features_b: np.ndarray, n_boot: int = 200, seed: int = 0,
                     level: float = 0.95) -> Estimate:
    """FD between two feature sets, with a bias-corrected bootstrap interval.

    Resampling with replacement repeats points, which inflates a Frechet distance (the plain
    percentile interval of a good generator can lie wholly above its point estimate). So the
    bootstrap distribution (both sets resampled) is shifted to have the point estimate as its
    mean before its percentiles are read, and the lower end is clipped at 0.
    """
    value = frechet_distance(*gaussian_stats(features_a), *gaussian_stats(features_b))
    rng = np.random.default_rng(seed)
    boots = []
    for _ in range(n_boot):
        a = features_a[rng.integers(0, len(features_a), len(features_a))]
        b = features_b[rng.integers(0, len(features_b), len(features_b))]
        boots.append(frechet_distance(*gaussian_stats(a), *gaussian_stats(b)))
    boots = np.asarray(boots) - (np.mean(boots) - value)
    q = (1 - level) / 2
    return Estimate(value, max(0.0, float(np.quantile(boots, q))), float(np.quantile(boots, 1 - q)),
                    min(len(features_a), len(features_b)))


def frechet_paired_difference(real: np.ndarray, features_a: np.ndarray, features_b: np.ndarray, n_boot: int = 500,
                               seed: int = 0, level: float = 0.95) -> Estimate:
    """``FD(b, real) - FD(a, real)`` for two generated sets made from the same seeds (row i of ``a`` and of
    ``b`` share their noise), with a paired bootstrap interval: each resample draws one set of seed
    indices for both and one resample of ``real``, so what the two sets share cancels. Centred on the
    point estimate as :func:`frechet_features` is; a difference whose interval covers 0 is no difference."""
    if len(features_a) != len(features_b):
        raise ValueError("paired sets must have one row per seed each")
    stats_r = gaussian_stats(real)
    value = frechet_distance(*gaussian_stats(features_b), *stats_r) - frechet_distance(*gaussian_stats(features_a), *stats_r)
    rng = np.random.default_rng(seed)
    boots = []
    for _ in range(n_boot):
        i = rng.integers(0, len(features_a), len(features_a))
        r = gaussian_stats(real[rng.integers(0, len(real), len(real))])
        boots.append(frechet_distance(*gaussian_stats(features_b[i]), *r) - frechet_distance(*gaussian_stats(features_a[i]), *r))
    boots = np.asarray(boots) - (np.mean(boots) - value)
    q = (1 - level) / 2
    return Estimate(value, float(np.quantile(boots, q)), float(np.quantile(boots, 1 - q)), len(features_a))


@lazy.no_grad
def features(net: torch.nn.Module, images: torch.Tensor, batch: int = 512) -> np.ndarray:
    """Feature-net features of (N, C, H, W) images in [-1, 1]."""
    net.eval()
    return torch.cat([net.features(images[i:i + batch].float()) for i in range(0, len(images), batch)]).cpu().numpy()


def frechet(net: torch.nn.Module, images_a: torch.Tensor, images_b: torch.Tensor, n_boot: int = 200) -> Estimate:
    """FD-<domain> between two image sets on the feature net ``net`` (e.g. zoo ``fd-digits``)."""
    return frechet_features(features(net, images_a), features(net, images_b), n_boot=n_boot)


@lazy.no_grad
def judge_reading(judge: torch.nn.Module, images: torch.Tensor, **kwargs) -> tuple[np.ndarray, np.ndarray]:
    """(class, probability) a classifier reads on each image in [-1, 1] (``kwargs``: e.g. ``t`` for a
    noise-aware one)."""
    device = next(judge.parameters()).device
    probs = torch.softmax(judge(images.clamp(-1, 1).to(device), **kwargs), dim=-1)
    p, c = probs.max(dim=-1)
    return c.cpu().numpy(), p.cpu().numpy()


@lazy.no_grad
def digits_accuracy(judge: torch.nn.Module, images: torch.Tensor, labels) -> Estimate:
    """Share of images the digits judge reads as the asked class."""
    judge.eval()
    pred = judge(images.float()).argmax(-1).cpu().numpy()
    return bootstrap_mean(pred == np.asarray(labels))


@lazy.no_grad
def shapes_concept_hits(judge: torch.nn.Module, images: torch.Tensor, concepts: list[dict]) -> dict[str, np.ndarray]:
    """Per image: does the judge find the asked concept? ``concepts[i]`` = {shape, colour, region}.

    Returns 0/1 arrays: ``shape_colour`` (an object of that shape and colour anywhere) and
    ``all`` (an object with every asked attribute, the region included).
    """
    from studio.nets.judges import concept_present

    judge.eval()
    s_cells, c_cells = judge.read(images.float())
    out = {"shape_colour": [], "all": []}
    for i, c in enumerate(concepts):
        si, ci = s_cells[i:i + 1], c_cells[i:i + 1]
        out["shape_colour"].append(bool(concept_present(si, ci, c.get("shape"), c.get("colour"), None)))
        out["all"].append(bool(concept_present(si, ci, c.get("shape"), c.get("colour"), c.get("region"))))
    return {k: np.asarray(v, dtype=np.float64) for k, v in out.items()}


@lazy.no_grad
def shapes_colours_of(judge: torch.nn.Module, images: torch.Tensor, shape: str | None) -> list[str | None]:
    """Per image, the colour the shapes judge reads on the first cell (reading order) that holds
    ``shape`` (any object when None); None when it finds no such object (the asked shape is missing)."""
    from studio.data.shapes import COLOURS, SHAPES

    judge.eval()
    s_cells, c_cells = judge.read(images.float())
    hit = s_cells == SHAPES.index(shape) + 1 if shape is not None else s_cells > 0  # (B, 9)
    first = hit.float().argmax(-1)
    return [COLOURS[int(c_cells[i, first[i]])] if hit[i].any() else None for i in range(len(images))]


@lazy.no_grad
def shapes_objects(judge: torch.nn.Module, images: torch.Tensor) -> list[list[str]]:
    """Per image, the captions of the objects the shapes judge reads, cell by cell in reading order
    ("a red circle at the top left")."""
    from studio.data.shapes import COLOURS, SHAPES, concept_caption

    judge.eval()
    s_cells, c_cells = judge.read(images.float().to(next(judge.parameters()).device))
    return [[concept_caption(SHAPES[s - 1], COLOURS[c], r) for r, (s, c) in enumerate(zip(s_row, c_row)) if s > 0]
            for s_row, c_row in zip(s_cells.tolist(), c_cells.tolist())]


def bias_score(counts) -> float:
    """The bias score of InvDiff's ``src/utils/score/bias_score.py`` for one prompt's attribute counts
    n_1..n_K: the sum over pairs i < j of |n_i - n_j| / N, divided by the K(K-1)/2 pairs. 0: balanced;
    1: every image in one class."""
    n = np.asarray(counts, dtype=np.float64)
    k, total = len(n), n.sum()
    if k < 2 or total == 0:
        raise ValueError("the bias score needs at least two classes and one counted image")
    return float(sum(abs(n[i] - n[j]) for i in range(k) for j in range(i + 1, k)) / total / (k * (k - 1) / 2))


BACKGROUND_FRAME = 1          # the outermost ring of pixels is what background statistics read
BACKGROUND_THRESHOLD = -0.3   # a frame pixel is background when its brightest channel is below this


@lazy.no_grad
def background_stats(images: torch.Tensor, frame: int = BACKGROUND_FRAME,
                     threshold: float = BACKGROUND_THRESHOLD) -> dict[str, np.ndarray]:
    """Per image (N, C, H, W in [-1, 1], a black-background world such as shapes): the ``mean`` and
    the ``grain`` (standard deviation) of the background in the outer ``frame`` pixels.

    A frame pixel counts as background when its brightest channel is below ``threshold``: every
    shapes colour has a channel at 200/255 or more, so object pixels (and most of their
    anti-aliased edges) are left out whatever the background's tint. A real render reads a mean
    near -1 and a grain near 0; an image with no background pixel in its frame reads NaN.
    """
    x = images.float().clamp(-1, 1)
    h, w = x.shape[-2:]
    ring = torch.ones(h, w, dtype=torch.bool)
    ring[frame:h - frame, frame:w - frame] = False
    bg = (x.amax(1) < threshold) & ring  # (N, H, W)
    means, grains = [], []
    for xi, mi in zip(x, bg):
        v = xi[:, mi].flatten()
        means.append(float(v.mean()) if v.numel() else float("nan"))
        grains.append(float(v.std()) if v.numel() > 1 else float("nan"))
    return {"mean": np.asarray(means), "grain": np.asarray(grains)}


# --------------------------------------------------------------------------------- forecasts

QUANTILES = np.round(np.arange(1, 10) / 10, 1)  # 0.1 .. 0.9, GluonTS's Evaluator default


def _forecast_frame(y, forecasts: dict[str, np.ndarray]):
    """Long frame for utilsforecast: ``y`` ``(H,)`` or ``(K, H)`` (K series), each forecast
    ``(Q, H)`` or ``(K, Q, H)``; one column per model and quantile."""
    import pandas as pd

    y = np.atleast_2d(np.asarray(y, dtype=np.float64))
    K, H = y.shape
    frame = {"unique_id": np.repeat(np.arange(K), H), "ds": np.tile(np.arange(H), K), "y": y.reshape(-1)}
    columns = {}
    for name, f in forecasts.items():
        f = np.asarray(f, dtype=np.float64)
        f = f.reshape(K, -1, H) if f.ndim == 3 or K > 1 else f.reshape(1, -1, H)
        columns[name] = [f"{name}|{i}" for i in range(f.shape[1])]
        frame.update({c: f[:, i].reshape(-1) for i, c in enumerate(columns[name])})
    return pd.DataFrame(frame), columns


def mean_weighted_quantile_loss(y, quantile_forecasts: dict[str, np.ndarray]) -> dict[str, float]:
    """GluonTS ``mean_wQuantileLoss`` (the TSDiff paper's "CRPS") of each forecast of ``y``.

    ``quantile_forecasts[name]`` is ``(9, H)``: the forecast's quantiles at :data:`QUANTILES`.
    Value: ``mean_q  sum_t 2 |(yhat_q - y)(1{y <= yhat_q} - q)| / sum_t |y|``, computed by
    utilsforecast's ``scaled_crps`` (whose definition is exactly this; see the tests). With
    ``y`` ``(K, H)`` and forecasts ``(K, 9, H)`` it is computed per series and averaged.
    """
    from utilsforecast.losses import scaled_crps

    df, cols = _forecast_frame(y, quantile_forecasts)
    out = scaled_crps(df, cols, QUANTILES)
    return {name: float(out[name].mean()) for name in quantile_forecasts}


def mase(y, point_forecasts: dict[str, np.ndarray], history, season: int) -> dict[str, float]:
    """Mean absolute scaled error (utilsforecast): MAE / in-sample MAE of the seasonal naive
    forecast on ``history`` (season 1 for series without one)."""
    import pandas as pd
    from utilsforecast.losses import mase as uf_mase

    df, cols = _forecast_frame(y, point_forecasts)
    df = df.rename(columns={c[0]: name for name, c in cols.items()})
    h = np.asarray(history, dtype=np.float64)
    train = pd.DataFrame({"unique_id": np.zeros(len(h), dtype=int), "ds": np.arange(-len(h), 0), "y": h})
    out = uf_mase(df, list(point_forecasts), seasonality=max(1, int(season)), train_df=train)
    return {name: float(out[name].iloc[0]) for name in point_forecasts}


def sample_quantiles(samples: np.ndarray) -> np.ndarray:
    """``(9, H)`` quantiles at :data:`QUANTILES` of ``(N, H)`` forecast samples (as GluonTS reads them)."""
    return np.quantile(np.asarray(samples, dtype=np.float64), QUANTILES, axis=0)


def linear_predictive_score(train_windows: np.ndarray, test_windows: np.ndarray, context: int,
                            alpha: float = 1.0) -> float:
    """LPS (the TSDiff paper's synthetic-data score): a ridge model from context to horizon fit on
    ``train_windows`` ``(M, L)`` (model space, e.g. synthetic), scored by mean wQuantileLoss of its
    point forecast on real ``test_windows`` ``(K, L)`` in series units, each scaled by its own
    context mean before the ridge model sees it."""
    from sklearn.linear_model import Ridge

    ridge = Ridge(alpha=alpha).fit(train_windows[:, :context], train_windows[:, context:])
    scale = np.abs(test_windows[:, :context]).mean(1, keepdims=True)
    scale = np.where(scale > 1e-10, scale, 1.0)
    pred = ridge.predict(test_windows[:, :context] / scale) * scale
    y = test_windows[:, context:]
    point = np.repeat(pred[:, None, :], len(QUANTILES), axis=1)  # a point forecast: every quantile equal
    return mean_weighted_quantile_loss(y, {"lps": point})["lps"]
