"""A DAG's documentation (``doc_md``) generated from the DAG itself, so it cannot drift from it.

The DAG factories write only the prose that the graph cannot say (what the DAG is for, what triggers
it, where its artifacts land); the tasks, in the order they run, and the trigger form's parameters
come from the tasks actually created and the DAG's Params. Called once the DAG's tasks exist, i.e.
at the end of its ``with DAG(...)`` block.
"""

from __future__ import annotations

import json
from typing import Any


def task_order(dag: Any) -> list[str]:
    """Task ids in an order the graph allows (every task after its upstream tasks); ties keep the
    order in which the tasks were created, so a straight chain reads as declared."""
    pending = [task.task_id for task in dag.tasks]
    upstream = {task.task_id: set(task.upstream_task_ids) for task in dag.tasks}
    ordered: list[str] = []
    while pending:
        ready = next((t for t in pending if upstream[t] <= set(ordered)), None)
        if ready is None:  # Airflow refuses cycles when the DAG is checked; say so here too
            raise ValueError(f"{dag.dag_id}: the tasks {pending} depend on each other in a cycle")
        ordered.append(ready)
        pending.remove(ready)
    return ordered


def _first_sentence(text: str | None) -> str:
    flat = " ".join((text or "").split())
    head, dot, _ = flat.partition(". ")
    return head + dot.strip() if dot else flat


def _cell(text: str) -> str:
    return text.replace("|", "\\|")


def dag_doc_md(dag: Any, title: str, intro: str) -> str:
    """``title``, ``intro``, then the tasks in graph order and a table of the trigger form's fields."""
    tasks = dag.task_dict
    lines = [f"### {title}", "", intro.strip(), "", "#### Tasks, in the order they run", ""]
    for number, task_id in enumerate(task_order(dag), start=1):
        after = sorted(tasks[task_id].upstream_task_ids)
        waits = f" (after {', '.join(after)})" if len(after) > 1 else ""
        lines.append(f"{number}. **{task_id}**{waits}: {_first_sentence(tasks[task_id].doc_md)}")
    lines += ["", "#### Trigger form", "", "| parameter | default | description |", "|---|---|---|"]
    for name in dag.params:
        param = dag.params.get_param(name)
        default = json.dumps(param.value, default=str)
        lines.append(f"| `{name}` | `{_cell(default)}` | {_cell(param.description or '')} |")
    return "\n".join(lines) + "\n"
