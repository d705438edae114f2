"""Bradley-Terry loss for training a scalar reward model on preference pairs."""

from __future__ import annotations

import torch
import torch.nn.functional as F


def bradley_terry(
    chosen_rewards: torch.Tensor,
    rejected_rewards: torch.Tensor,
    margin: torch.Tensor | float | None = None,
    center_coef: float = 0.0,
) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
    """Pairwise Bradley-Terry loss with an optional margin and an optional centering term.

    Bradley & Terry 1952 give P(chosen > rejected) = sigmoid(r_c - r_r); its negative log-likelihood is
    the reward-model loss of InstructGPT (Ouyang et al. 2022, eq. 1). A per-pair margin m (Llama 2,
    Touvron et al. 2023, eq. 2) asks for a gap of at least m before the loss flattens:

        loss = -log sigmoid(r_c - r_r - m) + center_coef * (r_c + r_r)^2

    The second term (Eisenstein et al. 2023, "Helping or Herding? Reward Model Ensembles Mitigate but
    do not Eliminate Reward Hacking") pulls the rewards of each pair towards zero mean. Bradley-Terry
    only sees differences, so without it the rewards' offset drifts freely; 0.01 is the usual weight.

    Shapes: `chosen_rewards`, `rejected_rewards` [B]; `margin` [B], a float, or None (0).
    Returns `(loss_per_example [B], metrics)`. Metrics (DESIGN.md section 4): "loss", "accuracy"
    (fraction with r_c > r_r strictly), "margin" (mean r_c - r_r), "mean_reward", "min_reward",
    "max_reward" (over chosen and rejected together).
    """
    if chosen_rewards.shape != rejected_rewards.shape or chosen_rewards.dim() != 1:
        raise ValueError(
            f"bradley_terry: chosen {tuple(chosen_rewards.shape)} and rejected "
            f"{tuple(rejected_rewards.shape)} rewards must both have shape [B]"
        )
    # Reward gap the model assigns; the BT log-odds that chosen wins.
    reward_gap = chosen_rewards - rejected_rewards
    # No margin means the plain BT likelihood.
    logits = reward_gap if margin is None else reward_gap - margin
    # logsigmoid is the stable log(sigmoid(x)): no overflow for large |x|.
    loss = -F.logsigmoid(logits)
    if center_coef:
        # Eisenstein et al. 2023's auxiliary loss: the pair's reward sum squared, pulled to zero.
        loss = loss + center_coef * (chosen_rewards + rejected_rewards) ** 2
    with torch.no_grad():
        # Every reward of the batch, for the distribution metrics.
        all_rewards = torch.cat([chosen_rewards, rejected_rewards])
        metrics = {
            "loss": loss.mean(),
            # Strict: a tie is not a correct ranking.
            "accuracy": (reward_gap > 0).to(loss.dtype).mean(),
            # Without the margin term subtracted: this is what the model predicts.
            "margin": reward_gap.mean(),
            "mean_reward": all_rewards.mean(),
            "min_reward": all_rewards.min(),
            "max_reward": all_rewards.max(),
        }
    return loss, metrics
