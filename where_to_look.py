"""Where does the network look? Render CAM heatmaps: answer the prompts, or name a command.

The original project's visualizer, now a thin entry point: the commands live in wtl.cli
(`python where_to_look.py --help` lists them; `where-to-look` is the same once installed).
"""

from __future__ import annotations

import sys

from wtl.cli.main import COMMANDS, build_parser, main, parse_args

__all__ = ["COMMANDS", "build_parser", "main", "parse_args"]

if __name__ == "__main__":
    sys.exit(main())
