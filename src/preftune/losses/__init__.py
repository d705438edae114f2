"""Pure loss functions of tensors: no model, tokenizer or config (DESIGN.md section 2).

Each module has one job: `dpo` (direct preference losses), `reward` (Bradley-Terry), `ppo` (clipped
policy and value losses), `kl` (KL estimators, penalised rewards, controllers), `advantages` (GAE
and masked statistics), `kto` (KTO on thumbs-up / thumbs-down answers). The names below are the ones trainers call.
"""

from preftune.losses.advantages import gae, masked_mean, masked_var, masked_whiten
from preftune.losses.dpo import DPO_LOSS_OPTIONS, DPO_LOSSES, REFERENCE_FREE_LOSSES, sft_nll
from preftune.losses.kl import (
    KL_ESTIMATORS,
    AdaptiveKLController,
    FixedKLController,
    kl_penalized_rewards,
)
from preftune.losses.kto import kto_kl_estimate, kto_loss
from preftune.losses.ppo import clipped_policy_loss, clipped_value_loss
from preftune.losses.reward import bradley_terry

__all__ = [
    "DPO_LOSSES",
    "DPO_LOSS_OPTIONS",
    "KL_ESTIMATORS",
    "REFERENCE_FREE_LOSSES",
    "AdaptiveKLController",
    "FixedKLController",
    "bradley_terry",
    "clipped_policy_loss",
    "clipped_value_loss",
    "gae",
    "kl_penalized_rewards",
    "kto_kl_estimate",
    "kto_loss",
    "masked_mean",
    "masked_var",
    "masked_whiten",
    "sft_nll",
]
