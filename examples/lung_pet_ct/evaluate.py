"""Evaluate a trained checkpoint on one split of its run (metrics table, JSON, PNGs).

Example:
    python examples/lung_pet_ct/evaluate.py --checkpoint runs/lung_pet_ct/fold0/best.pt --split test
"""

from lung_trainer.cli import evaluate_main, run_main

if __name__ == "__main__":
    run_main(evaluate_main)
