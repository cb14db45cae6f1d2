"""Stage 2, a question to a checked answer: retrieve, evidence, shapes, the DSPy program, claim checks.

The program is handed its search and evidence functions: nothing here loads an index, an embedder or an LM."""
