"""How language models are reached: backends (local, OpenAI, OpenAI-compatible), the embedded llama.cpp
engine, its disk cache, and the packaged GGUF file."""
