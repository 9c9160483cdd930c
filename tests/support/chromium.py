"""Headless Chromium over the DevTools protocol: open a page, record every request it makes.

Debian's ``chromium`` (installed by ``make system-deps``) is started with a throw-away profile and
``--remote-debugging-port=0``; the port it picked is read back from ``DevToolsActivePort``. The test
talks to the page over the protocol's WebSocket (websocket-client): ``Network.requestWillBeSent``
events name every URL the page asks for, ``Runtime.evaluate`` inspects the DOM, and
``Page.captureScreenshot`` takes the picture.
"""

from __future__ import annotations

import base64
import json
import os
import shutil
import subprocess
import time
import urllib.request
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest


def chromium_binary() -> str:
    """The Chromium executable; fails (or skips with ``MEDROBUST_SKIP_BROWSER=1``) when it is missing."""
    found = shutil.which("chromium") or shutil.which("chromium-browser")
    if found:
        return found
    message = "chromium is not installed: run `make system-deps` (Debian package chromium)"
    if os.environ.get("MEDROBUST_SKIP_BROWSER") == "1":
        pytest.skip(message)
    pytest.fail(message)


@dataclass
class Page:
    """One DevTools page session."""

    ws: Any
    events: list[dict[str, Any]] = field(default_factory=list)
    _next_id: int = 0

    def call(self, method: str, timeout: float = 60.0, **params: Any) -> dict[str, Any]:
        """Send one command and wait for its result, keeping the events that arrive meanwhile."""
        self._next_id += 1
        ident = self._next_id
        self.ws.send(json.dumps({"id": ident, "method": method, "params": params}))
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            message = json.loads(self.ws.recv())
            if message.get("id") == ident:
                if "error" in message:
                    raise RuntimeError(f"{method}: {message['error']}")
                return message.get("result", {})
            self.events.append(message)
        raise TimeoutError(method)

    def wait_for(self, event: str, timeout: float = 60.0) -> dict[str, Any]:
        """Wait for the next event named ``event``."""
        for seen in self.events:
            if seen.get("method") == event:
                return seen
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            message = json.loads(self.ws.recv())
            self.events.append(message)
            if message.get("method") == event:
                return message
        raise TimeoutError(event)

    def evaluate(self, expression: str) -> Any:
        """The value of a JavaScript expression in the page."""
        result = self.call("Runtime.evaluate", expression=expression, returnByValue=True, awaitPromise=True)
        return result["result"].get("value")

    def requested_urls(self) -> list[str]:
        """Every URL the page asked the network stack for."""
        return [e["params"]["request"]["url"] for e in self.events if e.get("method") == "Network.requestWillBeSent"]

    def screenshot(self, path: Path) -> Path:
        """A full-page PNG screenshot."""
        data = self.call("Page.captureScreenshot", format="png", captureBeyondViewport=True)["data"]
        path.write_bytes(base64.b64decode(data))
        return path


@contextmanager
def open_page(url: str, profile: Path) -> Iterator[Page]:
    """Start headless Chromium, navigate one page to ``url`` with the network domain recorded."""
    import websocket  # websocket-client

    proc = subprocess.Popen(
        [chromium_binary(), "--headless=new", "--no-sandbox", "--disable-gpu", "--no-first-run",
         "--disable-background-networking", "--disable-component-update", "--disable-sync",
         "--window-size=1280,900", f"--user-data-dir={profile}", "--remote-debugging-port=0", "about:blank"],
        stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        port_file = profile / "DevToolsActivePort"
        deadline = time.monotonic() + 60
        while not (port_file.exists() and port_file.read_text().strip()):
            if proc.poll() is not None or time.monotonic() > deadline:
                pytest.fail("headless chromium did not start (no DevToolsActivePort)")
            time.sleep(0.1)
        port = int(port_file.read_text().split()[0])
        with urllib.request.urlopen(f"http://127.0.0.1:{port}/json/list", timeout=30) as response:
            targets = json.load(response)
        target = next(t for t in targets if t.get("type") == "page")
        ws = websocket.create_connection(target["webSocketDebuggerUrl"], timeout=60, suppress_origin=True)
        try:
            page = Page(ws)
            page.call("Network.enable")
            page.call("Page.enable")
            page.call("Page.navigate", url=url)
            page.wait_for("Page.loadEventFired")
            yield page
        finally:
            ws.close()
    finally:
        proc.terminate()
        try:
            proc.wait(timeout=20)
        except subprocess.TimeoutExpired:
            proc.kill()
