"""Helpers shared by the model tests."""

from __future__ import annotations

import torch


def overfit_losses(module: torch.nn.Module, batch, steps: int = 60) -> list[float]:
    """Train ``module`` on one fixed batch with its own optimizer; the loss per step."""
    optimizer = module.configure_optimizers()
    module.train()
    losses = []
    for _ in range(steps):
        optimizer.zero_grad()
        loss = module.calculate_loss(batch)
        loss.backward()
        optimizer.step()
        losses.append(loss.item())
    return losses


def next_item_after_a_cycle(
    name: str, params: dict, steps: int, known: int
) -> tuple[torch.Tensor, torch.Tensor]:
    """Train sequential model ``name`` for ``steps`` steps on one batch of windows that walk a fixed
    cycle of a 12-item catalogue; return its top item after each of 12 histories of ``known`` items
    and the item that truly follows them."""
    torch.manual_seed(0)
    n_items, length = 12, 10
    cycle = torch.randperm(n_items) + 1
    starts = torch.arange(64) % n_items
    walks = cycle[(starts.unsqueeze(1) + torch.arange(length + 1)) % n_items]
    from training.models import build_model

    module = build_model(name, 1, n_items, **params)
    overfit_losses(module, {"history": walks[:, :-1], "targets": walks[:, 1:]}, steps=steps)
    module.eval()
    with torch.no_grad():
        scores = module.full_sort_predict(torch.full((n_items,), -1), walks[:n_items, :known])
    scores[:, 0] = -torch.inf
    return scores.argmax(-1), walks[:n_items, known]


def artifact_round_trip(
    module: torch.nn.Module,
    name: str,
    hparams: dict,
    split,
    out_dir,
    *,
    attributes=None,
    meta: dict | None = None,
    unknown_user: bool = False,
):
    """Save ``module`` (in eval mode) as a model artifact of ``split`` and load it back.

    Returns ``(artifact, users, history, expected)``: the loaded artifact, the split's test users and
    histories (plus one unknown user, index -1, when ``unknown_user``) and ``module``'s own scores for
    them, which the loaded artifact must reproduce exactly.
    """
    from training.artifact import load_model_artifact, save_model_artifact
    from training.data import build_eval_inputs
    from training.split import SplitIndex, train_matrix

    index = SplitIndex.load(split)
    module.eval()
    path = save_model_artifact(
        out_dir, name, module, hparams, index.item_ids, index.user_ids, train_matrix(split),
        meta=meta, attributes=attributes,
    )  # fmt: skip
    artifact = load_model_artifact(path)
    inputs = build_eval_inputs(split, "test", history_length=10)
    users, history = inputs.users, inputs.history
    if unknown_user:
        users = torch.cat([users, torch.tensor([-1])])
        history = torch.cat([history, history[:1]])
    with torch.no_grad():
        expected = module.full_sort_predict(users, history)
    return artifact, users, history, expected


N_CLUSTERS = 4  # tests/conftest.py: item i and users preferring cluster c have i % 4 == c


def cold_start_holdout(split, index, train_matrix):
    """Two users and one item per taste cluster held out of ``train_matrix`` (the cold ones).

    Returns (matrix without them, user cluster per user index, item cluster per item index (row 0 =
    padding, -1), cold user indices, cold item indices). conftest: a user's occupation is
    "occupation<c>" for the cluster c their behaviour starts in (random jumps then spread it, so about
    40 % of their events stay in c vs 20 % per other cluster).
    """
    import numpy as np

    from training.attributes import attributes_for

    item_cluster = np.concatenate([[-1], [int(i[1:]) % N_CLUSTERS for i in index.item_ids]])
    attributes = attributes_for(split).users
    occupation = [f.name for f in attributes.fields].index("occupation")
    vocab = attributes.fields[occupation].vocab
    user_cluster = np.asarray(
        [int(vocab[c - 1][-1]) for c in attributes.codes[:, attributes.offsets[occupation]]]
    )
    cold_users = np.concatenate([np.flatnonzero(user_cluster == c)[:2] for c in range(N_CLUSTERS)])
    cold_items = np.asarray([np.flatnonzero(item_cluster == c)[0] for c in range(N_CLUSTERS)])
    matrix = train_matrix.tocsr().copy()
    matrix[cold_users] = 0
    matrix[:, cold_items] = 0
    matrix.eliminate_zeros()
    return matrix, user_cluster, item_cluster, cold_users, cold_items
