"""The dashboard in a real headless browser (Debian's chromium, driven by selenium through the
system chromedriver) against a real swarm with a trace store (the session's `trace_gateway`,
verification off): what each role's key sees, a revocation that takes effect, and a 403 for the
wrong role. Screenshots land in each test's tmp dir.

Without chromium and chromium-driver installed these tests fail (they do not skip): `make
install` installs both."""

from __future__ import annotations

import os
import shutil
from pathlib import Path
from types import SimpleNamespace

import httpx
import pytest

pytestmark = pytest.mark.slow
CANARY = "dashboard canary seventy"
WAIT_S = 20


@pytest.fixture(scope="module")
def swarm(trace_gateway):
    """The shared trace gateway's addresses and store, with this module's own accounts."""
    keys = {short: trace_gateway.account(f"dashboard-{short}", role)[1] for short, role in
            [("alice", "contributor"), ("app", "app"), ("admin", "maintainer")]}
    return SimpleNamespace(base_url=trace_gateway.swarm.base_url, keys=keys,
                           tracker_url=trace_gateway.swarm.tracker_url,
                           store=trace_gateway.store)


def browser_or_fail():
    """Chromium and its driver from the system packages; selenium-manager stays offline."""
    chromium = shutil.which("chromium")
    driver = shutil.which("chromedriver")
    if chromium is None or driver is None:
        pytest.fail("the dashboard tests need a browser: install the Debian packages "
                    "'chromium' and 'chromium-driver' (apt-get install -y chromium "
                    "chromium-driver; `make install` does it)", pytrace=False)
    os.environ["SE_OFFLINE"] = "true"  # never let selenium-manager download a browser
    from selenium import webdriver
    from selenium.webdriver.chrome.service import Service

    options = webdriver.ChromeOptions()
    options.binary_location = chromium
    for arg in ("--headless=new", "--no-sandbox", "--disable-dev-shm-usage", "--disable-gpu",
                "--window-size=1400,1800", "--no-first-run", "--disable-extensions"):
        options.add_argument(arg)
    return webdriver.Chrome(service=Service(executable_path=driver), options=options)


@pytest.fixture(scope="module")
def browser():
    driver = browser_or_fail()
    yield driver
    driver.quit()


def api(swarm, who: str, method: str, path: str, **kw) -> httpx.Response:
    return httpx.request(method, f"{swarm.base_url}{path}", timeout=60,
                         headers={"Authorization": f"Bearer {swarm.keys[who]}"}, **kw)


def chat(swarm, who: str, text: str) -> str | None:
    r = api(swarm, who, "POST", "/v1/chat/completions", json={
        "model": "tiny", "messages": [{"role": "user", "content": text}], "max_tokens": 3,
        "temperature": 0})
    assert r.status_code == 200, r.text
    return r.json()["shoal"]["trace_id"]


def sign_in(browser, swarm, who: str | None, page: str, key: str | None = None):
    """Open the dashboard at `page`, sign out whoever was signed in, sign in with a key."""
    from selenium.webdriver.common.by import By

    browser.get(f"{swarm.base_url}/dashboard#{page}")
    browser.execute_script("sessionStorage.clear()")
    browser.refresh()
    field = wait(browser, lambda b: b.find_element(By.ID, "key").is_displayed()
                 and b.find_element(By.ID, "key"))
    field.send_keys(key if key is not None else swarm.keys[who])
    browser.find_element(By.CSS_SELECTOR, "#login button[type=submit]").click()


def wait(browser, condition, timeout: float = WAIT_S):
    from selenium.webdriver.support.ui import WebDriverWait

    return WebDriverWait(browser, timeout).until(condition)


def text_of(browser, css: str) -> str:
    from selenium.webdriver.common.by import By

    return wait(browser, lambda b: b.find_element(By.CSS_SELECTOR, css)).text


def shot(browser, tmp_path: Path, name: str) -> Path:
    path = tmp_path / f"{name}.png"
    assert browser.save_screenshot(str(path)) and path.stat().st_size > 1000
    return path


