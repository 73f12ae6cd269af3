"""Readers beside a classifier's verdict: what other models see in the same image (the Classify tab).

* digits: the judge (the measuring instrument), a supervised classifier trained for the job, and the
  linear probe on the diffusion model's own features, each with its class and probability;
* the shapes world: the judge's objects, and the contrastive baseline ``clip-shapes``'s choice among
  the same candidates.
"""

from __future__ import annotations

from studio import lazy
from studio.core.models import DiffusionModel
from studio.data import shapes

torch = lazy.load("torch")


# the readers beside the verdict: the measuring instrument, and a classifier trained for the job
DIGIT_READERS = {"judge-digits": "the judge (the measuring instrument)",
                 "guide-clean": "a supervised classifier (Guide's, trained on clean digits)",
                 "probe-digits": "a linear probe on digits-cond's own features (block {block}, t={t})"}


def readings(manager, dm: DiffusionModel, image: torch.Tensor) -> list[dict]:
    """What the registered readers see in ``image`` (C, H, W): for digits the judge and the supervised
    classifier (class, probability); for the shapes world the judge's objects."""
    from studio.core.metrics import judge_reading

    rows = []
    if dm.conditioning == "class":
        for key, who in DIGIT_READERS.items():
            if key in manager:
                with manager.use(key) as net:
                    c, prob = judge_reading(net, image[None])
                rows.append({"reader": key, "who": who.format_map(manager.info(key)), "reads": str(int(c[0])),
                             "probability": round(float(prob[0]), 3)})
    elif dm.info.get("domain") == "shapes" and "judge-shapes" in manager:
        from studio.core.metrics import shapes_objects

        with manager.use("judge-shapes") as judge:
            found = shapes_objects(judge, image[None])[0]
        rows.append({"reader": "judge-shapes", "who": "the judge (the measuring instrument)",
                     "reads": "; ".join(found) or "nothing", "probability": None})
    return rows


CONTRASTIVE = "clip-shapes"  # the discriminative baseline of the shapes world (studio.nets.contrastive)


def contrastive_reading(manager, dm: DiffusionModel, image: torch.Tensor, names: list[str]) -> list[dict]:
    """The contrastive baseline's choice among the same candidates (shapes world only): the candidate
    whose text embedding is most similar to the image's."""
    if dm.info.get("domain") != "shapes" or CONTRASTIVE not in manager:
        return []
    from studio.data import text

    with manager.use("text-encoder") as enc:
        e = text.encode(enc, names)
    with manager.use(CONTRASTIVE) as clip:
        device = next(clip.parameters()).device
        prob = clip.probabilities(image[None].float().to(device), *(e[k].to(device) for k in (
            "encoder_hidden_states", "encoder_attention_mask")))[0]
    best = int(prob.argmax())
    return [{"reader": CONTRASTIVE, "who": "a contrastive image-text model trained on the same scenes (CLIP-style)",
             "reads": names[best], "probability": round(float(prob[best]), 3)}]
