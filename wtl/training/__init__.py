"""Training: the loop, resumable checkpoints, torchrun/DDP, and the run that model_main.py starts."""
