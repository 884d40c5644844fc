"""The Python API end to end, a step a cell (`# %%` cells run one by one in VS Code, PyCharm or
Jupyter through jupytext): scan a folder, draft captions, look at the worst drafts with pandas,
send the doubtful ones for review, bring the review back and see how far p_accept can be trusted.

    python examples/python_api.py --db labeler.db --images photos/ --model model.pt

It writes review.csv (and, without --reviewed, reviewed.csv) in the current folder. Every step
runs in this process (workers=0, procs=0): labeler's worker processes start from a fork server,
which re-imports the script that started them, so a script that uses them needs its steps under
`if __name__ == "__main__":`. In a notebook, drop those arguments to use every core.
"""

# %%
import argparse

import pandas as pd

import labeler

parser = argparse.ArgumentParser(description="The labeler Python API, end to end.")
parser.add_argument("--db", help="store: SQLite file or SQLAlchemy URL; default $LABELER_DB")
parser.add_argument("--images", required=True, help="folder of images to caption")
parser.add_argument("--model", required=True, help="Show and Tell checkpoint (labeler train)")
parser.add_argument("--device", default="auto", help="auto, cpu, cuda or mps")
parser.add_argument("--reviewed", help="review.csv as the reviewers gave it back")
# In a notebook, give the arguments here instead: parser.parse_args(["--images", "photos", ...])
args = parser.parse_args()

# %% Open the store (created if absent) and register the folder's images as a dataset.
store = labeler.open_store(args.db)
scanned = store.scan("photos", args.images, workers=0)
print(f"scanned {scanned.files} files: {dict(scanned.by_status)}")

# %% Draft captions, decoded the way the checkpoint says; run it again and it does only new images.
run = store.caption(args.model, device=args.device, procs=0, workers=0)
print(f"captioned {run.images} images with {run.model}, {run.flagged} drafts flagged")

# %% Every best draft as a DataFrame, worst p_accept first, with its signals and review.
drafts = store.drafts(datasets=["photos"]).to_pandas()
print(drafts["p_accept"].describe())

# %% The worst drafts, and the word each one was least sure of.
worst = drafts.head(5).copy()
worst["least_sure_of"] = [  # token_logprobs: one per word, then the end token's
    (text.split() + ["<end>"])[logprobs.index(min(logprobs))]
    for text, logprobs in zip(worst["text"], worst["token_logprobs"], strict=True)
]
print(worst[["path", "text", "p_accept", "confidence", "least_sure_of"]].to_string())

# %% Send the drafts a reviewer should check with care (p_accept at most 0.5) out as a CSV.
exported = store.export("review.csv", format="csv", datasets=["photos"], max_p_accept=0.5,
                        force=True)  # fmt: skip
print(f"{exported.count} drafts to review in review.csv")

# %% Reviewers fill `reviewed_caption` (their caption) or `outcome` (accepted, rejected,
# skipped) and give the file back: pass it as --reviewed. Without it, this cell stands in for
# them, rejecting the flagged drafts (cut short, repeating, an unknown word) and accepting the rest.
reviewed = args.reviewed
if reviewed is None and exported.count:
    sheet = pd.read_csv("review.csv", keep_default_na=False)
    sheet["outcome"] = sheet["flagged"].map({True: "rejected", False: "accepted"})
    sheet.to_csv("reviewed.csv", index=False)
    reviewed = "reviewed.csv"
if reviewed is not None:
    imported = store.import_reviews(reviewed, reviewer="example")
    print(f"imported {imported.added} reviews: {dict(imported.by_outcome)}")

# %% How far p_accept can be trusted, measured on the reviews.
stats = store.stats(datasets=["photos"])
print(f"{stats.drafts} drafts, reviews: {dict(stats.outcomes)}")
print(f"AUROC of p_accept for acceptance: {stats.auroc} (0.5 is chance; None: too few reviews)")
store.close()
