"""The dashboard in headless Chromium (Debian's, driven by playwright), against a real
``uvicorn`` server: it loads without console errors, shows what the API returns, follows a
run started mid-session over the WebSocket, and its emergency-stop button works only with
the token. Screenshots go to the test's tmp dir (and ``$DASHBOARD_SHOTS`` if set)."""

from __future__ import annotations

import os
import shutil
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest
import uvicorn

from testbed.api import create_app
from tests.fixtures_mqtt import free_port
from tests.web_conftest import shared_scenario2

CHROMIUM = shutil.which("chromium") or "/usr/bin/chromium"
playwright_api = pytest.importorskip("playwright.sync_api")
pytestmark = pytest.mark.skipif(not Path(CHROMIUM).exists(),
                                reason="Debian chromium not installed (scripts/test.sh does)")
TOKEN = "dash-token-789"
ARGS = ["--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
        "--disable-background-networking", "--disable-component-update", "--disable-sync",
        "--disable-dev-shm-usage"]


class Server:
    """uvicorn in a thread on a free loopback port, stopped by ``should_exit``."""

    def __init__(self, db: Path) -> None:
        self.app = create_app(db, token=TOKEN)
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        self.server = uvicorn.Server(uvicorn.Config(self.app, host="127.0.0.1", port=self.port,
                                                    log_level="warning", ws="websockets-sansio"
                                                    if _has("websockets") else "auto"))
        self.thread = threading.Thread(target=self.server.run, daemon=True)

    def __enter__(self) -> Server:
        self.thread.start()
        deadline = time.monotonic() + 10
        while not self.server.started:
            assert time.monotonic() < deadline, "uvicorn did not start"
            time.sleep(0.02)
        return self

    def __exit__(self, *exc: object) -> None:
        self.server.should_exit = True
        self.thread.join(15)

    def get(self, path: str) -> Any:
        return httpx.get(self.url + path, timeout=10).json()


def _has(module: str) -> bool:
    import importlib.util
    return importlib.util.find_spec(module) is not None


@pytest.fixture(scope="module")
def db(tmp_path_factory: pytest.TempPathFactory) -> Path:
    path = tmp_path_factory.mktemp("dash") / "runs.db"
    shared_scenario2(tmp_path_factory, path)
    return path


@pytest.fixture(scope="module")
def browser() -> Iterator[Any]:
    with playwright_api.sync_playwright() as p:
        b = p.chromium.launch(executable_path=CHROMIUM, headless=True, args=ARGS)
        yield b
        b.close()


def _open(browser: Any, url: str) -> tuple[Any, list[str]]:
    page = browser.new_page(viewport={"width": 1280, "height": 900})
    errors: list[str] = []
    page.on("console", lambda m: errors.append(m.text) if m.type == "error" else None)
    page.on("pageerror", lambda e: errors.append(f"pageerror: {e}"))
    page.goto(url)
    page.wait_for_selector("body[data-ready='1']", timeout=15000)
    return page, errors


def _shot(page: Any, tmp: Path, name: str) -> Path:
    path = tmp / name
    page.screenshot(path=str(path), full_page=True)
    if os.environ.get("DASHBOARD_SHOTS"):
        Path(os.environ["DASHBOARD_SHOTS"]).mkdir(parents=True, exist_ok=True)
        shutil.copy(path, Path(os.environ["DASHBOARD_SHOTS"]) / name)
    assert path.stat().st_size > 20_000  # a rendered page, not a blank one
    return path


def _painted(page: Any) -> int:
    """Pixels the chart drew (non-transparent) in the canvas."""
    return int(page.evaluate("""() => {
        const c = document.querySelector('#power-chart');
        const d = c.getContext('2d').getImageData(0, 0, c.width, c.height).data;
        let n = 0; for (let i = 3; i < d.length; i += 4) { if (d[i]) { n++; } } return n; }"""))


