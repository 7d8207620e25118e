"""Open the Evidently UI on recforge's workspace (``make drift-ui``).

``python -m monitoring.ui [--workspace DIR] [--host 127.0.0.1] [--port 0]`` runs
``evidently ui --workspace <RECFORGE_HOME>/evidently --host 127.0.0.1 --port <free port>`` (Evidently
0.7 CLI flags). Port 0 (the default) picks a free port, so the UI never collides with Airflow (8080),
BentoML (3000) or another UI already on 8000. The process is replaced by ``evidently ui`` (exec), so
Ctrl+C or a kill of the printed PID stops the server itself, not a wrapper.
"""

from __future__ import annotations

import argparse
import os
import shutil
import socket
import sys
from pathlib import Path

from pipeline.config import load_config
from pipeline.layout import Layout


def free_port(host: str = "127.0.0.1") -> int:
    """A TCP port free on ``host`` right now (the OS picks it; tiny race until evidently binds it)."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind((host, 0))
        return int(sock.getsockname()[1])


def evidently_executable() -> str:
    """The ``evidently`` CLI of this interpreter's environment (the venv), else the one on PATH."""
    candidate = Path(sys.executable).with_name("evidently")
    if candidate.exists():
        return str(candidate)
    found = shutil.which("evidently")
    if found is None:
        raise FileNotFoundError(
            "the 'evidently' CLI is not installed in this environment (pip install evidently)"
        )
    return found


def ui_command(workspace: Path, host: str = "127.0.0.1", port: int = 0) -> list[str]:
    """The argv that serves ``workspace``; ``port`` 0 means a free port."""
    return [
        evidently_executable(),
        "ui",
        "--workspace",
        str(Path(workspace).resolve()),
        "--host",
        host,
        "--port",
        str(port or free_port(host)),
    ]


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--workspace", type=Path, default=None, help="default: <RECFORGE_HOME>/evidently")
    parser.add_argument("--host", default="127.0.0.1", help="bind address (0.0.0.0 to expose it)")
    parser.add_argument("--port", type=int, default=0, help="0 = a free port")
    args = parser.parse_args(argv)
    workspace = args.workspace or Layout(load_config().home_dir).evidently_workspace
    workspace.mkdir(parents=True, exist_ok=True)
    command = ui_command(workspace, args.host, args.port)
    print(
        f"Evidently UI: http://{args.host}:{command[-1]}  (workspace {command[3]}, pid {os.getpid()})",
        flush=True,
    )
    os.execv(command[0], command)


if __name__ == "__main__":
    main()
