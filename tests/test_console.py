"""The operator console in a real browser: headless Chromium (Debian's) driven by Playwright, against a real bridge.

One bridge (with the Realtime and Twilio REST simulators) runs on its own event loop in a thread for the
whole module, and one browser serves every test; each test has its own browser context (its own cookies).
Screenshots of every page land in tests/output/console/.
"""

from __future__ import annotations

import asyncio
import json
import os
import re
import threading
import time
from collections.abc import Callable, Coroutine, Iterator
from contextlib import AsyncExitStack
from pathlib import Path
from typing import Any, TypeVar

import httpx
import pytest

from support import API_KEY, AUTH_TOKEN, CLINIC, PUBLIC_URL, SHOP, TEST_CONFIG, new_call
from telephony_bridge.config import load_config, settings_from_env
from telephony_bridge.testing.bridge_server import serve_bridge
from telephony_bridge.testing.realtime_simulator import RealtimeSimulator, ScriptedAnswer, ScriptedCall
from telephony_bridge.testing.tool_server import ToolReply, ToolServer
from telephony_bridge.testing.twilio_api import TwilioApiSimulator
from telephony_bridge.testing.twilio_simulator import SimulatedCall, speech_like_ulaw
from telephony_bridge.testing.vad import speech_like_pcm16

pytestmark = pytest.mark.xdist_group("console")

CHROMIUM = Path("/usr/bin/chromium")
CHROMIUM_FLAGS = [
    "--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run", "--disable-background-networking",
    "--disable-component-update", "--disable-sync", "--autoplay-policy=no-user-gesture-required",
]
ADMIN_TOKEN = "console-admin-token-for-tests"
AXE = Path(__file__).parent / "vendor" / "axe-core" / "axe.min.js"
SHOTS = Path(__file__).parent / "output" / "console"
GREETING = "Corner Hardware, how can I help?"
ANSWER = "We are open until six today, and the paint aisle is at the back."
CONSOLE_CONFIG = TEST_CONFIG.replace("[defaults]\n", "[defaults]\nmax_call_minutes = 30\n", 1) + f"""
[numbers."{SHOP}".transfer]
front_desk = "+14155550199"

[[numbers."{SHOP}".tools]]
name = "opening_hours"
description = "Today's opening hours of the shop."
url = "TOOL_URL"
"""
T = TypeVar("T")


def _missing(reason: str) -> None:
    if os.environ.get("CI") == "true":
        pytest.fail(f"{reason} (CI=true: the browser tests must run)")
    pytest.skip(reason, allow_module_level=True)


if not CHROMIUM.exists():
    _missing("Debian's chromium is not installed at /usr/bin/chromium")
try:
    from playwright.sync_api import Browser, BrowserContext, Page, expect, sync_playwright
except ImportError:
    _missing("playwright (the Python package) is not installed")


