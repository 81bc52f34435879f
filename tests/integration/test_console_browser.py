"""The console in a real browser: headless Chromium (Debian's chromium and chromium-driver) driven by selenium,
against a live server of the segmentation app over a seeded shop (two published runs, SQLite, real Redis).

One browser session serves the whole module. Every page must draw its charts (an ECharts instance with series
and a canvas with painted pixels) without a SEVERE message in the browser console. Screenshots go to the
pytest temporary folder; the README's two come from docs/console/ (refreshed when SEGREC_CONSOLE_SCREENSHOTS=docs).
"""

from __future__ import annotations

import os
import shutil
import threading
import uuid
from pathlib import Path

import pytest
import requests
from sqlalchemy import func, select
from selenium.webdriver.support.ui import WebDriverWait
from werkzeug.serving import make_server

from shared.auth import create_key
from shared.dbadmin import upgrade
from shared.extensions import db, redis_store
from shared.models import Campaign
from services.pipeline.retrain import retrain_now
from tests.factories import AS_OF, add_orders, small_shop

CHROMIUM = shutil.which("chromium") or shutil.which("chromium-browser")
CHROMEDRIVER = shutil.which("chromedriver")
pytestmark = pytest.mark.skipif(
    CHROMIUM is None or CHROMEDRIVER is None,
    reason="the browser tests need Debian's chromium and chromium-driver (apt-get install chromium chromium-driver)",
)
REPO = Path(__file__).resolve().parents[2]
DOCS_SCREENSHOTS = REPO / "docs" / "console"
ADMIN_SCOPES = ["admin"]
READER_SCOPES = ["segments:read", "segments:export", "recs:read"]
# Chart names each page draws.
PAGES = {
    "overview": ("/console/overview", ("tiers", "grid", "funnel", "layers")),
    "movements": ("/console/movements", ("sankey-tier", "sankey-lifecycle")),
    "explorer": ("/console/explorer?go=1&lifecycle=dormant", ()),
    "customer": ("/console/customer?customer_id=c0001", ()),
    "campaigns": ("/console/campaigns", ()),
    "recommendations": ("/console/recommendations?sku=PHN-1&cart=TEA-1+2%0D%0APHN-1", ()),
    "runs": ("/console/runs", ("steps", "quality")),
}
CHART_STATE = """
const result = {};
for (const [name, chart] of Object.entries(window.consoleCharts || {})) {
  const canvas = chart.getDom().querySelector('canvas');
  let painted = 0;
  if (canvas) {
    const pixels = canvas.getContext('2d').getImageData(0, 0, canvas.width, canvas.height).data;
    for (let i = 3; i < pixels.length; i += 4) { if (pixels[i] !== 0) { painted += 1; } }
  }
  result[name] = {series: (chart.getOption().series || []).length, painted: painted};
}
return result;
"""


@pytest.fixture(scope="module")
def live(tmp_path_factory, redis_url):
    """A seeded shop with two published runs, served by the segmentation app on a free port."""
    from services.segmentation.app import create_app
    from services.segmentation.console.recommendations import recommender

    folder = tmp_path_factory.mktemp("console")
    database_url = f"sqlite:///{folder / 'console.db'}"
    upgrade(database_url)
    prefix = f"segrec-test-console-{uuid.uuid4().hex[:8]}"
    app = create_app({
        "TESTING": True, "DATABASE_URL": database_url, "REDIS_URL": redis_url, "REDIS_PREFIX": prefix,
        "VAR_DIR": str(folder), "API_KEY_CACHE_SECONDS": 0, "SECRET_KEY": uuid.uuid4().hex,
        "CELERY_QUEUE": f"console-test-{uuid.uuid4().hex[:8]}",
    })
    small_shop()
    # The runs are `segrec retrain`'s work, with its Redis timeout (the web tier's 0.25 s is for serving).
    redis_store.configure(redis_url, prefix, socket_timeout=5.0)
    first = retrain_now(app.config, as_of=AS_OF)
    # Some customers buy again before the second run, so tiers and lifecycle stages move between the runs.
    add_orders([{"order_id": f"again-{number}", "customer_id": f"c{number:04d}", "placed_at": AS_OF,
                 "skus": ["PHN-1", "POT-1"]} for number in range(0, 120, 3)])
    second = retrain_now(app.config, as_of=AS_OF)
    assert (first.status, second.status) == ("published", "published")
    with db.session() as session:
        _row, admin_key = create_key(session, "console-admin", ADMIN_SCOPES)
        _row, reader_key = create_key(session, "console-reader", READER_SCOPES)
    recommender.reset()
    server = make_server("127.0.0.1", 0, app, threaded=True)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    yield {"app": app, "url": f"http://127.0.0.1:{server.server_port}", "admin_key": admin_key,
           "reader_key": reader_key, "runs": (first.run_id, second.run_id), "folder": folder}
    server.shutdown()
    keys = list(redis_store.client.scan_iter(f"{prefix}:*", count=1000))
    if keys:
        redis_store.client.delete(*keys)
    db.dispose()


