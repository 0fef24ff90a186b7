"""The two command-line tools: where_to_look.py (one module per command) and model_main.py (train.py)."""
