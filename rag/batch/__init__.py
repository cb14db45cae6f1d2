"""`rag batch`: question files in (inputs), answers out (output), and the resumable run between them."""
