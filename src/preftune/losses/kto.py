"""KTO: learning from single answers marked desirable or undesirable (thumbs up / down).

Ethayarajh et al. 2024, "KTO: Model Alignment as Prospect Theoretic Optimization", section 4 (the
loss TRL 1.16 labels eq. 7). With the implied reward of an answer, the reference point z0 and the
value of an answer

    r(x, y) = log pi(y|x) - log ref(y|x)
    z0      = max(0, KL estimate)                           (detached: no gradient flows into it)
    v(x, y) = lambda_D * sigmoid(beta * (r - z0))           if y is desirable
              lambda_U * sigmoid(beta * (z0 - r))           if y is undesirable

the loss of one example is lambda_y - v(x, y), i.e. lambda_y * (1 - sigmoid(...)). The KL estimate
is the batch mean of log pi(y'|x) - log ref(y'|x) over *mismatched* pairs: each prompt x with
another example's answer y' (the paper's z0 estimate; TRL pairs x_i with y_{i-1} of its batch).
It is clamped at 0 after averaging (and, under torchrun, after averaging over ranks), so the
trainer computes the mean with `kto_kl_estimate`, averages it over ranks, and hands it to
`kto_loss`, which clamps and detaches it.

Shapes: log-probs are sums over completion tokens (prompt masked), [B]; labels [B] bool (True:
desirable). Returns `(loss_per_example [B], metrics)`; the trainer takes the plain mean over the
B examples, as TRL does (the weights are not renormalised).

Metrics, named as TRL's KTOTrainer logs them: "kl" (z0, after the clamp), "rewards/chosen" and
"logps/chosen" (means over the desirable examples: beta * r and the policy log-prob),
"rewards/rejected" and "logps/rejected" (over the undesirable ones), and "rewards/margins"
(rewards/chosen - rewards/rejected). A group absent from the batch has no metric (not a 0 or a
NaN), so a loop averages each metric over the examples that have it.

`apo_zero_unpaired_loss` is the other unpaired loss TRL's KTOTrainer offers (no reference point);
`KTO_LOSSES` names both for `preftune kto --loss`.
"""

from __future__ import annotations

import torch

Metrics = dict[str, torch.Tensor]


def kto_kl_estimate(policy_kl_logps: torch.Tensor, ref_kl_logps: torch.Tensor) -> torch.Tensor:
    """The batch KL estimate behind z0: mean(log pi(y'|x) - log ref(y'|x)) over mismatched pairs.

    Shapes: [M] each -> a detached scalar, not yet clamped (clamp after any cross-rank mean).
    """
    if policy_kl_logps.shape != ref_kl_logps.shape or policy_kl_logps.dim() != 1 or policy_kl_logps.numel() == 0:
        raise ValueError(
            f"kto_kl_estimate: policy {tuple(policy_kl_logps.shape)} and reference {tuple(ref_kl_logps.shape)} "
            "mismatched log-probs must both have shape [M], M >= 1"
        )
    # Detached: z0 is a baseline the paper does not backpropagate through (TRL computes it under no_grad).
    return (policy_kl_logps - ref_kl_logps).mean().detach()


