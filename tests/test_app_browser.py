"""End to end: ``retouch serve`` in a subprocess, driven by Playwright in Debian's headless Chromium.

The browser uploads mini-world scenes, paints edit maps with the mouse, runs PIXELS and pix2pix-zero
on the shipped mini models, downloads the results and checks them; it screenshots every tab to
out/app-screenshots/. A load check sends 8 requests at once through gradio_client while a light
request must still be answered, and bad uploads must be refused with their message on the page.
`make test` installs Chromium (apt-get) when it is missing; without it these tests are skipped.
"""

from __future__ import annotations

import json
import os
import re
import socket
import subprocess
import sys
import time
import urllib.error
import urllib.request
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

CHROMIUM = "/usr/bin/chromium"
# The flags this machine's closed network needs (no background requests that hang or are refused).
CHROMIUM_ARGS = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
                 "--disable-background-networking", "--disable-component-update", "--disable-sync"]
SHOTS = Path(__file__).resolve().parent.parent / "out" / "app-screenshots"
MAX_UPLOAD_MB, MAX_SIDE = 1, 512
JOB_TIMEOUT_MS = 180_000

pytestmark = pytest.mark.skipif(not Path(CHROMIUM).exists(),
                                reason=f"{CHROMIUM} is missing (`make test` installs Debian's chromium)")


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def _get(url: str, timeout: float = 10.0) -> int:
    try:
        with urllib.request.urlopen(url, timeout=timeout) as response:
            return response.status
    except urllib.error.HTTPError as error:
        return error.code


@pytest.fixture(scope="module")
def files(tmp_path_factory):
    """Inputs: two held-out mini-world scenes, a photo, and the bad uploads."""
    from skimage import data

    from retouch.imageio import resize_image, save_image
    from retouch.world import World

    folder = tmp_path_factory.mktemp("inputs")
    world = World(seed=0, size=64)
    paths = {}
    for name, index in (("scene", 98), ("exemplar", 99)):  # "a green striped circle on grass", a cyan hexagon
        paths[name] = save_image(world.scene(index)[1].image, folder / f"{name}.png")
    paths["photo"] = save_image(resize_image(data.astronaut() / 255.0, (128, 128)), folder / "astronaut.png")
    paths["text"] = folder / "notes.png"
    paths["text"].write_text("this is not an image\n")
    rng = np.random.default_rng(0)
    paths["huge"] = folder / "noise.png"  # incompressible: over the 1 MB upload limit
    Image.fromarray(rng.integers(0, 256, (700, 700, 3), dtype=np.uint8)).save(paths["huge"])
    paths["wide"] = save_image(np.zeros((8, MAX_SIDE + 88, 3), np.float32), folder / "wide.png")
    return paths


@pytest.fixture(scope="module")
def server(tmp_path_factory):
    from retouch.backbone import build_tiny
    from retouch.networks.multitask import MultitaskModel

    root = tmp_path_factory.mktemp("app")
    # An untrained multitask model on the tiny backbone: enough to drive the multitask tab's whole path.
    MultitaskModel.from_backbone(build_tiny("tiny-sd")).save(root / "multitask")
    port, output = _free_port(), root / "out"
    log = open(root / "server.log", "w")
    process = subprocess.Popen(
        [sys.executable, "-m", "retouch.cli", "serve", "--port", str(port), "--output-dir", str(output),
         "--max-upload-mb", str(MAX_UPLOAD_MB), "--max-side", str(MAX_SIDE), "--model", str(root / "multitask")],
        stdout=log, stderr=subprocess.STDOUT, env={**os.environ, "HF_HUB_OFFLINE": "1"})
    url = f"http://127.0.0.1:{port}/"
    deadline = time.monotonic() + 120
    while time.monotonic() < deadline and process.poll() is None:
        try:
            if _get(url, timeout=2) == 200:
                break
        except OSError:
            time.sleep(0.5)
    else:
        process.kill()
        pytest.fail(f"retouch serve did not come up: {(root / 'server.log').read_text()[-2000:]}")
    yield {"url": url, "output": output, "log": root / "server.log"}
    process.terminate()
    process.wait(timeout=30)
    log.close()


