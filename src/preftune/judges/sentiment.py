"""Sentiment judge: VADER's compound score of the response, in [-1, 1] (higher = more positive).

VADER (Hutto & Gilbert 2014, "VADER: A Parsimonious Rule-based Model for Sentiment Analysis of
Social Media Text") is a lexicon plus rules for negation, intensifiers, punctuation and capitals;
`compound` is the normalised sum of its word valences, x / sqrt(x^2 + 15). The lexicon ships
inside the `vadersentiment` package, so this works offline. The prompt is ignored: the score is
about the response alone.
"""

from __future__ import annotations

from functools import lru_cache


@lru_cache(maxsize=1)
def _analyzer():
    # Building the analyzer reads the lexicon file (~7,500 entries): do it once per process.
    from vaderSentiment.vaderSentiment import SentimentIntensityAnalyzer

    return SentimentIntensityAnalyzer()


def sentiment_score(prompt: object, response: str) -> float:
    """VADER compound of `response`; an empty response scores 0 (neutral)."""
    return float(_analyzer().polarity_scores(response)["compound"])
