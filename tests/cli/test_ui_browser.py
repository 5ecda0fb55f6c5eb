"""The MLflow UI as a person sees it, in headless Chromium: a finished tiny study, ``lbsearch ui``,
and the walk experiment list → the study's runs with the nested trials → the best trial's
``eval/accuracy`` chart and system metrics → its artifacts → the parent run's Optuna plots.

Asserts on what the page shows (names, values, a chart line or image that rendered), never only on
status codes; every wait is bounded. Screenshots go to the test's tmp folder, and also to
``$LBSEARCH_SCREENSHOTS`` when set (how ``docs/screenshots/`` was made). Skips only where Chromium
and its driver are missing or cannot start: ``scripts/install.sh`` installs Debian's ``chromium``
and ``chromium-driver`` wherever apt-get works.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import tempfile
import time
import urllib.request
from pathlib import Path

import pytest
from conftest import LBSEARCH, SPECS, mlflow_client, run_cli

from lbsearch.cli.main import UI_HOST
from lbsearch.orchestrator.launch import free_port
from lbsearch.orchestrator.processes import stop_group
from lbsearch.tracking import BEST_TAG, CONFIG_JSON, REPRODUCE_SH

CHROMIUM = shutil.which("chromium") or shutil.which("chromium-browser")
DRIVER = shutil.which("chromedriver") or "/usr/bin/chromedriver"
pytestmark = pytest.mark.skipif(not CHROMIUM or not os.path.exists(DRIVER),
                                reason="Chromium not installed: scripts/install.sh installs Debian's chromium and chromium-driver where apt-get works")
webdriver = pytest.importorskip("selenium.webdriver", reason="selenium not installed: pip install -e '.[dev]'")
from selenium.common.exceptions import StaleElementReferenceException, WebDriverException  # noqa: E402
from selenium.webdriver.common.by import By  # noqa: E402
from selenium.webdriver.support.ui import WebDriverWait  # noqa: E402

from lbsearch.tracking.story import HISTORY_PNG, INTERMEDIATE_PNG

WAIT = 60  # seconds, for any one thing to appear (a loaded 2-core machine renders slowly)
BROWSER_FLAGS = ("--headless", "--no-sandbox", "--disable-gpu", "--no-first-run", "--disable-background-networking",
                 "--disable-component-update", "--disable-sync", "--window-size=1280,800")


@pytest.fixture(scope="module")
def study(tmp_path_factory):
    """(mlruns folder, study name, best trial's run name, budget): tiny-study, 2 trials of 640 samples, with
    system metrics every second so that short trials have several. ``LBSEARCH_UI_MLRUNS`` (and
    ``LBSEARCH_UI_STUDY``, default quickstart) walk an existing finished study instead: how the docs' screenshots were made."""
    if os.environ.get("LBSEARCH_UI_MLRUNS"):
        root, name = Path(os.environ["LBSEARCH_UI_MLRUNS"]).resolve(), os.environ.get("LBSEARCH_UI_STUDY", "quickstart")
    else:
        cwd, name = tmp_path_factory.mktemp("ui"), "tiny-study"
        env = dict(os.environ, MLFLOW_SYSTEM_METRICS_SAMPLING_INTERVAL="1")
        run_cli("run", str(SPECS / "tiny_study.yaml"), "--set", "n_trials=2", "--set", "experiment.train.budget_samples=640",
                cwd=cwd, env=env, check=True)
        root = cwd / "mlruns"
    client = mlflow_client(root)
    runs = client.search_runs([client.get_experiment_by_name(name).experiment_id])
    best = next(r for r in runs if r.data.tags.get(BEST_TAG) == "true")
    budget = json.loads(Path(client.download_artifacts(best.info.run_id, CONFIG_JSON, str(tmp_path_factory.mktemp("cfg")))).read_text())
    return root, name, best.info.run_name, budget["train"]["budget_samples"]


@pytest.fixture(scope="module")
def ui(study):
    """``lbsearch ui`` on a free port; yields its address and what it printed."""
    root, name, _, _ = study
    port = free_port()
    proc = subprocess.Popen([*LBSEARCH, "ui", "--port", str(port), "--mlruns", str(root)], cwd=root.parent, stdout=subprocess.PIPE,
                            stderr=subprocess.STDOUT, text=True, start_new_session=True)
    base = f"http://{UI_HOST}:{port}"
    try:
        deadline = time.time() + 120
        while True:
            assert proc.poll() is None, proc.stdout.read()
            try:
                with urllib.request.urlopen(base + "/health", timeout=5) as resp:
                    if resp.read().strip() == b"OK":
                        break
            except OSError:
                pass
            assert time.time() < deadline, "the MLflow UI did not answer within 120 s"
            time.sleep(0.5)
        printed = []
        while not any(f" {name} " in line for line in printed) and len(printed) < 20:
            printed.append(proc.stdout.readline())  # printed before the server started, so already there
        yield base, printed
    finally:
        stop_group(proc)


@pytest.fixture
def browser(tmp_path):
    options = webdriver.ChromeOptions()
    options.binary_location = CHROMIUM
    for flag in BROWSER_FLAGS:
        options.add_argument(flag)
    profile = tempfile.mkdtemp(prefix="lbsearch-chromium-")
    options.add_argument(f"--user-data-dir={profile}")
    try:
        driver = webdriver.Chrome(service=webdriver.ChromeService(DRIVER), options=options)
    except WebDriverException as err:
        pytest.skip(f"Chromium cannot start here: {str(err).splitlines()[0]}")
    driver.set_page_load_timeout(WAIT)
    try:
        yield driver
    finally:
        driver.quit()
        shutil.rmtree(profile, ignore_errors=True)


def _until(d, what: str, check, timeout: float = WAIT):
    """Wait (bounded) until ``check(d)`` is truthy; a timeout names what was awaited and shows the page."""
    def safe(drv):
        try:
            return check(drv)
        except (StaleElementReferenceException, WebDriverException):
            return False
    try:
        return WebDriverWait(d, timeout, poll_frequency=0.5).until(safe)
    except Exception:
        raise AssertionError(f"not seen within {timeout} s: {what}\nURL {d.current_url}\n{_text(d)[:3000]}") from None


def _text(d) -> str:
    return d.find_element(By.TAG_NAME, "body").text


def _exact(text: str) -> str:
    return f"//*[normalize-space(text())='{text}']"


def _click(d, text: str) -> None:
    el = _until(d, f"something reading {text!r}", lambda drv: next((e for e in drv.find_elements(By.XPATH, _exact(text)) if e.is_displayed()), None))
    el.click()


def _shot(d, tmp_path: Path, name: str) -> None:
    d.save_screenshot(str(tmp_path / name))
    folder = os.environ.get("LBSEARCH_SCREENSHOTS")
    if folder:  # small palette PNGs for the docs
        from PIL import Image

        Path(folder).mkdir(parents=True, exist_ok=True)
        Image.open(tmp_path / name).convert("RGB").quantize(colors=96).save(Path(folder) / name, optimize=True)


def _chart_line(d, legend: str) -> int:
    """Points drawn in the chart card whose legend reads ``legend`` (0 while it is not drawn)."""
    return d.execute_script("""
        const card = Array.from(document.querySelectorAll('[data-testid=experiment-view-compare-runs-card]'))
            .find(c => c.innerText.includes(arguments[0]));
        if (!card) return 0;
        const line = card.querySelector('.js-plotly-plot path.js-line');
        const d = line ? line.getAttribute('d') || '' : '';
        return d ? d.split(/[ML]/).filter(s => s.trim()).length : 0;""", legend)


def _quiet(d, base: str) -> None:
    """A person closes MLflow's assistant panel once; the browser remembers (local storage)."""
    d.get(base + "/#/experiments")
    d.execute_script("window.localStorage.setItem('mlflow.assistant.fab.autoOpenedOnFirstLoad_v1', 'true');"
                     "window.localStorage.setItem('mlflow.assistant.panelOpen_v1', 'false')")
    d.refresh()  # the app reads its settings when it loads


def test_printed_link_opens_the_study_in_the_model_training_view(study, ui, browser):
    (_, name, _, _), (base, printed) = study, ui
    link = next(line.split()[-1] for line in printed if f" {name} " in line)
    assert link.startswith(base) and "workflowType=machine_learning" in link, printed
    browser.get(link)  # a fresh browser: MLflow's own default would be its GenAI view
    _until(browser, "the runs table", lambda d: "/runs" in d.current_url and "Run Name" in _text(d))
    assert f"lbsearch study {name}" in _text(browser)  # the experiment's description
    assert "Evaluation runs" not in _text(browser)  # a GenAI-only entry of the side bar


def test_walk_from_the_experiment_list_to_the_parent_plots(study, ui, browser, tmp_path):
    base, _ = ui
    d, (_, name, best, budget) = browser, study
    _quiet(d, base)
    d.get(base + "/#/experiments")
    _click(d, "Model training")  # the switch at the top left, remembered by the browser
    _until(d, "the study in the experiment list", lambda drv: drv.find_elements(By.LINK_TEXT, name))
    assert "lbsearch study" in _text(d) and "Objective: validation" in _text(d)
    _shot(d, tmp_path, "01-experiments.png")

    d.find_element(By.LINK_TEXT, name).click()
    _until(d, "the parent run", lambda drv: "/runs" in drv.current_url and drv.find_elements(By.CSS_SELECTOR, ".ag-row button"))
    d.find_elements(By.CSS_SELECTOR, ".ag-row button")[0].click()  # expand the parent: its nested trials
    _until(d, "the nested trials", lambda drv: "trial-0" in _text(drv) and "trial-1" in _text(drv) and best in _text(drv))
    assert "rotten_tomatoes.train" in _text(d)  # the Datasets column
    _shot(d, tmp_path, "02-study-runs.png")

    _click(d, best)
    _click(d, "Model metrics")
    _until(d, "the eval/accuracy chart with a line", lambda drv: _chart_line(drv, "(eval/accuracy)") >= 2)
    _shot(d, tmp_path, "03-trial-accuracy.png")
    _click(d, "System metrics")
    _until(d, "a system-metrics chart with a line", lambda drv: _chart_line(drv, "cpu_utilization_percentage") >= 2)
    _shot(d, tmp_path, "04-trial-system-metrics.png")

    _click(d, "Artifacts")
    _until(d, "the trial's artifacts", lambda drv: CONFIG_JSON in _text(drv) and REPRODUCE_SH in _text(drv))
    _click(d, CONFIG_JSON)
    _until(d, "the resolved config", lambda drv: f'"budget_samples": {budget}' in _text(drv))
    _click(d, REPRODUCE_SH)
    _until(d, f"{REPRODUCE_SH}'s path", lambda drv: f"/artifacts/{REPRODUCE_SH}" in _text(drv))
    _shot(d, tmp_path, "05-trial-artifacts.png")

    _click(d, "Runs")  # the breadcrumb back to the study's runs, then the parent run itself
    parent = f"//a[normalize-space(.)='{name}' and contains(@href, '/runs/')]"
    _until(d, "the parent run's link", lambda drv: drv.find_elements(By.XPATH, parent))
    d.find_element(By.XPATH, parent).click()
    _click(d, "Artifacts")
    _click(d, "plots")
    for png in (HISTORY_PNG, INTERMEDIATE_PNG):
        _click(d, png)
        _until(d, f"{png} drawn", lambda drv: drv.execute_script(
            "return Array.from(document.images).some(i => i.complete && i.naturalWidth > 300 && i.getBoundingClientRect().width > 200)"))
    _shot(d, tmp_path, "06-parent-plots.png")
