"""The status page (GET /status, query.status_page): served only when enabled, with strict headers,
and working in a real headless Chromium driven by Selenium: users shown offline, then online within
seconds of an update, "Mark active", the API key kept out of localStorage and cookies, and the watch
stream (Server-Sent Events read with fetch()) followed when the service offers it.

The browser tests skip only when the chromium or chromedriver binary is absent (Debian: chromium,
chromium-driver; scripts/deps.sh installs both). A screenshot of the page goes to
$USERSTATUS_BUILD_DIR/status-page.png for CI to keep."""
import http.server
import json
import re
import shutil
import threading
import time

import pytest
import requests
from selenium import webdriver
from selenium.webdriver.chrome.service import Service
from selenium.webdriver.common.by import By
from selenium.webdriver.support.ui import WebDriverWait

from conftest import API_KEY, BUILD, call, now_ms, wait_until

CHROMIUM = shutil.which("chromium") or shutil.which("chromium-browser")
CHROMEDRIVER = shutil.which("chromedriver")
needs_browser = pytest.mark.skipif(
    not (CHROMIUM and CHROMEDRIVER),
    reason="the headless browser tests need the chromium and chromedriver binaries "
           "(Debian packages chromium and chromium-driver, installed by scripts/deps.sh)")

PAGE_FILES = {
    "/status": "text/html; charset=utf-8",
    "/status/status.js": "text/javascript; charset=utf-8",
    "/status/status.css": "text/css; charset=utf-8",
    "/status/icon.svg": "image/svg+xml",
    "/status/settings.json": "application/json",
}
UPDATE_SHOWN_WITHIN = 10.0  # Seconds: Kafka, the worker, Redis, then at most one 2 s poll.
PAGE_WAIT = 10.0  # Seconds for the page to show what already happened (2 busy cores, a browser).


def page_config(ns, enabled=True):
    return ns.config(query={"status_page": enabled})


def start_stack(ns, cfg):
    """A worker and a query service. With status changes on, waits until the query service follows
    the changes topic: it answers /health before that (and retries every 5 s while the worker has
    not created the topic yet), and a change published in between never reaches a stream."""
    ns.start_worker(cfg)
    q = ns.start_query(cfg)
    if cfg["changes"].get("enabled", True):
        wait_until(lambda: "watch: following" in q.log(), timeout=15,
                   what="the query service to follow the changes topic")
    return q


# --------------------------------------------------------------------------------------------------
# the HTTP side, no browser


def test_status_page_is_404_when_disabled(query):
    for path in ["/status", "/status/", "/status/status.js", "/status/index.html"]:
        r = requests.get(query.url + path, timeout=5)
        assert r.status_code == 404, path
        assert "Content-Security-Policy" not in r.headers


def test_status_page_files_have_their_type_no_cache_and_a_strict_csp(ns):
    q = ns.start_query(page_config(ns))
    for path, ctype in PAGE_FILES.items():
        r = requests.get(q.url + path, timeout=5, allow_redirects=False)
        assert r.status_code == 200, path
        assert r.headers["Content-Type"] == ctype
        assert r.headers["Cache-Control"] == "no-cache"
        assert r.headers["X-Content-Type-Options"] == "nosniff"
        csp = dict(d.strip().split(" ", 1) for d in r.headers["Content-Security-Policy"].split(";"))
        assert csp["default-src"] == "'self'"
        assert csp["script-src"] == "'self'"
        assert csp["style-src"] == "'self'"
        assert csp["connect-src"] == "'self'"
        assert csp["frame-ancestors"] == "'none'"
        assert r.content, path
        head = requests.head(q.url + path, timeout=5)
        assert head.status_code == 200 and head.headers["Content-Type"] == ctype

    html = requests.get(q.url + "/status", timeout=5).text
    # No inline script or style (the CSP would block them), and nothing from another origin.
    assert not re.search(r"<script(?![^>]*\bsrc=)", html)
    assert "<style" not in html and " style=" not in html and "javascript:" not in html
    for url in re.findall(r'(?:src|href)="([^"]*)"', html):
        assert not re.match(r"([a-z]+:)?//", url), url

    assert requests.get(q.url + "/status/settings.json", timeout=5).json() == {
        "offline_after_ms": 60000, "away_after_ms": 300000}

    r = requests.get(q.url + "/status/", timeout=5, allow_redirects=False)
    assert r.status_code == 308 and r.headers["Location"] == "../status"
    assert requests.get(q.url + "/status/nope.js", timeout=5).status_code == 404
    assert requests.get(q.url + "/statusx", timeout=5).status_code == 404
    r = requests.post(q.url + "/status", data=b"x", timeout=5)
    assert r.status_code == 405 and r.headers["Allow"] == "GET, HEAD"


