"""The playground's world: one prompt, six candidate answers, and what each "model" thinks of them.

The answers were written for this project. They span the cases the modules need: two good answers
for a small child, a terse one, a correct but jargon-heavy one, a long rambling one (the answer a
length-loving reward model over-rates) and an off-topic one.

- `gold` is the hidden taste of the simulated labeler in module 1 and the true quality in module 4.
- `reference_prob` is pi_ref, the base model's distribution over the six answers: the base model
  likes textbook phrasing and long, padded text more than a parent would.
"""

from __future__ import annotations

from dataclasses import dataclass

PROMPT = "Explain photosynthesis to a 5-year-old."


@dataclass(frozen=True)
class Answer:
    key: str  # short id used in URLs and charts
    title: str  # a few words saying what kind of answer it is
    text: str
    gold: float  # the labeler's hidden quality score (higher is better)
    reference_prob: float  # pi_ref(answer)

    @property
    def words(self) -> int:
        return len(self.text.split())


ANSWERS: tuple[Answer, ...] = (
    Answer(
        key="kitchen",
        title="friendly story",
        text=(
            "Every green leaf is a tiny kitchen. The sun switches on the stove, the roots bring up "
            "water, and the leaf pulls air in through little doors. It mixes them into sugar, the "
            "plant's food, and lets out the fresh air we breathe. Thank you, leaves!"
        ),
        gold=2.0,
        reference_prob=0.10,
    ),
    Answer(
        key="simple",
        title="simple and clear",
        text=(
            "Plants make their own food. They catch sunshine with their green leaves, drink water "
            "with their roots, and take in air. Sunlight helps them turn that into sugar to grow."
        ),
        gold=1.6,
        reference_prob=0.18,
    ),
    Answer(
        key="terse",
        title="very short",
        text="Plants eat sunlight.",
        gold=0.4,
        reference_prob=0.22,
    ),
    Answer(
        key="jargon",
        title="correct but full of jargon",
        text=(
            "Photosynthesis is the process by which chlorophyll in the chloroplasts absorbs photons, "
            "driving the light-dependent reactions that produce ATP and NADPH, which the Calvin cycle "
            "then uses to fix carbon dioxide into glucose, releasing oxygen as a by-product."
        ),
        gold=-0.8,
        reference_prob=0.25,
    ),
    Answer(
        key="rambling",
        title="long and rambling",
        text=(
            "Okay, so photosynthesis is a really, really big word, and it is about plants, and plants "
            "are everywhere, like trees and grass and flowers and the bushes in the park. So plants "
            "need food, just like you need food, but plants do not eat sandwiches, which is funny if "
            "you think about it. Instead they use the sun, and also water, and also air, and also "
            "they are green, which is because of a special green stuff inside them, and that is "
            "important too. And then they make sugar, sort of, and they breathe out air that we "
            "breathe in, so that is nice. And scientists study this a lot, in labs, with microscopes, "
            "for many, many years, and there is still more to learn about it, and maybe one day you "
            "will study it too, and that would be great, and that is photosynthesis, mostly."
        ),
        gold=-0.3,
        reference_prob=0.12,
    ),
    Answer(
        key="dinosaurs",
        title="off-topic",
        text=(
            "Dinosaurs lived a very long time ago. Some were as tall as a house, and some were as "
            "small as a chicken. Which dinosaur is your favourite?"
        ),
        gold=-2.0,
        reference_prob=0.13,
    ),
)

# pi_ref must be a distribution; a typo above would silently skew every module.
assert abs(sum(a.reference_prob for a in ANSWERS) - 1.0) < 1e-12

LONGEST = max(range(len(ANSWERS)), key=lambda i: ANSWERS[i].words)


def answers_payload() -> list[dict]:
    """The answers as plain data for templates and JSON."""
    return [
        {
            "index": i,
            "key": a.key,
            "title": a.title,
            "text": a.text,
            "words": a.words,
            "reference_prob": a.reference_prob,
        }
        for i, a in enumerate(ANSWERS)
    ]
