"""papers-rag: retrieval-augmented question answering with checkable citations over paper abstracts."""

__version__ = "0.1.0"
