"""Stage 1, the corpus to an index: papers, chunks, embeddings, the on-disk store, vector reuse, --add.

corpus -> chunking -> embed (embed_onnx) -> vectors + store; reuse hands a build the vectors of an earlier
index; open builds or loads the index for the current settings; add merges papers into a corpus file."""
