"""R0 (Luo et al., 2025, "Rewards Are Enough for Fast Photo-Realistic Text-to-image Generation"):
tune a few-step generator by regularised reward maximisation in data space, with no diffusion loss.

**No official code exists** (the notes found none); this is reconstructed from the paper's
description, and every choice below is ours where the paper is silent:

* The generator is the few-step student sampled from noise on its distilled timesteps with
  **random eta** (:func:`generate`): each step re-noises the x0 prediction with a share eta of the
  DDIM noise, eta drawn uniformly in [0, 1] per image and step (eta 0 is the deterministic sampler
  the tab evaluates with). Reward gradients flow through the *last* step's x0 prediction only
  (earlier steps run without gradient: DRaFT-1's truncation; the paper does not say how far it
  backpropagates).
* The **rewards**: the log-probability of the asked digit under ``guide-clean`` (Guide's clean
  digits classifier, never the judge that scores the run) and a style reward,
  :func:`soft_thickness`, a differentiable relaxation of the style measure
  :func:`studio.data.digits.thickness` (``2 x ink area / ink perimeter`` with a sigmoid for the
  binarisation). The run is scored by the independent style judge, which no reward reads.
* **Normalised reward gradients**: each reward's gradient with respect to the image is scaled to
  unit norm per image before the weighted sum (so one reward cannot drown the other and the step
  size does not grow as a reward is hacked); off, the plain weighted sum of rewards is maximised.
* **Weight regularisation towards the pre-trained weights**: ``lambda ||theta - theta_0||^2``
  (:meth:`studio.train.tuning.LoraWeights.distance_sq`: for LoRA the merged update's norm).

Switching each regulariser off (``weight_reg = 0``, ``random_eta = False``, ``normalise = False``)
is what the benchmark's reward-hacking rows do.
"""

from __future__ import annotations

from studio import lazy
from studio.train.boot import FewStep

torch = lazy.load("torch")
F = lazy.load("torch.nn.functional")

SHARPNESS = 8.0  # the sigmoid's slope for "ink" in soft_thickness (pixels in [-1, 1])


def soft_thickness(x: torch.Tensor) -> torch.Tensor:
    """A differentiable ``2 A / P`` per image (N, 1, H, W) in [-1, 1]: ink = sigmoid(8 x)."""
    ink = torch.sigmoid(SHARPNESS * x[:, 0])
    padded = F.pad(ink, (1, 1, 1, 1))
    area = ink.flatten(1).sum(1)
    perimeter = ((padded[:, 1:, :] - padded[:, :-1, :]).abs().flatten(1).sum(1)
                 + (padded[:, :, 1:] - padded[:, :, :-1]).abs().flatten(1).sum(1))
    return 2 * area / perimeter.clamp(min=1.0)


def generate(fs: FewStep, labels: list, gen: torch.Generator, *, random_eta: bool = True) -> torch.Tensor:
    """One few-step sample per label, with gradient through the last step's x0 prediction only."""
    ts = fs.timesteps.tolist()
    cond = fs.condition(labels)
    n = len(labels)
    x = torch.randn(n, *fs.dm.sample_shape, generator=gen).to(fs.device)
    alpha, sigma = fs.alpha.to(fs.device), fs.sigma.to(fs.device)
    with torch.no_grad():
        for t, t_next in zip(ts[:-1], ts[1:]):
            x0 = fs.x0(x, torch.full((n,), t, device=fs.device), cond)
            x0 = x0.clamp(-1, 1) if fs.clip else x0
            eps = (x - alpha[t] * x0) / sigma[t]
            eta = torch.rand(n, 1, 1, 1, generator=gen).to(fs.device) if random_eta else torch.zeros(n, 1, 1, 1)
            # DDIM's stochastic step: std s = eta sigma_ddim, the rest of sigma_next along the predicted noise
            ddim = (sigma[t_next] / sigma[t]) * (1 - (alpha[t] / alpha[t_next]) ** 2).clamp(min=0).sqrt()
            s = eta * ddim
            z = torch.randn(x.shape, generator=gen).to(fs.device)
            x = alpha[t_next] * x0 + (sigma[t_next] ** 2 - s ** 2).clamp(min=0).sqrt() * eps + s * z
    x0 = fs.x0(x, torch.full((n,), ts[-1], device=fs.device), cond)
    return x0.clamp(-1, 1) if fs.clip else x0


def rewards(images: torch.Tensor, labels: list, classifier: torch.nn.Module) -> dict[str, torch.Tensor]:
    """Per-image rewards: the asked digit's log-probability under ``classifier`` and the soft thickness."""
    target = torch.as_tensor([int(c) for c in labels], device=images.device)
    log_p = F.log_softmax(classifier(images), -1).gather(1, target[:, None]).squeeze(1)
    return {"class": log_p, "style": soft_thickness(images)}


def r0_terms(fs: FewStep, weights, labels: list, classifier: torch.nn.Module, gen: torch.Generator, *,
             class_weight: float, style_weight: float, weight_reg: float, random_eta: bool,
             normalise: bool) -> dict[str, torch.Tensor]:
    """One R0 objective (to minimise) on fresh samples for ``labels``, with its parts for the log."""
    images = generate(fs, labels, gen, random_eta=random_eta)
    r = rewards(images, labels, classifier)
    scales = {"class": class_weight, "style": style_weight}
    if normalise:
        surrogate = 0.0
        for name, w in scales.items():
            if not w:
                continue
            g, = torch.autograd.grad(r[name].sum(), images, retain_graph=True)
            g = g / g.flatten(1).norm(dim=1).clamp(min=1e-8).view(-1, 1, 1, 1)
            surrogate = surrogate - w * (images * g.detach()).flatten(1).sum(1).mean()
        objective = surrogate
    else:
        objective = -sum(w * r[name].mean() for name, w in scales.items())
    reg = weights.distance_sq() if weight_reg else torch.zeros(())
    loss = objective + weight_reg * reg
    return {"loss": loss, "reward_class": r["class"].mean().detach(), "reward_style": r["style"].mean().detach(),
            "reg": torch.as_tensor(reg).detach()}
