"""The shipped zoo: complete, small, intact, loadable, and as good as its MANIFEST says."""

from __future__ import annotations

import pytest
import torch

from studio.core import loading, metrics
from studio.core.models import DiffusionModel
from studio.evaluate import sample_batch
from studio.data import series as S
from studio.core.models import InvDiffModule, NAGModel, VARModel, WeightGenerator
from studio.nets.classifiers import ExpertBank, GuideNet
from studio.nets.idempotent import IdempotentNet
from studio.core.models import SeriesDiffusion
from studio.train import ALL

MANIFEST = loading.read_manifest()


def test_every_recipe_has_a_zoo_entry_within_the_size_budget():
    assert set(ALL) <= set(MANIFEST), sorted(set(ALL) - set(MANIFEST))
    total = sum(e["bytes"] for e in MANIFEST.values())
    assert total <= 72 * 2**20, f"zoo is {total / 2**20:.1f} MiB"
    for name, entry in MANIFEST.items():
        assert entry["recipe"] == f"studio train {name}" and entry["machine"] and entry["train_seconds"] > 0
        assert all(f.endswith((".json", ".safetensors")) for f in entry["files"]), entry["files"]


@pytest.mark.parametrize("name", sorted(MANIFEST))
def test_each_entry_passes_its_checksums_and_loads(zoo_manager, name):
    with zoo_manager.use(name) as obj:
        if name == "digits-fewstep":
            assert isinstance(obj, DiffusionModel) and obj.prediction_type == "sample"
            assert obj.info["few_step"] == [999, 749, 499, 249] and obj.info["default_scheduler"] == "ddim"
        elif name in ("digits-cond", "shapes-t2i"):
            assert isinstance(obj, DiffusionModel) and obj.unet.dtype == torch.float32
            assert MANIFEST[name]["quality"]["sweep"], "run `studio eval` to record the quality figures"
        elif name == "shapes-biased":  # the Debias tab's biased base: its bias measured when it was exported
            assert isinstance(obj, DiffusionModel) and obj.info["fine_tune_of"] == "shapes-t2i"
            quality = MANIFEST[name]["quality"]
            assert quality["bias"]["bias_score"] > quality["before_fine_tune"]["bias_score"], quality
        elif MANIFEST[name]["kind"] == "invdiff":
            assert isinstance(obj, InvDiffModule) and obj.info["base"] == "shapes-biased"
            assert obj.groups["weights"].shape == (3000, obj.info["groups"]) and not any(
                p.requires_grad for p in obj.delta.parameters())
            assert 0 < MANIFEST[name]["quality"]["group_purity"] <= 1 and MANIFEST[name]["quality"]["bias"]["n"] > 0
        elif MANIFEST[name]["kind"] == "var":  # the Subject tab's VAR: its sampler chosen, its quality measured
            assert isinstance(obj, VARModel) and obj.placeholder is None
            assert obj.tokenizer.scales == obj.transformer.scales == tuple(obj.info["scales"])
            quality = MANIFEST[name]["quality"]
            assert quality["chosen_sampler"]["cfg"] == obj.info["default_cfg"] and quality["at_chosen"]["region"]["n"] == 162
            assert min(quality["tokenizer"]["codes_used_per_scale"][1:]) > 1, quality["tokenizer"]  # no collapse
        elif MANIFEST[name]["kind"] == "inr":  # the Resolution tab's DDMI: renders at any size, its quality measured
            from studio.core.models import INRDiffusionModel

            assert isinstance(obj, INRDiffusionModel) and obj.vae.config.pe == "planes" and obj.vae.config.scale_injection
            z = obj.encode(torch.zeros(1, 3, 32, 32) - 1)
            assert obj.render(z, 96).shape == (1, 3, 96, 96) and obj.decode(z).shape == (1, 3, 32, 32)
            quality = MANIFEST[name]["quality"]
            assert quality["vae"]["psnr_32"] > 20 and quality["at_chosen"]["region"]["n"] == 162
            from studio.methods.resolution import Params

            assert quality["chosen_guidance"] == obj.info["default_guidance"] == Params().guidance
        elif MANIFEST[name]["kind"] == "judge":
            assert hasattr(obj, "features")
        elif name.startswith("tsdiff-"):
            assert isinstance(obj, SeriesDiffusion) and obj.info["series"] == name.removeprefix("tsdiff-")
            assert 0 <= obj.info["tau"] < 100 and obj.info["train_end"] == S.bundled(obj.info["series"]).train_end
        elif MANIFEST[name]["kind"] == "idempotent":
            assert isinstance(obj, IdempotentNet) and obj.info["method"] in ("sign", "ign") and obj.timestep == 999
            assert not any(p.requires_grad for p in obj.parameters())
        elif MANIFEST[name]["kind"] == "nag":
            assert isinstance(obj, NAGModel) and obj.info["space"] == "nas-bench-201" and loading.module_bytes(obj) > 0
            assert not any(p.requires_grad for p in [*obj.score.parameters(), *obj.predictor.parameters()])
        elif MANIFEST[name]["kind"] == "probe":
            assert type(obj).__name__ == "LinearProbe" and obj.info["base"] == "digits-cond"
            assert obj.block in obj.info["grid"]["blocks"] and not any(p.requires_grad for p in obj.parameters())
        elif MANIFEST[name]["kind"] == "encoder":
            assert type(obj).__name__ == "DigitsSSLEncoder" and obj.tokens(torch.zeros(2, 1, 16, 16)).shape == (2, 16, obj.dim)
            assert not any(p.requires_grad for p in obj.parameters())
        elif MANIFEST[name]["kind"] == "contrastive":
            assert type(obj).__name__ == "ShapesCLIP" and MANIFEST[name]["quality"]["full_caption_top1"] >= 0.95
            assert not any(p.requires_grad for p in obj.parameters())
        elif MANIFEST[name]["kind"] == "weightgen":
            assert isinstance(obj, WeightGenerator) and obj.method in ("d2nwg", "pdiff") and obj.tensors
            assert not any(p.requires_grad for net in obj.nets.values() for p in net.parameters())
        elif MANIFEST[name]["kind"] == "classifier":
            assert isinstance(obj, GuideNet) and not any(p.requires_grad for p in obj.parameters())
        else:
            assert MANIFEST[name]["kind"] == "experts" and isinstance(obj, ExpertBank) and len(obj.experts) == 5