class Line:
    """The bridge, the Realtime simulator and Twilio's REST simulator, on an event loop of their own."""

    def __init__(self, folder: Path) -> None:
        self.folder = folder
        self.config_path = folder / "bridge.toml"
        self.good_config = ""
        self.loop = asyncio.new_event_loop()
        self._thread = threading.Thread(target=self.loop.run_forever, name="console-bridge", daemon=True)
        self._stack = AsyncExitStack()
        self.url = ""
        self.calls: list[SimulatedCall] = []

    def run(self, coroutine: Coroutine[Any, Any, T], timeout: float = 30.0) -> T:
        return asyncio.run_coroutine_threadsafe(coroutine, self.loop).result(timeout)

    def start(self) -> None:
        self._thread.start()
        self.run(self._start())

    async def _start(self) -> None:
        answer = speech_like_pcm16(1500)
        self.realtime = await self._stack.enter_async_context(RealtimeSimulator(
            require_key=API_KEY,
            answers=[ScriptedAnswer(answer, GREETING), ScriptedAnswer(None, calls=(ScriptedCall("opening_hours", {}),)),
                     ScriptedAnswer(answer, ANSWER)],
        ))
        tools = await self._stack.enter_async_context(
            ToolServer(lambda path, body: ToolReply(body={"open": "9:00", "close": "18:00"}, delay_s=0.2))
        )
        self.good_config = (
            CONSOLE_CONFIG.replace('path = ""', f"path = '{self.folder / 'calls.sqlite3'}'")
            .replace(f'greeting = "{GREETING}"', f'greeting = "{GREETING}"\nrecord = true\ntranscription = "gpt-4o-transcribe"')
            .replace("TOOL_URL", tools.url("/hours"))
            + f"\n[recording]\nfolder = '{self.folder / 'recordings'}'\n"
        )
        self.config_path.write_text(self.good_config)
        self.api = await self._stack.enter_async_context(TwilioApiSimulator(auth_token=AUTH_TOKEN))
        settings = settings_from_env({
            "PUBLIC_URL": PUBLIC_URL, "TWILIO_AUTH_TOKEN": AUTH_TOKEN, "OPENAI_API_KEY": API_KEY,
            "REALTIME_URL": self.realtime.url, "BRIDGE_CONFIG": str(self.config_path), "BRIDGE_ADMIN_TOKEN": ADMIN_TOKEN,
            "TWILIO_API_URL": self.api.url,
        })
        self.url = await self._stack.enter_async_context(serve_bridge(settings, load_config(self.config_path)))

    def stop(self) -> None:
        self.run(self._stop())
        self.loop.call_soon_threadsafe(self.loop.stop)
        self._thread.join(5)

    async def _stop(self) -> None:
        for call in self.calls:
            await call.close()
        await self._stack.aclose()

    def place_call(self, to_number: str = SHOP) -> SimulatedCall:
        """A call that follows the webhook's TwiML as Twilio would, its stream open."""
        async def place() -> SimulatedCall:
            call = new_call(self.url, to_number)
            self.api.register(call)
            await call.run()
            await call.wait_for_step("stream-opened")
            return call

        call = self.run(place())
        self.calls.append(call)
        return call

    def say(self, call: SimulatedCall, ms: int = 900) -> None:
        async def say() -> None:
            call.say(speech_like_ulaw(ms))
            await call.wait_said()

        self.run(say())

    def hang_up(self, call: SimulatedCall) -> None:
        self.run(call.hang_up())


@pytest.fixture(scope="module")
def line(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Line]:
    bridge = Line(tmp_path_factory.mktemp("console"))
    bridge.start()
    yield bridge
    bridge.stop()


@pytest.fixture(scope="module")
def browser(line: Line) -> Iterator[Browser]:
    with sync_playwright() as playwright:
        chromium = playwright.chromium.launch(executable_path=str(CHROMIUM), args=CHROMIUM_FLAGS)
        yield chromium
        chromium.close()


@pytest.fixture
def context(browser: Browser, line: Line) -> Iterator[BrowserContext]:
    context = browser.new_context(base_url=line.url, viewport={"width": 1200, "height": 900})
    yield context
    context.close()


@pytest.fixture
def page(context: BrowserContext) -> Page:
    page = context.new_page()
    page.set_default_timeout(15_000)
    return page


def sign_in(page: Page, token: str = ADMIN_TOKEN) -> None:
    page.goto("/console/sign-in")
    page.get_by_label("Admin token").fill(token)
    page.get_by_role("button", name="Sign in").click()


def screenshot(page: Page, name: str) -> None:
    SHOTS.mkdir(parents=True, exist_ok=True)
    page.screenshot(path=str(SHOTS / f"{name}.png"), full_page=True)


