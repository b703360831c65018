"""The page at `/` in a real headless browser (the distribution's Chromium, driven
by Playwright's Python library; nothing is downloaded): upload an image, see the
overlay and the top-k, and check both against the API. The screenshot is kept as
a test artefact (out/test-artifacts/page.png)."""

import base64
import os
import shutil
from pathlib import Path

import cv2
import numpy as np
import pytest

from camserve.client import Client
from tests.test_http import call

ARTIFACTS = Path(__file__).resolve().parent.parent / "out" / "test-artifacts"
CHROMIUM = os.environ.get("CAMSERVE_CHROMIUM") or shutil.which("chromium") or shutil.which("chromium-browser")
# As root in a container, with no network: no sandbox, no GPU, no calls home.
FLAGS = ["--no-sandbox", "--disable-gpu", "--disable-background-networking", "--disable-component-update", "--disable-sync", "--no-first-run"]

pytestmark = pytest.mark.skipif(
    not CHROMIUM,
    reason="no Chromium to test the page in: install the distribution's (Debian/Ubuntu: `apt-get install chromium`) "
    "or set CAMSERVE_CHROMIUM to a Chromium binary; .ci/run installs it",
)


@pytest.fixture(scope="module")
def browser():
    from playwright.sync_api import sync_playwright

    with sync_playwright() as playwright:
        chromium = playwright.chromium.launch(executable_path=CHROMIUM, args=FLAGS)
        yield chromium
        chromium.close()


@pytest.fixture(scope="module")
def image(tmp_path_factory) -> Path:
    """Not the model's size and not square: a filled circle on a gradient."""
    pixels = np.zeros((48, 72, 3), np.uint8)
    pixels[..., 0] = np.linspace(0, 200, 72, dtype=np.uint8)
    pixels[..., 2] = 90
    cv2.circle(pixels, (50, 20), 12, (255, 230, 40), -1)
    path = tmp_path_factory.mktemp("page") / "circle.png"
    cv2.imwrite(str(path), cv2.cvtColor(pixels, cv2.COLOR_RGB2BGR))
    return path


def canvas(page, selector: str) -> np.ndarray:
    url = page.eval_on_selector(selector, "c => c.toDataURL('image/png')")
    data = np.frombuffer(base64.b64decode(url.split(",", 1)[1]), np.uint8)
    return cv2.cvtColor(cv2.imdecode(data, cv2.IMREAD_COLOR), cv2.COLOR_BGR2RGB).astype(int)


def rows(page) -> list[tuple[int, float]]:
    found = page.eval_on_selector_all(".card tbody tr", "rs => rs.map(r => [Number(r.dataset.index), Number(r.dataset.probability)])")
    return [(int(i), p) for i, p in found]


def test_upload_shows_the_overlay_and_the_top_k_of_the_api(server, browser, image):
    page = browser.new_page(viewport={"width": 1100, "height": 700})
    errors = []
    page.on("pageerror", lambda err: errors.append(str(err)))
    page.goto(server.http + "/")
    page.wait_for_selector("#model option", state="attached")
    page.uncheck("#box")
    page.set_input_files("#files", str(image))
    page.wait_for_selector(".card[data-state=done]", timeout=30_000)

    with Client(server.target, model="tiny") as native:
        expected = native.explain(image, top_k=5)
    shown = rows(page)
    assert [i for i, _ in shown] == [p.index for p in expected.top_k]
    np.testing.assert_allclose([p for _, p in shown], [p.probability for p in expected.top_k], atol=1e-6)

    # The overlay is the API's own overlay of the same image, drawn by the browser.
    status, _, png = call(server, "POST", "/camserve/models/tiny/explain?format=overlay&box=0", image.read_bytes())
    reference = cv2.cvtColor(cv2.imdecode(np.frombuffer(png, np.uint8), cv2.IMREAD_COLOR), cv2.COLOR_BGR2RGB).astype(int)
    drawn, plain = canvas(page, ".card canvas.overlay"), canvas(page, ".card canvas.image")
    assert status == 200 and drawn.shape == reference.shape == (48, 72, 3)
    assert np.abs(drawn - reference).max() <= 2
    assert np.abs(drawn - plain).mean() > 5  # the map is really there

    # Opacity 0 shows the image alone; the box draws on top.
    page.eval_on_selector("#opacity", "o => { o.value = '0'; o.dispatchEvent(new Event('input')); }")
    assert np.abs(canvas(page, ".card canvas.overlay") - plain).max() <= 1
    page.eval_on_selector("#opacity", "o => { o.value = '0.4'; o.dispatchEvent(new Event('input')); }")
    page.check("#box")
    assert np.abs(canvas(page, ".card canvas.overlay") - drawn).max() > 50

    # A click on another row explains that class.
    second = expected.top_k[1]
    page.click(f".card tbody tr[data-index='{second.index}']")
    page.wait_for_selector(f".card[data-state=done] tbody tr.explained[data-index='{second.index}']", timeout=30_000)
    assert second.label in page.inner_text(".card .caption")

    ARTIFACTS.mkdir(parents=True, exist_ok=True)
    page.screenshot(path=str(ARTIFACTS / "page.png"), full_page=True)
    assert not errors, errors
    page.close()


