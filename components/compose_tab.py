"""Compose tab: Composable Diffusion (AND / NOT of concepts) with the judge's per-concept verdicts.

The run takes the official syntax (``Concepts`` = "a | b | c", ``Weights`` = "2 | 2 | -2"), the
single source of truth; the concept rows above it are an editor for that syntax: editing a row
rewrites the syntax, typing in the syntax rewrites the rows (``.input`` events, which fire only for
the user's own edits, so the two never chase each other). Example buttons fill both in one click.
"""

from __future__ import annotations

import gradio as gr

from studio.core.manager import ModelManager
from studio.core.params import ParamError
from studio.core.sampling import SCHEDULER_LABELS
from studio.methods import compose, method
from studio.methods.compose import MAX_CONCEPTS, WEIGHT_LIMIT, Concept
from components.widgets import PngFolder, grid_image, param_inputs, run_panel, stream

OPS = ("AND", "NOT")
INTRO = """\
**Composable Diffusion** (Liu et al., ECCV 2022) adds one score per concept:
`eps = eps_u + sum_i w_i (eps_i - eps_u)`; a NOT concept has a negative weight. All the
predictions of a step come from one batched forward pass. The shapes judge then reads each image
and marks every concept ✓ (satisfied) or ✗: *which* part of a composition failed.
The negative prompt is diffusers' other operator: it replaces `eps_u` by `eps(negative)`.
On held-out pairs of the shapes model, compose AND satisfies both concepts 0.83 of the time and the
joined caption "A and B" almost never, but that model never saw a two-object caption, and a
300-step fine-tune on joined captions did not learn them either: this does not yet show that
composing beats a text model trained on multi-object captions (`docs/compose.md`).
"""


def text_models(manager: ModelManager) -> list[str]:
    return [k for k in method("compose").models(manager) if manager.info(k).get("conditioning") in ("text", None)]


def rows_to_concepts(texts: list[str], weights: list[float], ops: list[str], rows) -> list[Concept]:
    """The concepts of the given row indices (rows with empty text skipped); NOT makes the weight negative."""
    return [Concept(texts[j].strip(), -float(weights[j]) if ops[j] == "NOT" else float(weights[j]))
            for j in rows if (texts[j] or "").strip()]


def rows_to_syntax(texts: list[str], weights: list[float], ops: list[str], n: int) -> tuple[str, str]:
    """The first ``n`` rows (empty texts skipped) as (prompt, weights) in the official syntax."""
    return compose.to_syntax(rows_to_concepts(texts, weights, ops, range(n)))


def verdict_table(result: compose.ComposeResult) -> str:
    """Markdown: one row per image, one column per concept, ✓ / ✗; totals underneath."""
    if not result.verdicts:
        return "*No judge for this model: verdicts are shown for the embedded shapes model only.*"
    head = "| image | " + " | ".join(f"{'NOT ' if c.op == 'NOT' else ''}{c.text} ({c.weight:g})"
                                      for c in result.concepts) + " | all |"
    lines = [head, "|" + "---|" * (len(result.concepts) + 2)]
    for seed, row in zip(result.seeds, result.verdicts):
        marks = ["?" if v is None else ("✓" if v else "✗") for v in row]
        lines.append(f"| seed {seed} | " + " | ".join(marks) + f" | {'✓' if all(row) else '✗'} |")
    n = len(result.verdicts)
    per = [sum(bool(r[j]) for r in result.verdicts) for j in range(len(result.concepts))]
    lines.append("| **satisfied** | " + " | ".join(f"{k}/{n}" for k in per)
                 + f" | {sum(all(r) for r in result.verdicts)}/{n} |")
    return "\n".join(lines)


