"""Orchestration: the stages composed into runs (CLI, Airflow DAG tasks, tuning, the drift monitor, summaries).

The top layer: it may import every other package; nothing outside it (but dags/, plugins/, bench/ and
tests) imports it. The contracts it composes live in ``pipeline/``.
"""

import pipeline  # noqa: F401  (torch's allocator options, set before torch loads)
