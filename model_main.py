"""Train a Where-to-look model: answer the prompts, or pass every answer as a flag.

The original project's trainer, now a thin entry point over wtl.cli.train and wtl.training
(`python model_main.py --help`; `wtl-train` is the same once installed).
"""

from __future__ import annotations

import sys

from wtl.cli.train import complete_with_prompts, config_of, main, parse_args

__all__ = ["complete_with_prompts", "config_of", "main", "parse_args"]

if __name__ == "__main__":
    sys.exit(main())