def signed_in_client(line: Line) -> tuple[httpx.Client, str]:
    """An HTTP client holding a console session cookie, and that session's CSRF token (read from a page)."""
    client = httpx.Client(base_url=line.url, follow_redirects=False)
    client.post("/console/sign-in", data={"token": ADMIN_TOKEN})
    page = client.get("/console/numbers").text
    match = re.search(r'<meta name="csrf-token" content="([^"]+)">', page)
    assert match, page
    return client, match.group(1)


def test_pages_and_the_api_refuse_a_browser_that_has_not_signed_in(page: Page, line: Line) -> None:
    for path in ("/console/live", "/console/calls", "/console/calls/CA123", "/console/numbers"):
        page.goto(path)
        expect(page).to_have_url(re.compile(r"/console/sign-in$"))
    assert page.request.get("/admin/calls/live").status == 401
    assert page.request.post("/admin/reload").status == 401


def test_signing_in_needs_the_admin_token_and_signing_out_ends_the_session(page: Page, line: Line) -> None:
    sign_in(page, "not-the-token")
    expect(page.get_by_role("alert")).to_have_text("That is not the admin token.")
    screenshot(page, "sign-in-refused")
    sign_in(page)
    expect(page).to_have_url(re.compile(r"/console/live$"))
    assert page.request.get("/admin/calls/live").status == 200
    page.get_by_role("button", name="Sign out").click()
    expect(page).to_have_url(re.compile(r"/console/sign-in$"))
    assert page.request.get("/admin/calls/live").status == 401


def test_the_keyboard_reaches_the_skip_link_then_the_pages_and_sign_out(page: Page, line: Line) -> None:
    sign_in(page)
    page.goto("/console/calls")
    page.keyboard.press("Tab")
    expect(page.get_by_role("link", name="Skip to content")).to_be_focused()
    page.keyboard.press("Enter")
    expect(page.locator("main")).to_be_focused()
    page.goto("/console/live")
    order = []
    for _ in range(5):
        page.keyboard.press("Tab")
        order.append(page.evaluate("() => document.activeElement.textContent.trim()"))
    assert order == ["Skip to content", "Live", "Calls", "Numbers", "Sign out"]
    page.keyboard.press("Shift+Tab")
    page.keyboard.press("Enter")
    expect(page).to_have_url(re.compile(r"/console/numbers$"))


def test_the_session_cookie_is_httponly_strict_and_the_pages_forbid_inline_script_and_framing(line: Line) -> None:
    with httpx.Client(base_url=line.url) as client:
        answer = client.post("/console/sign-in", data={"token": ADMIN_TOKEN})
        cookie = answer.headers["set-cookie"]
        page = client.get("/console/live")
    assert answer.status_code == 303 and "HttpOnly" in cookie and "SameSite=strict" in cookie
    assert "Secure" not in cookie, "plain HTTP on loopback: a Secure cookie would never come back"
    policy = page.headers["content-security-policy"]
    assert "default-src 'self'" in policy and "frame-ancestors 'none'" in policy and "unsafe-inline" not in policy
    assert "<script>" not in page.text and " style=" not in page.text and ADMIN_TOKEN not in page.text
    with httpx.Client(base_url=line.url, headers={"Host": "console.example.com"}) as client:
        remote = client.post("/console/sign-in", data={"token": ADMIN_TOKEN}).headers["set-cookie"]
    assert "Secure" in remote, "reached by any name but loopback's, the cookie travels only over HTTPS"


def test_revealing_a_callers_number_goes_through_the_api_and_is_logged_without_it(
    line: Line, finished_call: str, caplog: pytest.LogCaptureFixture
) -> None:
    client, csrf = signed_in_client(line)
    try:
        detail = client.get(f"/admin/calls/{finished_call}").json()
        with caplog.at_level("INFO", logger="telephony_bridge.admin.api"):
            revealed = client.post(f"/admin/calls/{finished_call}/caller", headers={"X-CSRF-Token": csrf})
    finally:
        client.close()
    assert detail["from"] == "+1500555****", "a console session sees callers masked"
    assert revealed.status_code == 200 and revealed.json()["caller"] == "+15005550006"
    [record] = [r for r in caplog.records if getattr(r, "event", "") == "caller_revealed"]
    assert record.call_sid == finished_call and record.by == "console" and "5550006" not in record.getMessage()


