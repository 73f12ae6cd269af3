"""Diffusion-DRO (Wu, Ruan, Tseng, Shuai; NeurIPS 2025; official ``basiclab/DiffusionDRO`` ``train.py``):
learn from expert images against the model's own samples with a ranking hinge, no reward model.

As the official training step does it:

* **Expert** images x0 (here the Tune targets) with their conditions.
* A **lagged policy**, a copy of the network being trained, refreshed every ``sync_every`` steps
  (16 in the release), samples trajectories for the experts' conditions; a **replay buffer** keeps
  the last ``buffer_size`` batches of (t, x_t, the policy's own noise prediction) over every step of
  each trajectory (:class:`ReplayBuffer`), refilled with one new batch every training step.
* Per step, a batch (t, x_t^pol, eps^pol) from the buffer; the expert state is the expert image
  noised to the same t with fresh noise. With ``L(.) = mean (eps_hat(x_t) - eps)^2`` for the
  network (theta) and the frozen initial network (ref):
  ``loss = mean max(0, [L_theta(exp) - L_ref(exp)] - [L_theta(pol) - L_ref(pol)] + margin)``,
  margin 1e-3.

Deviations: the buffer's sampler is DDIM written out (:func:`trajectories`), one of the release's
choices (its default is DPM-Solver++, whose multistep history does not take the per-sample
perturbed timesteps without the release's patched pipeline). Timestep perturbation (the release's
default: each image's grid shifted by a random offset below the step spacing) is on for a
multi-step base and off for a few-step student, which was distilled for its own timesteps only.
No EMA, no prompt dropout (class conditions), no gradient accumulation (the batch is every target).
For a model predicting x0 the noise prediction is ``(x_t - alpha_t x0_hat) / sigma_t``.
"""

from __future__ import annotations

from studio import lazy
from studio.train.boot import FewStep
from studio.train.tuning import snapshot

torch = lazy.load("torch")


def eps_prediction(fs: FewStep, net: torch.nn.Module, x_t: torch.Tensor, t: torch.Tensor, cond: dict) -> torch.Tensor:
    """``net``'s noise prediction at per-sample timesteps ``t``, whatever the model predicts."""
    out = net(x_t, t, **cond).sample
    if fs.dm.prediction_type == "epsilon":
        return out
    a, s = fs.alpha.to(x_t.device)[t].view(-1, 1, 1, 1), fs.sigma.to(x_t.device)[t].view(-1, 1, 1, 1)
    if fs.dm.prediction_type == "sample":
        return (x_t - a * out) / s
    if fs.dm.prediction_type == "v_prediction":
        return a * out + s * x_t
    raise ValueError(f"unsupported prediction type {fs.dm.prediction_type!r}")


def timestep_grid(fs: FewStep, n: int, steps: int, gen: torch.Generator, perturb: bool) -> torch.Tensor:
    """(steps, n) timesteps: the sampler's grid, each image's shifted by an offset in [0, spacing) when ``perturb``."""
    fs_grid = fs.timesteps if steps == fs.max_steps else None
    if fs_grid is not None and not perturb:
        return fs_grid.view(-1, 1).expand(-1, n).clone()
    total = len(fs.alpha)
    ratio = total // steps
    grid = (torch.arange(steps) * ratio).flip(0).view(-1, 1).expand(-1, n)
    shift = torch.randint(0, ratio, (1, n), generator=gen) if perturb else torch.full((1, n), ratio - 1)
    return (grid + shift).clamp(max=total - 1)


@lazy.no_grad
def trajectories(fs: FewStep, net: torch.nn.Module, labels: list, gen: torch.Generator, steps: int,
                 perturb: bool) -> dict[str, torch.Tensor]:
    """Deterministic DDIM trajectories of ``net`` from fresh noise: every step's (t, x_t, eps_hat)."""
    n = len(labels)
    cond = fs.condition(labels)
    grid = timestep_grid(fs, n, steps, gen, perturb).to(fs.device)
    alpha, sigma = fs.alpha.to(fs.device), fs.sigma.to(fs.device)
    x = torch.randn(n, *fs.dm.sample_shape, generator=gen).to(fs.device)
    ts, xs, es = [], [], []
    for k in range(steps):
        t = grid[k]
        eps = eps_prediction(fs, net, x, t, cond)
        ts.append(t), xs.append(x), es.append(eps)
        a, s = alpha[t].view(-1, 1, 1, 1), sigma[t].view(-1, 1, 1, 1)
        x0 = (x - s * eps) / a
        if fs.clip:
            x0 = x0.clamp(-1, 1)
            eps = (x - a * x0) / s
        if k + 1 < steps:
            t_next = grid[k + 1]
            x = alpha[t_next].view(-1, 1, 1, 1) * x0 + sigma[t_next].view(-1, 1, 1, 1) * eps
    return {"t": torch.stack(ts), "x_t": torch.stack(xs), "eps": torch.stack(es)}


