"""Real-browser runs in headless Chromium: generate digits (tiny models); compose shapes and guide digits on the
embedded zoo models and read the judges' verdicts.

Uses the Debian chromium (CI installs it); never ``playwright install``.
"""

from __future__ import annotations

import contextlib

import pytest

from studio.core.results import read_png_parameters
from tests.conftest import serving

TIMEOUT_MS = 60_000


@contextlib.contextmanager
def serving_url(manager):
    with serving(manager) as demo:
        yield demo.local_url


@pytest.fixture
def studio_url(tiny_manager):
    with serving_url(tiny_manager) as url:
        yield url


@pytest.fixture
def zoo_url(zoo_manager):
    with serving_url(zoo_manager) as url:
        yield url


def set_number(page, selector: str, value: int) -> None:
    """Type ``value`` into a Number input and make sure it stays there.

    A tab's inputs are mounted when the tab is first selected; a value typed in the same instant can
    be overwritten by the component's initial value (seen once on CI: the Tune run used its default
    150 steps instead of 4). So type, commit, wait a moment, and type again if the value was reset."""
    box = page.locator(f"{selector} input[type=number]")
    box.wait_for(state="visible")
    for _ in range(5):
        box.fill(str(value))
        box.press("Enter")
        box.blur()
        page.wait_for_timeout(250)
        if box.input_value() == str(value):
            return
    raise AssertionError(f"{selector} did not keep the value {value} (it shows {box.input_value()!r})")


def open_tab(browser, url: str, tab: str | None = None, height: int = 1000):
    """A new page on ``url`` (1400 px wide, the suite's timeout), with ``tab`` selected."""
    page = browser.new_page(viewport={"width": 1400, "height": height})
    page.set_default_timeout(TIMEOUT_MS)
    page.goto(url)
    if tab:
        from playwright.sync_api import expect

        button = page.get_by_role("tab", name=tab, exact=True)
        page.get_by_role("tab").first.wait_for()
        if button.count():
            button.click()
            expect(button).to_have_attribute("aria-selected", "true")
        else:  # past the width of the tab bar: Gradio lists the tab in its overflow menu, as a person finds it
            page.locator(".overflow-menu button").first.click()
            page.locator(".overflow-dropdown button", has_text=tab).first.click()
    return page


def draw_a_one(page, params_prefix: str, sketch_prefix: str) -> None:
    """Pick *drawing* as the source and draw a "1" (one vertical stroke) on the tab's Sketchpad."""
    from playwright.sync_api import expect

    page.locator(f"#{params_prefix}param-source input").click()
    page.get_by_role("option", name="drawing").click()
    page.locator(f"#{sketch_prefix}sketch button[aria-label='Brush']").click()
    canvas = page.locator(f"#{sketch_prefix}sketch canvas").first
    expect(canvas).to_be_visible()
    box = canvas.bounding_box()
    cx, top, bottom = box["x"] + box["width"] / 2, box["y"] + box["height"] * 0.2, box["y"] + box["height"] * 0.8
    page.mouse.move(cx, top)
    page.mouse.down()
    for i in range(1, 11):
        page.mouse.move(cx, top + (bottom - top) * i / 10)
    page.mouse.up()


def served_parameters(page, url: str, src: str) -> dict:
    """What "download" saves: the PNG the server sends, with its parameters chunk."""
    assert src and src.split("?")[0].endswith(".png"), src
    return read_png_parameters(page.request.get(src if src.startswith("http") else url.rstrip("/") + src).body())


def test_generate_in_a_real_browser(studio_url, browser, tmp_path):
    from playwright.sync_api import expect

    page = browser.new_page(viewport={"width": 1400, "height": 1000})
    page.set_default_timeout(TIMEOUT_MS)
    page.goto(studio_url)
    expect(page.get_by_text("Diffusion Studio").first).to_be_visible()

    page.locator("#param-model input").click()
    page.get_by_role("option", name="digits-cond").click()
    set_number(page, "#param-steps", 5)
    set_number(page, "#param-n_images", 4)
    page.locator("#generate-btn").click()

    images = page.locator("#gallery img")
    expect(images).to_have_count(4, timeout=TIMEOUT_MS)
    expect(page.locator("#seed-used input")).to_have_value("0")
    expect(page.locator("#parameters")).to_contain_text("digits-cond")
    expect(page.locator("#preview img")).to_be_visible()
    params = served_parameters(page, studio_url, images.first.get_attribute("src"))
    assert (params["model"], params["steps"], params["n_images"]) == ("digits-cond", 5, 4)
    page.screenshot(path=str(tmp_path / "studio.png"), full_page=True)