def build_compose_tab(manager: ModelManager) -> dict[str, gr.components.Component]:
    """Lay out the tab inside the current Blocks/Tab and wire its events; returns its components."""
    pngs = PngFolder()
    models = text_models(manager)
    default = compose.parse_concepts(compose.Params.prompt, compose.Params.weights, compose.Params.guidance)
    with gr.Row(equal_height=False):
        with gr.Column(scale=2, min_width=360):
            gr.Markdown(INTRO)
            inputs = param_inputs(compose.Params, choices={"model": models}, names=["model"],
                                  id_prefix="compose-")
            texts, weights, ops, removes, rows = [], [], [], [], []
            with gr.Group():
                for i in range(MAX_CONCEPTS):
                    c = default[i] if i < len(default) else None
                    with gr.Row(visible=c is not None, equal_height=True) as row:
                        texts.append(gr.Textbox(value=c.text if c else "", label=f"Concept {i + 1}", scale=5, min_width=150,
                                                max_length=compose.MAX_PROMPT_CHARS, elem_id=f"concept-{i}"))
                        weights.append(gr.Slider(0, WEIGHT_LIMIT, value=abs(c.weight) if c else 2.0, step=0.25,
                                                 label="Weight", scale=3, min_width=110, elem_id=f"concept-weight-{i}"))
                        ops.append(gr.Radio(list(OPS), value=c.op if c else "AND", label="Operator", scale=2,
                                            min_width=100, elem_id=f"concept-op-{i}"))
                        removes.append(gr.Button("✕", scale=0, min_width=40, elem_id=f"concept-remove-{i}"))
                    rows.append(row)
            n_rows = gr.State(len(default))
            with gr.Row():
                add_btn = gr.Button("Add concept", size="sm", elem_id="concept-add")
            with gr.Row():
                examples = [gr.Button(label, size="sm", elem_id=f"example-{j}")
                            for j, label in enumerate(compose.EXAMPLES)]
            inputs.update(param_inputs(compose.Params, labels={"scheduler": SCHEDULER_LABELS},
                                       names=[n for n in compose.Params.__dataclass_fields__ if n != "model"],
                                       id_prefix="compose-"))
        with gr.Column(scale=3, min_width=360):
            run_btn, stop_btn, preview, gallery = run_panel("Compose", "compose-btn", "compose-",
                                                            "Images (PNG with concepts and weights)")
            verdicts = gr.Markdown(elem_id="compose-verdicts")
            with gr.Row():
                seed_used = gr.Number(label="Seed used", precision=0, interactive=False, elem_id="compose-seed-used")
                info = gr.Markdown(elem_id="compose-info")
            parameters = gr.JSON(label="Parameters", open=False, elem_id="compose-parameters")

    row_fields = [*texts, *weights, *ops]
    syntax = [inputs["prompt"], inputs["weights"]]

    def split(values):
        return (list(values[:MAX_CONCEPTS]), list(values[MAX_CONCEPTS:2 * MAX_CONCEPTS]),
                list(values[2 * MAX_CONCEPTS:3 * MAX_CONCEPTS]))

    def fill(concepts: list[Concept]):
        """Updates for every row (+ visibility), the row count and the syntax boxes."""
        n = len(concepts)
        pad = MAX_CONCEPTS - n
        return ([gr.update(value=c.text) for c in concepts] + [gr.update(value="")] * pad
                + [gr.update(value=abs(c.weight)) for c in concepts] + [gr.update(value=2.0)] * pad
                + [gr.update(value=c.op) for c in concepts] + [gr.update(value="AND")] * pad
                + [gr.update(visible=i < max(n, 1)) for i in range(MAX_CONCEPTS)]
                + [max(n, 1), *compose.to_syntax(concepts)])

    fill_outputs = [*row_fields, *rows, n_rows, *syntax]

    def on_rows(n, *values):
        return rows_to_syntax(*split(values), n)

    for comp in row_fields:
        comp.input(on_rows, inputs=[n_rows, *row_fields], outputs=syntax, queue=False, api_visibility="private")

    def on_syntax(prompt, weights_text, guidance):
        try:
            return fill(compose.parse_concepts(prompt, weights_text, guidance))
        except ParamError:  # half-typed syntax: leave the rows alone; Compose reports the error
            return [gr.skip()] * len(fill_outputs)

    for box in syntax:
        box.input(on_syntax, inputs=[*syntax, inputs["guidance"]], outputs=fill_outputs, queue=False, api_visibility="private")

    def on_add(n):
        n = min(n + 1, MAX_CONCEPTS)
        return [gr.update(visible=i < n) for i in range(MAX_CONCEPTS)] + [n]

    add_btn.click(on_add, inputs=[n_rows], outputs=[*rows, n_rows], queue=False, api_visibility="private")

    for i, btn in enumerate(removes):
        def on_remove(n, *values, i=i):
            return fill(rows_to_concepts(*split(values), [j for j in range(n) if j != i]))

        btn.click(on_remove, inputs=[n_rows, *row_fields], outputs=fill_outputs, queue=False, api_visibility="private")

    for btn, (prompt, w) in zip(examples, compose.EXAMPLES.values()):
        btn.click(lambda prompt=prompt, w=w: fill(compose.parse_concepts(prompt, w)), outputs=fill_outputs,
                  queue=False, api_visibility="private")

    def done(item, params):
        k = len(item.concepts)
        return {
            preview: grid_image(item.tensors),
            gallery: pngs.write(item),
            verdicts: verdict_table(item),
            seed_used: item.parameters["seed"],
            parameters: item.parameters,
            info: f"{len(item.images)} image(s), {k} concept(s) ({k + 1} predictions per step, "
                  f"{params.evaluation}) in {item.seconds:.1f} s",
        }

    compose_images = stream(compose.run, compose.Params, manager, preview=preview, first=info, done=done,
                            desc="Composing")

    run_event = run_btn.click(compose_images, inputs_kwargs=inputs,
                              outputs=[preview, gallery, verdicts, seed_used, parameters, info], preprocess=False,
                              api_name="compose", concurrency_id="models", concurrency_limit=1,
                              show_progress_on=[gallery])
    stop_btn.click(None, cancels=[run_event], api_name="compose_stop", queue=False)
    return {**inputs, "compose": run_btn, "stop": stop_btn, "gallery": gallery, "verdicts": verdicts,
            "preview": preview, "parameters": parameters, "info": info, "add": add_btn}
