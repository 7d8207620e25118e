"""Headless screenshots for the README: a run's evaluation report and the served API's Swagger page.

    RECFORGE_HOME=... .venv/bin/python bench/screenshots.py                  # newest run's report + API
    .venv/bin/python bench/screenshots.py --run-dir RUN --model-tag recforge-bpr:TAG
    .venv/bin/python bench/screenshots.py --skip-api                         # the report only

Needs a Chromium on PATH (Debian: ``apt-get install chromium``). The report is opened from its file
(``file://``). The API is started the way ``make serve`` starts it (``python -m serving``), on a spare
port, with the deployment's champion or ``--model-tag`` (any model the run stored, promoted or not),
and stopped once its page is captured. Writes ``docs/img/evaluation_report.png`` and
``docs/img/api_swagger.png``.
"""

from __future__ import annotations

import argparse
import os
import shutil
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
OUT = REPO / "docs" / "img"
BROWSERS = ("chromium", "chromium-browser", "google-chrome", "google-chrome-stable")


def browser() -> str:
    for name in BROWSERS:
        found = shutil.which(name)
        if found:
            return found
    raise SystemExit(
        f"no headless browser on PATH (looked for {', '.join(BROWSERS)}): apt-get install chromium"
    )


def screenshot(url: str, path: Path, width: int, height: int) -> Path:
    """One PNG of ``url`` at ``width`` x ``height`` CSS pixels; scripts get a few seconds to render."""
    path.parent.mkdir(parents=True, exist_ok=True)
    subprocess.run(
        [
            browser(),
            "--headless",
            "--no-sandbox",
            "--disable-gpu",
            "--hide-scrollbars",
            "--virtual-time-budget=8000",
            f"--window-size={width},{height}",
            f"--screenshot={path}",
            url,
        ],
        check=True,
        capture_output=True,
        timeout=120,
    )
    print(f"wrote {path} from {url}")
    return path


def newest_report(home: Path) -> Path:
    reports = sorted((home / "runs").glob("*/*/report.html"), key=lambda p: p.stat().st_mtime)
    if not reports:
        raise SystemExit(f"no run with report.html under {home / 'runs'}: run `recforge run bpr` first")
    return reports[-1]


def wait_for(url: str, seconds: float, server: subprocess.Popen[bytes]) -> None:
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline:
        if server.poll() is not None:
            raise SystemExit(f"the service exited with status {server.returncode} before answering {url}")
        try:
            with urllib.request.urlopen(url, timeout=2):
                return
        except OSError:
            time.sleep(1)
    raise SystemExit(f"the service did not answer {url} within {seconds:.0f} s")


def api_screenshot(home: Path, model_tag: str | None, port: int, path: Path) -> Path:
    env = dict(os.environ, RECFORGE_HOME=str(home))
    if model_tag:
        env["RECFORGE_MODEL_TAG"] = model_tag
    server = subprocess.Popen(
        [sys.executable, "-m", "serving", "--port", str(port)], cwd=REPO, env=env, start_new_session=True
    )
    try:
        wait_for(f"http://127.0.0.1:{port}/readyz", 180, server)
        return screenshot(f"http://127.0.0.1:{port}/", path, 1280, 900)
    finally:
        os.killpg(server.pid, 15)  # the launcher's own process group: bentoml serve and its workers
        server.wait(timeout=30)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--home", default=os.environ.get("RECFORGE_HOME", str(REPO / ".recforge")))
    parser.add_argument("--run-dir", help="the run whose report.html to capture (default: the newest)")
    parser.add_argument("--model-tag", help="serve this stored model instead of the deployment's champion")
    parser.add_argument("--port", type=int, default=3917)
    parser.add_argument("--skip-api", action="store_true")
    parser.add_argument("--out", default=str(OUT))
    args = parser.parse_args(argv)
    home, out = Path(args.home), Path(args.out)
    report = Path(args.run_dir) / "report.html" if args.run_dir else newest_report(home)
    screenshot(report.resolve().as_uri(), out / "evaluation_report.png", 1100, 1500)
    if not args.skip_api:
        api_screenshot(home, args.model_tag, args.port, out / "api_swagger.png")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
