"""The web page in a real browser: Debian's headless Chromium, driven by Playwright."""

import base64
import io
import shutil

import httpx
import numpy as np
import pytest
from PIL import Image

from conftest import Server, kserve_body
from fmnist.images import from_image_bytes

pytestmark = pytest.mark.slow
CHROMIUM = shutil.which("chromium") or "/usr/bin/chromium"
CHROMIUM_FLAGS = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
                  "--disable-background-networking", "--disable-component-update", "--disable-sync"]  # fmt: skip


@pytest.fixture(scope="module")
def page_server(served_run):
    server = Server(served_run, "--engine", "keras", "--model-version", "3", "--model-label", "stable")
    yield server
    server.close()


@pytest.fixture(scope="module")
def browser():
    playwright_api = pytest.importorskip("playwright.sync_api")
    with playwright_api.sync_playwright() as playwright:
        browser = playwright.chromium.launch(executable_path=CHROMIUM, args=CHROMIUM_FLAGS)
        yield browser
        browser.close()


def test_upload_a_test_image_through_the_page(page_server, browser, dataset, tmp_path):
    images = dataset.x_test[:50]
    body = kserve_body(images)
    probabilities = np.array(httpx.post(f"{page_server.url}/v2/models/shop/infer", json=body).json()["outputs"][0]["data"])
    predicted = probabilities.reshape(50, 10).argmax(axis=1)
    index = int(np.flatnonzero(predicted == dataset.y_test[:50])[0])  # an image the model gets right
    path = tmp_path / "test-image.png"
    Image.fromarray(images[index]).save(path)

    page = browser.new_page()
    page.goto(page_server.url + "/")
    page.wait_for_function("document.getElementById('model-name').textContent === 'shop'")
    assert "%" in page.text_content("#model-accuracy")
    assert page.text_content("#model-version") == " version 3 (stable)"
    assert page.text_content("#model-platform") == "baseline, keras"
    page.set_input_files("#file-input", str(path))
    page.wait_for_selector("#result:not([hidden])")
    assert page.text_content("#cards .top-class") == dataset.class_names[dataset.y_test[index]]
    assert page.text_content("#cards .file-name") == "test-image.png"
    assert len(page.query_selector_all("#cards .bar")) == 3
    assert page.get_attribute("#cards .seen", "src").startswith("data:image/png;base64,")
    assert page.evaluate("$('result').getBoundingClientRect().bottom <= window.innerHeight + 1")  # scrolled into view
    page.screenshot(path=str(tmp_path / "upload.png"))
    page.select_option("#background", "light")  # the same image as if it were a photo on white: negated
    seen = page.get_attribute("#cards .seen", "src")
    page.set_input_files("#file-input", str(path))
    page.wait_for_function(f"document.querySelector('#cards .seen').src !== {seen!r}")
    negated = base64.b64decode(page.get_attribute("#cards .seen", "src").split(",")[1])
    np.testing.assert_array_equal(np.asarray(Image.open(io.BytesIO(negated))), 255 - images[index])
    page.close()


def test_draw_on_the_canvas_and_get_a_prediction(page_server, browser, dataset):
    page = browser.new_page()
    page.goto(page_server.url + "/")
    box = page.locator("#canvas").bounding_box()
    page.mouse.move(box["x"] + 90, box["y"] + 40)
    page.mouse.down()
    for x, y in [(90, 240), (140, 240), (140, 120), (190, 120), (190, 240), (240, 240)]:
        page.mouse.move(box["x"] + x, box["y"] + y, steps=8)
    page.mouse.up()
    page.select_option("#background", "dark")  # for files; a drawing is on white whatever its border shows
    page.click("#predict-drawing")
    page.wait_for_selector("#result:not([hidden])")
    drawing = base64.b64decode(page.evaluate("$('canvas').toDataURL('image/png')").split(",")[1])
    seen = np.asarray(Image.open(io.BytesIO(base64.b64decode(page.get_attribute("#cards .seen", "src").split(",")[1]))))
    np.testing.assert_array_equal(seen, from_image_bytes(drawing, "drawing", background="light"))
    assert not np.array_equal(seen, from_image_bytes(drawing, "drawing", background="dark"))
    assert page.text_content("#cards .top-class") in dataset.class_names
    assert page.text_content("#error") == ""
    page.close()


def test_the_page_says_what_went_wrong(page_server, browser, tmp_path):
    page = browser.new_page()
    page.goto(page_server.url + "/")
    (tmp_path / "notes.txt").write_text("not an image")
    page.set_input_files("#file-input", str(tmp_path / "notes.txt"))
    page.wait_for_function("document.getElementById('error').textContent !== ''")
    assert "not an image format" in page.text_content("#error") and page.is_hidden("#result")
    page.route("**/predict", lambda route: route.abort())  # as if the server had stopped
    page.set_input_files("#file-input", str(tmp_path / "notes.txt"))
    page.wait_for_function("document.getElementById('error').textContent.includes('did not answer')")
    assert "Is fmnist serve still running?" in page.text_content("#error")
    page.close()


