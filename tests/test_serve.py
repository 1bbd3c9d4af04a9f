"""`embdistill serve`: the search page in a real browser (headless Chromium), and bad uploads over HTTP.

The server runs as `embdistill serve` does, in its own process on a free 127.0.0.1 port,
over two small galleries of real cub100 test photos embedded by two quickly made models.
Browser tests skip when Debian's chromium / chromium-driver are absent (.ci/run installs them).
"""
from __future__ import annotations

import io
import json
import os
import re
import socket
import subprocess
import sys
import time
import urllib.error
import urllib.request
import uuid
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest

from embdistill.data.imagefiles import display_name
from embdistill.config import ModelConfig
from embdistill.search import index_embeddings, load_gallery, search_image, write_embeddings
from embdistill.search.embed import EmbedResult, embed_files
from embdistill.search.encoder import load_encoder
from conftest import TIMEOUT_SCALE
from test_deploy import CUB100, cub_test_images, write_checkpoint

pytest.importorskip("fastapi", reason="the serve extra (fastapi, uvicorn, python-multipart) is not installed")
pytest.importorskip("uvicorn", reason="the serve extra (fastapi, uvicorn, python-multipart) is not installed")
pytestmark = pytest.mark.skipif(not CUB100.is_dir(), reason=f"real data {CUB100} is absent")

CHROMIUM, CHROMEDRIVER = Path("/usr/bin/chromium"), Path("/usr/bin/chromedriver")
GALLERY_IMAGES = 40
K = 8
# Small, so the over-limit uploads stay small; the README's screenshot (-k side_by_side) shows the default.
MAX_UPLOAD_MB = 10.0 if os.environ.get("EMBDISTILL_SCREENSHOT") else 0.2
# Two different small models stand in for student and teacher: the page only needs two galleries.
STUDENT = ModelConfig(backbone="mobilenet_v1", pretrained=False, backbone_args={"width": 0.25}, dim=64)
TEACHER = ModelConfig(backbone="mobilenet_v1", pretrained=False, backbone_args={"width": 0.5}, dim=32)


# --------------------------------------------------------------------------- galleries and server


@dataclass
class Galleries:
    student: Path  # .faiss
    teacher: Path
    folder: Path  # the gallery images (links to cub100), one sub-folder per species
    query: Path  # a cub100 test photo not in the gallery, of a species that is


def embed_gallery(model: Path, files: list[Path], out: Path) -> Path:
    encoder = load_encoder(model)
    write_embeddings(out.with_suffix(".npy"), EmbedResult(embed_files(encoder, files, progress=False), files, encoder))
    return index_embeddings(out.with_suffix(".npy"), out).path


@pytest.fixture(scope="module")
def galleries(tmp_path_factory: pytest.TempPathFactory) -> Galleries:
    """Two 40-image galleries made here; or, for the README's screenshot, real ones named by
    EMBDISTILL_SERVE_GALLERY, EMBDISTILL_SERVE_COMPARE (.faiss) and EMBDISTILL_SERVE_QUERY (a photo)."""
    if os.environ.get("EMBDISTILL_SERVE_GALLERY"):
        student, teacher = Path(os.environ["EMBDISTILL_SERVE_GALLERY"]), Path(os.environ["EMBDISTILL_SERVE_COMPARE"])
        folder = Path(load_gallery(student).files[0]).parent.parent
        return Galleries(student, teacher, folder, Path(os.environ["EMBDISTILL_SERVE_QUERY"]))
    root = tmp_path_factory.mktemp("serve")
    items = cub_test_images(GALLERY_IMAGES + 1)
    folder = root / "gallery"
    files = []
    for src in items.paths[:-1]:  # linked, never copied; the class is the parent folder's name
        (folder / src.parent.name).mkdir(parents=True, exist_ok=True)
        files.append(folder / src.parent.name / src.name)
        files[-1].symlink_to(src)
    # the query: another photo of the first gallery species
    species = {p.parent.name for p in files}
    query = next(p for p in (CUB100 / "images" / files[0].parent.name).iterdir() if p.name not in {f.name for f in files})
    assert query.parent.name in species
    student = write_checkpoint(root / "student" / "last.pt", STUDENT, 64, calibrate=items)
    teacher = write_checkpoint(root / "teacher" / "last.pt", TEACHER, 64, calibrate=items)
    return Galleries(embed_gallery(student, files, root / "student.faiss"),
                     embed_gallery(teacher, files, root / "teacher.faiss"), folder, query)


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def wait_until_serving(url: str, process: subprocess.Popen, log: Path, seconds: float = 120) -> None:
    """Until ``url``/healthz answers 200; fails with the server's log if it exits or takes longer than ``seconds``
    (times EMBDISTILL_TEST_TIMEOUT_SCALE)."""
    deadline = time.monotonic() + seconds * TIMEOUT_SCALE
    while True:
        try:
            with urllib.request.urlopen(f"{url}/healthz", timeout=2) as response:
                if response.status == 200:
                    return
        except OSError:
            pass
        if process.poll() is not None or time.monotonic() > deadline:
            process.kill()
            pytest.fail(f"the server did not start: {log.read_text()}")
        time.sleep(0.3)


