"""`python -m model_starter.config --markdown`: print the README's configuration tables."""

from __future__ import annotations

import argparse

from model_starter.config.reference import markdown

parser = argparse.ArgumentParser(prog="python -m model_starter.config", description=__doc__)
parser.add_argument("--markdown", action="store_true", required=True,
                    help="print the configuration reference tables (Markdown)")
parser.parse_args()
print(markdown(), end="")
