"""``python -m serving [--host H] [--port P] [bentoml serve options]``: serve a deployment's champion.

What this launcher adds to ``bentoml serve serving.service:Recommender``:

- settings that are easy to get out of step: ``RECFORGE_HOME`` (run index, Feast namespaces),
  ``BENTOML_HOME`` (the model store ``serving.package`` wrote, always ``$RECFORGE_HOME/bentoml``) and
  ``OMP_WAIT_POLICY=PASSIVE`` (docs/architecture.md, "Performance notes"). BentoML reads ``BENTOML_HOME`` once at import, so the
  service cannot set it itself.
- a safe bind address: ``--host 127.0.0.1`` unless the command line (or ``BENTOML_HOST``) says
  otherwise. The service answers whoever reaches the port; bind other interfaces only with
  ``RECFORGE_API_KEY`` set (docker-compose does both).
- a preflight: the model is resolved exactly as the service will resolve it (the champion of
  ``RECFORGE_DEPLOYMENT``/the config's deployment, or ``RECFORGE_MODEL_TAG``) and its files are checked
  against their checksums. Anything wrong ends here with ONE line on stderr and exit status 1, before
  a port is opened.
- a clean stop: the launcher asks Linux to SIGTERM it when its parent (``make``, a shell) dies
  (``PR_SET_PDEATHSIG``, kept across ``exec``), then replaces itself with ``bentoml serve``; each worker
  does the same towards the ``bentoml serve`` supervisor (``serving.service``). Killing any of them,
  even with SIGKILL, leaves no process holding the port.
"""

from __future__ import annotations

import os
import sys
from pathlib import Path

from pipeline.config import REPO_ROOT

DEFAULT_HOST = "127.0.0.1"
DEFAULT_PORT = "3000"


def _option(args: list[str], *names: str) -> str | None:
    """The value of the last ``--name value`` / ``--name=value`` among ``args``, or None."""
    value = None
    for i, arg in enumerate(args):
        for name in names:
            if arg == name and i + 1 < len(args):
                value = args[i + 1]
            elif arg.startswith(f"{name}="):
                value = arg.split("=", 1)[1]
    return value


def bind_args(args: list[str], environ: dict[str, str]) -> tuple[list[str], str, str]:
    """``args`` with ``--host``/``--port`` made explicit, and the (host, port) they bind."""
    args = list(args)
    host = _option(args, "--host")
    if host is None:
        host = environ.get("BENTOML_HOST") or DEFAULT_HOST
        args += ["--host", host]
    port = _option(args, "--port", "-p")
    if port is None:
        port = environ.get("BENTOML_PORT") or DEFAULT_PORT
        args += ["--port", port]
    return args, host, port


def preflight() -> tuple[str, str, str]:
    """(deployment, model tag, mode) to serve; raises with a one-line message when it cannot be served."""
    from pipeline.config import load_config
    from pipeline.layout import Layout
    from pipeline.run_index import RunIndex, index_url
    from serving.package import stored_model_dir, verify_checksums

    cfg = load_config()
    layout = Layout(cfg.home_dir)
    deployment = os.environ.get("RECFORGE_DEPLOYMENT", "").strip() or cfg.deployment
    pinned = os.environ.get("RECFORGE_MODEL_TAG", "").strip()
    if pinned:
        tag, mode = pinned, "pinned by RECFORGE_MODEL_TAG"
    else:
        index = RunIndex(index_url(layout, cfg.run_index.url))
        event = index.champion(deployment)
        if event is None:
            raise LookupError(
                f"deployment {deployment!r} has no champion in {index.describe()}: run the pipeline until a "
                "model is promoted, or set RECFORGE_HOME / RECFORGE_DEPLOYMENT / RECFORGE_MODEL_TAG"
            )
        tag, mode = event.model_tag, "follows promotions and rollbacks"
    model_dir = stored_model_dir(layout, tag)
    if not model_dir.is_dir():
        raise FileNotFoundError(f"{tag} is not in the BentoML store {layout.bentoml_home} (no {model_dir})")
    verify_checksums(model_dir)  # CorruptModel names the missing, truncated or altered file
    return deployment, tag, mode


def set_parent_death_signal() -> None:
    """SIGTERM this process (and, after exec, ``bentoml serve``) when its parent dies (Linux only)."""
    if sys.platform.startswith("linux"):
        import ctypes
        import signal

        ctypes.CDLL(None, use_errno=True).prctl(1, signal.SIGTERM, 0, 0, 0)  # 1 = PR_SET_PDEATHSIG


def main(argv: list[str]) -> None:
    from pipeline.config import load_config
    from pipeline.layout import Layout

    if any(arg in ("-h", "--help") for arg in argv):
        print(__doc__)
        return
    layout = Layout(load_config().home_dir)
    env = dict(os.environ)
    env["RECFORGE_HOME"] = str(layout.home)
    env["BENTOML_HOME"] = str(layout.bentoml_home)
    env.setdefault("OMP_WAIT_POLICY", "PASSIVE")
    env.setdefault("BENTOML_DO_NOT_TRACK", "True")
    os.environ.update(env)  # the preflight resolves the model with the service's settings
    try:
        deployment, tag, mode = preflight()
    except Exception as exc:  # noqa: BLE001 - one line, whatever went wrong
        sys.exit(f"recforge serve: cannot serve: {' '.join(str(exc).split())}")
    args, host, port = bind_args(argv, env)
    shown = "127.0.0.1" if host in ("0.0.0.0", "::") else host
    api_key = bool(env.get("RECFORGE_API_KEY"))
    print(f"Serving deployment {deployment!r}: {tag} ({mode}).")
    print(
        f"Listening on {host}:{port}"
        + (" (all interfaces)" if host in ("0.0.0.0", "::") else "")
        + (
            "; every endpoint but the probes needs the API key (X-API-Key)."
            if api_key
            else "; no API key (set RECFORGE_API_KEY to require one)."
        )
    )
    if not api_key and host not in ("127.0.0.1", "::1", "localhost"):
        print(
            f"WARNING: listening on {host} without RECFORGE_API_KEY: anyone who reaches the port can query it."
        )
    print("Stop with Ctrl-C. Try:")
    key_header = ' -H "X-API-Key: $RECFORGE_API_KEY"' if api_key else ""
    print(
        f"  curl -s -X POST http://{shown}:{port}/recommend -H 'content-type: application/json'{key_header} "
        """-d '{"user_id": "196", "k": 5}'""",
    )
    print(  # a user the model has never seen, described by attributes (models with a cold-start path)
        f"  curl -s -X POST http://{shown}:{port}/recommend -H 'content-type: application/json'{key_header} "
        """-d '{"user_id": "new-user", "k": 5, "user_features": {"age": 30, "gender": "F", "occupation": "writer"}}'""",
        flush=True,
    )
    local = Path(sys.executable).with_name("bentoml")
    bentoml = str(local) if local.exists() else "bentoml"  # else: from PATH
    os.chdir(REPO_ROOT)  # the service is imported as serving.service from the repo root
    set_parent_death_signal()
    os.execvpe(bentoml, [bentoml, "serve", "serving.service:Recommender", *args], env)


if __name__ == "__main__":
    main(sys.argv[1:])
