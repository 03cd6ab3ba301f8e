"""Prepare the embedded default model (SmolLM2-135M-Instruct as a bf16 Hugging Face folder).

Usage: ``python -m scripts.prepare_model`` (idempotent) or ``--print-path`` to print where it lives.
The work is done by ``llm.model_files``; the folder is ``settings.paths.default_model_dir()``.
"""

from __future__ import annotations

import argparse
import logging
from pathlib import Path

from llm.model_files import ensure_model
from settings.paths import default_model_dir

__all__ = ["main"]


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--print-path", action="store_true", help="print the model folder and exit")
    parser.add_argument("--force", action="store_true", help="rebuild even when a verified folder exists")
    parser.add_argument("--target", type=Path, default=None, help="folder to write (default: cache)")
    args = parser.parse_args(argv)
    if args.print_path:
        print(args.target or default_model_dir())
        return 0
    logging.basicConfig(level=logging.INFO, format="[prepare-model] %(message)s")
    path = ensure_model(args.target, force=args.force)
    print(path)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