def test_a_bad_file_shows_the_servers_error(server, browser, tmp_path):
    page = browser.new_page()
    page.goto(server.http + "/")
    page.wait_for_selector("#model option", state="attached")
    bad = tmp_path / "notes.png"
    bad.write_bytes(b"this is no image")
    page.set_input_files("#files", str(bad))
    page.wait_for_selector(".card[data-state=error]", timeout=30_000)
    assert "is not a JPEG, PNG" in page.inner_text(".card .error")
    page.close()


def test_several_images_dropped_at_once_are_each_explained(server, browser, image):
    page = browser.new_page()
    page.goto(server.http + "/")
    page.wait_for_selector("#model option", state="attached")
    data = base64.b64encode(image.read_bytes()).decode()
    page.evaluate(
        """data => {
            const bytes = Uint8Array.from(atob(data), c => c.charCodeAt(0));
            const dropped = new DataTransfer();
            for (const name of ["one.png", "two.png", "three.png"]) dropped.items.add(new File([bytes], name, {type: "image/png"}));
            document.getElementById("drop").dispatchEvent(new DragEvent("drop", {dataTransfer: dropped, bubbles: true, cancelable: true}));
        }""",
        data,
    )
    page.wait_for_function("document.querySelectorAll('.card[data-state=done]').length == 3", timeout=30_000)
    assert sorted(page.eval_on_selector_all(".card .name", "ns => ns.map(n => n.textContent)")) == ["one.png", "three.png", "two.png"]
    page.close()


def test_only_the_latest_choice_is_shown_when_answers_arrive_out_of_order(server, browser, image):
    """Two row clicks in a row: the first answer is held back in the browser until
    after the second has arrived; the card must keep showing the second."""
    page = browser.new_page()
    page.add_init_script("""
        const original = window.fetch;
        window.fetch = async (url, options) => {
            const response = await original(url, options);
            if (String(url).includes("class_index=" + window.slowClass)) await new Promise(r => setTimeout(r, 1500));
            return response;
        };
    """)
    page.goto(server.http + "/")
    page.wait_for_selector("#model option", state="attached")
    page.set_input_files("#files", str(image))
    page.wait_for_selector(".card[data-state=done]", timeout=30_000)
    first, second = rows(page)[1][0], rows(page)[2][0]
    page.evaluate(f"window.slowClass = {first}")
    page.click(f".card tbody tr[data-index='{first}']")
    page.click(f".card tbody tr[data-index='{second}']")
    page.wait_for_selector(f".card[data-state=done] tbody tr.explained[data-index='{second}']", timeout=30_000)
    page.wait_for_timeout(2500)  # the held-back answer has arrived by now
    assert page.eval_on_selector(".card tbody tr.explained", "r => Number(r.dataset.index)") == second
    assert page.get_attribute(".card", "data-state") == "done"
    page.close()