def test_compose_on_the_embedded_model_in_a_real_browser(zoo_url, browser, tmp_path):
    """One example loads with a click, a row edit rewrites the syntax, Compose shows the judge's verdicts."""
    from playwright.sync_api import expect

    page = open_tab(browser, zoo_url, "Compose", height=1200)

    page.locator("#example-0").click()  # "two objects (AND)"
    prompt = page.locator("#compose-param-prompt textarea")
    expect(prompt).to_have_value("a red circle at the top left | a blue square at the bottom right")
    expect(page.locator("#concept-1 textarea")).to_have_value("a blue square at the bottom right")

    page.locator("#concept-add").click()  # a third row: NOT a green shape
    page.locator("#concept-2 textarea").fill("a green shape")
    page.locator("#concept-op-2").get_by_label("NOT").check()
    expect(prompt).to_have_value("a red circle at the top left | a blue square at the bottom right | a green shape")
    expect(page.locator("#compose-param-weights textarea")).to_have_value("2 | 2 | -2")

    set_number(page, "#compose-param-steps", 10)
    set_number(page, "#compose-param-n_images", 2)
    page.locator("#compose-btn").click()

    images = page.locator("#compose-gallery img")
    expect(images).to_have_count(2, timeout=TIMEOUT_MS)
    verdicts = page.locator("#compose-verdicts")
    expect(verdicts).to_contain_text("NOT a green shape (-2)")
    expect(verdicts).to_contain_text("satisfied")
    params = served_parameters(page, zoo_url, images.first.get_attribute("src"))
    assert [c["op"] for c in params["concepts"]] == ["AND", "AND", "NOT"] and params["steps"] == 10
    page.screenshot(path=str(tmp_path / "compose.png"), full_page=True)


def test_guide_on_the_embedded_model_in_a_real_browser(zoo_url, browser, tmp_path):
    """The method radio shows EluCD's switches only for EluCD and sets the scale; Guide fills the
    gallery, the confidence plot and the judge's summary."""
    from playwright.sync_api import expect

    from studio.methods import guide

    page = open_tab(browser, zoo_url, "Guide", height=1400)

    switches = page.locator("#guide-param-sine")
    expect(switches).to_be_visible()
    page.locator("#guide-param-recipe").get_by_label(guide.METHOD_LABELS["noise-aware"]).check()
    expect(switches).to_be_hidden()
    expect(page.locator("#guide-param-scale input[type=number]")).to_have_value(f"{guide.DEFAULT_SCALE['noise-aware']:g}")
    page.locator("#guide-param-recipe").get_by_label(guide.METHOD_LABELS["elucd"]).check()
    expect(switches).to_be_visible()

    set_number(page, "#guide-param-target", 7)
    set_number(page, "#guide-param-steps", 10)
    set_number(page, "#guide-param-n_images", 2)
    page.locator("#guide-btn").click()

    images = page.locator("#guide-gallery img")
    expect(images).to_have_count(2, timeout=TIMEOUT_MS)
    expect(page.locator("#guide-info")).to_contain_text("read as 7")
    expect(page.locator("#guide-trace .js-plotly-plot")).to_be_visible()
    params = served_parameters(page, zoo_url, images.first.get_attribute("src"))
    assert (params["method"], params["target"], params["steps"], params["classifier"]) == ("guide", 7, 10, "guide-clean")
    page.screenshot(path=str(tmp_path / "guide.png"), full_page=True)


