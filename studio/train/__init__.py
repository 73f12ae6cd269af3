"""Recipes that rebuild every zoo entry: ``studio train <name>`` (resumable, accelerate-ready)."""

from __future__ import annotations

DIFFUSION = ("digits-cond", "shapes-t2i")
JUDGES = ("judge-digits", "fd-digits", "judge-shapes", "fd-shapes")
GUIDE = ("guide-clean", "guide-noisy", "guide-ppap", "guide-experts")
FORECAST = ("tsdiff-co2", "tsdiff-elnino", "tsdiff-sunspots", "tsdiff-unemployment")
SIGN = ("sign-digits", "ign-digits")
FEWSTEP = ("digits-fewstep",)
NAG = ("nag-digits",)
CONTRASTIVE = ("clip-shapes",)
PROBE = ("probe-digits",)
ENCODERS = ("simclr-digits",)
WEIGHTGEN = ("pdiff-digits", "d2nwg-digits")
DEBIAS = ("shapes-biased", "invdiff-shapes")
VAR = ("var-shapes",)
INR = ("ddmi-shapes",)
ALL = (DIFFUSION + JUDGES + GUIDE + FORECAST + SIGN + FEWSTEP + NAG + CONTRASTIVE + PROBE + ENCODERS + WEIGHTGEN
       + DEBIAS + VAR + INR)


def run(name: str, minutes: float | None = None, steps: int | None = None, seed: int = 0,
        resume_from_zoo: bool = False, variant: str = "") -> dict:
    """Train the zoo entry ``name`` and export it to ``studio/zoo/<name>``. ``resume_from_zoo``
    (diffusion recipes): continue from the shipped weights when ``runs/`` has no checkpoint;
    ``variant``: a side-by-side run of one recipe change, kept in ``runs/`` (shapes-t2i: its recipe
    variants; digits-cond: the objectives of ``diffusion.DIGITS_VARIANTS``; ddmi-shapes: the D2C-VAE ablations of
    ``ddmi.VAE_VARIANTS``)."""
    if variant and name not in DIFFUSION + INR:
        raise ValueError(f"--variant is for {', '.join(DIFFUSION + INR)}")
    if resume_from_zoo and name not in DIFFUSION + DEBIAS + VAR + INR:
        raise ValueError(f"--resume-from-zoo is for {', '.join(DIFFUSION + DEBIAS + VAR + INR)}")
    if name in DIFFUSION:
        from studio.train import diffusion

        recipe = diffusion.RECIPES[name](**({"steps": steps} if steps else {}), **({"variant": variant} if variant else {}))
        return diffusion.train(recipe, seed=seed, minutes=minutes, resume_from_zoo=resume_from_zoo)
    if name in JUDGES:
        from studio.train import judges

        return judges.train(name, seed=seed, **({"steps": steps} if steps else {}))
    if name in GUIDE:
        from studio.train import guide

        return guide.train(name, seed=seed or None, **({"steps": steps} if steps else {}))
    if name in FORECAST:
        from studio.train import forecast

        return forecast.train(name, seed=seed, **({"steps": steps} if steps else {}))
    if name in SIGN:
        from studio.train import sign

        stages = sign.RECIPES[name]
        steps_kw = {}
        if steps:  # keep the recipe's share of warm-up steps
            warm = round(steps * stages["warmup"] / (stages["warmup"] + stages["joint"]))
            steps_kw = {"warmup": warm, "joint": steps - warm}
        return sign.train(name, seed=seed, **steps_kw)
    if name in FEWSTEP:
        from studio.train import boot

        stages = boot.RECIPES[name]
        steps_kw = {}
        if steps:  # keep the recipe's share of BOOT steps
            first = round(steps * stages["boot"] / (stages["boot"] + stages["student"]))
            steps_kw = {"boot": first, "student": steps - first}
        return boot.train(name, seed=seed, **steps_kw)
    if name in NAG:
        from studio.train import nag

        return nag.train(seed=seed, steps=steps)
    if name in CONTRASTIVE:
        from studio.train import contrastive

        return contrastive.train(seed=seed, steps=steps)
    if name in PROBE:
        from studio.train import probe

        return probe.train(seed=seed)
    if name in ENCODERS:
        from studio.train import simclr

        return simclr.train(seed=seed, steps=steps, minutes=minutes)
    if name in WEIGHTGEN:
        from studio.train import weightgen

        return weightgen.train(name, seed=seed, steps=steps)
    if name in DEBIAS:
        from studio.train import invdiff

        return invdiff.train(name, seed=seed, steps=steps, minutes=minutes, resume_from_zoo=resume_from_zoo)
    if name in VAR:
        from studio.train import var

        return var.train(seed=seed, steps=steps, minutes=minutes, resume_from_zoo=resume_from_zoo)
    if name in INR:
        from studio.train import ddmi

        return ddmi.train(seed=seed, steps=steps, minutes=minutes, resume_from_zoo=resume_from_zoo, variant=variant)
    raise ValueError(f"unknown zoo entry {name!r}; choose one of {', '.join(ALL)}")