@dataclass
class Server:
    url: str
    workdir: Path  # the server's working directory: must stay empty
    tmpdir: Path  # its TMPDIR: only its own private folder may appear there
    process: subprocess.Popen


@pytest.fixture(scope="module")
def server(galleries: Galleries, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Server]:
    """`embdistill serve STUDENT --compare TEACHER` on a free port, as a person would start it."""
    base = tmp_path_factory.mktemp("server")
    workdir, tmpdir = base / "cwd", base / "tmp"
    workdir.mkdir()
    tmpdir.mkdir()
    port = free_port()
    env = {**os.environ, "TMPDIR": str(tmpdir), "PYTHONUNBUFFERED": "1"}
    log = (base / "server.log").open("w")
    process = subprocess.Popen(
        [sys.executable, "-m", "embdistill", "serve", str(galleries.student), "--compare", str(galleries.teacher),
         "--port", str(port), "--max-upload-mb", str(MAX_UPLOAD_MB), "-k", str(K), "--threads", "1"],
        cwd=workdir, env=env, stdout=log, stderr=subprocess.STDOUT,
    )
    url = f"http://127.0.0.1:{port}"
    wait_until_serving(url, process, base / "server.log")
    yield Server(url, workdir, tmpdir, process)
    process.terminate()
    process.wait(timeout=30)
    log.close()
    assert list(tmpdir.iterdir()) == []  # its private temporary folder is gone too


def post_image(url: str, data: bytes, filename: str = "bird.jpg", k: int | None = None,
               field: str = "image") -> tuple[int, dict]:
    """POST a multipart form as the page does; returns (status, JSON body)."""
    boundary = uuid.uuid4().hex
    parts = [f'--{boundary}\r\nContent-Disposition: form-data; name="{field}"; filename="{filename}"\r\n'
             f"Content-Type: application/octet-stream\r\n\r\n".encode() + data + b"\r\n"]
    if k is not None:
        parts.append(f'--{boundary}\r\nContent-Disposition: form-data; name="k"\r\n\r\n{k}\r\n'.encode())
    body = b"".join(parts) + f"--{boundary}--\r\n".encode()
    request = urllib.request.Request(f"{url}/api/search", body, {"Content-Type": f"multipart/form-data; boundary={boundary}"})
    try:
        with urllib.request.urlopen(request, timeout=60 * TIMEOUT_SCALE) as response:
            return response.status, json.loads(response.read())
    except urllib.error.HTTPError as err:
        return err.code, json.loads(err.read())


def search_as_the_server(index: Path, query: Path, k: int):
    """What `embdistill search` finds, embedding the query with the server's 1 thread (``--threads 1``),
    so that both run the same kernels and compute the same floats."""
    import torch

    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        return search_image(index, query, k=k)
    finally:
        torch.set_num_threads(threads)


def assert_still_up(server: Server) -> None:
    with urllib.request.urlopen(f"{server.url}/healthz", timeout=10) as response:
        assert response.status == 200
    assert server.process.poll() is None


# --------------------------------------------------------------------------- HTTP


def test_search_api_matches_the_search_command(server: Server, galleries: Galleries) -> None:
    status, body = post_image(server.url, galleries.query.read_bytes(), galleries.query.name, k=5)
    assert status == 200, body
    assert body["query"]["guessed_class"] == galleries.query.parent.name  # from CUB's file name
    for side, index in zip(body["results"], (galleries.student, galleries.teacher)):
        expected = search_as_the_server(index, galleries.query, k=5)
        assert [h["path"] for h in side["hits"]] == [h.path for h in expected.hits]
        assert [h["score"] for h in side["hits"]] == pytest.approx([h.score for h in expected.hits], abs=1e-5)
        assert all(h["class"] == Path(h["path"]).parent.name for h in side["hits"])
    assert body["results"][0]["name"] == "student" and body["results"][1]["name"] == "teacher"


