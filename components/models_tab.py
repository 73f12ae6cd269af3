"""Models panel: what the shared ModelManager holds, and buttons to unload models."""

from __future__ import annotations

import gradio as gr
import pandas as pd

from studio.core.manager import ModelManager
from components.widgets import shows_errors

COLUMNS = ["model", "where", "MiB", "in use", "last used", "load s"]


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

    triggers = [refresh_btn.click] + ([tab.select] if tab is not None else [])
    gr.on(triggers, refresh, outputs=table, api_name="models_status")
    evict_btn.click(evict, inputs=model, outputs=[message, table], api_name="evict",
                    concurrency_id="models", concurrency_limit=1)
    evict_all_btn.click(evict_all, outputs=[message, table], api_name="evict_all",
                        concurrency_id="models", concurrency_limit=1)
    return {"table": table, "refresh": refresh_btn, "model": model, "evict": evict_btn,
            "evict_all": evict_all_btn, "message": message}