def test_a_cookie_without_the_right_csrf_token_changes_nothing(line: Line) -> None:
    client, csrf = signed_in_client(line)
    try:
        assert client.get("/admin/numbers").status_code == 200, "reading needs no CSRF token"
        no_token = client.post("/admin/reload")
        forged = client.post("/admin/reload", headers={"X-CSRF-Token": "forged-" + csrf[7:]})
        ending = client.post("/admin/calls/CA0/end", headers={"X-CSRF-Token": "forged"})
        sign_out = client.post("/console/sign-out", data={"csrf_token": "forged"})
        right = client.post("/admin/reload", headers={"X-CSRF-Token": csrf})
    finally:
        client.close()
    assert (no_token.status_code, forged.status_code, ending.status_code, sign_out.status_code) == (403, 403, 403, 403)
    assert "CSRF" in forged.json()["detail"]
    assert right.status_code == 200 and right.json()["ok"] is True


def test_the_live_page_shows_a_calls_transcript_as_it_happens(page: Page, line: Line) -> None:
    sign_in(page)
    expect(page.get_by_role("status")).to_have_text(re.compile("Connected"))
    call = line.place_call()
    card = page.locator(f'article[data-call-sid="{call.call_sid}"]')
    expect(card.get_by_role("heading")).to_have_text(SHOP)
    expect(card).to_contain_text("+1500555****")
    expect(card.locator(".transcript")).to_contain_text(GREETING)
    line.say(call)
    expect(card.locator(".transcript")).to_contain_text("(simulated caller speech)")
    expect(card.locator(".transcript")).to_contain_text(ANSWER)
    expect(card.locator(".badge")).to_have_text(re.compile("listening|speaking|using a tool|transferring"))
    screenshot(page, "live")
    card.get_by_role("button", name="Reveal number").click()
    expect(card).to_contain_text("+15005550006")
    line.hang_up(call)
    expect(card).to_have_count(0)
    expect(page.get_by_role("status")).to_contain_text(f"Call {call.call_sid} ended")


def test_a_live_call_is_ended_from_the_page_after_a_confirmation(page: Page, line: Line) -> None:
    sign_in(page)
    call = line.place_call(CLINIC)
    card = page.locator(f'article[data-call-sid="{call.call_sid}"]')
    card.get_by_role("button", name="End call").click()
    dialog = page.get_by_role("dialog")
    expect(dialog).to_be_visible()
    screenshot(page, "live-end-confirmation")
    dialog.get_by_role("button", name="Keep the call").click()
    expect(card).to_be_visible()
    assert line.api.requests_to(f"/Calls/{call.call_sid}.json") == [], "keeping the call asks Twilio nothing"
    card.get_by_role("button", name="End call").click()
    page.get_by_role("dialog").get_by_role("button", name="End the call").click()
    expect(card).to_have_count(0)
    expect(page.get_by_role("status")).to_contain_text("operator_ended")
    line.run(call.wait_over())
    [request] = line.api.requests_to(f"/Calls/{call.call_sid}.json")
    assert "<Hangup" in request.params["Twiml"]


@pytest.fixture(scope="module")
def finished_call(line: Line) -> str:
    """A recorded call to the shop that has ended and is in the call log: greeting, a question, an answer."""
    call = line.place_call()
    with httpx.Client(base_url=line.url, headers={"Authorization": f"Bearer {ADMIN_TOKEN}"}) as admin:
        def said(text: str) -> bool:
            calls = admin.get("/admin/calls/live").json()["calls"]
            return any(text in line["text"] for live in calls for line in live["transcript"])

        wait_until(lambda: said(GREETING))
        time.sleep(1.0)
        line.say(call)
        wait_until(lambda: said(ANSWER))
        time.sleep(1.0)
        line.hang_up(call)
        wait_until(lambda: admin.get(f"/admin/calls/{call.call_sid}").status_code == 200)
    return call.call_sid