class ReplayBuffer:
    """The last ``size`` batches of trajectory states, each with its expert images and conditions."""

    def __init__(self, size: int):
        self.size, self.batches = size, []

    def push(self, traj: dict, x0: torch.Tensor, labels: list) -> None:
        steps, n = traj["t"].shape
        flat = {k: v.reshape(steps * n, *v.shape[2:]) for k, v in traj.items()}
        flat["x0"] = x0.repeat(steps, *([1] * (x0.dim() - 1)))
        flat["labels"] = [c for _ in range(steps) for c in labels]
        self.batches = (self.batches + [flat])[-self.size:]

    def sample(self, n: int, gen: torch.Generator) -> dict:
        keys = ("t", "x_t", "eps", "x0")
        pool = {k: torch.cat([b[k] for b in self.batches]) for k in keys}
        labels = [c for b in self.batches for c in b["labels"]]
        pick = torch.randint(0, len(labels), (n,), generator=gen)
        return {**{k: v[pick.to(v.device)] for k, v in pool.items()}, "labels": [labels[i] for i in pick.tolist()]}


class DRO:
    """Diffusion-DRO's objective for one tuning run (the caller owns the optimizer)."""

    def __init__(self, fs: FewStep, weights, x_w: torch.Tensor, labels: list, *, margin: float = 1e-3,
                 sync_every: int = 16, buffer_size: int = 4, steps: int | None = None, perturb: bool | None = None):
        self.fs, self.weights, self.x_w, self.labels = fs, weights, x_w, list(labels)
        self.margin, self.sync_every = margin, sync_every
        self.steps = steps or fs.max_steps
        few_step = self.steps == fs.max_steps and fs.max_steps <= 8
        self.perturb = (not few_step) if perturb is None else perturb
        self.buffer = ReplayBuffer(buffer_size)
        self.sync()

    def sync(self) -> None:
        self.policy = snapshot(self.weights)

    def __call__(self, step: int, gen: torch.Generator) -> dict[str, torch.Tensor]:
        fs = self.fs
        if step > 1 and (step - 1) % self.sync_every == 0:
            self.sync()
        self.buffer.push(trajectories(fs, self.policy, self.labels, gen, self.steps, self.perturb), self.x_w,
                         self.labels)
        batch = self.buffer.sample(len(self.labels), gen)
        t, x_pol, eps_pol, x0 = batch["t"], batch["x_t"], batch["eps"], batch["x0"]
        eps_exp = torch.randn(x0.shape, generator=gen).to(x0.device)
        x_exp = fs.noised(x0, t, eps_exp)
        x_t, eps, tt = torch.cat([x_exp, x_pol]), torch.cat([eps_exp, eps_pol]), torch.cat([t, t])
        cond = fs.condition(batch["labels"] * 2)
        with torch.no_grad(), self.weights.reference() as ref:
            ref_losses = (eps_prediction(fs, ref, x_t, tt, cond) - eps).pow(2).flatten(1).mean(1)
        losses = (eps_prediction(fs, self.weights.net, x_t, tt, cond) - eps).pow(2).flatten(1).mean(1)
        l_exp, l_pol = losses.chunk(2)
        r_exp, r_pol = ref_losses.chunk(2)
        diff = (l_exp - r_exp) - (l_pol - r_pol)
        loss = torch.clamp(diff + self.margin, min=0).mean()
        return {"loss": loss, "diff": diff.mean().detach(), "L_exp": l_exp.mean().detach(),
                "L_pol": l_pol.mean().detach(), "active": (diff + self.margin > 0).float().mean()}
