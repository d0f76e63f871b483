"""The web page at ``GET /``: its files, then the page itself in a real headless Chromium
against a real server, checked against what the API answers for the same uploads."""

from __future__ import annotations

import os
import shutil
import time
from pathlib import Path

import numpy as np
import pytest
import requests
from PIL import Image

from app.services import services_of
from tests.digits import write_two_versions
from tests.server import running

CHROMIUM = Path("/usr/bin/chromium")
CHROMEDRIVER = Path("/usr/bin/chromedriver")
DOCS = Path(__file__).resolve().parent.parent / "docs"
WAIT_S = 20


# ---- plain HTTP: the page and its assets ----------------------------------------------------

def test_page_and_assets_are_served(client):
    page = client.get("/")
    assert page.status_code == 200
    assert page.mimetype == "text/html"
    assert page.headers["Cache-Control"] == "no-cache"
    assert "script-src 'self'" in page.headers["Content-Security-Policy"]
    html = page.get_data(as_text=True)
    for asset, mimetype in (("/ui/page.js", "text/javascript"), ("/ui/page.css", "text/css")):
        assert f'"{asset}"' in html
        answer = client.get(asset)
        assert answer.status_code == 200, asset
        assert answer.mimetype == mimetype
        assert answer.headers["Cache-Control"] == "public, max-age=300"
        assert len(answer.get_data()) > 1000
    assert client.get("/ui/index.html").status_code == 404  # only the named assets
    assert client.get("/ui/..%2fpage.py").status_code == 404


def test_page_over_the_real_server(app):
    with running(app) as url:
        page = requests.get(f"{url}/", timeout=10)
        assert page.status_code == 200 and page.headers["Content-Type"].startswith("text/html")
        revalidated = requests.get(f"{url}/", headers={"If-None-Match": page.headers["ETag"]}, timeout=10)
        assert revalidated.status_code == 304
        assert requests.get(f"{url}/ui/page.js", timeout=10).status_code == 200


# ---- the browser ----------------------------------------------------------------------------

def _browser():
    if not (CHROMIUM.exists() and CHROMEDRIVER.exists()):
        pytest.skip("chromium/chromedriver not installed: apt-get install chromium chromium-driver")
    try:
        from selenium import webdriver
        from selenium.webdriver.chrome.service import Service
    except ImportError:
        pytest.skip("selenium not installed: .venv/bin/pip install selenium")
    options = webdriver.ChromeOptions()
    options.binary_location = str(CHROMIUM)
    for arg in ("--headless=new", "--no-sandbox", "--disable-dev-shm-usage", "--disable-gpu",
                "--window-size=1280,900", "--hide-scrollbars", "--force-device-scale-factor=1"):
        options.add_argument(arg)
    # an explicit driver path: Selenium Manager is never asked to download anything
    return webdriver.Chrome(service=Service(executable_path=str(CHROMEDRIVER)), options=options)


@pytest.fixture(scope="module")
def page_app(tmp_path_factory, graphs_dir, digit_weights):
    """digits8, digits16 and 'dv' (versions 1 and 2, labels stable and canary)."""
    from app import create_app

    root = tmp_path_factory.mktemp("page") / "graphs"
    shutil.copytree(graphs_dir, root)
    write_two_versions(root, "dv", digit_weights)
    application = create_app({"GRAPHS_DIR": str(root)})
    yield application
    services_of(application).registry.close()


@pytest.fixture(scope="module")
def browser():
    driver = _browser()
    yield driver
    driver.quit()


def _wait(driver, condition, what: str):
    from selenium.common.exceptions import TimeoutException
    from selenium.webdriver.support.ui import WebDriverWait

    try:
        return WebDriverWait(driver, WAIT_S, poll_frequency=0.1).until(condition)
    except TimeoutException:
        logs = driver.get_log("browser") if hasattr(driver, "get_log") else []
        pytest.fail(f"timed out waiting for {what}; browser console: {logs}")


