"""README screenshots of the MLflow UI (docs/ui-screenshot*.png), from a real demo study, in headless Chromium.

`make screenshots` runs it; tests never write into docs/. It runs the offline demo into a temporary workdir
(or `--workdir` of an existing study), starts `elalora-auto ui`, and saves:
  docs/ui-screenshot.png          the experiment as MLflow opens it (the study's runs)
  docs/ui-screenshot-pareto.png   the parent run's Pareto front artifact
  docs/ui-screenshot-pruned.png   a pruned trial's rank heatmap (every trial state carries its ranks)

    python bench/screenshots.py [--workdir DIR] [--trials 8]
"""

from __future__ import annotations

import argparse
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import threading
from pathlib import Path
from typing import Any, Callable

ROOT = Path(__file__).resolve().parents[1]
DOCS = ROOT / "docs"


def chromium_path() -> str | None:
    return shutil.which("chromium") or shutil.which("chromium-browser") or shutil.which("google-chrome")


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def chromium(tmp: Path, url: str, *mode: str, size: str = "1600,900") -> str:
    """One headless page load; the MLflow UI is a React SPA, so it gets virtual time to render."""
    command = [chromium_path() or "chromium", "--headless", "--no-sandbox", "--disable-gpu",
               "--disable-background-networking", "--disable-component-update", "--disable-sync", "--no-first-run",
               f"--user-data-dir={tmp / 'profile'}", f"--window-size={size}", "--virtual-time-budget=20000",
               *mode, url]
    return subprocess.run(command, capture_output=True, text=True, timeout=180, cwd=tmp).stdout


class DevTools:
    """Headless Chromium driven over the DevTools protocol on a pipe (stdlib only): `call` sends one command and
    waits for its answer, noting the sessions of frames that attach meanwhile."""

    def __init__(self, tmp: Path) -> None:
        import os

        self.to_chrome, self.from_chrome = os.pipe(), os.pipe()
        command = [chromium_path() or "chromium", "--headless", "--no-sandbox", "--disable-gpu", "--no-first-run",
                   "--remote-debugging-pipe", f"--user-data-dir={tmp / 'cdp-profile'}", "about:blank"]
        self.browser = subprocess.Popen(
            command, pass_fds=(3, 4, self.to_chrome[0], self.from_chrome[1]), stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
            preexec_fn=lambda: (os.dup2(self.to_chrome[0], 3), os.dup2(self.from_chrome[1], 4)))
        os.close(self.to_chrome[0])
        os.close(self.from_chrome[1])
        self.buffer, self.ids, self.sessions = b"", iter(range(1, 10**6)), []

    def call(self, method: str, params: dict | None = None, session: str | None = None) -> dict:
        """The command's result; {} when Chromium does not answer within 60 s."""
        import json
        import os
        import select
        import time

        message_id = next(self.ids)
        os.write(self.to_chrome[1], json.dumps({"id": message_id, "method": method, "params": params or {},
                                                **({"sessionId": session} if session else {})}).encode() + b"\0")
        deadline = time.monotonic() + 60
        while True:
            *messages, self.buffer = self.buffer.split(b"\0")
            for raw in messages:
                message = json.loads(raw)
                if message.get("method") == "Target.attachedToTarget":
                    self.sessions.append(message["params"]["sessionId"])
                if message.get("id") == message_id:
                    return message.get("result", {})
            if not select.select([self.from_chrome[0]], [], [], max(0.0, deadline - time.monotonic()))[0]:
                return {}
            self.buffer += os.read(self.from_chrome[0], 1 << 20)

    def close(self) -> None:
        import os

        self.browser.kill()
        self.browser.wait()
        os.close(self.to_chrome[1])
        os.close(self.from_chrome[0])