def wait_until(condition: Callable[[], bool], timeout_s: float = 15.0) -> None:
    deadline = time.monotonic() + timeout_s
    while not condition():
        assert time.monotonic() < deadline, "timed out"
        time.sleep(0.1)


def test_a_finished_call_opens_from_the_call_list_with_its_transcript_and_timeline(
    page: Page, line: Line, finished_call: str
) -> None:
    sign_in(page)
    page.get_by_role("link", name="Calls").click()
    row = page.locator("tbody tr", has=page.get_by_role("link", name=finished_call))
    expect(row).to_contain_text("+1500555****")
    expect(row).to_contain_text("caller_hung_up")
    screenshot(page, "calls")
    page.get_by_label("Words in the transcript").fill("words nobody said")
    page.get_by_role("button", name="Search").click()
    expect(page.get_by_role("status")).to_have_text("No calls match.")
    page.get_by_label("Words in the transcript").fill("paint aisle")
    page.get_by_label("Number called").fill(SHOP)
    page.get_by_role("button", name="Search").click()
    expect(row).to_be_visible()
    expect(page.locator("tbody tr", has_text=CLINIC)).to_have_count(0)
    page.get_by_role("link", name=finished_call).click()
    expect(page).to_have_url(re.compile(f"/console/calls/{finished_call}$"))
    transcript = page.locator("#transcript")
    expect(transcript).to_contain_text(GREETING)
    expect(transcript).to_contain_text(ANSWER)
    expect(page.locator("#call-facts")).to_contain_text("caller_hung_up")
    expect(page.locator("#call-facts")).to_contain_text(re.compile(r"opening_hours\(\{\}\) -> .*\[ok, \d+ ms\]"))
    expect(page.locator("#timeline svg text", has_text="opening_hours")).to_have_text(re.compile(r"opening_hours \d+ ms"))
    expect(page.locator("#timeline svg rect[fill='#1f6fa8']").first).to_be_attached()
    expect(page.locator("#timeline svg rect[fill='#b35412']").first).to_be_attached()
    expect(page.locator("#call-facts")).to_contain_text(re.compile(r"Tokens\s*\d+ in \(\d+ audio"))


def test_the_numbers_page_shows_each_numbers_call_policy_and_its_usage(page: Page, line: Line, finished_call: str) -> None:
    sign_in(page)
    page.goto("/console/numbers")
    policy = page.locator("#policy")
    expect(policy.locator("h3", has_text=SHOP)).to_be_visible()
    expect(policy).to_contain_text("30 min a call")
    expect(policy).to_contain_text("always open (no hours set)")
    usage = page.locator("#usage tr", has_text=SHOP)
    expect(usage).to_be_visible()
    calls = int(usage.locator("td").nth(2).inner_text())
    tokens_in = int(usage.locator("td").nth(4).inner_text())
    assert calls >= 1 and tokens_in > 0, "the finished call's usage is counted"
    screenshot(page, "numbers-policy")