def test_judge_bars():
    assert MANIFEST["judge-digits"]["quality"]["test_accuracy"] >= 0.97
    assert MANIFEST["judge-shapes"]["quality"]["object_accuracy"] >= 0.95


def test_digits_model_draws_the_asked_class(zoo_manager):
    """A small live check of the shipped digits model (the full sweep is in MANIFEST / README)."""
    labels = torch.arange(10).repeat(3)
    with zoo_manager.use("digits-cond") as dm, zoo_manager.use("judge-digits") as judge:
        x = sample_batch(dm, {"class_labels": labels}, {"class_labels": torch.full_like(labels, 10)},
                         scale=MANIFEST["digits-cond"]["quality"]["best_guidance"], n=len(labels), seed=99, steps=10)
        acc = metrics.digits_accuracy(judge, x, labels.numpy())
    assert x.min() >= -1.001 and x.max() <= 1.001
    assert acc.value >= 0.8, acc


def test_shapes_evaluation_reports_the_default_guidance_and_what_the_tabs_sample(zoo_manager):
    """``studio eval shapes-t2i``, shortened: the headline row is the default guidance (the best scale
    is picked on the reported prompts, so it is context), plus the tabs' own sampler at that guidance."""
    from studio.evaluate import REPORT_PROMPTS, evaluate_shapes, summary_table

    q = evaluate_shapes(zoo_manager, sweep=(1.0, 2.0), repeats=2, steps=1, prompts=REPORT_PROMPTS[:6],
                        fd_boot=5)
    assert q["default_guidance"] == 2.0 and q["at_default"] == q["sweep"][1] and q["images_per_scale"] == 12
    info = MANIFEST["shapes-t2i"]
    own = loading.entry_info(loading.ZOO_DIR / "shapes-t2i")
    sampler = f"{own['default_scheduler']}, {own['default_steps']} steps"  # issue 29's sweep: unipc, 8
    tab = q["at_tab_default"]
    assert tab["guidance"] == 2.0 and tab["sampler"] == sampler
    assert 0.8 <= tab["shape_and_colour"]["value"] <= 1 and -1 <= tab["background_mean"]["value"] < -0.9
    assert f"{sampler}: the tabs' default" in summary_table(q, "shapes-t2i")
    assert info["quality"]["at_default"]["guidance"] == 2.0  # what studio eval recorded


