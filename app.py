"""`python app.py` (what `make run` starts): the Gradio chat of rag/chat/app.py."""

from rag.chat.app import main

if __name__ == "__main__":
    raise SystemExit(main())