def test_dashboard_shows_a_finished_run_as_the_api_returns_it(browser: Any, db: Path,
                                                              tmp_path: Path) -> None:
    with Server(db) as srv:
        page, errors = _open(browser, srv.url + "/")
        (run,) = srv.get("/api/runs")
        rid = run["id"]
        page.wait_for_function("document.querySelector('#ledger-head').dataset.hash !== ''")
        (iv,) = srv.get(f"/api/runs/{rid}/intervals")
        assert iv["clearing_price"] == 0.16
        assert page.text_content("#clearing-price") == "0.16"
        assert page.get_attribute("#clearing-price", "data-value") == "0.16"
        assert page.text_content("#clearing-method") == str(iv["method"])
        assert page.text_content("#volume") == "12.7"
        trades = srv.get(f"/api/runs/{rid}/trades")
        rows = page.locator("#trades tbody tr")
        assert rows.count() == len(trades) == 7
        first = rows.nth(0).locator("td").all_text_contents()
        assert first[1:3] == [trades[0]["seller"], trades[0]["buyer"]]
        assert page.locator("#orderbook tbody tr").count() == 10
        blocks = srv.get(f"/api/runs/{rid}/blocks")
        assert page.get_attribute("#ledger-head", "data-hash") == blocks[-1]["hash"]
        assert page.text_content("#ledger-height") == str(len(blocks))
        assert page.text_content("#ledger-verified").startswith("✓ verified")
        assert page.text_content("#validation").endswith("checks passed")
        assert page.text_content("#run-status") == "finished"
        assert page.locator("#legend span").count() == 11  # 10 households and the grid
        assert _painted(page) > 5000
        _shot(page, tmp_path, "dashboard-finished.png")
        assert errors == []
        page.close()


def test_dashboard_follows_a_live_run_and_estops_it_with_the_token(
        browser: Any, db: Path, tmp_path: Path) -> None:
    with Server(db) as srv:
        page, errors = _open(browser, srv.url + "/")
        # A day in a minute in real time, started from outside while the page is open.
        r = httpx.post(srv.url + "/api/runs/start", json={"scenario": "scenario2",
                                                          "speed": 1440},
                       headers={"Authorization": f"Bearer {TOKEN}"}, timeout=10)
        assert r.status_code == 202
        rid = r.json()["run_id"]
        page.wait_for_function(f"S.selected === '{rid}' && S.power.x.length > 3",
                               timeout=15000)
        assert page.text_content("#run-status") == "running"
        assert page.text_content("#clearing-price") == "0.16"  # cleared at the day's start
        assert page.locator("#orderbook tbody tr").count() == 10
        assert page.text_content("#safety-state") == "safety: running"
        # The ledger panel shows this run's chain (its genesis so far), not the last run's.
        page.wait_for_function("document.querySelector('#ledger-head').dataset.hash !== ''")
        (genesis,) = srv.get(f"/api/runs/{rid}/blocks")
        assert page.get_attribute("#ledger-head", "data-hash") == genesis["hash"]
        _shot(page, tmp_path, "dashboard-live.png")
        assert errors == []

        # Without the right token the button does nothing to the bench.
        page.click("#estop-button")
        page.fill("#estop-token", "not-the-token")
        page.click("#estop-confirm")
        page.wait_for_function("document.querySelector('#estop-result').textContent"
                               ".startsWith('refused')")
        assert "401" in page.text_content("#estop-result")
        assert srv.get(f"/api/runs/{rid}")["status"] == "running"

        page.fill("#estop-token", TOKEN)
        page.click("#estop-confirm")
        page.wait_for_function("document.querySelector('#estop-result').textContent"
                               ".startsWith('stopped')")
        assert rid in page.text_content("#estop-result")
        page.click("#estop-cancel")
        page.wait_for_function("document.querySelector('#run-status').textContent "
                               "=== 'aborted'", timeout=15000)
        page.wait_for_function("document.querySelector('#safety-state').dataset.state "
                               "=== 'safe'", timeout=15000)
        events = page.locator("#safety-events li").all_text_contents()
        assert any(e.startswith("estop") for e in events)
        assert any(e.startswith("safe_state") for e in events)
        assert srv.get(f"/api/runs/{rid}")["status"] == "aborted"
        # The stopped interval was never committed; what the feed showed of it stays.
        assert srv.get(f"/api/runs/{rid}/intervals") == []
        assert page.text_content("#clearing-price") == "0.16"
        assert page.locator("#orderbook tbody tr").count() == 10
        assert _painted(page) > 2000
        _shot(page, tmp_path, "dashboard-estopped.png")
        # The only console error is the browser's report of the refused (401) request.
        assert all("401" in e for e in errors) and len(errors) <= 1
        page.close()