@pytest.fixture(scope="module")
def browser():
    from playwright.sync_api import sync_playwright

    from playwright.sync_api import Error as PlaywrightError

    with sync_playwright() as playwright:
        try:
            chromium = playwright.chromium.launch(executable_path=CHROMIUM, args=CHROMIUM_ARGS)
        except PlaywrightError:
            # Seen once on a machine loaded far past its cores: Chromium died at start-up (SIGTRAP).
            # A second start decides; a Chromium that cannot start twice fails the tests.
            time.sleep(5)
            chromium = playwright.chromium.launch(executable_path=CHROMIUM, args=CHROMIUM_ARGS)
        yield chromium
        chromium.close()


@pytest.fixture
def page(browser, server):
    """A fresh page on the app that fails its test if anything but the app itself is requested."""
    context = browser.new_context(viewport={"width": 1400, "height": 1000}, accept_downloads=True)
    page = context.new_page()
    elsewhere = []
    page.on("request", lambda request: elsewhere.append(request.url)
            if not request.url.startswith((server["url"], "data:", "blob:")) else None)
    page.goto(server["url"])
    page.get_by_text("retouch — diffusion image editing").wait_for()
    yield page
    context.close()
    assert not elsewhere, f"the page requested outside the app (offline machines hang on these): {elsewhere}"


def _tab(page, name, prefix):
    page.get_by_role("tab", name=name, exact=True).click()
    page.locator(f"#{prefix}-run").wait_for()  # the tab's widgets are mounted, uploads will register


def _upload(page, elem_id, path):
    page.locator(f"#{elem_id} input[type=file]").set_input_files(str(path))


def _upload_to_editor(page, editor_id, path):
    """Upload an editor's background; retried, as an upload racing the editor's first mount is dropped."""
    from playwright.sync_api import TimeoutError as PlaywrightTimeout

    empty = page.locator(f"#{editor_id}").get_by_text("Upload an image")
    for _ in range(4):
        empty.wait_for()  # the editor's drop zone is mounted and still empty
        page.wait_for_timeout(500)  # a file set in the same frame as the mount is dropped
        page.locator(f"#{editor_id} input[type=file]").set_input_files([])  # a repeat must be a change
        _upload(page, editor_id, path)
        try:
            empty.wait_for(state="hidden", timeout=10_000)
            return
        except PlaywrightTimeout:
            continue
    pytest.fail(f"the upload into #{editor_id} never showed in the editor")


def _paint(page, editor_id, strokes, size):
    """Mouse strokes on an editor's canvas; points are fractions of the image (``size`` = (w, h)) shown in it."""
    editor = page.locator(f"#{editor_id}")
    editor.get_by_role("button", name="Brush", exact=True).click()
    box = editor.locator("canvas").last.bounding_box()
    # The editor centres the image in its canvas at the zoom it shows ("466%").
    zoom = float(re.search(r"(\d+)%", editor.inner_text()).group(1)) / 100
    width, height = size[0] * zoom, size[1] * zoom
    left, top = box["x"] + (box["width"] - width) / 2, box["y"] + (box["height"] - height) / 2
    for stroke in strokes:
        points = [(left + x * width, top + y * height) for x, y in stroke]
        page.mouse.move(*points[0])
        page.mouse.down()
        for start, end in zip(points, points[1:]):
            for t in np.linspace(0, 1, 8)[1:]:
                page.mouse.move(start[0] + t * (end[0] - start[0]), start[1] + t * (end[1] - start[1]))
        page.mouse.up()


def _set_number(page, elem_id, value):
    field = page.locator(f"#{elem_id} input[type=number]")
    field.fill(str(value))
    field.press("Enter")


