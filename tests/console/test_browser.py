"""The console in real headless Chromium (Debian's chromium, driven through chromium-driver):
a tenant edits an override, dry-runs it, is refused by the eval gate with the failing case,
activates a good one, sees the new prompt in a call's trace, leaves feedback and rolls back;
another tenant sees none of it. Every step leaves a screenshot (docs/console.md)."""

from __future__ import annotations

import json
import os
import shutil
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest

from featurelm.engine.testing.fault_server import FaultServer
from tests.conftest import REPO_ROOT, SENTIMENT
from tests.serving.conftest import LiveServer, start_server, write_project

CHROMIUM = shutil.which("chromium") or shutil.which("chromium-browser")
DRIVER = shutil.which("chromedriver")
pytestmark = [
    pytest.mark.slow,
    pytest.mark.skipif(CHROMIUM is None or DRIVER is None,
                       reason="Chromium and its driver are not installed (apt-get install -y "
                              "chromium chromium-driver), so the console cannot be driven"),
]
webdriver = pytest.importorskip("selenium.webdriver", reason="selenium is in the dev extra")
from selenium.common.exceptions import StaleElementReferenceException  # noqa: E402
from selenium.webdriver.common.by import By  # noqa: E402
from selenium.webdriver.common.keys import Keys  # noqa: E402
from selenium.webdriver.support.ui import WebDriverWait  # noqa: E402

FEATURE = {**SENTIMENT, "overridable": ["prompt.system", "examples"],
           "evals": {"dataset": "cases.jsonl", "threshold": 0.9}}
CASES = [{"id": "happy", "input": {"text": "Love it"},
          "assert": [{"type": "equals", "path": "sentiment", "value": "positive"}]},
         {"id": "angry", "input": {"text": "Hate it"},
          "assert": [{"type": "equals", "path": "sentiment", "value": "negative"}]}]
GOOD = "prompt:\n  system: Classify the sentiment of product reviews, carefully.\n"
BETTER = "prompt:\n  system: Classify the sentiment of product reviews, briefly.\n"
BREAKING = "prompt:\n  system: Always answer positive.\n"


def reply(body: dict[str, Any]) -> str:
    """A model that obeys its system prompt: told to always say positive, it does; otherwise
    it reads the review."""
    messages = body["messages"]
    if "Always answer positive" in messages[0]["content"]:
        return json.dumps({"sentiment": "positive"})
    review = messages[-1]["content"]
    bad = any(word in review for word in ("Hate", "Broke", "awful"))
    return json.dumps({"sentiment": "negative" if bad else "positive"})


@pytest.fixture(scope="module")
def server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[LiveServer]:
    root = tmp_path_factory.mktemp("console")
    (root / "cases.jsonl").write_text("\n".join(json.dumps(c) for c in CASES) + "\n")
    with FaultServer(reply=reply) as model:
        backend = {"kind": "openai", "model": "m", "structured": "json_schema",
                   "options": {"base_urls": [model.url], "streaming": False}}
        config = write_project(root, features=[FEATURE], backends={"model": backend},
                               routes={"default": {"backends": ["model"]}}, auth="required",
                               traces={"sample_rate": 1})
        live = start_server(config, ["acme", "globex", "initech"])
        yield live
        live.stop()


@pytest.fixture
def shots(tmp_path: Path) -> Iterator[Path]:
    """Screenshots go to the test's folder, and to reports/console/ when FEATURELM_ARTIFACTS
    is set (CI uploads that folder)."""
    folder = tmp_path / "screenshots"
    folder.mkdir()
    yield folder
    target = os.environ.get("FEATURELM_ARTIFACTS")
    if target:
        base = REPO_ROOT / "reports" if target.lower() in ("1", "true", "yes") else Path(target)
        shutil.copytree(folder, base / "console", dirs_exist_ok=True)


@pytest.fixture
def browser(tmp_path: Path) -> Iterator[Any]:
    options = webdriver.ChromeOptions()
    options.binary_location = CHROMIUM
    for flag in ("--headless", "--no-sandbox", "--disable-gpu", "--disable-quic",
                 "--no-first-run", "--disable-background-networking",
                 "--disable-component-update", "--disable-sync", "--hide-scrollbars",
                 f"--user-data-dir={tmp_path / 'profile'}", "--window-size=1280,900"):
        options.add_argument(flag)
    driver = webdriver.Chrome(options=options, service=webdriver.ChromeService(DRIVER))
    driver.set_page_load_timeout(60)
    yield driver
    driver.quit()


