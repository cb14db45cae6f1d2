"""The eval metrics. They live in the package (`rag.evaluation.metrics`) because `rag batch --eval`,
`rag eval` and `rag optimize` use them from an installed `rag`; this module re-exports
them for scripts and notebooks run from the repository root:

    from eval.metrics import score_row, faithfulness, headline, retrieval_scores
"""

from rag.evaluation.metrics import (  # noqa: F401
    FAITHFUL_MIN,
    HEADLINE_WEIGHTS,
    abstention_summary,
    bootstrap_ci,
    fact_found,
    faithfulness,
    headline,
    normalize,
    paired_bootstrap,
    retrieval_scores,
    score_row,
    summarize,
    support_score,
    token_f1,
)