def test_forecast_an_uploaded_csv_in_a_real_browser(zoo_url, browser, tmp_path, monkeypatch):
    """Upload a small CSV, train on it (shortened), forecast it: a fan chart, the score table and
    the quantiles CSV appear; then a bundled series with its embedded model."""
    from playwright.sync_api import expect

    from studio.data import series as S
    from studio.train import forecast as trainer

    monkeypatch.setattr(trainer, "UPLOAD_STEPS", 40)
    csv = tmp_path / "unemployment.csv"
    csv.write_text(S.to_csv(S.bundled("unemployment")))
    page = open_tab(browser, zoo_url, "Forecast", height=1600)
    refiner = page.locator("#forecast-param-refiner")
    expect(refiner).to_be_hidden()
    page.locator("#forecast-param-mode").get_by_label("Refine a baseline").check()
    expect(refiner).to_be_visible()
    expect(page.locator("#forecast-param-guidance")).to_be_hidden()
    page.locator("#forecast-param-mode").get_by_label("Forecast (self-guidance)").check()
    expect(page.locator("#forecast-param-guidance")).to_be_visible()
    page.get_by_text("Your series (CSV").click()
    page.locator("#forecast-csv input[type=file]").set_input_files(str(csv))
    expect(page.locator("#forecast-upload-info")).to_contain_text("203 points")
    page.locator("#forecast-train-btn").click()
    expect(page.locator("#forecast-upload-info")).to_contain_text("Training started")
    expect(page.locator("#forecast-train-status")).to_contain_text("finished after 40 steps", timeout=3 * TIMEOUT_MS)
    expect(page.locator("#forecast-train-status")).to_contain_text("your run")
    set_number(page, "#forecast-param-samples", 16)
    page.locator("#forecast-btn").click()
    expect(page.locator("#forecast-fan .js-plotly-plot")).to_be_visible(timeout=2 * TIMEOUT_MS)
    expect(page.locator("#forecast-metrics")).to_contain_text("AutoARIMA", timeout=3 * TIMEOUT_MS)
    expect(page.locator("#forecast-metrics")).to_contain_text("TSDiff-Q")
    expect(page.locator("#forecast-download a").first).to_be_visible()
    page.screenshot(path=str(tmp_path / "forecast.png"), full_page=True)


@pytest.fixture
def sign_url(sign_manager):
    with serving_url(sign_manager) as url:
        yield url


def test_draw_corrupt_and_project_in_a_real_browser(sign_url, browser, tmp_path):
    """Draw a digit on the Sketchpad, pick the noise corruption, project: the gallery shows the
    drawn input, its corruption, each f^k and SDEdit; the table names them."""
    from playwright.sync_api import expect

    page = open_tab(browser, sign_url, "Edit", height=1400)
    page.get_by_role("tab", name="Project: edit a corrupted digit").click()
    draw_a_one(page, "sign-edit-", "sign-")
    set_number(page, "#sign-edit-param-k", 2)
    page.locator("#sign-project-btn").click()
    expect(page.locator("#sign-edit-gallery img")).to_have_count(5, timeout=TIMEOUT_MS)
    table = page.locator("#sign-edit-table")
    expect(table).to_contain_text("f^2(x_c)")
    expect(table).to_contain_text("SDEdit, 2 evals")
    expect(table).not_to_contain_text("test digit")  # the drawing was projected, not a test digit
    expect(page.locator("#sign-edit-info")).to_contain_text("inverted")
    params = served_parameters(page, sign_url, page.locator("#sign-edit-gallery img").first.get_attribute("src"))
    assert (params["source"], params["corruption"], params["k"]) == ("drawing", "noise", 2)
    page.screenshot(path=str(tmp_path / "edit.png"), full_page=True)


@pytest.fixture
def tune_url(fewstep_manager, tmp_path, monkeypatch):
    """The studio on a tiny random few-step model, with the zoo's real judges (the comparison table's)."""
    from studio.core.loading import load_zoo

    monkeypatch.setenv("STUDIO_HOME", str(tmp_path / "home"))
    for name in ("judge-digits", "fd-digits"):
        fewstep_manager.register(name, lambda n=name: load_zoo(n), info={"kind": "classifier", "domain": "digits"})
    with serving_url(fewstep_manager) as url:
        yield url