Snap = Callable[[str], None]


def snapper(driver: Any, folder: Path) -> Snap:
    def snap(name: str) -> None:
        # The full page, not just the window: the step's evidence is often below the fold.
        height = driver.execute_script("return document.documentElement.scrollHeight")
        width = driver.get_window_size()["width"]
        driver.set_window_size(width, min(max(height + 140, 600), 4000))
        driver.save_screenshot(str(folder / f"{name}.png"))
        driver.set_window_size(width, 900)
    return snap


def sign_in(driver: Any, server: LiveServer, key: str) -> None:
    driver.get(server.url + "/console/")
    assert driver.current_url.endswith("/console/sign-in")
    driver.find_element(By.ID, "api_key").send_keys(key)
    driver.find_element(By.CSS_SELECTOR, "form.card button").click()
    WebDriverWait(driver, 20).until(lambda d: "/console/features" in d.current_url)


def wait_text(driver: Any, selector: str, text: str, timeout: float = 60) -> str:
    """The element's text once it holds `text`; read in one go, since htmx may swap the
    element between finding it and reading it (a stale element is looked up again)."""
    def shown(d: Any) -> str | bool:
        found: str = d.find_element(By.CSS_SELECTOR, selector).text
        return found if text in found else False
    return str(WebDriverWait(driver, timeout,
                             ignored_exceptions=[StaleElementReferenceException]).until(shown))


def set_override(driver: Any, text: str) -> None:
    area = driver.find_element(By.ID, "override")
    area.clear()
    area.send_keys(text)


def submit(driver: Any, label: str) -> None:
    [button] = [b for b in driver.find_elements(By.TAG_NAME, "button") if b.text == label]
    button.click()


