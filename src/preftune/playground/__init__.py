"""The playground's computations: five small worlds over six answers to one prompt.

Each module calls the library's own loss code (`losses.reward.bradley_terry`, `losses.kl`,
`losses.ppo`, `losses.dpo.sigmoid_loss`) on tensors of six answers, so what the web page animates
is the arithmetic that trains a real model. The web layer (`web/routes/playground.py`) only parses
the request, calls one `*_state` function, and returns its JSON.

    answers.py      the prompt, the six answers, gold quality and pi_ref
    preferences.py  module 1: labels (clicked or simulated) -> Bradley–Terry rewards
    optimum.py      module 2: pi* ∝ pi_ref exp(r / beta), and PPO iterations towards it
    dpo.py          module 3: DPO steps on the same labels, landing on the same pi*
    hacking.py      module 4: a length-loving proxy vs the gold reward along sqrt(KL)
    baselines.py    module 5: gradient variance of no baseline, a critic, and group baselines
"""