def _run_and_download(page, prefix, folder) -> Image.Image:
    page.locator(f"#{prefix}-run").click()
    page.locator(f"#{prefix}-files a").first.wait_for(timeout=JOB_TIMEOUT_MS)
    with page.expect_download() as download:
        page.locator(f"#{prefix}-files a").first.click()
    path = folder / download.value.suggested_filename
    download.value.save_as(path)
    return Image.open(path)


def _shot(page, name):
    SHOTS.mkdir(parents=True, exist_ok=True)
    page.screenshot(path=str(SHOTS / f"{name}.png"), full_page=True)


def _differs(result: Image.Image, original: Path) -> float:
    before = np.asarray(Image.open(original).convert("RGB"), np.float32)
    return float(np.abs(np.asarray(result.convert("RGB"), np.float32) - before).mean())


def test_pixels_with_a_painted_map_in_the_browser(page, files, tmp_path):
    _tab(page, "PIXELS", "pixels")
    _upload(page, "pixels-source", files["scene"])
    _upload_to_editor(page, "pixels-exemplar1", files["exemplar"])
    _paint(page, "pixels-exemplar1", [[(0.3, 0.3), (0.7, 0.35), (0.65, 0.7), (0.3, 0.65)]], (64, 64))
    page.get_by_text("more settings").click()
    _set_number(page, "pixels-num-steps", 8)
    result = _run_and_download(page, "pixels", tmp_path)
    assert result.size == (64, 64) and _differs(result, files["scene"]) > 1.0
    assert "pixels on mini" in page.locator("#pixels-summary").inner_text()
    _shot(page, "pixels")


def test_pix2pix_zero_in_the_browser(page, files, tmp_path):
    _upload(page, "pix2pix-input", files["scene"])
    page.locator("#pix2pix-caption textarea").fill("a photo of a green striped circle on grass")
    page.locator("#pix2pix-source textarea").fill("green")
    page.locator("#pix2pix-target textarea").fill("purple")
    page.get_by_text("guidance and inversion").click()
    _set_number(page, "pix2pix-num-steps", 8)
    result = _run_and_download(page, "pix2pix", tmp_path)
    assert result.size == (64, 64) and _differs(result, files["scene"]) > 1.0
    _shot(page, "pix2pix")


def test_portrait_tab_puts_the_shipped_mcdm_to_work(page, files, tmp_path):
    _tab(page, "portrait (MCDM)", "portrait")
    _upload(page, "portrait-input", files["exemplar"])  # the cyan hexagon: the hat edit works on it
    page.get_by_text("more settings").last.click()
    _set_number(page, "portrait-num-steps", 20)
    result = _run_and_download(page, "portrait", tmp_path)
    assert result.size == (64, 64) and _differs(result, files["exemplar"]) > 1.0
    _shot(page, "portrait")


def test_effects_and_multitask_tabs_run_with_a_painted_hole(page, files, tmp_path):
    _tab(page, "effects", "effects")
    _upload_to_editor(page, "effects-input", files["photo"])
    _paint(page, "effects-input", [[(0.2, 0.8), (0.5, 0.6), (0.8, 0.8)]], (128, 128))
    _set_number(page, "effects-blur", 0.3)
    result = _run_and_download(page, "effects", tmp_path)
    assert result.size == (128, 128) and _differs(result, files["photo"]) > 1.0
    pixels = np.asarray(result.convert("RGB"))
    assert pixels[77, 64].max() == 0 and pixels[10, 64].max() > 0  # the painted stroke is a hole, the sky is not
    _shot(page, "effects")

    _tab(page, "multitask", "multitask")
    _upload_to_editor(page, "multitask-input", files["scene"])
    _paint(page, "multitask-input", [[(0.4, 0.4), (0.6, 0.6)]], (64, 64))
    _set_number(page, "multitask-grain", 0.05)
    result = _run_and_download(page, "multitask", tmp_path)
    assert result.size == (64, 64)
    _shot(page, "multitask")


