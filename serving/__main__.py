"""``python -m serving [--port 3000] [bentoml serve options]``: serve the champion of the configured home.

The service needs three settings that are easy to get out of step: ``RECFORGE_HOME`` (champion pointer,
Feast online store), ``BENTOML_HOME`` (the model store ``serving.package`` wrote, always
``$RECFORGE_HOME/bentoml``) and ``OMP_WAIT_POLICY=PASSIVE`` (see STACK.md). BentoML reads
``BENTOML_HOME`` once at import, so it cannot be set from inside the service; this launcher sets all
three from the pipeline config and then replaces itself with ``bentoml serve``.
"""

from __future__ import annotations

import json
import os
import sys
from pathlib import Path

from pipeline.config import REPO_ROOT, load_config
from pipeline.layout import Layout


def main(argv: list[str]) -> None:
    layout = Layout(load_config().home_dir)
    if not layout.champion.exists() and not os.environ.get("RECFORGE_MODEL_TAG"):
        sys.exit(f"no champion at {layout.champion}: run the pipeline first, or set RECFORGE_HOME")
    env = dict(os.environ)
    env["RECFORGE_HOME"] = str(layout.home)
    env["BENTOML_HOME"] = str(layout.bentoml_home)
    env.setdefault("OMP_WAIT_POLICY", "PASSIVE")
    env.setdefault("BENTOML_DO_NOT_TRACK", "True")
    local = Path(sys.executable).with_name("bentoml")
    bentoml = str(local) if local.exists() else "bentoml"  # else: from PATH
    args = argv or ["--port", "3000"]
    port = args[args.index("--port") + 1] if "--port" in args else "3000"
    champion = json.loads(layout.champion.read_text()) if layout.champion.exists() else {}
    tag = os.environ.get("RECFORGE_MODEL_TAG") or champion.get("bento_tag")
    print(f"Serving {tag} at http://127.0.0.1:{port} (no login; stop with Ctrl-C). Try:")
    print(
        f"  curl -s -X POST http://127.0.0.1:{port}/recommend -H 'content-type: application/json' "
        """-d '{"user_id": "196", "k": 5}'""",
    )
    print(  # a user the model has never seen, described by attributes (models with a cold-start path)
        f"  curl -s -X POST http://127.0.0.1:{port}/recommend -H 'content-type: application/json' "
        """-d '{"user_id": "new-user", "k": 5, "user_features": {"age": 30, "gender": "F", "occupation": "writer"}}'""",
        flush=True,
    )
    os.chdir(REPO_ROOT)  # the service is imported as serving.service from the repo root
    os.execvpe(bentoml, [bentoml, "serve", "serving.service:Recommender", *args], env)


if __name__ == "__main__":
    main(sys.argv[1:])
