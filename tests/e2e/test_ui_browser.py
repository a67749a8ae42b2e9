"""The status page (/ui) in a real browser: Debian's chromium, driven by playwright, against `modelyard up` of
simulators with two gateway workers. Playwright's own browser download is never used (executable_path).

Without chromium (or playwright) the browser tests are skipped on a developer's machine and fail in CI; the plain
HTTP checks of /ui/state's auth run either way.
"""

from __future__ import annotations

import os
import signal
from collections.abc import Iterator
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import httpx
import pytest

from modelyard.observability.ui_session import COOKIE
from tests.cluster import API_KEY, Cluster
from tests.servers import unavailable

CHROMIUM = Path("/usr/bin/chromium")
# without the background-networking flags chromium tries hosts this machine cannot reach (machines/python.md)
CHROMIUM_ARGS = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-background-networking",
                 "--disable-component-update", "--disable-sync", "--no-first-run"]
ADMIN_KEY = "admin-test-" + "z" * 24
FAST = {"itl_base_s": 0.002, "prefill_s_per_token": 0.00001}
WAIT_MS = 30_000


@pytest.fixture(scope="module")
def cluster(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Cluster]:
    models = [
        {"name": "chat", "engine": "simulator", "params": FAST, "replicas": 2},
        {"name": "lazy", "engine": "simulator", "params": {**FAST, "startup_s": 0.5},
         "replicas": {"min": 0, "max": 1, "scale_to_zero_after_s": 600, "cold_start_timeout_s": 60}},
    ]
    running = Cluster(tmp_path_factory.mktemp("ui"), models, gateway={"workers": 2},
                      env={"MODELYARD_ADMIN_KEY": ADMIN_KEY}).start(timeout_s=60)
    yield running
    running.stop()


@pytest.fixture(scope="module")
def browser() -> Iterator[Any]:
    if not CHROMIUM.exists():
        unavailable(f"{CHROMIUM} is missing (Debian's chromium: `make install` installs it as root)")
    try:
        from playwright.sync_api import sync_playwright
    except ImportError:
        unavailable("the playwright package is missing (pip install -e '.[dev]')")
    with sync_playwright() as playwright:
        launched = playwright.chromium.launch(executable_path=str(CHROMIUM), args=CHROMIUM_ARGS, headless=True)
        try:
            yield launched
        finally:
            launched.close()


def state(cluster: Cluster) -> dict[str, Any]:
    reply = httpx.get(cluster.url + "/ui/state", headers={"Authorization": f"Bearer {ADMIN_KEY}"}, timeout=10)
    assert reply.status_code == 200, reply.text
    data: dict[str, Any] = reply.json()
    return data


def log_in(page: Any, cluster: Cluster, key: str) -> None:
    page.goto(cluster.url + "/ui")
    page.wait_for_selector("form.login-form")  # /ui without a session redirects to the login form
    page.fill("#key", key)
    page.click("button[type=submit]")


def test_state_needs_the_cookie_or_the_admin_key(cluster: Cluster) -> None:
    anonymous = httpx.get(cluster.url + "/ui/state", timeout=10)
    assert anonymous.status_code == 401 and anonymous.json()["error"]["code"] == "ui_login_required"
    forged = httpx.get(cluster.url + "/ui/state", headers={"Cookie": f"{COOKIE}=9999999999.abc.def"}, timeout=10)
    assert forged.status_code == 401
    api_key = httpx.get(cluster.url + "/ui/state", headers={"Authorization": f"Bearer {API_KEY}"}, timeout=10)
    assert api_key.status_code == 401  # a client's API key is not the admin key
    assert {m["name"] for m in state(cluster)["models"]} == {"chat", "lazy"}
    page = httpx.get(cluster.url + "/ui", timeout=10)
    assert page.status_code == 303 and page.headers["location"] == "/ui/login"


