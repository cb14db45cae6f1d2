"""Scoring the product: metrics, eval kinds (the seed set, PubMedQA), the harness, reports, comparisons."""