# --------------------------------------------------------------------------------------------------
# in a real browser


# Browser tests take `browser` before `ns`: the services then stop while the page is still open and
# watching, as when a service restarts under its users, and the browser quits last.
@pytest.fixture
def browser(tmp_path):
    opts = webdriver.ChromeOptions()
    opts.binary_location = CHROMIUM
    for arg in ["--headless=new", "--no-sandbox", "--disable-dev-shm-usage", "--disable-gpu",
                "--window-size=1000,860", "--lang=en-US", "--no-first-run",
                "--disable-background-networking", "--disable-extensions"]:
        opts.add_argument(arg)
    opts.set_capability("goog:loggingPrefs", {"browser": "ALL"})
    service = Service(executable_path=CHROMEDRIVER, log_output=str(tmp_path / "chromedriver.log"))
    driver = webdriver.Chrome(options=opts, service=service)
    yield driver
    driver.quit()


def badge(driver, user):
    return driver.find_element(By.CSS_SELECTOR, 'li[data-user="%s"] .badge' % user).text


def detail(driver, user):
    return driver.find_element(By.CSS_SELECTOR, 'li[data-user="%s"] .detail' % user).text


def wait_badge(driver, user, want, timeout=UPDATE_SHOWN_WITHIN):
    WebDriverWait(driver, timeout, poll_frequency=0.1).until(
        lambda d: badge(d, user) == want,
        message="%s never shown %s (shown: %r)" % (user, want, badge(driver, user)))


def open_page(driver, url, users, remember=False):
    driver.get(url + "/status")
    driver.find_element(By.ID, "api-key").send_keys(API_KEY)
    if remember:
        driver.find_element(By.ID, "remember-key").click()
    driver.find_element(By.ID, "user-ids").send_keys(users)
    driver.find_element(By.ID, "watch").click()


def connection_mode(driver):
    return driver.find_element(By.ID, "connection").get_attribute("data-mode")


def assert_key_not_stored(driver):
    assert driver.execute_script("return window.localStorage.length") == 0
    assert API_KEY not in driver.execute_script("return JSON.stringify(window.localStorage)")
    assert driver.execute_script("return document.cookie") == ""
    assert driver.get_cookies() == []
    assert API_KEY not in driver.current_url


def save_screenshot(driver, path, width):
    """A screenshot of the whole page at that width (the window grows to the page's height)."""
    driver.set_window_size(width, 800)
    height = driver.execute_script("return document.documentElement.scrollHeight")
    driver.set_window_size(width, height + 140)  # + the browser's frame around the viewport
    driver.save_screenshot(str(path))


def assert_no_console_errors(driver, allowed=()):
    """No CSP violation nor script error; a failed request to an allowed path is expected."""
    errors = [e["message"] for e in driver.get_log("browser") if e["level"] == "SEVERE"
              and not any(a in e["message"] for a in allowed)]
    assert errors == []


# With status changes on, the page follows the watch stream; with them off the service answers the
# watch request with error 108 and the page polls get_user_status: both must show the update.
@needs_browser
@pytest.mark.parametrize("changes_enabled, mode", [(True, "live"), (False, "polling")],
                         ids=["watch_stream", "polling"])
def test_page_shows_a_user_going_from_offline_to_online(browser, ns, changes_enabled, mode):
    cfg = page_config(ns)
    cfg["changes"]["enabled"] = changes_enabled
    q = start_stack(ns, cfg)
    open_page(browser, q.url, "alice, bob")
    wait_badge(browser, "alice", "offline")
    wait_badge(browser, "bob", "offline")
    assert detail(browser, "bob") == "never seen"
    WebDriverWait(browser, PAGE_WAIT).until(lambda d: connection_mode(d) == mode)

    call(q.url, "update_user_status", {"users": ["bob"], "state": "dnd"})
    t0 = time.monotonic()
    wait_badge(browser, "bob", "online")
    shown_after = time.monotonic() - t0
    assert re.fullmatch(r"last active (just now|\d+ s ago)", detail(browser, "bob"))
    assert browser.find_element(By.CSS_SELECTOR, 'li[data-user="bob"] .state').text == "dnd"
    assert badge(browser, "alice") == "offline"
    assert shown_after < UPDATE_SHOWN_WITHIN

    assert_key_not_stored(browser)
    assert API_KEY not in browser.execute_script("return JSON.stringify(window.sessionStorage)")
    if changes_enabled:
        save_screenshot(browser, BUILD / "status-page.png", 1000)
        save_screenshot(browser, BUILD / "status-page-narrow.png", 380)  # A phone's width.
        assert badge(browser, "bob") == "online"
    assert_no_console_errors(browser)