def test_a_calls_recording_plays_and_seeks_with_the_timeline_following(page: Page, line: Line, finished_call: str) -> None:
    ranges: list[str] = []
    page.on("request", lambda request: ranges.append(request.headers.get("range", "")) if ".wav" in request.url else None)
    sign_in(page)
    page.goto(f"/console/calls/{finished_call}")
    player = page.locator("#player")
    expect(page.locator("#playhead")).to_be_attached()
    duration = page.wait_for_function("() => { const p = document.getElementById('player'); "
                                      "return p.readyState >= 1 && p.duration > 0 ? p.duration : false; }").json_value()
    assert duration > 3
    page.evaluate("() => document.getElementById('player').play()")
    page.wait_for_function("() => document.getElementById('player').currentTime > 0.3")
    svg = page.locator("#timeline svg")
    box = svg.bounding_box()
    assert box is not None
    left, width, seconds = (float(svg.get_attribute(name) or 0) for name in ("data-left", "data-width", "data-seconds"))
    scale = box["width"] / 960
    target_s = seconds * 0.75
    svg.click(position={"x": (left + width * 0.75) * scale, "y": 60 * scale})
    page.wait_for_function(f"() => Math.abs(document.getElementById('player').currentTime - {target_s}) < 0.6")
    playhead_x = float(page.locator("#playhead").get_attribute("x1") or 0)
    assert abs(playhead_x - (left + width * 0.75)) < width * 0.05
    player.evaluate("player => player.pause()")
    screenshot(page, "call")
    assert any(value.startswith("bytes=") for value in ranges), f"the player asked for ranges: {ranges}"


def test_reloading_a_bad_configuration_shows_its_one_line_errors(page: Page, line: Line) -> None:
    sign_in(page)
    page.get_by_role("link", name="Numbers").click()
    expect(page.locator("#config-hash")).not_to_have_text("…")
    good_hash = page.locator("#config-hash").inner_text()
    expect(page.locator("details.number summary", has_text=SHOP)).to_be_visible()
    page.locator("details.number summary", has_text=SHOP).click()
    expect(page.locator("details.number[open]")).to_contain_text("front_desk")
    line.config_path.write_text(line.good_config.replace('voice = "marin"', 'voise = "marin"'))
    try:
        page.get_by_role("button", name="Reload the configuration").click()
        expect(page.get_by_role("alert")).to_contain_text("The file was refused")
        expect(page.locator("#reload-result .errors")).to_contain_text("defaults.voise")
        screenshot(page, "numbers-bad-reload")
    finally:
        line.config_path.write_text(line.good_config)
    expect(page.locator("#config-hash")).to_have_text(good_hash)
    page.get_by_role("button", name="Reload the configuration").click()
    expect(page.locator("#reload-result")).to_contain_text("Reloaded")
    screenshot(page, "numbers")


def test_no_page_has_serious_or_critical_accessibility_violations(
    browser: Browser, line: Line, finished_call: str
) -> None:
    # axe is injected as a script: this context lets it past the pages' Content-Security-Policy.
    context = browser.new_context(base_url=line.url, bypass_csp=True, viewport={"width": 1200, "height": 900})
    try:
        page = context.new_page()
        page.goto("/console/sign-in")
        found = {"sign-in": _axe(page)}
        sign_in(page)
        call = line.place_call()
        expect(page.locator(".card .transcript")).to_contain_text(GREETING)
        found["live"] = _axe(page)
        line.hang_up(call)
        page.goto("/console/calls")
        expect(page.locator("tbody tr").first).to_be_visible()
        found["calls"] = _axe(page)
        page.goto(f"/console/calls/{finished_call}")
        expect(page.locator("#playhead")).to_be_attached()
        found["call"] = _axe(page)
        page.goto("/console/numbers")
        expect(page.locator("details.number").first).to_be_visible()
        found["numbers"] = _axe(page)
    finally:
        context.close()
    serious = {name: violations for name, violations in found.items() if violations}
    assert serious == {}, json.dumps(serious, indent=1)


def _axe(page: Page) -> list[dict[str, Any]]:
    """axe-core's serious and critical violations on the page: rule, impact and the elements it found."""
    page.add_script_tag(path=str(AXE))
    result = page.evaluate("async () => (await axe.run(document, {resultTypes: ['violations']})).violations")
    return [
        {"rule": v["id"], "impact": v["impact"], "nodes": [n["target"] for n in v["nodes"]][:5]}
        for v in result if v["impact"] in ("serious", "critical")
    ]