def test_digits_evaluation_adds_the_generate_tabs_own_sampler(zoo_manager):
    """``studio eval digits-cond``, shortened: the sweep's sampler is DDIM (the recorded history), and the
    Generate tab's own sampler for the model (its studio.json, issue 29's sweep: DPM-Solver++ 4) is measured
    beside it at the default guidance on the same seeds."""
    from studio.evaluate import evaluate_digits, summary_table

    q = evaluate_digits(zoo_manager, per_class=2, sweep=(2.0,), steps=2)
    own = loading.entry_info(loading.ZOO_DIR / "digits-cond")
    sampler = f"{own['default_scheduler']}, {own['default_steps']} steps"
    tab = q["at_tab_default"]
    assert q["sampler"] == "ddim, 2 steps" and tab["sampler"] == sampler and tab["guidance"] == 2.0
    assert tab["accuracy"]["n"] == 20 and 0.5 <= tab["accuracy"]["value"] <= 1
    assert f"{sampler}: the tab's default" in summary_table(q, "digits-cond")
    assert "at_tab_default" not in evaluate_digits(zoo_manager, per_class=1, sweep=(2.0,), steps=2, teleport=1)


def test_self_guidance_turns_the_series_model_into_a_forecaster(zoo_manager):
    """On elnino's five held-out horizons (never trained on), TSDiff-Q forecasts score far better
    than the same model sampled without guidance, whose windows sit at the right level but in no
    particular phase (the full comparison is in the benchmark)."""
    import numpy as np

    from studio.core.series_sampling import observation_guidance

    s = S.bundled("elnino")
    origins = s.origin_positions()
    crps = {}
    with zoo_manager.use("tsdiff-elnino") as model:
        windows = [S.make_window(s.values, o, s.window, s.horizon, s.lags) for o in origins]
        for scale in (0.0, 4.0):
            *_, x = observation_guidance(model, windows, num_samples=32, guidance="quantile", scale=scale,
                                         sampler="ddim", steps=20, seed=0)
            samples = S.forecast_samples(x, windows, s.horizon)
            crps[scale] = np.mean([metrics.mean_weighted_quantile_loss(s.values[o:o + s.horizon],
                                                                       {"q": metrics.sample_quantiles(q)})["q"]
                                   for o, q in zip(origins, samples)])
    assert crps[4.0] < 0.7 * crps[0.0] and crps[4.0] < 0.045, crps  # measured: 0.061 unguided, 0.033 guided


def test_sign_generator_is_diverse_idempotent_and_projects_noisy_digits(zoo_manager):
    """A live check of the shipped SIGN generator (the full comparison is in the benchmark):
    f(z) covers the classes, test digits are (nearly) fixed points, and one application of f
    lifts the judge's accuracy on noisy test digits (sigma 0.5)."""
    import numpy as np

    from studio.core.device import make_generator
    from studio.data import digits
    from studio.methods import edit

    test = digits.load("test")
    x, y = torch.from_numpy(test.images[:120]), test.labels[:120]
    with zoo_manager.use("sign-digits") as f, zoo_manager.use("judge-digits") as judge:
        classes, _ = edit.judge_reading(judge, f(edit.noises(0, 200, f.sample_shape)))
        share = np.bincount(classes, minlength=10) / 200
        entropy = -(share[share > 0] * np.log(share[share > 0])).sum()
        x_c = edit.corrupt(x, "noise", 0.5, make_generator(1))
        before = (edit.judge_reading(judge, x_c)[0] == y).mean()
        after = (edit.judge_reading(judge, f(x_c))[0] == y).mean()
        idem = float(edit.idempotence_error(f, x).mean())
    assert entropy > 2.1, share  # ln 10 = 2.30; measured 2.26 on 500
    assert idem < 0.05  # measured 0.01
    assert after >= 0.9 and after > before + 0.05, (before, after)  # measured 0.97 vs 0.84 on all 360