def test_tune_trains_and_shows_the_after_grid_in_a_real_browser(tune_url, browser, tmp_path):
    """Train SaRA a few steps on the 0-4 thick set: choosing it shows SaRA's settings and hides
    LoRA's; the status follows the run from the background thread, the loss plot and validation
    grid appear, then the before / after grid and a measured row in the comparison table; Save names it."""
    from playwright.sync_api import expect

    page = open_tab(browser, tune_url, "Tune", height=1600)
    expect(page.locator("#pso-group-lora")).to_be_visible()
    expect(page.locator("#pso-group-sara")).to_be_hidden()
    page.locator("#pso-param-weights input").click()
    page.get_by_role("option", name="SaRA: the smallest-magnitude weights (sparse)").click()
    expect(page.locator("#pso-group-sara")).to_be_visible()
    expect(page.locator("#pso-group-lora")).to_be_hidden()
    page.locator("#pso-param-style input").click()
    page.get_by_role("option", name="thick strokes, digits 0-4 only (15 real digits; forgetting measured on 5-9)").click()
    set_number(page, "#pso-param-steps", 4)
    page.locator("#pso-train-btn").click()
    expect(page.locator("#pso-after-grid img")).to_be_visible(timeout=TIMEOUT_MS)
    expect(page.locator("#pso-status")).to_contain_text("finished after 4 steps")
    expect(page.locator("#pso-status")).to_contain_text("digits-fewstep-tuned")
    expect(page.locator("#pso-val-grid img")).to_be_visible()
    expect(page.locator("#pso-plot .js-plotly-plot")).to_be_visible()
    table = page.locator("#pso-table")
    expect(table).to_contain_text("sara", timeout=TIMEOUT_MS)
    expect(table).to_contain_text("digits 5, 6, 7, 8, 9")
    expect(page.locator("#pso-table-csv a").first).to_be_visible()
    page.locator("#pso-save-name input, #pso-save-name textarea").first.fill("thick-browser")
    page.locator("#pso-save-btn").click()
    expect(page.locator("#pso-status")).to_contain_text("Saved as")
    assert (tmp_path / "home" / "tuned" / "thick-browser" / "adapter.safetensors").exists()
    assert '"weights": "sara"' in (tmp_path / "home" / "tuned" / "thick-browser" / "tuned.json").read_text()
    page.screenshot(path=str(tmp_path / "tune.png"), full_page=True)


def test_architectures_generate_draw_and_train_a_cell_in_a_real_browser(zoo_url, browser, tmp_path):
    """Generate cells on the embedded DiffusionNAG, see them drawn, tabled, placed in the space and on
    the efficiency curve; pick one from the table, train it, and get a message for a malformed string."""
    from playwright.sync_api import expect

    from studio.data import nasbench as nb

    page = open_tab(browser, zoo_url, "Architectures", height=2200)
    set_number(page, "#nag-param-n_cells", 24)
    page.get_by_text("Advanced").last.click()
    set_number(page, "#nag-param-steps", 100)
    page.locator("#nag-generate-btn").click()
    expect(page.locator("#nag-info")).to_contain_text("24 cells in", timeout=TIMEOUT_MS)
    for plot in ("#nag-dags", "#nag-hist", "#nag-eff"):
        expect(page.locator(f"{plot} .js-plotly-plot")).to_be_visible()
    expect(page.locator('#nag-table [data-testid="cell-0-5"]')).to_contain_text("~0|")  # row 0, the arch column
    arch = page.locator("#nag-arch input, #nag-arch textarea").first
    assert nb.parse(arch.input_value())  # the best generated cell, ready to train
    second = page.locator('#nag-table [data-testid="cell-1-5"]')
    picked = second.inner_text().strip()
    second.click()  # a click on a row puts its cell in the box
    expect(arch).to_have_value(picked)
    page.locator("#nag-train-btn").click()
    expect(page.locator("#nag-train-info")).to_contain_text("validation accuracy", timeout=TIMEOUT_MS)
    arch.fill("|nor_conv_3x3~0|+|none~0|+|none~0|none~1|none~2|")
    page.locator("#nag-train-btn").click()
    expect(page.get_by_text("2 incoming edge(s)").first).to_be_visible()
    page.screenshot(path=str(tmp_path / "architectures.png"), full_page=True)