def test_the_page_logs_in_shows_every_replica_and_follows_the_cluster_live(cluster: Cluster, browser: Any) -> None:
    context = browser.new_context()
    hosts: set[str] = set()
    context.on("request", lambda request: hosts.add(urlsplit(request.url).netloc))
    page = context.new_page()
    try:
        log_in(page, cluster, "not-the-admin-key")
        page.wait_for_selector("p.error >> text=wrong key")
        assert not context.cookies()
        page.fill("#key", ADMIN_KEY)
        page.click("button[type=submit]")
        page.wait_for_selector('[data-model="chat"][data-ready="2"]', timeout=WAIT_MS)
        assert page.url == cluster.url + "/ui"
        (cookie,) = context.cookies()
        assert (cookie["name"], cookie["httpOnly"], cookie["sameSite"]) == (COOKIE, True, "Strict")
        assert ADMIN_KEY not in cookie["value"]
        for replica in ("chat/0", "chat/1"):
            page.wait_for_selector(f'[data-replica="{replica}"][data-state="ready"]')
        page.wait_for_selector('[data-model="lazy"][data-ready="0"][data-desired="0"]')
        # a request for the model at zero: it starts, and the page shows it ready, and the request counted
        reply = httpx.post(cluster.url + "/v1/completions", headers={"Authorization": f"Bearer {API_KEY}"},
                           json={"model": "lazy", "prompt": "hello", "max_tokens": 4}, timeout=90)
        assert reply.status_code == 200
        page.wait_for_selector('[data-model="lazy"][data-ready="1"] [data-replica="lazy/0"][data-state="ready"]',
                               timeout=WAIT_MS)
        # whichever worker served it, the page (polling either) counts it: the workers publish their rings
        page.wait_for_function('() => document.querySelector(\'[data-model="lazy"] [data-stat="rps"] .value\')'
                               '.textContent !== "0"', timeout=WAIT_MS)
        assert page.text_content('[data-model="lazy"] [data-stat="ttft_p50"] .value') != "–"
        assert page.locator('[data-model="lazy"] svg.spark').count() == 3
        # a replica killed: the page shows it restarted
        pid = next(r["pid"] for m in state(cluster)["models"] if m["name"] == "chat" for r in m["replicas"]
                   if r["id"] == "chat/0")
        os.kill(pid, signal.SIGKILL)
        page.wait_for_function('() => Number(document.querySelector(\'[data-replica="chat/0"] td:nth-child(6)\')'
                               '.textContent) >= 1', timeout=WAIT_MS)
        polls = int(page.get_attribute("body", "data-polls") or 0)
        page.wait_for_function(f"() => Number(document.body.dataset.polls) > {polls}", timeout=WAIT_MS)  # still polling
    finally:
        context.close()
    assert hosts == {urlsplit(cluster.url).netloc}  # nothing from anywhere but the gateway


def test_a_phone_sized_screen_has_no_horizontal_overflow(cluster: Cluster, browser: Any) -> None:
    context = browser.new_context(viewport={"width": 360, "height": 740}, device_scale_factor=2, is_mobile=True,
                                  has_touch=True)
    page = context.new_page()
    try:
        log_in(page, cluster, ADMIN_KEY)
        page.wait_for_selector('[data-model="chat"] [data-replica]', timeout=WAIT_MS)
        page.wait_for_selector('[data-model="lazy"]')
        width = page.evaluate("document.documentElement.scrollWidth")
        inner = page.evaluate("window.innerWidth")
        assert width <= inner, f"the page is {width}px wide on a {inner}px screen"
        card = page.locator('[data-model="chat"]').bounding_box()
        assert card is not None and card["x"] >= 0 and card["x"] + card["width"] <= inner
        if shot := os.environ.get("MODELYARD_UI_SCREENSHOT"):  # a picture of the page, for docs, when asked
            page.screenshot(path=shot, full_page=True)
    finally:
        context.close()


def test_a_laptop_sized_screen_shows_the_models_side_by_side(cluster: Cluster, browser: Any) -> None:
    context = browser.new_context(viewport={"width": 1366, "height": 800})
    page = context.new_page()
    try:
        log_in(page, cluster, ADMIN_KEY)
        page.wait_for_selector('[data-model="lazy"]', timeout=WAIT_MS)
        chat = page.locator('[data-model="chat"]').bounding_box()
        lazy = page.locator('[data-model="lazy"]').bounding_box()
        assert chat is not None and lazy is not None and chat["y"] == lazy["y"] and chat["x"] < lazy["x"]
        assert page.evaluate("document.documentElement.scrollWidth <= window.innerWidth")
        if shot := os.environ.get("MODELYARD_UI_SCREENSHOT_LAPTOP"):  # docs/ui.png is made so
            page.wait_for_timeout(6000)  # a few polls: the charts have points (a picture, not an assertion)
            page.screenshot(path=shot, full_page=True)
    finally:
        context.close()
