"""papers-rag: retrieval-augmented question answering with checkable citations over paper abstracts."""

import os

# Nothing here may touch the network by default, and these must be set before the libraries that read
# them are imported (they read them once, at import):
# - litellm fetches a model-cost map from the internet unless told to use its bundled copy;
# - gradio runs a version check and sends usage analytics unless GRADIO_ANALYTICS_ENABLED is False;
# - huggingface_hub (imported by gradio, gradio_client and sentence-transformers) sends telemetry and
#   fetches an "agent registry" for its request headers unless offline. The models are packaged, so
#   nothing needs the Hub.
# A user who wants any of them back sets the variable.
for _name, _value in (("LITELLM_LOCAL_MODEL_COST_MAP", "True"), ("GRADIO_ANALYTICS_ENABLED", "False"),
                      ("HF_HUB_OFFLINE", "1"), ("HF_HUB_DISABLE_TELEMETRY", "1")):
    os.environ.setdefault(_name, _value)

__version__ = "0.1.0"