def kto_loss(
    policy_logps: torch.Tensor,
    ref_logps: torch.Tensor,
    labels: torch.Tensor,
    kl_estimate: torch.Tensor | float,
    *,
    beta: float,
    desirable_weight: float = 1.0,
    undesirable_weight: float = 1.0,
) -> tuple[torch.Tensor, Metrics]:
    """KTO loss per example (see the module docstring for the equations):

        desirable:   lambda_D * (1 - sigmoid(beta * (r - z0)))
        undesirable: lambda_U * (1 - sigmoid(beta * (z0 - r))),   r = pi - ref,  z0 = max(0, kl_estimate)

    Shapes: `policy_logps`, `ref_logps` [B] (summed completion log-probs); `labels` [B] bool;
    `kl_estimate` a scalar (from `kto_kl_estimate`). Returns loss [B] in the examples' order.
    """
    if policy_logps.shape != ref_logps.shape or policy_logps.dim() != 1:
        raise ValueError(
            f"kto_loss: policy {tuple(policy_logps.shape)} and reference {tuple(ref_logps.shape)} log-probs "
            "must both have shape [B]"
        )
    if labels.shape != policy_logps.shape or labels.dtype != torch.bool:
        raise ValueError(f"kto_loss: labels must be a bool tensor of shape {tuple(policy_logps.shape)}, "
                         f"got {labels.dtype} {tuple(labels.shape)}")  # fmt: skip
    # z0: the reference point. Clamped because a KL is never negative (a negative estimate is noise),
    # detached because the paper treats it as a baseline, not a term to optimise.
    z0 = torch.as_tensor(kl_estimate, dtype=policy_logps.dtype, device=policy_logps.device).detach().clamp(min=0)
    # r: the implied reward of DPO (Rafailov et al. 2023, eq. 5) without beta.
    logratios = policy_logps - ref_logps
    # Desirable answers gain value as r rises above z0; undesirable ones as r falls below it.
    desirable = 1 - torch.sigmoid(beta * (logratios - z0))
    undesirable = 1 - torch.sigmoid(beta * (z0 - logratios))
    # lambda_D / lambda_U trade the two kinds off (the paper's eq. 8 suggests lambda_D n_D / (lambda_U n_U) in [1, 4/3]).
    losses = torch.where(labels, desirable_weight * desirable, undesirable_weight * undesirable)
    return losses, _metrics(policy_logps, logratios, labels, z0, beta)


def apo_zero_unpaired_loss(
    policy_logps: torch.Tensor,
    ref_logps: torch.Tensor,
    labels: torch.Tensor,
    kl_estimate: torch.Tensor | float = 0.0,
    *,
    beta: float,
    desirable_weight: float = 1.0,
    undesirable_weight: float = 1.0,
) -> tuple[torch.Tensor, Metrics]:
    """APO-zero on unpaired answers (D'Oosterlinck et al. 2024, "Anchored Preference Optimization
    and Contrastive Revisions", APO-zero with its two terms split by label, as TRL 1.16's
    `apo_zero_unpaired`): no reference point, desirable answers pushed up, undesirable ones down,
    each anchored at the reference:

        desirable:   lambda_D * (1 - sigmoid(beta * r))
        undesirable: lambda_U * sigmoid(beta * r),          r = pi - ref

    Shapes as `kto_loss`; `kl_estimate` is ignored (there is no z0), and "kl" is logged as 0, as TRL does.
    """
    if policy_logps.shape != ref_logps.shape or policy_logps.dim() != 1:
        raise ValueError(f"apo_zero_unpaired_loss: policy {tuple(policy_logps.shape)} and reference "
                         f"{tuple(ref_logps.shape)} log-probs must both have shape [B]")  # fmt: skip
    if labels.shape != policy_logps.shape or labels.dtype != torch.bool:
        raise ValueError(f"apo_zero_unpaired_loss: labels must be a bool tensor of shape {tuple(policy_logps.shape)}")
    logratios = policy_logps - ref_logps
    # Anchored at r = 0: an answer's loss depends on its own log-ratio only, not on the batch.
    losses = torch.where(labels, desirable_weight * (1 - torch.sigmoid(beta * logratios)),
                         undesirable_weight * torch.sigmoid(beta * logratios))  # fmt: skip
    return losses, _metrics(policy_logps, logratios, labels, torch.zeros((), dtype=policy_logps.dtype), beta)


# The unpaired losses by name (`preftune kto --loss`); only "kto" needs the KL estimate.
KTO_LOSSES = {"kto": kto_loss, "apo_zero_unpaired": apo_zero_unpaired_loss}
NEEDS_KL_ESTIMATE = {"kto"}


def _metrics(policy_logps: torch.Tensor, logratios: torch.Tensor, labels: torch.Tensor, z0: torch.Tensor, beta: float) -> Metrics:
    # Logging only: no graph kept, so metrics never pin activations in memory.
    with torch.no_grad():
        metrics: Metrics = {"kl": z0}
        rewards = beta * logratios
        for name, mask in (("chosen", labels), ("rejected", ~labels)):
            if mask.any():  # a group absent from the batch gets no metric, not a made-up 0
                metrics[f"rewards/{name}"] = rewards[mask].mean()
                metrics[f"logps/{name}"] = policy_logps[mask].mean()
        if "rewards/chosen" in metrics and "rewards/rejected" in metrics:
            metrics["rewards/margins"] = metrics["rewards/chosen"] - metrics["rewards/rejected"]
        return metrics