@needs_browser
def test_mark_active_turns_an_away_user_online_and_the_key_may_stay_in_the_tab(browser, ns):
    cfg = page_config(ns)
    q = start_stack(ns, cfg)
    # Connected now, but last active 10 minutes ago: away.
    ns.producer.event("online", "carol", time_ms=now_ms())
    ns.producer.event("active", "carol", time_ms=now_ms() - 10 * 60 * 1000)
    ns.producer.flush()
    open_page(browser, q.url, "carol", remember=True)
    wait_badge(browser, "carol", "away")
    assert detail(browser, "carol") == "last active 10 min ago"

    browser.find_element(By.CSS_SELECTOR, 'li[data-user="carol"] button.mark-active').click()
    wait_badge(browser, "carol", "online")
    assert "active" in call(q.url, "get_user_status", {"users": ["carol"]})["result"]["statuses"][0]

    # Asked to keep the key: in this tab's sessionStorage, still never in localStorage or cookies.
    assert browser.execute_script("return sessionStorage.getItem('userstatus.apiKey')") == API_KEY
    assert_key_not_stored(browser)
    # A reload in the same tab watches the same users again with the kept key.
    browser.refresh()
    wait_badge(browser, "carol", "online")
    assert_no_console_errors(browser)


@needs_browser
def test_a_wrong_key_is_reported_forgotten_and_watching_stops(browser, ns):
    q = ns.start_query(page_config(ns))
    browser.get(q.url + "/status")
    browser.find_element(By.ID, "api-key").send_keys("not-the-key")
    browser.find_element(By.ID, "remember-key").click()
    browser.find_element(By.ID, "user-ids").send_keys("frank")
    browser.find_element(By.ID, "watch").click()
    WebDriverWait(browser, PAGE_WAIT).until(lambda d: connection_mode(d) == "error")
    assert "API key was refused" in browser.find_element(By.ID, "connection").text
    assert browser.find_element(By.ID, "stop").get_attribute("disabled") == "true"
    assert browser.switch_to.active_element.get_attribute("id") == "api-key"
    # A refused key is forgotten, also from the tab's storage.
    assert browser.execute_script("return sessionStorage.length") == 0
    assert browser.find_element(By.ID, "api-key").get_attribute("placeholder") == ""
    assert_no_console_errors(browser, allowed=("401",))


@needs_browser
def test_polling_page_derives_the_status_with_the_services_rules(browser, ns):
    cfg = page_config(ns)
    cfg["changes"].update(enabled=False, offline_after="90s", away_after="10m")
    q = start_stack(ns, cfg)
    # Under the default rules (60 s, 5 min) dan would be away and erin offline.
    ns.producer.event("online", "dan", time_ms=now_ms())
    ns.producer.event("active", "dan", time_ms=now_ms() - 7 * 60 * 1000)
    ns.producer.event("active", "erin", time_ms=now_ms() - 80 * 1000)
    ns.producer.flush()
    open_page(browser, q.url, "dan\nerin")
    WebDriverWait(browser, PAGE_WAIT).until(lambda d: connection_mode(d) == "polling")
    wait_badge(browser, "dan", "online")
    wait_badge(browser, "erin", "online")
    assert browser.find_element(By.ID, "offline-after").text == "90 s"
    assert browser.find_element(By.ID, "away-after").text == "10 min"
    assert_no_console_errors(browser)


# --------------------------------------------------------------------------------------------------
# the stream's edge cases, from a stand-in server whose events the test chooses


class WatchStandIn(http.server.ThreadingHTTPServer):
    """Serves the page's files from the real query service, and POST /api/watch_user_status as the
    design describes it: text/event-stream, first a "status" event per user, then "change" events
    (here when the test calls change()), ": keep-alive" comments in between; the events are split
    across chunks and use CRLF line ends, which the real service does not do today."""

    daemon_threads = True

    def __init__(self, query_url):
        super().__init__(("127.0.0.1", 0), WatchHandler)
        self.query_url = query_url
        self.requests = []
        self.changes = []
        self.cond = threading.Condition()
        self.closed = False

    @property
    def url(self):
        return "http://127.0.0.1:%d" % self.server_address[1]

    def change(self, event):
        """Sends event as a "change" to the streams open now; None sends "bye" and ends them."""
        with self.cond:
            self.changes.append(event)
            self.cond.notify_all()

    def close(self):
        with self.cond:
            self.closed = True
            self.cond.notify_all()
        self.shutdown()
        self.server_close()