@pytest.fixture(scope="module")
def browser(tmp_path_factory):
    """One headless Chromium for the module, with a fresh profile."""
    from selenium import webdriver
    from selenium.webdriver.chrome.service import Service

    options = webdriver.ChromeOptions()
    options.binary_location = CHROMIUM
    for argument in ("--headless=new", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
                     "--disable-background-networking", "--disable-component-update", "--disable-sync",
                     "--disable-dev-shm-usage", "--window-size=1400,1000",
                     f"--user-data-dir={tmp_path_factory.mktemp('chromium-profile')}"):
        options.add_argument(argument)
    options.set_capability("goog:loggingPrefs", {"browser": "ALL"})
    driver = webdriver.Chrome(service=Service(CHROMEDRIVER), options=options)
    driver.set_page_load_timeout(30)
    yield driver
    driver.quit()


def severe_messages(browser) -> list[str]:
    """SEVERE entries of the browser console since the last call."""
    return [entry["message"] for entry in browser.get_log("browser") if entry["level"] == "SEVERE"]


def sign_in(browser, live, key: str, language: str = "en") -> None:
    """Sign in through the form (fresh cookies), in the given language."""
    browser.delete_all_cookies()
    browser.get(f"{live['url']}/console/login")
    browser.get(f"{live['url']}/console/lang/{language}?next=/console/login")
    browser.find_element("id", "api_key").send_keys(key)
    browser.find_element("id", "sign-in").click()
    WebDriverWait(browser, 10).until(lambda driver: "/console/login" not in driver.current_url)


def open_page(browser, url: str) -> None:
    browser.get(url)
    browser.execute_script("return document.readyState")


def wait_for_heading(browser, text: str) -> None:
    """Wait until the page's heading reads `text` (a click may return before the next page has loaded)."""
    WebDriverWait(browser, 10).until(lambda driver: driver.find_element("tag name", "h1").text == text)


def chart_state(browser, expected=()) -> dict:
    """Series count and painted pixels of each chart on the page, once the expected ones have painted."""
    WebDriverWait(browser, 10).until(
        lambda driver: all(driver.execute_script(CHART_STATE).get(name, {}).get("painted") for name in expected))
    return browser.execute_script(CHART_STATE)


def post_form(browser, form_id: str | None, url: str, fields: dict | None = None) -> dict:
    """POST from the page with fetch: the named form's fields (plus or minus some), like a submit would."""
    script = """
    const [formId, url, extra, done] = [arguments[0], arguments[1], arguments[2], arguments[arguments.length - 1]];
    const data = formId ? new FormData(document.getElementById(formId)) : new FormData();
    for (const [name, value] of Object.entries(extra || {})) {
      if (value === null) { data.delete(name); } else { data.set(name, value); }
    }
    fetch(url, {method: 'POST', body: data, credentials: 'same-origin'})
      .then(response => response.text().then(text => done({status: response.status, url: response.url, text: text})))
      .catch(error => done({status: 0, url: '', text: String(error)}));
    """
    return browser.execute_async_script(script, form_id, url, fields or {})


