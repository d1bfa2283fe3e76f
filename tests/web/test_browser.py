"""The dashboard in real headless Chromium (Debian's package) driven by Playwright.

A user logs in with a token, sees a flooding tenant and a small one on the tenants page,
opens a dead job, replays it and watches it succeed (a worker is running). Screenshots
go to tests/web/artifacts/ (git-ignored). Without Chromium the test skips loudly; with
CONVEYOR_REQUIRE_SERVICES=1 (CI) it fails instead.
"""

from __future__ import annotations

import os
import shutil
import time
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest

from conveyor.worker import Worker
from tests.services import services_required
from tests.web.conftest import ARTIFACTS, Running

CHROMIUM = os.environ.get("CONVEYOR_CHROMIUM", "/usr/bin/chromium")
CHROMIUM_ARGS = [
    "--headless",
    "--no-sandbox",
    "--disable-gpu",
    "--disable-quic",
    "--no-first-run",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
]


@pytest.fixture
def page(tmp_path: Path) -> Iterator[object]:
    if not (os.path.exists(CHROMIUM) or shutil.which(CHROMIUM)):
        message = f"Chromium is not installed at {CHROMIUM} (apt-get install chromium)"
        if services_required():
            pytest.fail(f"{message}; CONVEYOR_REQUIRE_SERVICES=1 makes this a failure")
        pytest.skip(f"!!! SKIPPED: {message}. The browser tests did not run. !!!")
    from playwright.sync_api import sync_playwright

    with sync_playwright() as pw:
        context = pw.chromium.launch_persistent_context(
            str(tmp_path / "chromium-profile"),  # a fresh --user-data-dir
            executable_path=CHROMIUM,
            headless=True,
            args=CHROMIUM_ARGS,
            viewport={"width": 1280, "height": 900},
        )
        try:
            yield context.new_page()
        finally:
            context.close()


def _wait_for_state(client: httpx.Client, job_id: str, state: str, timeout: float = 30) -> None:
    deadline = time.monotonic() + timeout
    while client.get(f"/jobs/{job_id}").json()["state"] != state:
        assert time.monotonic() < deadline, f"job {job_id} did not become {state}"
        time.sleep(0.05)


def test_log_in_see_tenants_replay_a_dead_job(
    served: Running, worker: Worker, page: object, tmp_path: Path
) -> None:
    from playwright.sync_api import Page, expect

    assert isinstance(page, Page)
    ARTIFACTS.mkdir(exist_ok=True)
    admin = served.client(served.admin)
    # A flood from one tenant and two jobs from a small one, in a queue no worker serves,
    # so the tenants page shows them waiting.
    flood = [{"task": "media.resize", "args": [f"f{i}"], "queue": "media"} for i in range(300)]
    for item in flood:
        item["tenant"] = "org-flood"
    small = [
        {"task": "media.resize", "args": [f"s{i}"], "queue": "media", "tenant": "org-small"}
        for i in range(2)
    ]
    assert admin.post("/jobs/batch", json={"jobs": flood + small}).status_code == 201
    marker = tmp_path / "fixed"
    dead = admin.post(
        "/jobs", json={"task": "flaky", "args": [str(marker)], "tenant": "org-small"}
    ).json()["id"]
    _wait_for_state(admin, dead, "dead")

    # Log in: any dashboard page sends us to the login form first.
    page.goto(served.base + "/ui/tenants")
    expect(page).to_have_url(served.base + "/ui/login?next=%2Fui%2Ftenants")
    page.fill("input[name=token]", "cvy_wrong")
    page.click("button[type=submit]")
    expect(page.locator(".error")).to_contain_text("Unknown or revoked token")
    page.fill("input[name=token]", served.admin)
    page.click("button[type=submit]")
    expect(page).to_have_url(served.base + "/ui/tenants")

    # The flooding tenant and the small one, side by side.
    flood_row = page.locator("#tenants tr[data-queue=media][data-tenant=org-flood]")
    small_row = page.locator("#tenants tr[data-queue=media][data-tenant=org-small]")
    expect(flood_row).to_contain_text("300")
    expect(small_row).to_contain_text("media")
    assert small_row.locator("td").nth(2).inner_text() == "2"
    page.screenshot(path=str(ARTIFACTS / "tenants.png"), full_page=True)

    # A running job shows on the workers page, with the lease its heartbeat renewed.
    slow = admin.post("/jobs", json={"task": "slow", "args": [4.0]}).json()["id"]
    _wait_for_state(admin, slow, "running")
    page.click("nav >> text=Workers")
    expect(page.locator("td.mono").first).to_contain_text(worker.id)
    page.screenshot(path=str(ARTIFACTS / "workers.png"), full_page=True)
    page.goto(served.base + f"/ui/jobs/{slow}")
    expect(page.locator("progress")).to_be_visible()
    page.screenshot(path=str(ARTIFACTS / "running-job.png"), full_page=True)

    page.click("nav >> text=Overview")
    expect(page.locator(".card-dead .num")).to_have_text("1")
    page.wait_for_timeout(1500)  # let the charts draw a few points
    page.screenshot(path=str(ARTIFACTS / "overview.png"), full_page=True)

    # The dead job: its error and traceback, then replay it with the fix in place.
    page.click("nav >> text=Jobs")
    page.select_option("select[name=state]", "dead")
    page.click("form.filters button")
    expect(page.locator("table.jobs tbody tr")).to_have_count(1)
    page.screenshot(path=str(ARTIFACTS / "jobs-filtered.png"), full_page=True)

    page.click("nav >> text=Dead letters")
    page.click(f"a:text('{dead}')")
    expect(page.locator("#job-state")).to_contain_text("dead")
    expect(page.locator(".traceback")).to_contain_text("RuntimeError")
    page.screenshot(path=str(ARTIFACTS / "dead-job.png"), full_page=True)
    marker.write_text("ok")
    page.click("#replay")
    expect(page.locator(".flash")).to_contain_text("replayed")
    # No reload from here on: the live part of the page follows the job to success.
    expect(page.locator("#job-state")).to_contain_text("succeeded", timeout=30_000)
    expect(page.locator("#result")).to_contain_text("fixed")
    page.screenshot(path=str(ARTIFACTS / "replayed-job.png"), full_page=True)
    assert admin.get(f"/jobs/{dead}").json()["result"] == "fixed"
