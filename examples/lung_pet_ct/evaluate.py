"""Evaluate a trained checkpoint on one split of its run (metrics table, JSON, PNGs).

Example:
    python examples/lung_pet_ct/evaluate.py --checkpoint runs/lung_pet_ct/fold0/best.pt --split test
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

from trainer import evaluate_checkpoint  # noqa: E402


def main(argv: list[str] | None = None) -> None:
    """Parse arguments and evaluate."""
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--checkpoint", required=True, help="best.pt or checkpoint.pt of a run")
    p.add_argument("--split", choices=("train", "val", "test", "all"), default="test")
    p.add_argument("--out", help="output folder (default: next to the checkpoint)")
    p.add_argument("--data-dir", help="override the run's data location (moved download)")
    p.add_argument("--clinical")
    p.add_argument("--annotations")
    p.add_argument("--cache-root")
    p.add_argument("--no-progress", dest="progress", action="store_false")
    a = p.parse_args(argv)
    overrides = {k: v for k, v in {"data_dir": a.data_dir, "clinical": a.clinical,
                                   "annotations": a.annotations, "cache_root": a.cache_root}.items()
                 if v is not None}
    overrides["progress"] = a.progress
    evaluate_checkpoint(a.checkpoint, a.split, a.out, overrides)


if __name__ == "__main__":
    try:
        main()
    except ValueError as err:
        sys.exit(f"error: {err}")