def test_fewstep_student_draws_the_asked_digit_at_1_2_and_4_steps(zoo_manager):
    """A live check of the shipped few-step student and of BOOT's one-step g beside it (the full
    comparison with the teacher is in the benchmark)."""
    from studio.core.loading import ZOO_DIR, load_module_folder
    from studio.methods import tune

    labels = [c for c in range(10) for _ in range(8)]
    seeds = list(range(500, 580))
    with zoo_manager.use("digits-fewstep") as dm, zoo_manager.use("judge-digits") as judge:
        fs = tune.FewStep(dm)
        for steps in (1, 2, 4):
            acc = metrics.digits_accuracy(judge, fs.sample(labels, seeds, steps), labels).value
            assert acc >= 0.85, (steps, acc)
        g = load_module_folder(ZOO_DIR / "digits-fewstep" / "boot")
        eps = torch.randn(80, 1, 16, 16, generator=torch.Generator().manual_seed(0))
        with torch.no_grad():
            y0 = g(eps, torch.zeros(80, dtype=torch.long), class_labels=torch.tensor(labels)).sample.clamp(-1, 1)
        assert metrics.digits_accuracy(judge, y0, labels).value >= 0.85


def test_the_architecture_model_generates_valid_cells_and_guidance_raises_true_accuracy(zoo_manager):
    """A small live check of ``nag-digits`` (the full figures are in the benchmark): most sampled
    cells are valid, and guidance moves the generated cells' true accuracy up."""
    import numpy as np

    from studio.core.nas_metrics import vun
    from studio.core.sampling import run_to_end
    from studio.data.nasbench import space_values
    from studio.methods import nag

    values = space_values("all ten")
    scale = 50.0  # a strong scale (the benchmark's choice for all ten, 10, moves the mean less)
    out = {w: run_to_end(nag.run(nag.Params(scale=w, n_cells=40, seed=11, steps=100), zoo_manager)).generated
           for w in (0.0, scale)}
    assert vun(out[0.0].archs, set())["validity"] >= 0.9
    mean = {w: np.mean([values[a] for a in g.archs if a in values]) for w, g in out.items()}
    assert mean[scale] > mean[0.0] + 0.02, mean


def test_generated_classifiers_work_without_training_on_a_seen_task_and_beat_random_on_a_held_out_one(zoo_manager):
    """A live check of the shipped D2NWG (the full comparison, with every baseline, is in the benchmark):
    on a seen task the generated models come close to the zoo's own; on a held-out task they are far
    above random initialisation (measured: 0.92 vs 0.97 seen; 0.90 vs 0.10 on rot180-plain-noisy)."""
    import numpy as np

    from studio.core.sampling import run_to_end
    from studio.methods import weights

    acc = {}
    for task in ("rot0-plain-clean", "rot180-plain-noisy"):
        r = run_to_end(weights.run(weights.Params(task=task, k=16, finetune_steps=0), zoo_manager))
        acc[task] = (float(np.mean(r.accuracy)), float(np.mean(r.zoo_accuracy)), float(np.mean(r.random_accuracy)))
    seen, held = acc["rot0-plain-clean"], acc["rot180-plain-noisy"]
    assert seen[0] > 0.8 and seen[0] > seen[1] - 0.1, acc
    assert held[0] > held[2] + 0.4, acc
