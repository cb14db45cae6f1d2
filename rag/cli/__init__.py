"""The `rag` command: the parser and one module per command group, over the library."""
