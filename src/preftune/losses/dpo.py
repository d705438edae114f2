"""Direct preference losses: DPO and its variants, one pure function each.

Every loss takes the summed log-probs of the chosen and rejected completions (prompt tokens masked)
under the policy and the reference, each of shape [B], and returns `(loss_per_example [B], metrics)`.
They share one signature so a trainer can call any of them from the `DPO_LOSSES` table:

    fn(policy_chosen_logps, policy_rejected_logps, ref_chosen_logps, ref_rejected_logps,
       *, beta, chosen_lengths=None, rejected_lengths=None, **options)

`options` are the variant's own keywords, listed per name in `DPO_LOSS_OPTIONS`; an unknown keyword
is a TypeError, so a misspelt option fails loudly. The lengths are the completion token counts [B]
(the data layer guarantees at least one token, the EOS); only length-normalised variants need them.

Most variants are functions of the reference-adjusted log-ratio margin of the DPO reference code's
`preference_loss`:

    h = (pi_c - pi_r) - (ref_c - ref_r)

Metrics (DESIGN.md section 4): "rewards/chosen", "rewards/rejected", "rewards/margins",
"rewards/accuracies", "logps/chosen", "logps/rejected", all batch means, detached. The rewards are
the implicit rewards each loss works with, beta * (pi - ref) for DPO, so that
"rewards/margins" = beta * mean(h) and "rewards/accuracies" is the fraction of pairs with h > 0.
"logps/*" are always the means of the policy's summed log-probs.
"""

from __future__ import annotations

from collections.abc import Callable

import torch
import torch.nn.functional as F

Metrics = dict[str, torch.Tensor]


def _require_reference(name: str, ref_chosen_logps, ref_rejected_logps) -> None:
    # A reference-based loss without reference log-probs is a wiring bug; say which loss wanted them.
    if ref_chosen_logps is None or ref_rejected_logps is None:
        raise ValueError(f"DPO loss {name!r} needs reference log-probs (only 'simpo' is reference-free)")


def _require_lengths(name: str, chosen_lengths, rejected_lengths) -> None:
    # Length-normalised variants cannot guess token counts from summed log-probs.
    if chosen_lengths is None or rejected_lengths is None:
        raise ValueError(f"DPO loss {name!r} needs chosen_lengths and rejected_lengths (token counts)")


def _per_token(logps: torch.Tensor, lengths: torch.Tensor) -> torch.Tensor:
    # Summed log-prob -> mean log-prob per completion token; lengths may arrive as integer tensors.
    return logps / lengths.to(logps.dtype)


def _preference_metrics(
    chosen_rewards: torch.Tensor,
    rejected_rewards: torch.Tensor,
    policy_chosen_logps: torch.Tensor,
    policy_rejected_logps: torch.Tensor,
) -> Metrics:
    # Logging only: no graph kept, so metrics never pin activations in memory.
    with torch.no_grad():
        return {
            "rewards/chosen": chosen_rewards.mean(),
            "rewards/rejected": rejected_rewards.mean(),
            "rewards/margins": (chosen_rewards - rejected_rewards).mean(),
            # Strict: a tie (e.g. policy == reference at step 0) does not count as a correct ranking.
            "rewards/accuracies": (chosen_rewards > rejected_rewards).to(chosen_rewards.dtype).mean(),
            "logps/chosen": policy_chosen_logps.mean(),
            "logps/rejected": policy_rejected_logps.mean(),
        }


def _dpo_margin(
    name: str,
    policy_chosen_logps: torch.Tensor,
    policy_rejected_logps: torch.Tensor,
    ref_chosen_logps: torch.Tensor | None,
    ref_rejected_logps: torch.Tensor | None,
    beta: float,
) -> tuple[torch.Tensor, Metrics]:
    # Shared by the reference-based variants: h and the standard DPO implicit-reward metrics.
    _require_reference(name, ref_chosen_logps, ref_rejected_logps)
    # Implicit rewards of DPO, eq. 5 of Rafailov et al. 2023 without the partition term (it cancels).
    chosen_rewards = beta * (policy_chosen_logps - ref_chosen_logps)
    rejected_rewards = beta * (policy_rejected_logps - ref_rejected_logps)
    # h = (pi_c - pi_r) - (ref_c - ref_r): the reference-adjusted log-ratio margin.
    margin = (policy_chosen_logps - policy_rejected_logps) - (ref_chosen_logps - ref_rejected_logps)
    metrics = _preference_metrics(
        chosen_rewards, rejected_rewards, policy_chosen_logps, policy_rejected_logps
    )
    return margin, metrics