def _cards(driver):
    """{model: (version text, [labels shown])} of the first result on the page."""
    from selenium.webdriver.common.by import By

    shown = {}
    for card in driver.find_elements(By.CSS_SELECTOR, "#results .result:first-child .card"):
        labels = [label.text for label in card.find_elements(By.CSS_SELECTOR, ".scores li .label")]
        shown[card.get_attribute("data-model")] = (card.find_element(By.CSS_SELECTOR, "h3 .muted").text.strip(), labels)
    return shown


def _png(path: Path, pixels: np.ndarray) -> Path:
    Image.fromarray(pixels).resize((64, 64), Image.NEAREST).save(path)  # big enough to see
    return path


def _screenshot(driver, width: int, height: int, path: Path) -> bytes:
    """The page at exactly ``width`` x ``height`` CSS pixels (a phone width also as a mobile
    viewport, so the page's own meta viewport and media queries apply as on a phone)."""
    driver.execute_cdp_cmd("Emulation.setDeviceMetricsOverride",
                           {"width": width, "height": height, "deviceScaleFactor": 1, "mobile": width < 600})
    driver.execute_script("document.activeElement && document.activeElement.blur(); window.scrollTo(0, 0)")
    time.sleep(0.3)  # let the layout settle at the new width
    assert driver.execute_script("return window.innerWidth") == width
    driver.save_screenshot(str(path))
    data = path.read_bytes()
    assert data[:8] == b"\x89PNG\r\n\x1a\n" and len(data) > 5000
    with Image.open(path) as image:
        assert image.size == (width, height)
    return data