class WatchHandler(http.server.BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"

    def log_message(self, *args):
        pass

    def do_GET(self):
        r = requests.get(self.server.query_url + self.path, timeout=5)
        self.send_response(r.status_code)
        for h in ("Content-Type", "Cache-Control", "Content-Security-Policy"):
            if h in r.headers:
                self.send_header(h, r.headers[h])
        self.send_header("Content-Length", str(len(r.content)))
        self.end_headers()
        self.wfile.write(r.content)

    def chunk(self, text):
        data = text.encode()
        self.wfile.write(b"%x\r\n%s\r\n" % (len(data), data))
        self.wfile.flush()

    def do_POST(self):
        sent = len(self.server.changes)  # This stream gets the changes from now on.
        body = json.loads(self.rfile.read(int(self.headers["Content-Length"])))
        self.server.requests.append((self.path, self.headers.get("X-API-Key"), body))
        if self.path != "/api/watch_user_status":
            self.send_response(404)
            self.send_header("Content-Length", "0")
            self.end_headers()
            return
        if self.headers.get("X-API-Key") != API_KEY:
            self.send_response(401)
            self.send_header("Content-Length", "0")
            self.end_headers()
            return
        self.send_response(200)
        self.send_header("Content-Type", "text/event-stream")
        self.send_header("Cache-Control", "no-cache")
        self.send_header("Transfer-Encoding", "chunked")
        self.end_headers()
        now = int(time.time())
        initial = {
            "dave": {"user": "dave", "status": "offline"},
            # Times that alone would say "offline": the page must show the pushed status.
            "erin": {"user": "erin", "status": "away", "active": now - 3600, "online": now - 3600,
                     "state": "in a meeting"},
        }
        for u in body["users"]:
            self.chunk("event: status\ndata: %s\n\n" % json.dumps(initial[u]))
        # One event split across chunks with CRLF line ends: the parser must not care.
        self.chunk(": keep-alive\r\n\r\nevent: sta")
        self.chunk('tus\r\ndata: {"user":"dave","status":"offline"}\r')
        self.chunk("\n\r\n")
        try:
            while True:
                with self.server.cond:
                    self.server.cond.wait_for(lambda: self.server.closed or len(self.server.changes) > sent,
                                              timeout=1)
                    if self.server.closed:
                        break
                    pending = self.server.changes[sent:]
                sent += len(pending)
                if None in pending:
                    self.chunk('event: bye\ndata: {"reason":"shutting down"}\n\n')
                    break
                for ev in pending:
                    self.chunk("event: change\ndata: %s\n\n" % json.dumps(ev))
                if not pending:
                    self.chunk(": keep-alive\n\n")
            self.chunk("")
        except (BrokenPipeError, ConnectionResetError):
            pass


@pytest.fixture
def watch_stand_in(ns):
    q = ns.start_query(page_config(ns))
    server = WatchStandIn(q.url)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    yield server
    server.close()


@needs_browser
def test_page_follows_the_watch_stream_when_the_service_offers_it(watch_stand_in, browser):
    open_page(browser, watch_stand_in.url, "dave erin")
    wait_badge(browser, "dave", "offline")
    wait_badge(browser, "erin", "away")
    WebDriverWait(browser, PAGE_WAIT).until(lambda d: connection_mode(d) == "live")
    assert detail(browser, "erin") == "last active 1 h ago"
    assert browser.find_element(By.CSS_SELECTOR, 'li[data-user="erin"] .state').text == "in a meeting"
    assert watch_stand_in.requests[0] == ("/api/watch_user_status", API_KEY, {"users": ["dave", "erin"]})

    now = int(time.time())
    watch_stand_in.change({"user": "dave", "status": "online", "since": now * 1000, "active": now,
                           "online": now})
    wait_badge(browser, "dave", "online")
    assert re.fullmatch(r"last active (just now|\d+ s ago)", detail(browser, "dave"))
    assert badge(browser, "erin") == "away"

    # Delivery is at least once: a replay of an older change must not undo a newer one.
    watch_stand_in.change({"user": "dave", "status": "offline", "since": now * 1000 - 5000})
    watch_stand_in.change({"user": "erin", "status": "online", "since": now * 1000, "active": now})
    wait_badge(browser, "erin", "online")
    assert badge(browser, "dave") == "online"

    # "bye" (the service stopping): the page opens the stream again.
    watch_stand_in.change(None)
    WebDriverWait(browser, 10).until(lambda d: len(watch_stand_in.requests) == 2)
    WebDriverWait(browser, PAGE_WAIT).until(lambda d: connection_mode(d) == "live")
    wait_badge(browser, "dave", "offline")  # The stand-in's fresh initial statuses.
    # Live from the stream: no polling of get_user_status.
    assert all(path == "/api/watch_user_status" for path, _, _ in watch_stand_in.requests)
    assert_key_not_stored(browser)
    assert_no_console_errors(browser)