def sigmoid_loss(
    policy_chosen_logps: torch.Tensor,
    policy_rejected_logps: torch.Tensor,
    ref_chosen_logps: torch.Tensor | None,
    ref_rejected_logps: torch.Tensor | None,
    *,
    beta: float,
    chosen_lengths: torch.Tensor | None = None,
    rejected_lengths: torch.Tensor | None = None,
) -> tuple[torch.Tensor, Metrics]:
    """DPO, Rafailov et al. 2023, "Direct Preference Optimization", eq. 7:

        loss = -log sigmoid(beta * h),   h = (pi_c - pi_r) - (ref_c - ref_r)

    Shapes: all log-probs [B] (sums over completion tokens); returns loss [B]. Lengths are unused.
    """
    # h and the implicit-reward metrics.
    margin, metrics = _dpo_margin(
        "sigmoid", policy_chosen_logps, policy_rejected_logps, ref_chosen_logps, ref_rejected_logps, beta
    )
    # logsigmoid is the stable log(sigmoid(x)): no overflow for large |beta * h|.
    return -F.logsigmoid(beta * margin), metrics


def cdpo_loss(
    policy_chosen_logps: torch.Tensor,
    policy_rejected_logps: torch.Tensor,
    ref_chosen_logps: torch.Tensor | None,
    ref_rejected_logps: torch.Tensor | None,
    *,
    beta: float,
    chosen_lengths: torch.Tensor | None = None,
    rejected_lengths: torch.Tensor | None = None,
    label_smoothing: float = 0.0,
) -> tuple[torch.Tensor, Metrics]:
    """Conservative DPO (cDPO; Mitchell 2023, "A note on DPO with noisy preferences & relationship to
    IPO"): DPO with label smoothing eps, the cross-entropy against soft labels (1 - eps, eps):

        loss = -(1 - eps) * log sigmoid(beta * h) - eps * log sigmoid(-beta * h)

    This is the DPO reference code's `label_smoothing`. Its minimiser is a finite margin
    (beta * h = log((1 - eps) / eps)), so the policy stops pushing once it is confident enough.
    eps = 0 is plain DPO. Shapes: log-probs [B]; returns loss [B]. Requires 0 <= eps <= 0.5.
    """
    if not 0.0 <= label_smoothing <= 0.5:
        raise ValueError(f"cdpo: label_smoothing must be in [0, 0.5], got {label_smoothing}")
    # h and the implicit-reward metrics.
    margin, metrics = _dpo_margin(
        "cdpo", policy_chosen_logps, policy_rejected_logps, ref_chosen_logps, ref_rejected_logps, beta
    )
    # Loss if the observed label is right, l(h), and if the preference were the other way, l(-h).
    loss_as_labelled = -F.logsigmoid(beta * margin)
    loss_if_flipped = -F.logsigmoid(-beta * margin)
    # Soft-label cross-entropy: weight 1-eps on "chosen wins", eps on "rejected wins".
    loss = (1.0 - label_smoothing) * loss_as_labelled + label_smoothing * loss_if_flipped
    return loss, metrics


def robust_loss(
    policy_chosen_logps: torch.Tensor,
    policy_rejected_logps: torch.Tensor,
    ref_chosen_logps: torch.Tensor | None,
    ref_rejected_logps: torch.Tensor | None,
    *,
    beta: float,
    chosen_lengths: torch.Tensor | None = None,
    rejected_lengths: torch.Tensor | None = None,
    label_smoothing: float = 0.0,
) -> tuple[torch.Tensor, Metrics]:
    """Robust DPO (rDPO; Chowdhury, Kini & Natarajan 2024, "Provably Robust DPO: Aligning Language
    Models with Noisy Feedback"): the unbiased estimate of the clean DPO loss when each label was
    flipped with known probability eps (here `label_smoothing`, TRL's name for it):

        loss = [(1 - eps) * l(h) - eps * l(-h)] / (1 - 2 eps),   l(h) = -log sigmoid(beta * h)

    Unlike cDPO, the flipped-label term is subtracted: averaged over the label noise it equals the
    clean loss exactly. Its gradient in h is always negative, so it never stops pushing; single
    examples can have negative loss. eps = 0 is plain DPO. Shapes: log-probs [B]; returns loss [B].
    Requires 0 <= eps < 0.5 (at 0.5 the labels carry no information and the loss divides by 0).
    """
    if not 0.0 <= label_smoothing < 0.5:
        raise ValueError(f"robust: label_smoothing (flip rate) must be in [0, 0.5), got {label_smoothing}")
    # h and the implicit-reward metrics.
    margin, metrics = _dpo_margin(
        "robust", policy_chosen_logps, policy_rejected_logps, ref_chosen_logps, ref_rejected_logps, beta
    )
    # Loss if the observed label is right, l(h), and if it is flipped, l(-h).
    loss_as_labelled = -F.logsigmoid(beta * margin)
    loss_if_flipped = -F.logsigmoid(-beta * margin)
    # The rDPO de-biasing: E_noise[this] = l(h) for the true label (Chowdhury et al. 2024).
    loss = ((1.0 - label_smoothing) * loss_as_labelled - label_smoothing * loss_if_flipped) / (
        1.0 - 2.0 * label_smoothing
    )
    return loss, metrics