def test_the_keyboard_opens_the_chooser_and_a_pasted_image_is_classified(page_server, browser, dataset, tmp_path):
    path = tmp_path / "test-image.png"
    Image.fromarray(dataset.x_test[0]).save(path)
    page = browser.new_page()
    page.goto(page_server.url + "/")
    page.evaluate("window.chooserOpened = 0; $('file-input').addEventListener('click', () => window.chooserOpened++)")
    page.focus("#drop-zone")
    page.keyboard.press("Enter")  # the zone is a button for the keyboard: it opens the file chooser
    page.keyboard.press(" ")
    page.wait_for_function("window.chooserOpened === 2")
    is_prediction = lambda response: response.url.endswith("/predict")  # noqa: E731
    with page.expect_response(is_prediction) as answer:
        page.set_input_files("#file-input", str(path))
    assert answer.value.status == 200
    page.wait_for_selector("#result:not([hidden])")
    assert page.evaluate("$('file-input').value") == ""  # so that choosing the same file again is a change
    uploaded = page.text_content("#cards .top-class")
    page.evaluate("$('result').hidden = true; $('cards').replaceChildren()")
    with page.expect_response(is_prediction) as answer:
        page.evaluate("""(bytes) => {  // an image pasted from the clipboard
            const transfer = new DataTransfer();
            transfer.items.add(new File([new Uint8Array(bytes)], "clip.png", {type: "image/png"}));
            document.dispatchEvent(new ClipboardEvent("paste", {clipboardData: transfer}));
        }""", list(path.read_bytes()))
    assert answer.value.status == 200
    page.wait_for_selector("#result:not([hidden])")
    assert page.text_content("#cards .top-class") == uploaded and uploaded in dataset.class_names
    page.close()


def test_several_files_chosen_or_dropped_get_a_card_each(page_server, browser, dataset, tmp_path):
    images = dataset.x_test[:2]
    answer = httpx.post(f"{page_server.url}/v2/models/shop/infer", json=kserve_body(images)).json()
    expected = [dataset.class_names[index] for index in np.array(answer["outputs"][0]["data"]).reshape(2, 10).argmax(axis=1)]
    paths = [tmp_path / "a-first.png", tmp_path / "b-notes.txt", tmp_path / "c-second.png"]
    Image.fromarray(images[0]).save(paths[0])
    paths[1].write_text("not an image")
    Image.fromarray(images[1]).save(paths[2])
    page = browser.new_page()
    page.goto(page_server.url + "/")
    page.set_input_files("#file-input", [str(path) for path in paths])
    page.wait_for_function("document.querySelectorAll('#cards .card').length === 3")
    names = [element.text_content() for element in page.query_selector_all("#cards .file-name")]
    assert names == [path.name for path in paths]  # in the order chosen, the bad file in its place
    classes = [element.text_content() for element in page.query_selector_all("#cards .top-class")]
    assert classes == [expected[0], "", expected[1]]
    errors = [element.text_content() for element in page.query_selector_all("#cards .card-error")]
    assert errors[0] == errors[2] == "" and "b-notes.txt: not an image format" in errors[1]
    assert len(page.query_selector_all("#cards .seen")) == 2 and page.text_content("#error") == ""
    page.screenshot(path=str(tmp_path / "several.png"), full_page=True)
    page.evaluate("""(files) => {  // the same files dropped on the zone
        const transfer = new DataTransfer();
        for (const [name, bytes] of files) transfer.items.add(new File([new Uint8Array(bytes)], name));
        $('cards').replaceChildren();
        $('drop-zone').dispatchEvent(new DragEvent("drop", {dataTransfer: transfer}));
    }""", [[path.name, list(path.read_bytes())] for path in (paths[2], paths[0])])
    page.wait_for_function("document.querySelectorAll('#cards .card').length === 2")
    assert [element.text_content() for element in page.query_selector_all("#cards .top-class")] == expected[::-1]
    page.close()


def test_photos_over_the_request_limit_together_are_each_classified(page_server, browser, tmp_path):
    """Three 4.6 MB photos pass the server's 10 MB limit on a request together, but not one by one."""
    generator = np.random.default_rng(0)
    paths = []
    for index in range(3):  # noise does not compress: each PNG is about as large as its pixels
        paths.append(tmp_path / f"photo{index}.png")
        Image.fromarray(generator.integers(0, 256, (1100, 1400, 3), dtype=np.uint8)).save(paths[-1], compress_level=0)
    assert sum(path.stat().st_size for path in paths) > 10 * 1024 * 1024
    page = browser.new_page()
    page.goto(page_server.url + "/")
    page.set_input_files("#file-input", [str(path) for path in paths])
    page.wait_for_function("document.querySelectorAll('#cards .card').length === 3 || $('error').textContent !== ''")
    assert page.text_content("#error") == ""
    assert [element.text_content() for element in page.query_selector_all("#cards .file-name")] == [path.name for path in paths]
    assert len(page.query_selector_all("#cards .seen")) == 3 and not page.query_selector_all("#cards .card-error:not(:empty)")
    page.close()


def test_the_page_says_what_an_ensemble_averages(served_run, browser):
    server = Server(served_run, "--engine", "keras", "--ensemble", str(served_run), "--tta", "--tta-shift", "1")
    try:
        page = browser.new_page()
        page.goto(server.url + "/")
        page.wait_for_function("document.getElementById('model-platform').textContent !== ''")
        expected = "baseline, keras, an ensemble of 2 runs, flip TTA with shifts of up to 1 pixel"
        assert page.text_content("#model-platform") == expected
        assert page.text_content("#accuracy-label") == "its first run's test accuracy"
        assert page.text_content("#model-version") == " version 1"
        page.close()
    finally:
        server.close()
