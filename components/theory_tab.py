"""Theory tab: the 2-D playground (one velocity field, four parametrisations, three processes, a time
slider) and the teleport panel (Generate with and without the Gaussian's closed-form first steps,
side by side, beside the benchmarks' measured curves).

The playground redraws on every change (a run is a fraction of a second); the time slider redraws
from the stored particles (:func:`studio.methods.theory.at_time`), so scrubbing costs only the field.
"""

from __future__ import annotations

import json
from pathlib import Path

import gradio as gr

from studio import plots
from studio.core.manager import ModelManager
from studio.core.params import coerce
from studio.core.sampling import SCHEDULER_LABELS
from studio.methods import generate, method, theory
from components.widgets import grid_image, param_inputs, shows_errors, stream

PREFIX = "theory-"
TELE = "theory-tele-"
RESULTS = Path(__file__).resolve().parent.parent / "benchmarks" / "results"
INTRO = (
    "**One velocity field, four names.** Diffusion's variational, score and flow views learn the same thing "
    "(*The Principles of Diffusion Models*, Lai, Song, Kim, Mitsufuji, Ermon 2025). Here the data are 2-D and "
    "their score is exact at every noise level, so the 'network' is perfect: pick what it predicts (noise, "
    "clean sample, score or velocity) and the sampler converts it. The particles move the same whichever you "
    "pick; the four small panels show the field in each parametrisation and how far each one's velocity is "
    "from the others (round-off). The VP reverse SDE and its probability-flow ODE reach the same distribution "
    "by different paths. Rectified flow noises along straight lines, but its sampling paths need not be straight (on the eight Gaussians they are longer than VP's). Notebook `08_one_velocity_field` goes further "
    "(a trained field, flow maps, likelihoods).")
TELEPORT_INTRO = (
    "**Analytical teleportation** (Wang & Vastola, TMLR 2024). At high noise a trained denoiser is almost exactly "
    "the denoiser of a Gaussian fitted to its training data, whose probability-flow ODE has a closed form: the "
    "first *k* steps are computed in one shot from the data's mean and covariance (shipped beside each zoo "
    "model) and the learned sampler runs the rest. Same seeds, with and without. Deviation: the sampler "
    "continues on the tail of the N-step grid, where the official code draws a fresh grid.")


def playground_summary(r: theory.PlaygroundResult) -> str:
    p = r.parameters
    t = float(r.times[r.shown])
    return (f"**{theory.PROCESS_LABELS[p['process']]}** from the **{theory.PARAMETRISATION_LABELS[p['parametrisation']]}** "
            f"prediction: {p['particles']} particles, {p['steps']} steps, {r.evaluations} field evaluations, "
            f"{r.seconds:.2f} s. Shown at t = {t:.3f}.\n\n"
            f"Energy distance of the final particles to {len(r.reference)} exact samples: **{r.energy:.4f}** "
            f"(two exact sample sets: {r.energy_floor:.4f}, the sampling noise). "
            f"The four parametrisations' velocities differ by at most {r.mismatch:.1e} here.")


def _load(name: str) -> dict | None:
    path = RESULTS / name
    try:
        return json.loads(path.read_text()) if path.exists() else None
    except (OSError, ValueError):
        return None


def teleport_figure():
    """The benchmark's FD and judge accuracy against the steps teleported (``bench_teleport.py``)."""
    import plotly.graph_objects as go
    from plotly.subplots import make_subplots

    data = _load("teleport.json")
    if not data:
        return None
    fig = make_subplots(rows=1, cols=2, subplot_titles=["FD (report set)", "judge accuracy (report set)"])
    for which, m in data["models"].items():
        rows = m.get("report") or []
        k = [r["evals_per_image"] for r in rows]
        for col, key in ((1, "fd"), (2, "accuracy")):
            v = [[r[key]["value"], r[key]["low"], r[key]["high"]] for r in rows]
            if not v:
                continue
            fig.add_trace(go.Scatter(x=k, y=[a for a, _, _ in v], mode="lines+markers", name=f"{m['model']} {key}",
                                     error_y={"type": "data", "symmetric": False, "array": [c - a for a, _, c in v],
                                              "arrayminus": [a - b for a, b, _ in v]}), row=1, col=col)
    fig.update_xaxes(title_text="network evaluations per image (fewer = more teleported)", autorange="reversed")
    fig.update_yaxes(type="log", row=1, col=1)
    fig.update_layout(height=320, template="plotly_white", margin={"l": 50, "r": 10, "t": 40, "b": 40},
                      title=f"benchmarks/results/teleport.md ({data['machine']})", legend={"orientation": "h", "y": -0.35})
    return fig


