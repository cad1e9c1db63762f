"""The Dagster UI in a real browser: `dagster dev` (own process group, stopped by PID) driven
by Debian's headless Chromium through Selenium. Screenshots go to build/ui-screenshots/."""

import json
import os
import subprocess
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path

import httpx
import pytest

from reco_dagster.domain.synthetic import synthetic_events
from tests.conftest import REPO
from tests.servers import free_port, stop_process_group

CHROMIUM, CHROMEDRIVER = Path("/usr/bin/chromium"), Path("/usr/bin/chromedriver")
SCREENSHOTS = REPO / "build" / "ui-screenshots"

pytestmark = [
    pytest.mark.slow,
    pytest.mark.skipif(
        not (CHROMIUM.exists() and CHROMEDRIVER.exists()),
        reason="Debian's chromium and chromium-driver are not installed "
        "(scripts/test.sh installs them as root: apt-get install chromium chromium-driver)",
    ),
]


@contextmanager
def dagster_dev(data_dir: Path, dagster_home: Path) -> Iterator[str]:
    port = free_port()
    env = {
        **os.environ,
        "RECO_DATA_DIR": str(data_dir),
        "DAGSTER_HOME": str(dagster_home),
        "SPARK_LOCAL_IP": "127.0.0.1",
    }
    command = [str(REPO / ".venv" / "bin" / "dagster"), "dev", "-w", "workspace.yaml"]
    with open(dagster_home / "dagster-dev.log", "w") as log:
        # Its own process group: `dagster dev` ignores SIGTERM from a non-interactive parent
        # otherwise, and the group takes its webserver, daemon and code server with it.
        server = subprocess.Popen(
            [*command, "-h", "127.0.0.1", "-p", str(port)],
            cwd=REPO,
            env=env,
            stdout=log,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )
    url = f"http://127.0.0.1:{port}"
    try:
        deadline = time.monotonic() + 120
        while True:
            try:
                httpx.get(f"{url}/server_info", timeout=2).raise_for_status()
                break
            except httpx.HTTPError:
                if server.poll() is not None or time.monotonic() > deadline:
                    raise RuntimeError(f"dagster dev did not start; see {log.name}") from None
                time.sleep(0.5)
        yield url
    finally:
        stop_process_group(server)


@pytest.fixture
def browser():
    from selenium import webdriver
    from selenium.webdriver.chrome.service import Service

    options = webdriver.ChromeOptions()
    options.binary_location = str(CHROMIUM)
    for argument in ("--headless=new", "--no-sandbox", "--disable-dev-shm-usage"):
        options.add_argument(argument)
    options.add_argument("--window-size=1600,1000")
    driver = webdriver.Chrome(service=Service(str(CHROMEDRIVER)), options=options)
    SCREENSHOTS.mkdir(parents=True, exist_ok=True)
    yield driver
    driver.quit()


def wait_for(condition: Callable[[], object], seconds: float, what: str) -> object:
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline:
        found = condition()
        if found:
            return found
        time.sleep(0.5)
    raise AssertionError(f"waited {seconds:.0f} s for {what}")


def test_the_ui_shows_the_assets_launches_the_batch_job_and_shows_its_metrics(
    browser, data_dir, tmp_path
):
    from selenium.webdriver.common.by import By

    def page_text() -> str:
        return browser.find_element(By.TAG_NAME, "body").text

    def click(label: str) -> bool:
        buttons = browser.find_elements(By.XPATH, f"//button[normalize-space(.)='{label}']")
        if buttons and buttons[0].is_enabled():
            buttons[0].click()
            return True
        return False

    (data_dir / "landing").mkdir(parents=True)
    synthetic_events(300, 400, 40, seed=3).to_parquet(data_dir / "landing" / "events.parquet")
    dagster_home = tmp_path / "dagster_home"
    dagster_home.mkdir()
    (dagster_home / "dagster.yaml").write_text((REPO / "dagster.yaml").read_text())
    with dagster_dev(data_dir, dagster_home) as url:
        browser.get(f"{url}/locations/reco_dagster/asset-groups/train")
        wait_for(lambda: "Skip" in page_text(), 60, "the UI to load")
        click("Skip")  # the first-visit "join the community" dialog
        graph = wait_for(lambda: "als_model" in page_text() and page_text(), 60, "the graph")
        browser.save_screenshot(str(SCREENSHOTS / "1-asset-graph-train.png"))
        # The group's nodes in view and their neighbours in the other groups.
        assert {"als_model", "ease_evaluation_model", "als_new_items", "als_archived_model"} <= set(
            graph.split()
        )

        browser.get(f"{url}/locations/reco_dagster/jobs/batch_retrain/playground")
        wait_for(lambda: click("Launch Run"), 60, "the launchpad's Launch Run button")
        wait_for(lambda: "/runs/" in browser.current_url, 60, "the run page")
        run_id = browser.current_url.rstrip("/").split("/runs/")[1].split("?")[0]
        browser.save_screenshot(str(SCREENSHOTS / "2-run-launched.png"))
        wait_for(lambda: "RUN_SUCCESS" in page_text() or "Success" in page_text(), 300, "success")
        assert "RUN_FAILURE" not in page_text()
        browser.save_screenshot(str(SCREENSHOTS / "3-run-succeeded.png"))

        browser.get(f"{url}/assets/als_evaluation")
        text = wait_for(
            lambda: "precision_at_10" in page_text() and page_text(), 60, "the asset's metadata"
        )
        browser.save_screenshot(str(SCREENSHOTS / "4-evaluation-metadata.png"))
    evaluation = json.loads((data_dir / "lake" / "als_evaluation.json").read_text())
    shown = text.split()
    precision = shown[shown.index("precision_at_10") + 1 :][:8]
    assert str(evaluation["metrics"]["precision_at_10"]) in precision
    assert run_id and "ndcg_at_10" in shown and "popularity_precision_at_10" in shown
