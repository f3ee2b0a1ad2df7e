"""A minimal W3C WebDriver client for headless Chromium, over ``urllib`` (no new
dependency): start ``chromedriver`` on a free local port, open a session, load pages,
run scripts, take screenshots."""

from __future__ import annotations

import base64
import contextlib
import json
import shutil
import socket
import subprocess
import tempfile
import time
import urllib.error
import urllib.request
from typing import Any

CHROMIUM = "/usr/bin/chromium"
CHROMEDRIVER = "/usr/bin/chromedriver"


def available() -> str | None:
    """None when headless Chromium can be driven here, else why not."""
    for path in (CHROMIUM, CHROMEDRIVER):
        if shutil.which(path) is None:
            return f"{path} is missing (Debian packages chromium and chromium-driver)"
    return None


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


class WebDriverError(Exception):
    """chromedriver answered with an error."""


class Browser:
    """One headless Chromium session."""

    def __init__(self, width: int = 1600, height: int = 1000, timeout: float = 30.0) -> None:
        self.port = _free_port()
        self.profile = tempfile.mkdtemp(prefix="kemu-chromium-")
        self.proc = subprocess.Popen([CHROMEDRIVER, f"--port={self.port}"],
                                     stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        self.base = f"http://127.0.0.1:{self.port}"
        self.session = ""
        try:
            self._wait_ready(timeout)
            args = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-quic",
                    "--no-first-run", "--disable-background-networking",
                    "--disable-component-update", "--disable-sync",
                    "--disable-dev-shm-usage", f"--window-size={width},{height}",
                    f"--user-data-dir={self.profile}"]
            caps = {"capabilities": {"alwaysMatch": {
                "browserName": "chrome",
                "goog:chromeOptions": {"binary": CHROMIUM, "args": args}}}}
            value = self._call("POST", "/session", caps, timeout=timeout)
            self.session = str(value["sessionId"])
        except BaseException:
            self.quit()
            raise

    def _wait_ready(self, timeout: float) -> None:
        deadline = time.monotonic() + timeout
        while True:
            try:
                if self._call("GET", "/status", timeout=2).get("ready"):
                    return
            except (OSError, WebDriverError):
                pass
            if time.monotonic() > deadline or self.proc.poll() is not None:
                raise WebDriverError("chromedriver did not start")
            time.sleep(0.05)  # polling a server that is starting up

    def _call(self, method: str, path: str, body: Any = None, timeout: float = 60.0) -> Any:
        data = json.dumps(body).encode() if body is not None else None
        req = urllib.request.Request(self.base + path, data=data, method=method,
                                     headers={"Content-Type": "application/json"})
        try:
            with urllib.request.urlopen(req, timeout=timeout) as resp:
                answer = json.loads(resp.read() or b"{}")
        except urllib.error.HTTPError as exc:
            raise WebDriverError(exc.read().decode(errors="replace")[:2000]) from None
        return answer.get("value")

    def _s(self, method: str, path: str, body: Any = None) -> Any:
        return self._call(method, f"/session/{self.session}{path}", body)

    def get(self, url: str) -> None:
        """Load ``url`` and wait for it."""
        self._s("POST", "/url", {"url": url})

    @property
    def url(self) -> str:
        """The current page's address."""
        return str(self._s("GET", "/url"))

    def run(self, script: str, *args: Any) -> Any:
        """Run ``script`` (a function body: ``return ...``) in the page."""
        return self._s("POST", "/execute/sync", {"script": script, "args": list(args)})

    def resize(self, width: int, height: int) -> None:
        """Set the window's size."""
        self._s("POST", "/window/rect", {"width": width, "height": height})

    def screenshot(self, path: str, full_page: bool = True) -> None:
        """Save a PNG of the page (the whole page: the window grows to fit it)."""
        if full_page:
            w, h = self.run("return [Math.max(document.documentElement.scrollWidth, 800),"
                            " Math.max(document.documentElement.scrollHeight, 600)]")
            self.resize(min(int(w) + 40, 4000), min(int(h) + 140, 12000))
        png = base64.b64decode(self._s("GET", "/screenshot"))
        with open(path, "wb") as fh:
            fh.write(png)

    def quit(self) -> None:
        """End the session and chromedriver."""
        if self.session:
            with contextlib.suppress(OSError, WebDriverError):
                self._s("DELETE", "")
            self.session = ""
        if self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(10)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
        shutil.rmtree(self.profile, ignore_errors=True)

    def __enter__(self) -> Browser:
        return self

    def __exit__(self, *exc: object) -> None:
        self.quit()