def test_a_tenant_changes_its_prompt_safely_and_another_sees_none_of_it(
        server: LiveServer, browser: Any, shots: Path) -> None:
    snap = snapper(browser, shots)
    driver = browser
    editor = server.url + "/console/features/sentiment/override"

    sign_in(driver, server, server.keys.tenants["acme"])
    assert "tenant acme" in driver.find_element(By.CSS_SELECTOR, "header .who").text
    snap("01-features")
    driver.find_element(By.LINK_TEXT, "sentiment").click()
    contract = driver.find_element(By.ID, "main").text
    assert "sentiment" in contract and "positive" in contract and "prompt.system" in contract
    snap("02-feature")

    # Validation as you type: a key the feature does not allow is named with its line.
    driver.get(editor)
    set_override(driver, GOOD + "output:\n  type: object\n")
    wait_text(driver, "#check", "output: is not overridable")
    snap("03-validation")
    set_override(driver, GOOD)
    wait_text(driver, "#check", "Valid")

    # Dry run: the rendered prompt and the outputs, for the examples and a typed input.
    driver.find_element(By.ID, "input").send_keys('{"text": "Hate this kettle"}')
    submit(driver, "Dry run")
    result = wait_text(driver, "#result", "Outputs of this override")
    assert "Classify the sentiment of product reviews, carefully." in result
    assert "Your input" in result and '"negative"' in result
    snap("04-dry-run")

    # The eval gate refuses a breaking change and names the failing case.
    set_override(driver, BREAKING)
    submit(driver, "Run the eval gate and activate")
    refused = wait_text(driver, "#result", "Refused")
    assert "50% is below the threshold 90%" in refused and "'angry'" in refused
    assert "No versions yet" in driver.find_element(By.ID, "main").text
    snap("05-gate-refused")

    # A good change passes the gate and becomes version 1.
    set_override(driver, GOOD)
    submit(driver, "Run the eval gate and activate")
    wait_text(driver, "#main", "Version 1 saved and active")
    snap("06-activated")

    # A call now uses the new prompt, and its trace shows it.
    with httpx.Client(base_url=server.url, timeout=30) as http:
        called = http.post("/v1/features/sentiment", json={"input": {"text": "Love it"}},
                           headers=server.keys.bearer("acme"))
    assert called.status_code == 200, called.text
    request_id = called.headers["x-request-id"]
    deadline = time.monotonic() + 20
    while time.monotonic() < deadline:  # traces are written in the background
        driver.get(server.url + "/console/calls?feature=sentiment")
        if request_id in driver.find_element(By.ID, "main").text:
            break
        time.sleep(0.3)
    snap("07-calls")
    driver.find_element(By.LINK_TEXT, request_id).click()
    story = driver.find_element(By.ID, "main").text
    assert "Classify the sentiment of product reviews, carefully." in story
    assert "override version 1" in story
    snap("08-call")

    submit(driver, "Right (score 1)")
    wait_text(driver, "#main", "your feedback was recorded")
    snap("09-feedback")

    # Version 2, then one click back to version 1; the history shows the diff.
    driver.get(editor)
    set_override(driver, BETTER)
    submit(driver, "Run the eval gate and activate")
    wait_text(driver, "#main", "Version 2 saved and active")
    driver.find_element(By.CSS_SELECTOR, ".versions details summary").click()
    assert "+  system: Classify the sentiment of product reviews, briefly." in \
        driver.find_element(By.CSS_SELECTOR, ".versions .diff").text
    submit(driver, "Roll back to version 1")
    wait_text(driver, "#main", "Rolled back: version 1 is active again")
    assert "carefully" in driver.find_element(By.ID, "override").get_attribute("value")
    snap("10-rolled-back")
    with httpx.Client(base_url=server.url, timeout=30) as http:
        active = http.get("/v1/tenants/acme/overrides/sentiment",
                          headers=server.keys.bearer("acme")).json()["versions"]
    assert [v["version"] for v in active if v["active"]] == [1]

    # Another tenant sees none of it: no override, no calls, acme's call does not exist.
    submit(driver, "Sign out")
    sign_in(driver, server, server.keys.tenants["globex"])
    assert "base" in driver.find_element(By.ID, "main").text
    assert "version 1 active" not in driver.find_element(By.ID, "main").text
    driver.get(editor)
    assert "No versions yet" in driver.find_element(By.ID, "main").text
    assert "carefully" not in driver.find_element(By.ID, "override").get_attribute("value")
    driver.get(server.url + "/console/calls")
    assert request_id not in driver.find_element(By.ID, "main").text
    driver.get(server.url + f"/console/calls/{request_id}")
    assert "404" in driver.find_element(By.TAG_NAME, "h1").text
    snap("11-other-tenant")



def test_the_evals_page_shows_a_breaking_override_regress_against_base_case_by_case(
        server: LiveServer, browser: Any, shots: Path) -> None:
    snap = snapper(browser, shots)
    driver = browser
    page = server.url + "/console/features/sentiment/evals"
    # Saved over HTTP without the gate (run_evals is the caller's choice there), so initech
    # serves an override that always answers positive.
    with httpx.Client(base_url=server.url, timeout=30) as http:
        saved = http.put("/v1/tenants/initech/overrides/sentiment", content=BREAKING,
                         headers={**server.keys.bearer("initech"),
                                  "content-type": "application/yaml"})
    assert saved.status_code == 201, saved.text

    sign_in(driver, server, server.keys.tenants["initech"])
    driver.find_element(By.LINK_TEXT, "Evals").click()
    driver.find_element(By.LINK_TEXT, "sentiment").click()
    assert "initech's override, version 1" in driver.find_element(By.ID, "main").text
    assert "No eval run yet" in driver.find_element(By.ID, "run").text
    submit(driver, "Run the evals: base and override")
    # htmx polls the run until it is done; the fake model answers at once.
    result = wait_text(driver, "#run", "Latest run", timeout=30)
    assert "1 regression" in result
    summary = driver.find_element(By.ID, "summary").text
    assert "100% · 2/2 PASS" in summary and "50% · 1/2 FAIL" in summary
    assert "-50 points" in summary
    [regression] = driver.find_elements(By.CSS_SELECTOR, "#cases tr.regression")
    row = regression.text
    assert "angry" in row and "regression" in row and "Hate it" in row
    assert "equals at sentiment" in row and '"positive"' in row
    plots = driver.find_elements(By.CSS_SELECTOR, ".plots img")
    assert [p.get_attribute("id") for p in plots] == ["plot-pass-rate", "plot-latency",
                                                      "plot-cost"]
    # Drawn, not just present: the CSP let the data: PNGs load.
    assert all(driver.execute_script("return arguments[0].naturalWidth", p) > 0 for p in plots)
    snap("12-evals")
    driver.find_element(By.LINK_TEXT, "override").click()
    assert "FAILED" in driver.find_element(By.TAG_NAME, "h1").text
    driver.back()

    # Another tenant sees none of it: no run of its own, and initech's is not found.
    submit(driver, "Sign out")
    sign_in(driver, server, server.keys.tenants["globex"])
    driver.get(server.url + "/console/evals")
    assert "none yet" in driver.find_element(By.ID, "main").text
    assert "initech" not in driver.find_element(By.ID, "main").text
    driver.get(page)
    assert "No eval run yet" in driver.find_element(By.ID, "run").text
    assert "angry" not in driver.find_element(By.ID, "main").text
    driver.get(page + "?tenant=initech")
    assert "404" in driver.find_element(By.TAG_NAME, "h1").text
    driver.get(page.replace("/evals", "/evals/report/override.html") + "?tenant=initech")
    assert "404" in driver.find_element(By.TAG_NAME, "h1").text