def test_every_page_draws_its_charts_without_console_errors(browser, live):
    sign_in(browser, live, live["admin_key"])
    cookie = browser.get_cookie("segrec_console")
    assert (cookie["httpOnly"], cookie["sameSite"], cookie["secure"]) == (True, "Lax", False)
    assert live["admin_key"] not in str(cookie)
    severe_messages(browser)
    for name, (path, expected_charts) in PAGES.items():
        open_page(browser, live["url"] + path)
        assert browser.find_element("tag name", "h1").text, name
        state = chart_state(browser, expected_charts)
        for chart in expected_charts:
            assert state[chart]["series"] >= 1, (name, chart, state)
            assert state[chart]["painted"] > 0, (name, chart, state)
        assert severe_messages(browser) == [], name
        browser.save_screenshot(str(live["folder"] / f"console-{name}.png"))
        if name == "movements":
            # The customers behind the biggest tier flow, as the table lists it.
            first_flow = browser.find_element("css selector", "#flows-tier tbody tr")
            expected = first_flow.find_elements("tag name", "td")[2].text
            first_flow.find_element("tag name", "a").click()
            WebDriverWait(browser, 10).until(lambda driver: "/console/movements/flow" in driver.current_url)
            assert browser.find_element("id", "flow-members").find_elements("css selector", "tbody tr")
            assert f"{expected} customers moved" in browser.page_source


def test_pages_render_in_chinese_and_english(browser, live):
    sign_in(browser, live, live["admin_key"], language="zh_CN")
    open_page(browser, f"{live['url']}/console/overview")
    wait_for_heading(browser, "总览")
    assert "会员等级分布" in browser.page_source
    assert chart_state(browser, ("grid",))["grid"]["painted"] > 0
    browser.save_screenshot(str(live["folder"] / "console-overview-zh.png"))
    if os.environ.get("SEGREC_CONSOLE_SCREENSHOTS") == "docs":
        DOCS_SCREENSHOTS.mkdir(parents=True, exist_ok=True)
        browser.save_screenshot(str(DOCS_SCREENSHOTS / "overview-zh.png"))
    browser.find_element("css selector", "#language-switch a[lang=en]").click()
    wait_for_heading(browser, "Overview")
    assert "Tier distribution" in browser.page_source
    assert severe_messages(browser) == []


def test_campaign_launched_from_the_form_appears_once_with_its_sizes(browser, live):
    from services.segmentation import campaigns

    sign_in(browser, live, live["admin_key"])
    open_page(browser, f"{live['url']}/console/campaigns")
    api = {"Authorization": f"Bearer {live['admin_key']}"}
    dormant = requests.post(f"{live['url']}/v1/segments/query", headers=api,
                            json={"filters": {"lifecycle": ["dormant"]}, "limit": 1}).json()["count"]
    WebDriverWait(browser, 10).until(lambda driver: driver.find_element("id", "live-count").text.isdigit())
    assert browser.find_element("id", "live-count").text == str(dormant)
    browser.find_element("name", "holdout_percent").clear()
    browser.find_element("name", "holdout_percent").send_keys("20")
    # Two submits of one form (a double click): the page's Idempotency-Key makes them one campaign.
    first = post_form(browser, "win-back-form", f"{live['url']}/console/campaigns/win-back")
    second = post_form(browser, "win-back-form", f"{live['url']}/console/campaigns/win-back")
    assert first["status"] == second["status"] == 200
    assert first["url"] == second["url"] and "/console/campaigns/cmp-" in first["url"]
    campaign_id = first["url"].rsplit("/", 1)[1]
    with db.session() as session:
        assert session.execute(select(func.count()).select_from(Campaign)).scalar_one() == 1
    assert campaigns.build_campaign(campaign_id, live["app"].config).status == "ready"

    open_page(browser, first["url"])
    shown = {name: browser.find_element("id", name).text for name in ("audience-size", "treatment-size",
                                                                       "control-size")}
    answer = requests.get(f"{live['url']}/v1/campaigns/{campaign_id}", headers=api).json()
    assert shown == {"audience-size": str(dormant), "treatment-size": str(answer["treatment_size"]),
                     "control-size": str(answer["control_size"])}
    assert answer["audience_size"] == dormant
    assert answer["treatment_size"] + answer["control_size"] == dormant
    assert answer["definition"]["holdout_fraction"] == 0.2
    state = chart_state(browser, ("conversion", "uplift"))
    assert state["conversion"]["painted"] > 0 and state["uplift"]["painted"] > 0
    assert browser.find_element("id", "verdict").get_attribute("data-verdict") == "insufficient_data"
    browser.save_screenshot(str(live["folder"] / "console-campaign.png"))
    if os.environ.get("SEGREC_CONSOLE_SCREENSHOTS") == "docs":
        browser.save_screenshot(str(DOCS_SCREENSHOTS / "campaign-en.png"))
    open_page(browser, f"{live['url']}/console/campaigns")
    rows = browser.find_elements("css selector", f"#campaign-list tr[data-campaign-id='{campaign_id}']")
    assert len(rows) == 1
    assert severe_messages(browser) == []