def test_thumbnails_are_served_for_gallery_images_only(server: Server) -> None:
    with urllib.request.urlopen(f"{server.url}/thumb/0/3?size=96", timeout=10) as response:
        assert response.headers["Content-Type"] == "image/jpeg"
        from PIL import Image

        assert Image.open(io.BytesIO(response.read())).size == (96, 96)
    for bad in ("/thumb/0/999", "/thumb/2/0", "/thumb/0/-1"):
        with pytest.raises(urllib.error.HTTPError) as err:
            urllib.request.urlopen(f"{server.url}{bad}", timeout=10)
        assert err.value.code == 404


def truncated_jpeg() -> bytes:
    data = (CUB100 / "images").glob("*/*.jpg").__next__().read_bytes()
    return data[: len(data) // 2]


@pytest.mark.parametrize(
    ("name", "data", "status", "message"),
    [
        ("notes.jpg", b"these are notes, not pixels\n" * 20, 415, "not an image"),
        ("half.jpg", None, 400, "cannot be decoded"),
        ("empty.jpg", b"", 400, "is empty"),
        ("big.jpg", b"\xff" * int(MAX_UPLOAD_MB * 1e6 + 1000), 413, "over the 200.0 KB upload limit"),
        ("huge.jpg", b"\xff" * 3_000_000, 413, "over the 200.0 KB upload limit"),
    ],
)
def test_bad_uploads_get_a_clear_4xx_and_the_server_stays_up(
    server: Server, galleries: Galleries, name: str, data: bytes | None, status: int, message: str
) -> None:
    gallery_before = sorted(galleries.folder.rglob("*"))
    got, body = post_image(server.url, truncated_jpeg() if data is None else data, name)
    assert got == status and message in body["error"], body
    assert_still_up(server)
    assert list(server.workdir.iterdir()) == []  # nothing written where it runs
    assert [p.name for p in server.tmpdir.iterdir()] == [p.name for p in server.tmpdir.glob("embdistill-serve-*")]
    assert sorted(galleries.folder.rglob("*")) == gallery_before


def test_malformed_requests_get_a_4xx(server: Server, galleries: Galleries) -> None:
    jpeg = galleries.query.read_bytes()
    assert post_image(server.url, jpeg, field="photo")[0] == 400  # no 'image' field
    status, body = post_image(server.url, jpeg, k=0)
    assert status == 400 and "k must be between 1 and 50" in body["error"]
    request = urllib.request.Request(f"{server.url}/api/search", jpeg, {"Content-Type": "image/jpeg"})
    with pytest.raises(urllib.error.HTTPError) as err:
        urllib.request.urlopen(request, timeout=10)
    assert err.value.code == 415 and "multipart" in json.loads(err.value.read())["error"]
    assert_still_up(server)


def test_guess_class_from_cub_file_names() -> None:
    from embdistill.serve.app import guess_class

    classes = ["001.Black_footed_Albatross", "059.California_Gull", "060.Glaucous_winged_Gull"]
    assert guess_class("Black_Footed_Albatross_0001_796111.jpg", classes) == "001.Black_footed_Albatross"
    assert guess_class("california_gull_0042.JPG", classes) == "059.California_Gull"
    assert guess_class("IMG_2041.jpg", classes) is None


# --------------------------------------------------------------------------- browser


@pytest.fixture(scope="module")
def browser(monkeypatch_module: pytest.MonkeyPatch) -> Iterator[object]:
    """Headless Debian Chromium through Debian's chromedriver, named explicitly: selenium-manager never runs."""
    if not (CHROMIUM.exists() and CHROMEDRIVER.exists()):
        pytest.skip(f"no browser: install Debian's chromium and chromium-driver ({CHROMIUM}, {CHROMEDRIVER})")
    webdriver = pytest.importorskip("selenium.webdriver", reason="selenium (test extra) is not installed")
    from selenium.webdriver.chrome.service import Service
    from selenium.webdriver.common.selenium_manager import SeleniumManager

    def refuse(*_: object, **__: object) -> None:
        raise AssertionError("selenium-manager must not run (it downloads browsers)")

    monkeypatch_module.setattr(SeleniumManager, "binary_paths", refuse)
    options = webdriver.ChromeOptions()
    options.binary_location = str(CHROMIUM)
    for arg in ("--headless=new", "--no-sandbox", "--disable-gpu", "--disable-dev-shm-usage", "--window-size=1360,1000",
                "--hide-scrollbars", "--force-device-scale-factor=1"):
        options.add_argument(arg)
    driver = webdriver.Chrome(service=Service(executable_path=str(CHROMEDRIVER)), options=options)
    driver.set_page_load_timeout(60)
    yield driver
    driver.quit()


@pytest.fixture(scope="module")
def monkeypatch_module() -> Iterator[pytest.MonkeyPatch]:
    with pytest.MonkeyPatch.context() as patch:
        yield patch


def wait_for(driver, condition, timeout: float = 60):
    from selenium.webdriver.support.ui import WebDriverWait

    return WebDriverWait(driver, timeout).until(condition)


def open_page(driver, server: Server) -> None:
    from selenium.webdriver.common.by import By

    driver.get(server.url)
    wait_for(driver, lambda d: "images" in d.find_element(By.ID, "galleries").text)  # /api/info arrived


def test_page_shows_the_neighbours_of_an_uploaded_photo_side_by_side(browser, server: Server, galleries: Galleries) -> None:
    from selenium.webdriver.common.by import By

    open_page(browser, server)
    assert browser.title == "embdistill · image search"
    browser.find_element(By.ID, "file").send_keys(str(galleries.query))
    sides = wait_for(browser, lambda d: len(d.find_elements(By.CSS_SELECTOR, ".side .hit")) == 2 * K
                     and d.find_elements(By.CSS_SELECTOR, ".side"))
    assert [s.get_attribute("data-name") for s in sides] == ["student", "teacher"]
    wait_for(browser, lambda d: all(img.get_property("naturalWidth") > 0 for img in d.find_elements(By.CSS_SELECTOR, ".hit img")))
    species = galleries.query.parent.name
    for side, index in zip(sides, (galleries.student, galleries.teacher)):
        expected = search_as_the_server(index, galleries.query, k=K)  # what `embdistill search` prints
        shown = side.find_elements(By.CSS_SELECTOR, ".hit")
        assert [int(h.get_attribute("data-rank")) for h in shown] == list(range(1, K + 1))
        assert [h.get_attribute("data-path") for h in shown] == [h.path for h in expected.hits]
        for element, hit in zip(shown, expected.hits):
            # Three decimals each: a score a hair from a rounding boundary may print either way.
            cos, d = (float(re.search(rf"\b{name} (-?\d+\.\d{{3}})\b", element.text).group(1)) for name in ("cos", "d"))
            assert cos == pytest.approx(hit.score, abs=0.0011) and d == pytest.approx(hit.distance, abs=0.0011)
            assert element.find_element(By.CSS_SELECTOR, ".label").get_attribute("textContent") == display_name(hit.class_name)
            assert ("right" if hit.class_name == species else "wrong") in element.get_attribute("class")
    assert "class from the file name" in browser.find_element(By.ID, "query-info").text
    assert not browser.find_element(By.ID, "error").is_displayed()
    if os.environ.get("EMBDISTILL_SCREENSHOT"):  # the README's picture: see README "The search page"
        height = browser.execute_script("return document.documentElement.scrollHeight")
        metrics = {"width": 1360, "height": height, "deviceScaleFactor": 1, "mobile": False}
        browser.execute_cdp_cmd("Emulation.setDeviceMetricsOverride", metrics)  # the whole page, not the window
        browser.save_screenshot(os.environ["EMBDISTILL_SCREENSHOT"])
        browser.execute_cdp_cmd("Emulation.clearDeviceMetricsOverride", {})


def test_page_shows_a_clear_message_for_a_bad_file_and_recovers(
    browser, server: Server, galleries: Galleries, tmp_path: Path
) -> None:
    from selenium.webdriver.common.by import By

    open_page(browser, server)
    for name, data, message in (("notes.txt", b"not a picture\n" * 10, "not an image"),
                                ("half.jpg", truncated_jpeg(), "cannot be decoded"),
                                ("empty.jpg", b"", "is empty")):
        bad = tmp_path / name
        bad.write_bytes(data)
        browser.find_element(By.ID, "file").send_keys(str(bad))
        error = wait_for(browser, lambda d: d.find_element(By.ID, "error").is_displayed() and d.find_element(By.ID, "error"))
        assert name in error.text and message in error.text
        assert browser.find_elements(By.CSS_SELECTOR, ".hit") == []
    browser.find_element(By.ID, "file").send_keys(str(galleries.query))  # the server is still there
    wait_for(browser, lambda d: len(d.find_elements(By.CSS_SELECTOR, ".hit")) == 2 * K)
    assert not browser.find_element(By.ID, "error").is_displayed()
    assert_still_up(server)


def test_the_page_loads_nothing_from_outside(browser, server: Server) -> None:
    """No CDN: every script, stylesheet and image the page uses comes from the server itself."""
    from selenium.webdriver.common.by import By

    open_page(browser, server)
    sources = [e.get_attribute("src") or e.get_attribute("href")
               for e in browser.find_elements(By.CSS_SELECTOR, "script, link, img")]
    assert sources and all(not s or s.startswith(server.url) for s in sources), sources
    html = (Path(__file__).resolve().parents[1] / "src" / "embdistill" / "serve" / "static" / "index.html").read_text()
    assert "http://" not in html and "https://" not in html


def test_serve_refuses_bad_arguments(tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    from test_deploy import cli

    assert cli("serve", tmp_path / "missing.faiss") == 2
    assert "missing.faiss does not exist" in capsys.readouterr().err


# --------------------------------------------------------------------------- one embedding space per gallery


@pytest.fixture(scope="module")
def other_model(galleries: Galleries, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """Another network with the student's embedding size: the wrong model for the student's gallery."""
    other = ModelConfig(backbone="mobilenet_v1", pretrained=False, backbone_args={"width": 0.5}, dim=STUDENT.dim)
    return write_checkpoint(tmp_path_factory.mktemp("other") / "last.pt", other, 64)


def test_serve_refuses_a_model_of_another_space(galleries: Galleries, other_model: Path, capsys: pytest.CaptureFixture) -> None:
    from test_deploy import cli

    for argv in (("--model", other_model), ("--compare", galleries.student, "--compare-model", other_model)):
        assert cli("serve", galleries.student, *argv, "--port", free_port()) == 2
        captured = capsys.readouterr()
        lines = captured.err.splitlines()
        assert len(lines) == 1 and lines[0].startswith(f"embdistill serve: error: model {other_model.resolve()} embeds into space")
        assert f"gallery {galleries.student} was embedded by {galleries.student.parent / 'student' / 'last.pt'}" in lines[0]
        assert "--allow-other-space" in lines[0] and "search page" not in captured.out


def test_serve_takes_another_space_when_asked(galleries: Galleries, other_model: Path, tmp_path: Path) -> None:
    """`embdistill serve GALLERY --model OTHER --allow-other-space` in its own process: it serves OTHER's neighbours."""
    port, log_path = free_port(), tmp_path / "server.log"
    with log_path.open("w") as log:
        process = subprocess.Popen(
            [sys.executable, "-m", "embdistill", "serve", str(galleries.student), "--model", str(other_model),
             "--allow-other-space", "--port", str(port), "-k", "3", "--threads", "1"],
            cwd=tmp_path, stdout=log, stderr=subprocess.STDOUT, env={**os.environ, "PYTHONUNBUFFERED": "1"},
        )
        try:
            url, deadline = f"http://127.0.0.1:{port}", time.monotonic() + 120 * TIMEOUT_SCALE
            while True:
                try:
                    with urllib.request.urlopen(f"{url}/api/info", timeout=2) as response:
                        info = json.loads(response.read())
                    break
                except OSError:
                    pass
                if process.poll() is not None or time.monotonic() > deadline:
                    pytest.fail(f"the server did not start: {log_path.read_text()}")
                time.sleep(0.3)
            assert info["galleries"][0]["model"] == str(other_model.resolve())
            status, body = post_image(url, galleries.query.read_bytes(), galleries.query.name)
            assert status == 200 and len(body["results"][0]["hits"]) == 3, body
        finally:
            process.terminate()
            process.wait(timeout=30)
    assert "error" not in log_path.read_text() and "warning" not in log_path.read_text()