# -- accessibility and narrow screens ----------------------------------------------------------

UNLABELLED = """
return [...document.querySelectorAll('input, select, textarea')]
  .filter(e => e.type !== 'hidden')
  .filter(e => !(e.labels && e.labels.length) && !e.getAttribute('aria-label'))
  .map(e => e.outerHTML);
"""
FOCUSABLE = """
return [...document.querySelectorAll('a[href], button, input, select, textarea, summary')]
  .filter(e => e.type !== 'hidden' && !e.disabled && e.getClientRects().length > 0);
"""


def test_every_control_is_labelled_reachable_by_keyboard_and_inside_landmarks(
        server: LiveServer, browser: Any) -> None:
    driver = browser
    sign_in(driver, server, server.keys.tenants["globex"])
    for path in ("/console/features", "/console/features/sentiment",
                 "/console/features/sentiment/override", "/console/calls", "/console/evals",
                 "/console/features/sentiment/evals"):
        driver.get(server.url + path)
        assert driver.execute_script(UNLABELLED) == [], path
        for landmark in ("header", "nav", "main", "footer"):
            assert driver.find_elements(By.TAG_NAME, landmark), (path, landmark)
        assert len(driver.find_elements(By.TAG_NAME, "h1")) == 1, path
        # Tab from the top of the page: every visible control gets the focus, in order.
        controls = driver.execute_script(FOCUSABLE)
        driver.find_element(By.TAG_NAME, "body").click()
        reached = []
        for _ in range(len(controls) + 3):
            driver.switch_to.active_element.send_keys(Keys.TAB)
            reached.append(driver.switch_to.active_element)
        missing = [c.get_attribute("outerHTML")[:80] for c in controls if c not in reached]
        assert missing == [], (path, missing)


@pytest.mark.parametrize("width", [1280, 390])
def test_pages_fit_the_window_at_desktop_and_phone_widths(server: LiveServer, browser: Any,
                                                          shots: Path, width: int) -> None:
    driver = browser
    sign_in(driver, server, server.keys.tenants["globex"])
    for name, path in (("features", "/console/features"),
                       ("feature", "/console/features/sentiment"),
                       ("override", "/console/features/sentiment/override"),
                       ("calls", "/console/calls"),
                       ("evals", "/console/features/sentiment/evals")):
        driver.set_window_size(width, 900)
        driver.get(server.url + path)
        inner = driver.execute_script("return window.innerWidth")
        overflow = driver.execute_script("return document.documentElement.scrollWidth")
        # Wide tables scroll inside their own box; the page itself never scrolls sideways.
        assert overflow <= inner + 1, (path, width, overflow, inner)
        snapper(driver, shots)(f"{width}-{name}")