def ipo_loss(
    policy_chosen_logps: torch.Tensor,
    policy_rejected_logps: torch.Tensor,
    ref_chosen_logps: torch.Tensor | None,
    ref_rejected_logps: torch.Tensor | None,
    *,
    beta: float,
    chosen_lengths: torch.Tensor | None = None,
    rejected_lengths: torch.Tensor | None = None,
    length_normalize: bool = False,
) -> tuple[torch.Tensor, Metrics]:
    """IPO (Azar et al. 2023, "A General Theoretical Paradigm to Understand Learning from Human
    Preferences"), the squared loss that regresses the log-ratio margin onto a fixed target:

        loss = (h - 1 / (2 beta))^2

    beta plays the paper's tau (regularisation strength). Which log-probs enter h:
    - `length_normalize=False` (default): summed log-probs, as in the DPO reference code's IPO;
    - `length_normalize=True`: per-token means, each of pi and ref divided by its completion length,
      h = (pi_c - ref_c)/|y_c| - (pi_r - ref_r)/|y_r|, the form TRL 1.16 uses (its code notes the
      IPO authors confirmed it matches the paper's experiments); needs the lengths.
    The loss is minimised at h = 1/(2 beta): below it the gradient raises pi_c and lowers pi_r, above
    it the signs reverse, which is what keeps IPO from overfitting deterministic preferences.
    The rewards in the metrics are always beta times the *summed* log-ratios, the implicit DPO
    reward, so they read the same across variants (and match TRL's logged rewards).
    Shapes: log-probs and lengths [B]; returns loss [B].
    """
    _require_reference("ipo", ref_chosen_logps, ref_rejected_logps)
    if length_normalize:
        _require_lengths("ipo", chosen_lengths, rejected_lengths)
        # Per-token log-ratios of each completion.
        chosen_ratio = _per_token(policy_chosen_logps - ref_chosen_logps, chosen_lengths)
        rejected_ratio = _per_token(policy_rejected_logps - ref_rejected_logps, rejected_lengths)
    else:
        # Summed log-ratios, as the reference code.
        chosen_ratio = policy_chosen_logps - ref_chosen_logps
        rejected_ratio = policy_rejected_logps - ref_rejected_logps
    # h: the chosen log-ratio minus the rejected one.
    margin = chosen_ratio - rejected_ratio
    metrics = _preference_metrics(
        beta * (policy_chosen_logps - ref_chosen_logps),
        beta * (policy_rejected_logps - ref_rejected_logps),
        policy_chosen_logps,
        policy_rejected_logps,
    )
    # Squared distance to the target margin 1/(2 beta).
    return (margin - 1.0 / (2.0 * beta)) ** 2, metrics


def hinge_loss(
    policy_chosen_logps: torch.Tensor,
    policy_rejected_logps: torch.Tensor,
    ref_chosen_logps: torch.Tensor | None,
    ref_rejected_logps: torch.Tensor | None,
    *,
    beta: float,
    chosen_lengths: torch.Tensor | None = None,
    rejected_lengths: torch.Tensor | None = None,
) -> tuple[torch.Tensor, Metrics]:
    """Hinge loss of SLiC (Zhao et al. 2023, "SLiC-HF: Sequence Likelihood Calibration with Human
    Feedback"), on the reference-adjusted margin as in the DPO reference code and TRL:

        loss = max(0, 1 - beta * h)

    SLiC-HF's calibration loss uses the policy's log-probs alone, max(0, delta - pi_c + pi_r); with
    zero reference log-probs and beta = 1/delta this is that loss divided by delta.
    Once beta * h passes 1 the gradient is 0. Shapes: log-probs [B]; returns loss [B].
    """
    # h and the implicit-reward metrics.
    margin, metrics = _dpo_margin(
        "hinge", policy_chosen_logps, policy_rejected_logps, ref_chosen_logps, ref_rejected_logps, beta
    )
    # Hinge at margin 1 in units of beta * h.
    return torch.relu(1.0 - beta * margin), metrics