def test_classify_a_drawing_in_a_real_browser(studio_url, browser, tmp_path):
    """Draw a digit, classify it with a short schedule: the verdict names the rounds, the chart and
    the CSV of every evaluation appear."""
    from playwright.sync_api import expect

    page = open_tab(browser, studio_url, "Classify", height=1400)
    draw_a_one(page, "classify-", "classify-")
    for name, value in (("n_samples", "2 4"), ("to_keep", "2 1")):
        field = page.locator(f"#classify-param-{name} textarea, #classify-param-{name} input").first
        field.fill(value)
        field.press("Tab")
    page.locator("#classify-btn").click()
    info = page.locator("#classify-info")
    expect(info).to_contain_text("Diffusion classifier", timeout=TIMEOUT_MS)
    expect(info).to_contain_text("24 network evaluations")
    expect(info).to_contain_text("Round 2")
    expect(info).to_contain_text("inverted")  # the drawing was classified, not a test digit
    expect(page.locator("#classify-chart .js-plotly-plot")).to_have_count(1)
    link = page.locator("#classify-csv a").first
    expect(link).to_be_visible()
    csv = page.request.get(link.get_attribute("href")).text()
    assert csv.startswith('# method: "classify"') and '# source: "drawing"' in csv
    page.screenshot(path=str(tmp_path / "classify.png"), full_page=True)


def test_theory_playground_draws_and_the_time_slider_redraws_in_a_real_browser(studio_url, browser, tmp_path):
    """Draw the playground, change the process (it redraws by itself), then move the time slider to the
    data end: the figures are plotly plots and the summary follows."""
    from playwright.sync_api import expect

    page = open_tab(browser, studio_url, "Theory", height=1400)
    page.locator("#theory-btn").click()
    info = page.locator("#theory-info")
    expect(info).to_contain_text("Energy distance")
    expect(info).to_contain_text("t = 0.50")
    expect(page.locator("#theory-field .js-plotly-plot")).to_have_count(1)
    expect(page.locator("#theory-four .js-plotly-plot")).to_have_count(1)
    page.locator("#theory-param-process input").click()
    page.get_by_role("option", name="Rectified flow ODE").click()
    expect(info).to_contain_text("Rectified flow ODE")
    number = page.locator("#theory-param-time input[type=number]")
    number.fill("0")
    number.press("Enter")
    page.locator("#theory-param-time input[type=range]").dispatch_event("pointerup")
    expect(info).to_contain_text("t = 0.001")
    page.screenshot(path=str(tmp_path / "theory.png"), full_page=True)


@pytest.fixture
def train_url(tiny_manager, tmp_path, monkeypatch):
    import studio.train.common as common

    monkeypatch.setattr(common, "RUNS_DIR", tmp_path / "runs")
    with serving_url(tiny_manager) as url:
        yield url


def test_train_a_few_steps_register_and_generate_lists_it_in_a_real_browser(train_url, browser, tmp_path):
    """Train 3 steps in the accelerate subprocess: the status follows it, the curves and the sample grid appear;
    Register names the model, and the Generate tab, opened afterwards, lists it without a page reload."""
    from playwright.sync_api import expect

    page = open_tab(browser, train_url, "Train", height=1600)
    set_number(page, "#train-param-steps", 3)
    set_number(page, "#train-param-batch", 8)
    page.locator("#train-btn").click()
    expect(page.locator("#train-status")).to_contain_text("finished after 3 steps", timeout=180_000)
    expect(page.locator("#train-plot .js-plotly-plot")).to_be_visible()
    expect(page.locator("#train-grid img")).to_be_visible()
    page.locator("#train-register-btn").click()
    expect(page.locator("#train-status")).to_contain_text("Registered")
    key = page.locator("#train-status strong").first.inner_text()
    assert key.startswith("trained-")
    page.get_by_role("tab", name="Generate", exact=True).click()
    page.locator("#param-model input").click()
    expect(page.get_by_role("option", name=key)).to_be_visible()
    page.screenshot(path=str(tmp_path / "train.png"), full_page=True)