def build_theory_tab(manager: ModelManager) -> dict[str, gr.components.Component]:
    gr.Markdown(INTRO)
    with gr.Row(equal_height=False):
        with gr.Column(scale=2, min_width=300):
            inputs = param_inputs(theory.Params, id_prefix=PREFIX,
                                  labels={"process": theory.PROCESS_LABELS,
                                          "parametrisation": theory.PARAMETRISATION_LABELS})
            draw_btn = gr.Button("Draw", variant="primary", elem_id="theory-btn")
        with gr.Column(scale=3, min_width=360):
            field_plot = gr.Plot(label="Particles and field", elem_id=f"{PREFIX}field")
            info = gr.Markdown("Press **Draw** or change any setting.", elem_id=f"{PREFIX}info")
    four_plot = gr.Plot(label="The same field in the four parametrisations", elem_id=f"{PREFIX}four")
    with gr.Accordion("Parameters of this drawing", open=False):
        parameters = gr.JSON(label="Parameters")
    state = gr.State(None)

    def show(r: theory.PlaygroundResult) -> dict:
        return {state: r, field_plot: plots.playground(r), four_plot: plots.parametrisations(r),
                info: playground_summary(r), parameters: r.parameters}

    @shows_errors
    def draw(**values):
        *_, r = theory.run(coerce(theory.Params, values), manager)
        return show(r)

    @shows_errors
    def scrub(result, t):
        if result is None:
            return {info: "Press **Draw** first."}
        return show(theory.at_time(result, float(t)))

    outputs = [state, field_plot, four_plot, info, parameters]
    draw_btn.click(draw, inputs_kwargs=inputs, outputs=outputs, preprocess=False, api_name="theory_draw")
    redraw = [inputs[k] for k in ("distribution", "parametrisation", "process", "heun")]
    gr.on([c.change for c in redraw] + [inputs[k].release for k in ("particles", "steps", "arrows", "trails")]
          + [inputs["seed"].submit], draw, inputs_kwargs=inputs, outputs=outputs, preprocess=False,
          api_visibility="private", trigger_mode="always_last")
    inputs["time"].release(scrub, inputs=[state, inputs["time"]], outputs=outputs, api_name="theory_time",
                           trigger_mode="always_last")

    out = teleport_panel(manager)
    return {**inputs, "draw": draw_btn, "field": field_plot, "four": four_plot, "info": info,
            "parameters": parameters, **out}


def teleport_models(manager: ModelManager) -> list[str]:
    """The image models with Gaussian statistics beside them (zoo entries made with ``--gaussian-stats``)."""
    return [k for k in method("generate").models(manager) if manager.info(k).get("gaussian_stats")]


def teleport_panel(manager: ModelManager) -> dict[str, gr.components.Component]:
    gr.Markdown("---\n" + TELEPORT_INTRO)
    models = teleport_models(manager)
    defaults = theory.teleport_defaults()
    with gr.Row(equal_height=False):
        with gr.Column(scale=2, min_width=300):
            names = ("model", "prompt", "digit", "scheduler", "steps", "teleport", "guidance", "seed", "n_images")
            inputs = param_inputs(generate.Params, choices={"model": models}, names=names, id_prefix=TELE,
                                  labels={"scheduler": SCHEDULER_LABELS})
            for name in names:
                if name != "model" or defaults.model in models:
                    inputs[name].value = getattr(defaults, name)
            inputs["prompt"].visible = False
            compare_btn = gr.Button("Compare", variant="primary", elem_id="theory-tele-btn")
        with gr.Column(scale=3, min_width=360):
            with gr.Row():
                full_img = gr.Image(label="Full sampler", type="pil", interactive=False, elem_id=f"{TELE}full")
                tele_img = gr.Image(label="Teleported", type="pil", interactive=False, elem_id=f"{TELE}teleported")
            tele_info = gr.Markdown(elem_id=f"{TELE}info")
    with gr.Accordion("Measured: quality against evaluations, and how Gaussian the learned score is "
                      "(benchmarks)", open=False) as measured:
        bench_plot = gr.Plot(label="Teleport benchmark", elem_id=f"{TELE}bench")
        with gr.Row():
            curve_plots = [gr.Plot(label=f"Gaussian-score diagnostic: {name}", elem_id=f"{TELE}curve-{i}")
                           for i, name in enumerate(("digits-cond", "shapes-t2i"))]

    def show_measured():
        """The benchmarks' figures, drawn when the accordion is first opened (not at app build)."""
        curves = (_load("gaussian_score.json") or {}).get("curves", [])
        by_model = {c["model"]: plots.explained_curve(c) for c in curves}
        return [teleport_figure()] + [by_model.get(name) for name in ("digits-cond", "shapes-t2i")]

    measured.expand(show_measured, outputs=[bench_plot, *curve_plots], api_name="theory_measured")

    def on_model(model):
        cond = manager.info(model).get("conditioning") if model else None
        return gr.update(visible=cond == "text"), gr.update(visible=cond == "class")

    inputs["model"].change(on_model, inputs=inputs["model"], outputs=[inputs["prompt"], inputs["digit"]],
                           queue=False, api_visibility="private")

    def done(item, params):
        moved = ", ".join(f"{v:.3f}" for v in item.moved)
        full, tele = item.evaluations
        return {full_img: grid_image(item.full.tensors), tele_img: grid_image(item.teleported.tensors),
                tele_info: (f"Network evaluations per image: **{full} -> {tele}** ({1 - tele / full:.0%} fewer); "
                            f"{item.full.seconds:.1f} s -> {item.teleported.seconds:.1f} s. "
                            f"How far each image moved (RMS, pixels in [-1, 1]): {moved}.")}

    handler = stream(theory.compare_teleport, generate.Params, manager, preview=tele_img, first=tele_info, done=done)
    compare_btn.click(handler, inputs_kwargs=inputs, outputs=[full_img, tele_img, tele_info], preprocess=False,
                      api_name="theory_teleport", concurrency_id="models", concurrency_limit=1)
    return {f"tele_{k}": v for k, v in inputs.items()} | {"compare": compare_btn, "full": full_img, "measured": measured,
                                                          "teleported": tele_img, "tele_info": tele_info}