def simpo_loss(
    policy_chosen_logps: torch.Tensor,
    policy_rejected_logps: torch.Tensor,
    ref_chosen_logps: torch.Tensor | None = None,
    ref_rejected_logps: torch.Tensor | None = None,
    *,
    beta: float,
    chosen_lengths: torch.Tensor | None = None,
    rejected_lengths: torch.Tensor | None = None,
    gamma: float = 0.5,
) -> tuple[torch.Tensor, Metrics]:
    """SimPO (Meng, Xia & Chen 2024, "SimPO: Simple Preference Optimization with a Reference-Free
    Reward"): the implicit reward is the length-normalised policy log-prob, with a target margin gamma:

        loss = -log sigmoid(beta * (pi_c / |y_c| - pi_r / |y_r|) - gamma)

    Reference-free: `ref_*_logps` may be None and are ignored if given. Needs the lengths. Note the
    scales: SimPO's beta is typically 2 to 10 (per-token rewards are small), not DPO's 0.1, and gamma
    is absolute here (the paper's later `gamma / beta` ratio times beta).
    The rewards in the metrics are beta * pi / |y|. Shapes: log-probs and lengths [B]; loss [B].
    """
    _require_lengths("simpo", chosen_lengths, rejected_lengths)
    # SimPO's rewards: beta times the average log-prob per completion token.
    chosen_rewards = beta * _per_token(policy_chosen_logps, chosen_lengths)
    rejected_rewards = beta * _per_token(policy_rejected_logps, rejected_lengths)
    metrics = _preference_metrics(
        chosen_rewards, rejected_rewards, policy_chosen_logps, policy_rejected_logps
    )
    # Bradley-Terry with a target reward gap gamma.
    return -F.logsigmoid(chosen_rewards - rejected_rewards - gamma), metrics


def sft_nll(policy_chosen_logps: torch.Tensor, chosen_lengths: torch.Tensor) -> tuple[torch.Tensor, Metrics]:
    """Negative log-likelihood of the chosen completions, one mean over all their tokens: the extra
    term of RPO (Pang et al. 2024, "Iterative Reasoning Preference Optimization") added to a
    preference loss with weight `--sft-weight`:

        nll = -sum_i pi_c,i / sum_i |y_c,i|        (i over the pairs of the micro-batch)

    This is TRL 1.16's convention (`loss_type=["sigmoid", "sft"]`, `loss_weights=[1, w]`), so the
    same weight means the same thing in both. It is not the mean over pairs of each pair's per-token
    mean (-mean_i pi_c,i / |y_c,i|, what preftune used before): there a 3-token answer weighs as
    much as a 300-token one; here every chosen token counts the same. The two agree only when all
    chosen answers have the same length. `tests/train/test_dpo_oracle.py` checks the match with TRL.
    Shapes: `policy_chosen_logps`, `chosen_lengths` [B]; returns `(nll [] scalar, {"nll_loss": nll})`.
    """
    # Sum of token log-probs over the sum of token counts: a mean over every chosen token.
    nll = -policy_chosen_logps.sum() / chosen_lengths.sum().to(policy_chosen_logps.dtype)
    # The name TRL logged for the RPO term (its `rpo_alpha` days); a per-token figure either way.
    return nll, {"nll_loss": nll.detach()}


# The losses by `--loss` name: a plain table, no registry machinery.
DPO_LOSSES: dict[str, Callable[..., tuple[torch.Tensor, Metrics]]] = {
    "sigmoid": sigmoid_loss,
    "robust": robust_loss,
    "cdpo": cdpo_loss,
    "ipo": ipo_loss,
    "hinge": hinge_loss,
    "simpo": simpo_loss,
}

# Each variant's own keyword options (beyond beta and the lengths), so a trainer can pass only
# what a loss accepts: `{k: getattr(config, k) for k in DPO_LOSS_OPTIONS[name]}`.
DPO_LOSS_OPTIONS: dict[str, tuple[str, ...]] = {
    "sigmoid": (),
    "robust": ("label_smoothing",),
    "cdpo": ("label_smoothing",),
    "ipo": ("length_normalize",),
    "hinge": (),
    "simpo": ("gamma",),
}

# Losses that never read reference log-probs: the trainer can skip computing them.
REFERENCE_FREE_LOSSES = frozenset({"simpo"})
