"""Annotator competence by MACE (Hovy, Berg-Kirkpatrick, Vaswani and Hovy 2013, "Learning Whom to
Trust with MACE", NAACL).

The model: each item i has an unseen true label T_i, uniform over the labels. Annotator j either
knows the answer, with probability theta_j (their competence), and gives T_i; or spams, and draws
a label from their own distribution xi_j, whatever T_i is. So

    P(A_ij = a | T_i = t) = theta_j [a = t] + (1 - theta_j) xi_j(a).

EM fits theta and xi (section 2 of the paper). E-step: the posterior of T_i given the item's labels,
and for each label the posterior that its annotator knew rather than spammed. M-step: theta_j is the
expected share of j's labels given knowingly, xi_j the normalised expected spam counts. Small
pseudo-counts (a Beta(1, 1) prior on theta, 0.1 per label on xi) keep an annotator with few labels
away from exactly 0 or 1. Like MACE, it restarts from several random starts and keeps the fit with
the highest likelihood, since EM finds a local optimum.

With only two labels in use and few annotators per item, competence is weakly identified: fits
with quite different thetas explain the votes almost equally well (seen in a simulation with two
labels and four annotators). Ties and "both bad" votes help; so do more annotators per item.

Unlike kappa and gold accuracy, this needs no gold answers and scores a spammer who always presses
the same key as incompetent even when that key is often right.
"""

from __future__ import annotations

from collections.abc import Hashable
from dataclasses import dataclass
from typing import Any

import numpy as np

THETA_PRIOR = 1.0  # pseudo-counts on each side of theta (a Beta(1, 1) prior, MAP estimate)
XI_PRIOR = 0.1  # pseudo-count per label in each spam distribution
# Below this many items shared with someone else, a competence estimate means little: not shown.
MIN_SHARED_ITEMS = 5


@dataclass
class MaceFit:
    competence: dict[Hashable, float]  # theta_j
    spam: dict[Hashable, dict[str, float]]  # xi_j over the labels
    truth: dict[Hashable, dict[str, float]]  # posterior over each item's true label
    log_likelihood: float


def fit_mace(
    table: dict[Hashable, dict[Hashable, str]], restarts: int = 5, iterations: int = 200, seed: int = 0
) -> MaceFit:
    """MACE on {item: {annotator: label}}; items with one label still inform that annotator's xi."""
    items = list(table)
    annotators = sorted({a for row in table.values() for a in row}, key=str)
    labels = sorted({label for row in table.values() for label in row.values()})
    if not items or not annotators:
        return MaceFit({}, {}, {}, 0.0)
    a_index = {a: k for k, a in enumerate(annotators)}
    l_index = {label: k for k, label in enumerate(labels)}
    # One row per (item, annotator, label) observation.
    obs_item = np.array([i for i, item in enumerate(items) for _ in table[item]])
    obs_who = np.array([a_index[a] for item in items for a in table[item]])
    obs_label = np.array([l_index[label] for item in items for label in table[item].values()])
    rng = np.random.default_rng(seed)
    best = None
    for _ in range(restarts):
        theta = rng.uniform(0.5, 0.95, len(annotators))
        xi = rng.dirichlet(np.ones(len(labels)), len(annotators))
        for _ in range(iterations):
            posterior, knew, log_likelihood = _e_step(theta, xi, obs_item, obs_who, obs_label, len(items), len(labels))
            theta, xi = _m_step(knew, obs_who, obs_label, len(annotators), len(labels))
        if best is None or log_likelihood > best[3]:
            best = (theta, xi, posterior, log_likelihood)
    theta, xi, posterior, log_likelihood = best
    return MaceFit(
        competence={a: float(theta[k]) for a, k in a_index.items()},
        spam={a: dict(zip(labels, map(float, xi[k]), strict=True)) for a, k in a_index.items()},
        truth={item: dict(zip(labels, map(float, posterior[i]), strict=True)) for i, item in enumerate(items)},
        log_likelihood=float(log_likelihood),
    )


def _e_step(theta, xi, obs_item, obs_who, obs_label, n_items, n_labels):
    """(posterior over true labels per item, P(knew) per observation, log-likelihood)."""
    spam_prob = (1 - theta[obs_who]) * xi[obs_who, obs_label]  # same for every candidate truth
    # P(label | truth = t) for each observation and each t: spam, plus theta where label == t.
    per_truth = np.repeat(spam_prob[:, None], n_labels, axis=1)
    per_truth[np.arange(len(obs_label)), obs_label] += theta[obs_who]
    log_item = np.zeros((n_items, n_labels))
    np.add.at(log_item, obs_item, np.log(per_truth))
    log_item -= np.log(n_labels)  # the uniform prior on the truth
    top = log_item.max(axis=1, keepdims=True)
    joint = np.exp(log_item - top)
    evidence = joint.sum(axis=1, keepdims=True)
    posterior = joint / evidence
    # P(knew) = P(truth == label | labels) * theta / P(label | truth == label).
    p_true = posterior[obs_item, obs_label]
    knew = p_true * theta[obs_who] / per_truth[np.arange(len(obs_label)), obs_label]
    return posterior, knew, float((np.log(evidence) + top).sum())


def _m_step(knew, obs_who, obs_label, n_annotators, n_labels):
    known = np.bincount(obs_who, weights=knew, minlength=n_annotators)
    given = np.bincount(obs_who, minlength=n_annotators)
    theta = (known + THETA_PRIOR) / (given + 2 * THETA_PRIOR)
    spam_counts = np.full((n_annotators, n_labels), XI_PRIOR)
    np.add.at(spam_counts, (obs_who, obs_label), 1 - knew)
    return theta, spam_counts / spam_counts.sum(axis=1, keepdims=True)


def competence(votes: list[dict[str, Any]]) -> dict[Any, float]:
    """MACE competence per voter id over a project's non-skip votes (`votes.project_votes`),
    for voters who share at least MIN_SHARED_ITEMS items with someone else."""
    table: dict[int, dict[Any, str]] = {}
    for vote in votes:
        if vote["choice"] != "skip":
            table.setdefault(vote["item_id"], {})[vote["user_id"]] = vote["choice"]
    shared: dict[Any, int] = {}
    for row in table.values():
        if len(row) >= 2:
            for who in row:
                shared[who] = shared.get(who, 0) + 1
    if not shared:
        return {}
    fit = fit_mace(table)
    return {who: theta for who, theta in fit.competence.items() if shared.get(who, 0) >= MIN_SHARED_ITEMS}
