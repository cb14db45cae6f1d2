"""papers-rag: retrieval-augmented question answering with checkable citations over paper abstracts."""

import os

# Set before anything imports dspy/litellm: litellm fetches a model-cost map from the internet at
# import time unless told to use its bundled copy. Nothing here may touch the network by default.
os.environ.setdefault("LITELLM_LOCAL_MODEL_COST_MAP", "True")

__version__ = "0.1.0"
