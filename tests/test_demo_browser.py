"""The demo page in a real browser: Debian's Chromium, headless, driven by Selenium through the
system's chromedriver (browsers cannot be downloaded here, so Selenium is pointed at both).

The test starts `python -m cnnfast.demo` itself on a free port, draws a thick-pen "7" on the pad
stroke by stroke with pointer moves, waits for the page's answer and reads it; then it runs the
worked example's backward pass and one step. The page's screenshot is written to
$CNNFAST_ARTIFACTS/demo.png (.ci/run sets build/test-artifacts) or, without it, to the test's
tmp_path. Without Chromium the test skips, naming what is missing, or fails under CI=true or
CNNFAST_REQUIRE_BROWSER=1 (.ci/run installs it).
"""

import os
import shutil
import signal
import subprocess
import sys
from pathlib import Path

import pytest

from _trained_model import trained_model_path

CHROMIUM = ("chromium", "chromium-browser", "google-chrome")
CHROMEDRIVER = "chromedriver"
TIMEOUT = 60  # seconds for the page to answer (a busy 2-core machine)

# A "7" drawn with a thick pen on the 280x280 pad: two strokes (pad pixels from its top left),
# the top bar left to right, then the long diagonal down to the left.
SEVEN = [
    [(70, 60), (110, 58), (150, 57), (190, 58), (215, 60)],
    [(215, 60), (200, 95), (185, 130), (170, 165), (155, 200), (140, 235)],
]


def ctrl_c_delivered():
    """In the server: SIGINT to its default (a CI script's background job inherits it ignored)."""
    signal.signal(signal.SIGINT, signal.SIG_DFL)


def need_browser():
    """(chromium, chromedriver) paths, or skip (fail under CI=true / CNNFAST_REQUIRE_BROWSER=1)."""
    browser = next((shutil.which(name) for name in CHROMIUM if shutil.which(name)), None)
    driver = shutil.which(CHROMEDRIVER)
    missing = [name for name, path in (("chromium", browser), ("chromium-driver", driver)) if path is None]
    for module, package in (("selenium", "selenium"), ("starlette", "cnnfast[demo]"), ("uvicorn", "cnnfast[demo]")):
        try:
            __import__(module)
        except ImportError:
            missing.append(f"{module} (pip install '{package}')")
    if missing:
        message = "the browser test needs " + ", ".join(missing)
        if browser is None or driver is None:
            message += " (apt-get install chromium chromium-driver)"
        if os.environ.get("CNNFAST_REQUIRE_BROWSER") == "1" or os.environ.get("CI") == "true":
            pytest.fail(message + " (CNNFAST_REQUIRE_BROWSER=1 or CI=true)")
        pytest.skip(message)
    return browser, driver


@pytest.fixture
def server(tmp_path_factory):
    """The URL of python -m cnnfast.demo serving the shared trained model on a free port."""
    need_browser()
    model = trained_model_path(tmp_path_factory)
    process = subprocess.Popen(
        [sys.executable, "-m", "cnnfast.demo", "--model", str(model), "--port", "0"],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        preexec_fn=ctrl_c_delivered,
    )
    line = process.stdout.readline()
    try:
        assert line.startswith("cnnfast demo: open http://127.0.0.1:"), line + process.stderr.read()
        yield line.split()[3]
    finally:
        process.send_signal(signal.SIGINT)
        _, err = process.communicate(timeout=30)
    assert process.returncode == 130 and "Traceback" not in err, err


@pytest.fixture
def browser():
    chromium, chromedriver = need_browser()
    from selenium import webdriver
    from selenium.webdriver.chrome.service import Service

    options = webdriver.ChromeOptions()
    options.binary_location = chromium
    for argument in ("--headless=new", "--no-sandbox", "--disable-dev-shm-usage", "--window-size=1100,1500"):
        options.add_argument(argument)
    driver = webdriver.Chrome(service=Service(executable_path=chromedriver), options=options)
    try:
        yield driver
    finally:
        driver.quit()


def artifact_dir(tmp_path) -> Path:
    directory = Path(os.environ.get("CNNFAST_ARTIFACTS") or tmp_path)
    directory.mkdir(parents=True, exist_ok=True)
    return directory


def draw(driver, pad, strokes):
    """Draw on `pad` with the mouse, stroke by stroke (pad pixels from its top left corner)."""
    from selenium.webdriver.common.action_chains import ActionChains

    width, height = pad.size["width"], pad.size["height"]
    for stroke in strokes:
        # (move_to_element_with_offset counts from the element's centre)
        points = [(round(x * width / 280 - width / 2), round(y * height / 280 - height / 2)) for x, y in stroke]
        actions = ActionChains(driver, duration=20)
        actions.move_to_element_with_offset(pad, *points[0]).click_and_hold()
        for point in points[1:]:
            actions.move_to_element_with_offset(pad, *point)
        actions.release().perform()


def test_drawing_a_seven_on_the_page_reads_7(server, browser, tmp_path):
    from selenium.webdriver.common.by import By
    from selenium.webdriver.support.ui import WebDriverWait

    browser.get(server)
    pad = browser.find_element(By.ID, "pad")
    digit = browser.find_element(By.ID, "digit")
    assert digit.text == "?"
    draw(browser, pad, SEVEN)

    def answered(driver):  # the answer shown is for the pad as it is now (the last stroke included)
        shown = digit.get_attribute("data-version")
        return shown == pad.get_attribute("data-version") and digit.text != "?" and digit.text

    assert WebDriverWait(browser, TIMEOUT).until(answered) == "7", browser.find_element(By.ID, "status").text
    maps = browser.find_elements(By.CSS_SELECTOR, "#maps .tiles canvas")
    assert len(maps) == 32 + 64  # each convolution layer's feature maps
    WebDriverWait(browser, TIMEOUT).until(lambda d: len(d.find_elements(By.CSS_SELECTOR, "#examples button")) >= 10)

    # the worked example: backward shows every edge's gradient, step applies the update
    browser.find_element(By.ID, "backward").click()
    graph = browser.find_element(By.ID, "graph")
    WebDriverWait(browser, TIMEOUT).until(lambda d: "dL/dw2 = 4 × 84 = 336" in graph.text)
    assert "dL/dw1 (via a) = 2 × 84 = 168" in graph.text and "to a: 1 × 84 = 84" in graph.text
    table = browser.find_element(By.ID, "bp-table").text
    assert "dL/dw1 252 252" in table and "new w1 -23.2 -23.2" in table  # exact, then the float32 kernels
    browser.find_element(By.ID, "step").click()
    w1 = browser.find_element(By.CSS_SELECTOR, "#values input[name=w1]")
    WebDriverWait(browser, TIMEOUT).until(lambda d: w1.get_attribute("value") == "-23.2")
    WebDriverWait(browser, TIMEOUT).until(lambda d: "L = 220.5" in d.find_element(By.ID, "history").text)

    # a value that is not a number: the server's 400 shows on the page, the field is marked
    w3 = browser.find_element(By.CSS_SELECTOR, "#values input[name=w3]")
    w3.clear()
    w3.send_keys("nan")
    status = browser.find_element(By.ID, "bp-status")
    WebDriverWait(browser, TIMEOUT).until(lambda d: "bad" in w3.get_attribute("class"))
    assert "w3: not a number" in status.text and "error" in status.get_attribute("class")

    browser.execute_script("window.scrollTo(0, 0)")
    shot = artifact_dir(tmp_path) / "demo.png"
    assert browser.save_screenshot(str(shot)) and shot.stat().st_size > 10_000
    print(f"screenshot: {shot}")
