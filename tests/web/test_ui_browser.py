"""The results viewer in real headless Chromium: jobs listed, the strip and thumbnail rendered."""

from __future__ import annotations

import shutil
import tempfile
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pytest
import requests

from flaskmodel.demo.build import DEMO_SERIES_UID
from tests.conftest import Stack
from tests.web.test_jobs_e2e import wait_job

CHROMIUM = shutil.which("chromium") or "/usr/bin/chromium"
CHROMEDRIVER = shutil.which("chromedriver") or "/usr/bin/chromedriver"

pytestmark = pytest.mark.skipif(
    not (Path(CHROMIUM).exists() and Path(CHROMEDRIVER).exists()),
    reason="Debian chromium and chromium-driver are not installed (make test installs them)",
)


@pytest.fixture
def browser() -> Iterator[object]:
    from selenium import webdriver  # noqa: PLC0415
    from selenium.webdriver.chrome.service import Service  # noqa: PLC0415

    profile = tempfile.mkdtemp(prefix="flaskmodel-chromium-")
    options = webdriver.ChromeOptions()
    options.binary_location = CHROMIUM
    for flag in (
        "--headless=new", "--no-sandbox", "--disable-gpu", "--disable-dev-shm-usage",
        "--disable-background-networking", "--disable-component-update", "--disable-sync",
        "--no-first-run", "--disable-quic", "--window-size=1200,900", f"--user-data-dir={profile}",
    ):  # fmt: skip
        options.add_argument(flag)
    driver = webdriver.Chrome(service=Service(CHROMEDRIVER), options=options)
    try:
        yield driver
    finally:
        driver.quit()
        shutil.rmtree(profile, ignore_errors=True)


def test_viewer_shows_jobs_strip_and_thumbnail(
    stack: Stack, browser: object, tmp_path: Path
) -> None:
    from selenium.webdriver.common.by import By  # noqa: PLC0415
    from selenium.webdriver.support.ui import WebDriverWait  # noqa: PLC0415

    driver = browser
    response = requests.post(
        stack.url("/v1/jobs"),
        json={"model": "ct_classifier", "series_uid": DEMO_SERIES_UID},
        timeout=10,
    )
    job_id = response.json()["job_id"]
    assert wait_job(stack, job_id, timeout=120)["state"] == "SUCCEEDED"

    driver.get(stack.url("/ui/"))  # type: ignore[attr-defined]
    wait = WebDriverWait(driver, 20)
    row = wait.until(lambda d: d.find_element(By.CSS_SELECTOR, f"tr[data-job-id='{job_id}']"))
    assert "SUCCEEDED" in row.text
    row.click()
    loaded = "const t = document.getElementById('thumb'); return t.complete && t.naturalWidth > 0;"
    wait.until(lambda d: d.execute_script(loaded))
    assert "direction feet-first" in driver.find_element(By.ID, "detail-meta").text  # type: ignore[attr-defined]
    legend = driver.find_element(By.ID, "legend").text  # type: ignore[attr-defined]
    assert "head" in legend and "legs" in legend
    # The strip really is painted: distinct colours across the canvas.
    colours = driver.execute_script(  # type: ignore[attr-defined]
        "const c = document.getElementById('strip'); const d = c.getContext('2d')"
        ".getImageData(0, 20, c.width, 1).data; const seen = new Set();"
        "for (let i = 0; i < d.length; i += 4) seen.add(d[i] + ',' + d[i+1] + ',' + d[i+2]);"
        "return seen.size;"
    )
    assert colours >= 6
    shot = tmp_path / "viewer.png"
    driver.save_screenshot(str(shot))  # type: ignore[attr-defined]
    image = driver.find_element(By.ID, "thumb")  # type: ignore[attr-defined]
    # A long job list pushes the detail below the fold; element shots need it in view.
    driver.execute_script("arguments[0].scrollIntoView(true);", image)  # type: ignore[attr-defined]
    thumb = image.screenshot_as_png
    assert shot.stat().st_size > 10_000 and len(thumb) > 1_000
    # The thumbnail is a real windowed slice: not a flat image.
    png = requests.get(stack.url(f"/v1/jobs/{job_id}/slices/20/thumbnail.png"), timeout=5)
    assert png.headers["Content-Type"] == "image/png"
    from tests.dicom.test_thumbnail import decode_png  # noqa: PLC0415

    pixels = decode_png(png.content)
    assert pixels.std() > 10 and np.unique(pixels).size > 3


def test_swagger_ui_renders_the_31_document(stack: Stack, browser: object, tmp_path: Path) -> None:
    """Swagger UI 5, served by the app, lists every operation of the OpenAPI 3.1 document and
    strikes the deprecated one through."""
    from selenium.webdriver.common.by import By  # noqa: PLC0415
    from selenium.webdriver.support.ui import WebDriverWait  # noqa: PLC0415

    driver = browser
    operations = sum(
        len(item)
        for item in requests.get(stack.url("/openapi.json"), timeout=10).json()["paths"].values()
    )
    driver.get(stack.url("/docs"))  # type: ignore[attr-defined]
    WebDriverWait(driver, 30).until(
        lambda d: len(d.find_elements(By.CSS_SELECTOR, ".opblock")) == operations
    )
    deprecated = driver.find_elements(By.CSS_SELECTOR, ".opblock-deprecated")  # type: ignore[attr-defined]
    assert len(deprecated) == 1 and "/inference/" in deprecated[0].text
    driver.save_screenshot(str(tmp_path / "docs.png"))  # type: ignore[attr-defined]