def test_bad_uploads_are_refused_with_their_reason_on_the_page(page, files):
    _upload(page, "pix2pix-input", files["text"])
    page.locator("#pix2pix-run").click()
    page.get_by_text("cannot read image 'notes.png' (the input image): not a recognised image format").wait_for(
        timeout=30_000)
    page.screenshot(path=str(SHOTS / "refused-non-image.png"))

    page.reload()
    _upload(page, "pix2pix-input", files["wide"])
    page.locator("#pix2pix-run").click()
    page.get_by_text(f"has a side longer than the limit of {MAX_SIDE} pixels").wait_for(timeout=30_000)

    page.reload()
    assert files["huge"].stat().st_size > MAX_UPLOAD_MB * 1024 * 1024
    _upload(page, "pix2pix-input", files["huge"])
    page.get_by_text(f"exceed the maximum allowed size of {MAX_UPLOAD_MB:.1f} Mb").wait_for(timeout=30_000)
    page.screenshot(path=str(SHOTS / "refused-oversized.png"))


def _pix2pix_arguments(image):
    """The pix2pix tab's inputs but the seed, in widget order: 2 steps of green → purple on the mini model."""
    return [image, "pix2pix-zero", "mini", "a photo of a green striped circle on grass", "sentence banks of two words",
            "green", "purple", "auto", "", None, 2, 5.0, 0.1, 0.3, "regularized", 20, 20, 1.0, 1.0]


def test_eight_concurrent_requests_finish_and_the_server_stays_responsive(server, files):
    from gradio_client import Client, handle_file

    client = Client(server["url"], verbose=False)
    arguments = _pix2pix_arguments(handle_file(str(files["scene"])))
    jobs = [client.submit(*arguments, seed, api_name="/pix2pix") for seed in range(8)]
    answered = []
    while not all(job.done() for job in jobs):
        started = time.monotonic()
        assert _get(server["url"]) == 200
        assert "Output folder" in client.predict(api_name="/status")
        answered.append(time.monotonic() - started)
        time.sleep(0.5)
    outputs = [job.result(timeout=10) for job in jobs]
    assert answered and max(answered) < 5.0, f"light requests waited {max(answered):.1f} s behind the queue"
    results = {Path(files_[0]).name for _, _, files_, _ in outputs}
    assert len(results) == 8  # eight distinct result files, none overwritten
    for name in results:
        assert Image.open(server["output"] / name).size == (64, 64)


def test_only_the_output_folder_is_served(server, files):
    from gradio_client import Client, handle_file

    _, _, (result, _), _ = Client(server["url"], verbose=False).predict(
        *_pix2pix_arguments(handle_file(str(files["scene"]))), 0, api_name="/pix2pix")
    served = server["output"] / Path(result).name
    assert served.is_file() and _get(f"{server['url']}gradio_api/file={served}") == 200
    repository_file = Path(__file__).resolve().parent.parent / "README.md"
    for path in ("/etc/hostname", str(repository_file)):
        assert _get(f"{server['url']}gradio_api/file={path}") in (403, 404)
    # Nor can a client hand the server a path of its own in place of an upload.
    call = f"{server['url']}gradio_api/call/pix2pix"
    forged = {"data": [{"path": "/etc/hostname", "meta": {"_type": "gradio.FileData"}},
                       *_pix2pix_arguments(None)[1:], 0]}
    request = urllib.request.Request(call, data=json.dumps(forged).encode(),
                                     headers={"Content-Type": "application/json"})
    with urllib.request.urlopen(request, timeout=10) as response:
        event = json.load(response)["event_id"]
    with urllib.request.urlopen(f"{call}/{event}", timeout=60) as response:
        assert "not uploaded by a user" in response.read().decode()