def test_page_in_a_browser(page_app, browser, digits, tmp_path):
    from selenium.webdriver.common.by import By
    from selenium.webdriver.support.ui import Select

    started = time.perf_counter()
    with running(page_app) as url:
        driver = browser
        driver.get(f"{url}/")
        served = [m["name"] for m in requests.get(f"{url}/models", timeout=10).json()["models"]]
        _wait(driver, lambda d: len(d.find_elements(By.CSS_SELECTOR, "#models li")) == len(served), "the model list")
        assert [li.get_attribute("data-model") for li in driver.find_elements(By.CSS_SELECTOR, "#models li")] == served

        # keep digits8 and dv; dv answers with its canary label (version 2)
        driver.find_element(By.CSS_SELECTOR, '#models li[data-model="digits16"] input[type=checkbox]').click()
        Select(driver.find_element(By.CSS_SELECTOR, 'select[data-model="dv"]')).select_by_value("version_label=canary")
        top_k = driver.find_element(By.ID, "top-k")
        top_k.clear()
        top_k.send_keys("3")

        # a real image through the file input; the API's own answer for the same bytes is the truth
        photo = _png(tmp_path / "digit.png", digits.test_images[0])
        expected = {}
        for model, query in (("digits8", ""), ("dv", "&version_label=canary")):
            with photo.open("rb") as f:
                answer = requests.post(f"{url}/image_classification?model={model}&top_k=3{query}",
                                       files={"image": ("digit.png", f, "image/png")}, timeout=30).json()
            body = answer["models"][model]
            expected[model] = (f"v{body['version']}", [e["label"] for e in body["results"][0]["top_k"]])
        assert expected["dv"][0] == "v2"

        driver.find_element(By.ID, "file").send_keys(str(photo))
        _wait(driver, lambda d: len(_cards(d)) == 2 and all(labels for _, labels in _cards(d).values()),
              "the result cards")
        assert _cards(driver) == expected
        timing = driver.find_element(By.CSS_SELECTOR, '.card[data-model="digits8"] .timing-text').text
        assert all(stage in timing for stage in ("checks", "queue", "run", "post", "total"))
        assert driver.find_element(By.CSS_SELECTOR, ".thumb figcaption").text == "digit.png"
        assert not driver.find_element(By.ID, "error").is_displayed()

        # the live panel counts the request: the page refreshes /stats after each classify
        counts = requests.get(f"{url}/stats", timeout=10).json()["models"]["digits8"]["requests"]
        total = sum(counts.values())
        assert total == 2 and counts == {"200": 2}  # ours above and the page's

        def digits8_count(d):
            cells = d.find_elements(By.CSS_SELECTOR, '#stats-body tr[data-model="digits8"] .requests')
            return bool(cells) and cells[0].text == str(total)

        _wait(driver, digits8_count, f"digits8's request count ({total}) in the live panel")
        _wait(driver, lambda d: "digits8" in d.find_element(By.ID, "loaded").text, "the models in memory")
        assert driver.find_elements(By.CSS_SELECTOR, "#chart svg path")

        # a text file named x.jpg: the server's own message, shown as text
        bad = tmp_path / "x.jpg"
        bad.write_text("this is not an image\n")
        with bad.open("rb") as f:
            refusal = requests.post(f"{url}/image_classification?model=digits8",
                                    files={"image": ("x.jpg", f, "image/jpeg")}, timeout=30)
        assert refusal.status_code == 400
        message = refusal.json()["error"]["message"]
        assert message == "upload 'x.jpg' is not a recognised image"
        driver.find_element(By.ID, "file").send_keys(str(bad))
        error = driver.find_element(By.ID, "error")
        _wait(driver, lambda d: error.is_displayed() and message in error.text, "the server's error message")
        assert "invalid_image" in error.text

        # no script error and no Content-Security-Policy violation (the 400 above is a network entry)
        assert [e for e in driver.get_log("browser") if e["source"] != "network"] == []

        # screenshots after a good upload again, so they show results
        driver.find_element(By.ID, "file").send_keys(str(photo))
        _wait(driver, lambda d: not d.find_element(By.ID, "error").is_displayed() and len(_cards(d)) == 2,
              "results again")
        _wait(driver, lambda d: d.find_elements(By.CSS_SELECTOR, "#stats-body tr"), "the live panel")
        desktop = _screenshot(driver, 1280, 900, tmp_path / "page-desktop.png")
        phone = _screenshot(driver, 390, 844, tmp_path / "page-phone.png")
        width = driver.execute_script("return document.documentElement.scrollWidth")
        inner = driver.execute_script("return window.innerWidth")
        assert width <= inner, f"the page scrolls sideways on a phone: {width} > {inner}"
        driver.execute_cdp_cmd("Emulation.clearDeviceMetricsOverride", {})
        if os.environ.get("GRAPHSERVE_UPDATE_SCREENSHOTS") == "1":
            (DOCS / "page-desktop.png").write_bytes(desktop)
            (DOCS / "page-phone.png").write_bytes(phone)
    print(f"browser test: {time.perf_counter() - started:.1f} s")


def test_page_keyboard(page_app, browser):
    """The drop zone is the file input's label, reached by Tab, with a visible focus ring."""
    from selenium.webdriver.common.action_chains import ActionChains
    from selenium.webdriver.common.by import By
    from selenium.webdriver.common.keys import Keys

    with running(page_app) as url:
        browser.get(f"{url}/")
        _wait(browser, lambda d: d.find_elements(By.CSS_SELECTOR, "#models li"), "the model list")
        body = browser.find_element(By.TAG_NAME, "body")
        body.click()
        for _ in range(30):
            ActionChains(browser).send_keys(Keys.TAB).perform()  # not send_keys on a file input: a path
            if browser.switch_to.active_element.get_attribute("id") == "file":
                break
        else:
            pytest.fail("Tab never reaches the file input")
        drop = browser.find_element(By.ID, "drop")
        assert drop.get_attribute("for") == "file"
        assert drop.value_of_css_property("outline-style") == "solid"
        for control in browser.find_elements(By.CSS_SELECTOR, "#models input, #models select, #top-k"):
            labelled = control.get_attribute("aria-label") or browser.find_elements(
                By.CSS_SELECTOR, f'label[for="{control.get_attribute("id")}"]')
            assert labelled, control.get_attribute("id")