def frames(tmp: Path, url: str, ready: Callable[[list[dict[str, Any]]], bool], wait_s: float = 120.0
           ) -> list[dict[str, Any]]:
    """Load `url` in headless Chromium and read, for the page and each of its frames, {"url", "svgs" (plot SVGs),
    "text"} once a second until `ready(found)` holds or `wait_s` seconds of real time pass; the last reading.

    Real time, over the DevTools protocol, not `--virtual-time-budget`: virtual time does not drive a sandboxed
    iframe's own process, so MLflow's HTML artifact viewer (a sandboxed blob: iframe) screenshots blank that way
    however its page renders. Polled, not one fixed wait: on a loaded machine the viewer's iframe took over 20 s.
    """
    import json
    import time

    tools = DevTools(tmp)
    probe = ("JSON.stringify({url: location.href, svgs: document.querySelectorAll('svg.main-svg').length, "
             "text: document.body ? document.body.innerText : ''})")
    try:
        target = tools.call("Target.createTarget", {"url": "about:blank"})["targetId"]
        page = tools.call("Target.attachToTarget", {"targetId": target, "flatten": True})["sessionId"]
        tools.call("Target.setAutoAttach", {"autoAttach": True, "waitForDebuggerOnStart": False, "flatten": True},
                   page)
        tools.call("Page.navigate", {"url": url}, page)
        deadline = time.monotonic() + wait_s
        while True:
            time.sleep(1.0)
            tools.call("Target.getTargets")  # reads what came meanwhile: the frames' sessions
            found = []
            for session in [page, *tools.sessions]:
                value = tools.call("Runtime.evaluate", {"expression": probe, "returnByValue": True}, session)
                if "result" in value:
                    found.append(json.loads(value["result"]["value"]))
            if ready(found) or time.monotonic() > deadline:
                return found
    finally:
        tools.close()


def start_ui(workdir: Path, port: int) -> Any:
    """`elalora-auto ui` as a user starts it; returns once it printed its URL (its output keeps draining)."""
    ui = subprocess.Popen([sys.executable, "-m", "elalora_auto.cli", "ui", "--workdir", str(workdir),
                           "--port", str(port)], stdout=subprocess.PIPE, text=True, start_new_session=True)
    assert ui.stdout is not None
    if not any(line.startswith(f"MLflow UI: http://127.0.0.1:{port}") for line in iter(ui.stdout.readline, "")):
        raise RuntimeError(f"elalora-auto ui exited with {ui.wait()} before printing its URL")
    threading.Thread(target=ui.stdout.read, daemon=True).start()  # a full pipe would block the server
    return ui


def stop_ui(ui: Any, sig: int = signal.SIGTERM) -> int:
    """`ui` stops its server's process group on SIGINT (Ctrl-C) and SIGTERM alike; SIGTERM also reaches it when
    this script runs in the background, where a shell makes children ignore SIGINT."""
    ui.send_signal(sig)
    return ui.wait(timeout=120)  # a loaded machine takes its time to stop uvicorn


def shoot(workdir: Path, tmp: Path) -> list[Path]:
    """The three screenshots of the demo study in `workdir`."""
    from mlflow import MlflowClient

    from elalora_auto.tracking import default_tracking_uri
    from elalora_auto.ui import RUNS_VIEW

    client = MlflowClient(tracking_uri=default_tracking_uri(workdir))
    experiment = client.get_experiment_by_name("demo")
    parent = client.search_runs([experiment.experiment_id], "tags.`elalora.role` = 'parent'")[0]
    pruned = client.search_runs([experiment.experiment_id], "tags.`elalora.state` = 'PRUNED'")
    port = free_port()
    ui = start_ui(workdir, port)
    base = f"http://127.0.0.1:{port}/#/experiments/{experiment.experiment_id}/runs"
    mode = "?workflowType=machine_learning"
    shots = [(f"{base}{RUNS_VIEW}", DOCS / "ui-screenshot.png"),
             (f"{base}/{parent.info.run_id}/artifacts/pareto_front.png{mode}", DOCS / "ui-screenshot-pareto.png")]
    if pruned:
        shots.append((f"{base}/{pruned[0].info.run_id}/artifacts/ranks/rank_heatmap.png{mode}",
                      DOCS / "ui-screenshot-pruned.png"))
    try:
        for url, path in shots:
            chromium(tmp, url, f"--screenshot={tmp / path.name}")
            shutil.copy(tmp / path.name, path)
            print(f"{path.relative_to(ROOT)} <- {url}")
    finally:
        stop_ui(ui)
    return [path for _, path in shots]


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--workdir", type=Path, help="a demo workdir, run first when it holds no study "
                                                     "(default: a fresh one in a temporary folder)")
    parser.add_argument("--trials", type=int, default=8)
    args = parser.parse_args(argv)
    if chromium_path() is None:
        print("Chromium not found: run `make browser-deps`", file=sys.stderr)
        return 2
    with tempfile.TemporaryDirectory() as tmp:
        workdir = args.workdir or Path(tmp) / "demo"
        if not (workdir / "mlflow.db").is_file():
            from elalora_auto.demo import run_demo

            run_demo(workdir, trials=args.trials)
        shoot(workdir.resolve(), Path(tmp))
    return 0


if __name__ == "__main__":
    sys.exit(main())
