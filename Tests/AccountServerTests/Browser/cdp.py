"""A minimal DevTools-protocol driver for headless Chromium (Debian's `chromium`), shared by
the browser tests. Nothing beyond python3-websocket and the standard library."""
import json, shutil, subprocess, tempfile, time, urllib.request

import websocket


class Chromium:
    def __init__(self):
        self.profile = tempfile.mkdtemp(prefix="chromium-")
        # Port 0: Chromium binds a port of its own and writes it to DevToolsActivePort in the
        # profile. (A port probed here and closed could be taken meanwhile, by another test's
        # Chromium among others, and this driver would then talk to that browser.)
        self.process = subprocess.Popen(
            ["chromium", "--headless=new", "--no-sandbox", "--disable-gpu", "--disable-dev-shm-usage", "--ignore-certificate-errors",
             "--no-first-run", "--remote-debugging-port=0", f"--user-data-dir={self.profile}", "about:blank"],
            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        deadline = time.time() + 60
        target = None
        port = None
        while time.time() < deadline and target is None:
            try:
                if port is None:
                    with open(f"{self.profile}/DevToolsActivePort") as active:
                        port = int(active.readline().strip())
                pages = json.load(urllib.request.urlopen(f"http://127.0.0.1:{port}/json/list", timeout=1))
                target = next(p for p in pages if p.get("type") == "page")
            except Exception:
                time.sleep(0.2)
        if target is None:
            self.close()
            raise RuntimeError("chromium did not start")
        self.ws = websocket.create_connection(target["webSocketDebuggerUrl"], timeout=30)
        self.counter = 0

    def call(self, method, params=None):
        self.counter += 1
        self.ws.send(json.dumps({"id": self.counter, "method": method, "params": params or {}}))
        while True:
            message = json.loads(self.ws.recv())
            if message.get("id") == self.counter:
                if "error" in message:
                    raise RuntimeError(f"{method}: {message['error']}")
                return message.get("result", {})

    def evaluate(self, expression):
        result = self.call("Runtime.evaluate", {"expression": expression, "returnByValue": True, "awaitPromise": True})
        return result.get("result", {}).get("value")

    def wait_for(self, path, selector, timeout=20):
        end = time.time() + timeout
        while time.time() < end:
            state = self.evaluate(f"[location.pathname, document.readyState, !!document.querySelector({json.dumps(selector)})]")
            if state and state[0] == path and state[1] == "complete" and state[2]:
                return
            time.sleep(0.1)
        raise RuntimeError(f"timed out waiting for {path} {selector}: at {self.evaluate('location.href')}")

    def close(self):
        self.process.terminate()
        try:
            self.process.wait(timeout=10)
        except Exception:
            self.process.kill()
        shutil.rmtree(self.profile, ignore_errors=True)