@pytest.fixture
def weights_url(tiny_manager):
    from tests.test_weights import TinySSL, tiny_d2nwg

    tiny_manager.register("d2nwg-digits", tiny_d2nwg, info={"kind": "weightgen", "method": "d2nwg"})
    tiny_manager.register("simclr-digits", lambda: TinySSL().eval(), info={"kind": "encoder"})
    with serving_url(tiny_manager) as url:
        yield url


def test_weights_generate_shows_the_histogram_the_curve_and_a_download_in_a_real_browser(weights_url, browser,
                                                                                         tmp_path):
    """Generate 4 models on a tiny random D2NWG: the histogram, the fine-tuning curve, the memorisation table and
    the safetensors file appear; 'my examples' shows its panel, refuses an empty set and collects a drawing."""
    from playwright.sync_api import expect

    page = open_tab(browser, weights_url, "Weights", height=1600)
    set_number(page, "#weights-param-k", 4)
    set_number(page, "#weights-param-finetune_steps", 3)
    page.locator("#weights-generate-btn").click()
    expect(page.locator("#weights-info")).to_contain_text("4 generated models on the test split", timeout=TIMEOUT_MS)
    for plot in ("#weights-hist", "#weights-curve", "#weights-scatter"):
        expect(page.locator(f"{plot} .js-plotly-plot")).to_be_visible()
    expect(page.locator("#weights-curve")).to_contain_text("3 / 3 steps")
    expect(page.locator('#weights-table [data-testid="cell-3-0"]')).to_be_visible()  # 4 rows
    link = page.locator("#weights-file a").first
    expect(link).to_be_visible()
    assert link.get_attribute("href").split("?")[0].endswith(".safetensors")

    expect(page.locator("#weights-sketch")).to_be_hidden()
    page.locator("#weights-param-task input").click()
    page.get_by_role("option", name="my examples (draw or upload below)").click()
    expect(page.locator("#weights-sketch")).to_be_visible()
    expect(page.locator("#weights-task-note")).to_contain_text("Your examples")
    page.locator("#weights-generate-btn").click()
    expect(page.get_by_text("give some labelled examples").first).to_be_visible()
    page.locator("#weights-sketch button[aria-label='Brush']").click()
    canvas = page.locator("#weights-sketch canvas").first
    box = canvas.bounding_box()
    cx, top, bottom = box["x"] + box["width"] / 2, box["y"] + box["height"] * 0.2, box["y"] + box["height"] * 0.8
    page.mouse.move(cx, top)
    page.mouse.down()
    for i in range(1, 11):
        page.mouse.move(cx, top + (bottom - top) * i / 10)
    page.mouse.up()
    page.locator("#weights-add-btn").click()
    expect(page.locator("#weights-own-info")).to_contain_text("1 example(s): 1 x 0")
    expect(page.locator("#weights-own-picture img")).to_be_visible()
    page.locator("#weights-add-btn").click()  # the canvas was cleared: nothing to add twice
    expect(page.get_by_text("draw a digit on the canvas or upload images first").first).to_be_visible()
    expect(page.locator("#weights-own-info")).to_contain_text("1 example(s): 1 x 0")
    page.screenshot(path=str(tmp_path / "weights.png"), full_page=True)


@pytest.fixture
def debias_url(tiny_manager):
    from tests.test_debias import with_tiny_debias

    with serving_url(with_tiny_debias(tiny_manager)) as url:
        yield url


def test_debias_shows_both_grids_and_the_colour_histogram_in_a_real_browser(debias_url, browser):
    """Two images per model on a tiny random InvDiff module: both grids, the histogram and the two PNGs appear; an
    empty prompt gets a message."""
    from playwright.sync_api import expect

    page = open_tab(browser, debias_url, "Debias", height=1400)
    set_number(page, "#debias-param-n_images", 2)
    page.locator("#debias-run-btn").click()
    expect(page.locator("#debias-info")).to_contain_text("InvDiff, r = 0.8", timeout=TIMEOUT_MS)
    expect(page.locator("#debias-hist .js-plotly-plot")).to_be_visible()
    for grid in ("#debias-biased img", "#debias-debiased img"):
        expect(page.locator(grid).first).to_be_visible()
    expect(page.locator("#debias-files a")).to_have_count(2)
    page.locator("#debias-param-prompt textarea").fill("")
    page.locator("#debias-run-btn").click()
    expect(page.get_by_text("the prompt is empty").first).to_be_visible()


