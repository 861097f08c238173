"""False positives of detectors on the 3,082 natural chips of the 126 held-out identities (bench/bench_detect.py's
test split), each at its own default threshold: how a detector trained for this study compares with the shipped one.

    python docs/studies/2026-12-04-detector-evasion/natural_fpr.py --data $PUFACE_DATA default runs/detector-seed1/detector.safetensors
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[3] / "bench"))
import bench_detect  # noqa: E402


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("detectors", nargs="+", help="shipped names or detector files")
    ap.add_argument("--data", required=True)
    ap.add_argument("--threads", type=int, default=2)
    a = ap.parse_args()
    torch.set_num_threads(a.threads)
    from puface.data.loading import load_images
    from puface.detection import load_detector

    chips = bench_detect.ordered_chips(Path(a.data) / "lfw-chips150", "test", 0)
    x, _, _ = load_images(chips)
    print("| detector | natural chips | threshold | flagged |")
    print("|---|---|---|---|")
    for name in a.detectors:
        det = load_detector(name)
        with torch.no_grad():
            s = det.score(x)
        thr = det.threshold()
        print(f"| {name} | {len(chips)} | {thr:.4f} | {float((s > thr).float().mean()):.2%} |")


if __name__ == "__main__":
    main()
