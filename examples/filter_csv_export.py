"""Pick the drafts a reviewer should check first from a CSV export, with pandas.

    labeler export -f csv -o drafts.csv --review unreviewed
    python examples/filter_csv_export.py drafts.csv --threshold 0.5 -o worklist.csv

Keeps the drafts scored below the threshold (p_accept by default, or --score confidence), worst
first, prints how many drafts fall in each score band, and writes the worklist with every column
of the export: reviewers fill `reviewed_caption` or `outcome` and `labeler import worklist.csv`
brings their work back. (`labeler export --max-p-accept 0.5` selects the same drafts in the
store; filtering the file suits a CSV that has already been handed around.)
"""

from __future__ import annotations

import argparse

import pandas as pd

BANDS = [0.0, 0.2, 0.4, 0.6, 0.8, 1.0]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("csv", help="a CSV written by `labeler export -f csv`")
    parser.add_argument("--threshold", type=float, default=0.5, help="keep drafts below this")
    parser.add_argument("--score", choices=["p_accept", "confidence"], default="p_accept")
    parser.add_argument("-o", "--output", default="worklist.csv", help="the reviewer's worklist")
    args = parser.parse_args()

    # keep_default_na=False: a caption that reads "NA" or "null" stays text, not a missing value.
    drafts = pd.read_csv(args.csv, keep_default_na=False)
    scores = pd.to_numeric(drafts[args.score], errors="coerce")

    counts = pd.cut(scores, BANDS, include_lowest=True).value_counts(sort=False)
    print(f"drafts by {args.score}:")
    for low, high, count in zip(BANDS[:-1], BANDS[1:], counts, strict=True):
        print(f"  {low:.1f}-{high:.1f}  {count}")

    below = scores[scores < args.threshold].sort_values(kind="stable")  # worst first
    worklist = drafts.loc[below.index]
    worklist.to_csv(args.output, index=False)
    print(f"{len(worklist)} of {len(drafts)} drafts below {args.threshold} -> {args.output}")


if __name__ == "__main__":
    main()