def test_explorer_csv_equals_the_api_csv(browser, live):
    sign_in(browser, live, live["reader_key"])
    open_page(browser, f"{live['url']}/console/explorer?go=1&tier=silver")
    link = browser.find_element("id", "explorer-csv").get_attribute("href")
    downloaded = browser.execute_async_script(
        "fetch(arguments[0], {credentials: 'same-origin'}).then(r => r.text()).then(arguments[1]);", link)
    api = requests.get(f"{live['url']}/v1/segments/tier/silver/members.csv",
                       headers={"Authorization": f"Bearer {live['reader_key']}"})
    assert api.status_code == 200
    assert downloaded == api.text
    assert downloaded.count("\n") > 1


def test_key_without_campaigns_write_sees_no_launch_and_is_refused(browser, live):
    sign_in(browser, live, live["reader_key"])
    open_page(browser, f"{live['url']}/console/overview")
    nav = browser.find_element("css selector", "header nav").text
    assert "Campaigns" not in nav and "Overview" in nav
    assert browser.find_elements("id", "launch") == []
    open_page(browser, f"{live['url']}/console/campaigns")
    assert browser.find_elements("id", "launch") == []
    # A well-formed POST with this session's CSRF token (from the sign-out form) is refused by scope.
    with db.session() as session:
        before = session.execute(select(func.count()).select_from(Campaign)).scalar_one()
    refused = post_form(browser, None, f"{live['url']}/console/campaigns/win-back",
                        {"csrf_token": browser.find_element("name", "csrf_token").get_attribute("value"),
                         "idempotency_key": uuid.uuid4().hex, "lifecycle": "dormant"})
    assert refused["status"] == 403
    refused_run = post_form(browser, None, f"{live['url']}/console/runs/start",
                            {"csrf_token": browser.find_element("name", "csrf_token").get_attribute("value")})
    assert refused_run["status"] == 403
    with db.session() as session:
        assert session.execute(select(func.count()).select_from(Campaign)).scalar_one() == before
    severe_messages(browser)  # the refused requests are logged by the browser on purpose


def test_forms_without_their_csrf_token_are_refused(browser, live):
    sign_in(browser, live, live["admin_key"])
    open_page(browser, f"{live['url']}/console/campaigns")
    with db.session() as session:
        before = session.execute(select(func.count()).select_from(Campaign)).scalar_one()
    refused = post_form(browser, "win-back-form", f"{live['url']}/console/campaigns/win-back",
                        {"csrf_token": None, "idempotency_key": uuid.uuid4().hex})
    assert refused["status"] == 400
    forged = post_form(browser, "win-back-form", f"{live['url']}/console/campaigns/win-back",
                       {"csrf_token": "forged", "idempotency_key": uuid.uuid4().hex})
    assert forged["status"] == 400
    with db.session() as session:
        assert session.execute(select(func.count()).select_from(Campaign)).scalar_one() == before
    # The sign-in form too: a key posted without the token does not sign anyone in.
    response = requests.post(f"{live['url']}/console/login", data={"api_key": live["admin_key"]},
                             allow_redirects=False)
    assert response.status_code == 400
    assert "Location" not in response.headers
    severe_messages(browser)
