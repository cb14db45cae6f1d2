"""The Gradio chat (app) and its waiting line for the one local model (waiting)."""