def test_swarm_page_shows_nodes_and_route_map(browser, swarm, tmp_path):
    from selenium.webdriver.common.by import By

    node_ids = {n["node_id"] for n in httpx.get(f"{swarm.tracker_url}/nodes", timeout=5).json()}
    chat(swarm, "app", "warm up the counters")
    sign_in(browser, swarm, "app", "swarm")
    rows = wait(browser, lambda b: b.find_elements(By.CSS_SELECTOR, "tr.node-row") or None)
    assert {r.get_attribute("data-node-id") for r in rows} == node_ids
    headers = [h.text for h in browser.find_elements(By.CSS_SELECTOR, "thead th")]
    assert "address" not in headers  # an app key sees no addresses or check evidence
    layers = browser.find_elements(By.CSS_SELECTOR, ".layers div")
    assert len(layers) == 4 and not browser.find_elements(By.CSS_SELECTOR, ".layers div.gap")
    assert "requests" in browser.find_element(By.ID, "page").text
    shot(browser, tmp_path, "swarm-app")

    sign_in(browser, swarm, "admin", "swarm")
    wait(browser, lambda b: "address" in [h.text for h in b.find_elements(
        By.CSS_SELECTOR, "thead th")])
    page = browser.find_element(By.ID, "page").text
    assert "ws://127.0.0.1:" in page  # node addresses, for maintainers only
    assert "Verification is off" in page and "unchecked" in page
    shot(browser, tmp_path, "swarm-maintainer")


def test_contributor_sees_their_trace_and_a_revoke_takes_effect(browser, swarm, tmp_path):
    from selenium.webdriver.common.by import By

    grant = api(swarm, "alice", "POST", "/v1/grants", json={"scopes": ["sft"]}).json()
    trace = chat(swarm, "alice", CANARY)
    assert trace is not None
    assert api(swarm, "alice", "POST", "/v1/feedback",
               json={"request_id": trace, "rating": 4}).status_code == 200
    swarm.store.add_dataset_members("sft-dashboard-test", [trace])  # as a curation run would

    sign_in(browser, swarm, "alice", "contributor")
    row = text_of(browser, f'tr[data-trace-id="{trace}"]')
    assert CANARY in row and row.rstrip().endswith("4 Delete")  # my rating, shown with it
    page = browser.find_element(By.ID, "page").text
    assert "sft-dashboard-test" in page  # lineage: the dataset that used my trace
    grant_row = f'tr[data-grant-id="{grant["grant_id"]}"]'
    assert "active" in text_of(browser, grant_row)
    shot(browser, tmp_path, "contributor")

    browser.find_element(By.CSS_SELECTOR, f'{grant_row} button.revoke').click()
    wait(browser, lambda b: "revoked" in b.find_element(By.CSS_SELECTOR, grant_row).text)
    assert chat(swarm, "alice", "after the revoke") is None  # nothing is recorded any more

    browser.find_element(By.ID, "erase").click()
    wait(browser, lambda b: b.switch_to.alert).accept()
    receipt = text_of(browser, "#receipt-body")
    assert '"traces": 1' in receipt and "sft-dashboard-test" in receipt
    assert api(swarm, "alice", "GET", "/v1/traces").json()["data"] == []
    shot(browser, tmp_path, "contributor-erased")


def test_maintainer_page_is_for_maintainers(browser, swarm, tmp_path):
    from selenium.webdriver.common.by import By

    sign_in(browser, swarm, "alice", "maintainer")
    assert text_of(browser, ".forbidden").startswith("403")
    shot(browser, tmp_path, "maintainer-as-contributor")

    sign_in(browser, swarm, "admin", "maintainer")
    record = text_of(browser, 'tr.channel-row[data-channel="production"]')
    version = httpx.get(f"{swarm.base_url}/v1/rollout", timeout=5).json()["current"]
    assert record.startswith("1 " + version.removeprefix("sha256:")[:12])
    page = browser.find_element(By.ID, "page").text
    assert "signed by promote keys" in page
    assert "No Prefect server is configured" in page  # absent parts say so
    shot(browser, tmp_path, "maintainer")


def test_a_wrong_key_is_refused_at_sign_in(browser, swarm):
    from selenium.webdriver.common.by import By

    sign_in(browser, swarm, None, "swarm", key="sk-not-a-key")
    error = wait(browser, lambda b: b.find_element(By.ID, "login-error").text)
    assert "invalid" in error and not browser.find_element(By.ID, "page").text
