"""The Edit tab through its API (gradio_client), on a tiny random generator: both panes, drawings and
uploads through Gradio's own file handling, and bad inputs that change nothing else."""

from __future__ import annotations

import numpy as np
import pytest
from gradio_client import handle_file
from gradio_client.exceptions import AppError
from PIL import Image

from studio.core.results import read_png_parameters
from tests.conftest import sketch_value


@pytest.fixture
def app_manager(sign_manager):
    return sign_manager




def test_generate_pane_returns_rows_of_pngs_with_parameters(app_client):
    client, manager = app_client
    grid, gallery, info, table, parameters = client.predict(model="sign-digits", k=2, n_images=3, seed=11,
                                                            api_name="/sign_generate")
    assert Image.open(grid).size == (3 * 64 + 2 * 2, 3 * 64 + 2 * 2)  # 3 rows (noises) x 3 columns (z, f, f^2)
    assert len(gallery) == 3 and parameters["seed"] == 11 and "ms per image" in info
    params = read_png_parameters(gallery[2]["image"])
    assert params["method"] == "edit/generate" and params["k"] == 2 and params["image_seed"] == 13
    assert gallery[2]["caption"].startswith("seed 13: z, f(z), f(f(z))")
    assert all(row["in use"] == 0 for row in manager.status())


def test_draw_then_project_with_noise(app_client, tmp_path):
    client, _ = app_client
    client.predict(sketch_value(tmp_path), sketch_value(tmp_path, blank=True), api_name="/sign_read")
    gallery, info, table, parameters = client.predict(source="drawing", corruption="noise", strength=0.3, k=2,
                                                      compare_sdedit=True, api_name="/sign_project")
    names = [row[0] for row in table["data"]]
    assert names == ["input", "corrupted", "f(x_c)", "f^2(x_c)", "SDEdit, 2 evals"] and len(gallery) == 5
    assert "inverted" in info and parameters["source"] == "drawing" and parameters["corruption"] == "noise"


def test_bad_inputs_get_messages_and_the_server_keeps_serving(app_client, tmp_path):
    client, _ = app_client
    client.predict(sketch_value(tmp_path, blank=True), sketch_value(tmp_path, blank=True), api_name="/sign_read")
    with pytest.raises(AppError, match="draw a digit"):
        client.predict(source="drawing", api_name="/sign_project")
    text = tmp_path / "notes.png"
    text.write_text("this is not an image")
    with pytest.raises(AppError, match="not an image"):
        client.predict(handle_file(str(text)), api_name="/sign_upload")
    with pytest.raises(AppError, match="mask is blank"):
        client.predict(corruption="mask", api_name="/sign_project")
    with pytest.raises(AppError, match="Strength"):
        client.predict(strength=5.0, api_name="/sign_project")
    gallery, *_ = client.predict(test_index=3, k=1, compare_sdedit=False, api_name="/sign_project")
    assert len(gallery) == 3


def test_an_upload_of_any_size_is_resized_and_projected(app_client, tmp_path):
    client, _ = app_client
    img = np.full((300, 500, 3), 255, np.uint8)
    img[50:250, 230:270] = 0
    path = tmp_path / "photo.jpg"
    Image.fromarray(img).save(path)
    info = client.predict(handle_file(str(path)), api_name="/sign_upload")
    assert "resized from 500 x 300" in info and "inverted" in info
    client.predict(sketch_value(tmp_path, blank=True), sketch_value(tmp_path, blank=True), api_name="/sign_read")
    gallery, info, table, parameters = client.predict(source="drawing", corruption="box", strength=0.25, k=1,
                                                      compare_sdedit=False, api_name="/sign_project")
    assert len(gallery) == 3 and parameters["corruption"] == "box"
