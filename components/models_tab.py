"""Models panel: what the shared ModelManager holds, and buttons to unload models."""

from __future__ import annotations

import gradio as gr
import pandas as pd

from studio.core.manager import ModelManager
from components.widgets import shows_errors

COLUMNS = ["model", "where", "MiB", "in use", "last used", "load s"]
PRECISION_HELP = (
    "Times one denoiser forward (batch 4, best of 3) in fp32 and in the device's reduced precision (bf16 on a "
    "CPU, fp16 on a GPU) on this machine. A model samples in reduced precision only where it is faster here *and* "
    "its zoo entry records its judge accuracy and FD in it as no worse than in fp32; such a model is timed when it "
    "first loads (its row appears below), every other one samples in fp32. A loaded model keeps the answer taken "
    "when it loaded: unload it (above) to apply a new timing. Generate and Compose name the precision in each "
    "image's parameters. Timing loads the model and takes a few seconds.")
PRECISION_COLUMNS = ["model", "device", "fp32 ms", "reduced", "reduced ms", "speedup", "max diff / std", "rule picks", "why"]


def precision_frame() -> pd.DataFrame:
    """The precision timings taken in this process, one row per (model, device)."""
    from studio.core import precision

    rows = [[r.model, r.device, r.fp32_ms, r.reduced, r.reduced_ms, round(r.speedup, 2), r.rel_diff, r.choice, r.why]
            for r in precision.measured()]
    return pd.DataFrame(rows, columns=PRECISION_COLUMNS)


def status_frame(manager: ModelManager) -> pd.DataFrame:
    """``manager.status()`` as a table (one row per registered model; nothing is loaded)."""
    return pd.DataFrame(manager.status(), columns=COLUMNS)


def build_models_tab(manager: ModelManager, tab: gr.Tab | None = None) -> dict[str, gr.components.Component]:
    """Lay out the panel inside the current Blocks/Tab; ``tab.select`` also refreshes the table."""
    gr.Markdown("Models load on first use and stay in memory (least recently used go first when the "
                "memory budget is reached). Unload them here to free memory.")
    table = gr.Dataframe(value=status_frame(manager), headers=COLUMNS, label="Models", interactive=False,
                         elem_id="models-table")
    with gr.Row():
        refresh_btn = gr.Button("Refresh", elem_id="models-refresh")
        model = gr.Dropdown(choices=manager.keys(), value=None, label="Model to unload", elem_id="evict-model")
        evict_btn = gr.Button("Evict", variant="stop", elem_id="evict-btn")
        evict_all_btn = gr.Button("Evict all unused", elem_id="evict-all-btn")
    message = gr.Markdown(label="Unloaded", elem_id="evict-message")
    with gr.Accordion("Precision on this machine", open=False):
        gr.Markdown(PRECISION_HELP)
        with gr.Row():
            image_models = manager.keys(kinds=("image",))
            timed_model = gr.Dropdown(choices=image_models, value=image_models[0] if image_models else None,
                                      label="Model to time", elem_id="precision-model")
            time_btn = gr.Button("Time fp32 and reduced precision", elem_id="precision-btn")
        timings = gr.Dataframe(value=precision_frame(), headers=PRECISION_COLUMNS, label="Timings",
                               interactive=False, elem_id="precision-table")

    @shows_errors
    def refresh() -> pd.DataFrame:
        return status_frame(manager)

    def report(done: list[str]) -> tuple[str, pd.DataFrame]:
        text = f"Unloaded: {', '.join(done)}" if done else "Nothing to unload (not loaded, or in use)."
        return text, status_frame(manager)

    @shows_errors
    def evict(model: str | None) -> tuple[str, pd.DataFrame]:
        if not model:
            raise gr.Error("choose a model to unload first")
        return report(manager.evict(model))

    @shows_errors
    def evict_all() -> tuple[str, pd.DataFrame]:
        return report(manager.evict())

    @shows_errors
    def time_precision(model: str | None) -> pd.DataFrame:
        from studio.core import precision

        if model not in manager.keys(kinds=("image",)):
            raise gr.Error("choose a diffusion model to time")
        precision.measure(manager, model, again=True)
        return precision_frame()

    triggers = [refresh_btn.click] + ([tab.select] if tab is not None else [])
    gr.on(triggers, refresh, outputs=table, api_name="models_status")

    def models_now():  # a model registered after the page was built (Train's Register, Tune) is listed too
        return gr.update(choices=manager.keys()), gr.update(choices=manager.keys(kinds=("image",)))

    gr.on(triggers, models_now, outputs=[model, timed_model], queue=False, api_visibility="private",
          show_progress="hidden")
    evict_btn.click(evict, inputs=model, outputs=[message, table], api_name="evict",
                    concurrency_id="models", concurrency_limit=1)
    evict_all_btn.click(evict_all, outputs=[message, table], api_name="evict_all",
                        concurrency_id="models", concurrency_limit=1)
    time_btn.click(time_precision, inputs=timed_model, outputs=timings, api_name="time_precision",
                   concurrency_id="models", concurrency_limit=1)
    return {"table": table, "precision_model": timed_model, "time_precision": time_btn, "timings": timings,
            "refresh": refresh_btn, "model": model, "evict": evict_btn,
            "evict_all": evict_all_btn, "message": message}