@pytest.fixture
def subject_url(tiny_manager, tmp_path, monkeypatch):
    from tests.test_subject import with_tiny_var

    monkeypatch.setenv("STUDIO_HOME", str(tmp_path / "home"))
    with serving_url(with_tiny_var(tiny_manager)) as url:
        yield url


def test_subject_tunes_in_the_background_and_shows_the_grids_and_the_table_in_a_real_browser(subject_url, browser):
    """Two iterations per variant on a tiny random VAR: the subject pictures, the loss curves, both grids and the
    readout table (untuned, ARBooth, full fine-tuning) appear; an empty prompt gets a message."""
    from playwright.sync_api import expect

    page = open_tab(browser, subject_url, "Subject", height=1600)
    set_number(page, "#subject-param-n_images", 2)
    page.get_by_text("Advanced").last.click()
    set_number(page, "#subject-param-iterations", 2)
    page.locator("#subject-train-btn").click()
    expect(page.locator("#subject-pictures img")).to_be_visible()
    expect(page.locator("#subject-table")).to_contain_text("arbooth", timeout=TIMEOUT_MS)
    expect(page.locator("#subject-table")).to_contain_text("untuned")
    expect(page.locator("#subject-status")).to_contain_text("finished after 28 steps")  # 4 tuning + 24 sampling
    for grid in ("#subject-grid img", "#subject-class-grid img"):
        expect(page.locator(grid).first).to_be_visible()
    expect(page.locator("#subject-plot .js-plotly-plot")).to_be_visible()
    expect(page.locator("#subject-files a")).to_have_count(2)
    page.locator("#subject-param-prompt textarea").fill("")
    page.locator("#subject-train-btn").click()
    expect(page.get_by_text("the prompt is empty").first).to_be_visible()


@pytest.fixture
def resolution_url(tiny_manager):
    from tests.test_resolution import with_tiny_inr

    with serving_url(with_tiny_inr(tiny_manager)) as url:
        yield url


def test_resolution_shows_every_size_beside_bicubic_and_the_truth_in_a_real_browser(resolution_url, browser):
    """A known scene on a tiny random DDMI: sixteen tiles (four renders by four sizes), the measurements and the
    full-size PNGs appear; a size out of range gets a message."""
    from playwright.sync_api import expect

    page = open_tab(browser, resolution_url, "Resolution", height=1600)
    page.locator("#resolution-run-btn").click()
    expect(page.locator("#resolution-info")).to_contain_text("true render at each size", timeout=TIMEOUT_MS)
    expect(page.locator("#resolution-gallery img")).to_have_count(16)
    expect(page.locator("#resolution-table")).to_contain_text("bicubic of the true 32 px render")
    expect(page.locator("#resolution-files a")).to_have_count(16)


@pytest.fixture
def swap_url(tiny_manager):
    from tests.test_swap import with_tiny_swap

    with serving_url(with_tiny_swap(tiny_manager)) as url:
        yield url


def test_swap_shows_the_original_and_every_variant_in_a_real_browser(swap_url, browser):
    """Two steps per variant on tiny random models: the original and the four variants of the baselines comparison
    and the judge's table appear; a scene without a third object gets a message."""
    from playwright.sync_api import expect

    page = open_tab(browser, swap_url, "Swap", height=1400)
    page.get_by_text("Advanced").last.click()
    set_number(page, "#swap-param-steps", 2)
    page.locator("#swap-run-btn").click()
    expect(page.locator("#swap-info")).to_contain_text("becomes 'a blue square", timeout=TIMEOUT_MS)
    expect(page.locator("#swap-gallery img")).to_have_count(5)
    expect(page.locator("#swap-table")).to_contain_text("compose")
    set_number(page, "#swap-param-object", 3)
    page.locator("#swap-run-btn").click()
    expect(page.get_by_text("choose an object from 1").first).to_be_visible()
