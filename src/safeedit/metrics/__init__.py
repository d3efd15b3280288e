"""Metrics: safety (DS/DG), fluency (n-gram entropy), degenerate output, knowledge QA (KQA), summarisation (CSum)."""

from safeedit.metrics.degeneracy import degenerate_rate, degenerate_reason, is_degenerate
from safeedit.metrics.fluency import fluency, ngram_entropy, word_tokens
from safeedit.metrics.knowledge import (
    KQA_PROMPT,
    KQA_PROMPT_RAW,
    answer_matches,
    evaluate_kqa,
    extract_answer,
    load_triviaqa,
    normalize_answer,
)
from safeedit.metrics.safety import defense_rate, safety_scores
from safeedit.metrics.summarization import (
    CSUM_PROMPT,
    CSUM_PROMPT_RAW,
    MAX_DOCUMENT_CHARS,
    evaluate_csum,
    load_xsum,
    rouge1,
)

__all__ = [
    "CSUM_PROMPT",
    "CSUM_PROMPT_RAW",
    "KQA_PROMPT",
    "KQA_PROMPT_RAW",
    "MAX_DOCUMENT_CHARS",
    "answer_matches",
    "defense_rate",
    "degenerate_rate",
    "degenerate_reason",
    "evaluate_csum",
    "evaluate_kqa",
    "extract_answer",
    "fluency",
    "is_degenerate",
    "load_triviaqa",
    "load_xsum",
    "ngram_entropy",
    "normalize_answer",
    "rouge1",
    "safety_scores",
    "word_tokens",
]
