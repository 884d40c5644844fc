#!/usr/bin/env bash
# Train Show and Tell on Flickr8k or COCO from Karpathy's split JSON, then score it on the test
# split with BLEU-1..4, METEOR, ROUGE-L and CIDEr.
#
#   examples/train_karpathy.sh data/dataset_flickr8k.json data/Flicker8k_Dataset runs/flickr8k
#   examples/train_karpathy.sh data/dataset_coco.json data/coco runs/coco --device cuda
#
# The data (download it yourself: nothing here downloads anything):
# - Karpathy's splits: caption_datasets.zip from cs.stanford.edu/people/karpathy/deepimagesent/
#   holds dataset_flickr8k.json and dataset_coco.json (and dataset_flickr30k.json).
# - Flickr8k images: Flickr8k_Dataset.zip, which unpacks to Flicker8k_Dataset/ (spelled so),
#   from the University of Illinois request form or one of its mirrors.
# - COCO 2014 images: train2014.zip and val2014.zip from cocodataset.org, unpacked side by side
#   in one folder (the JSON's `filepath` names them). Its "restval" split is trained on too.
#
# Options after OUT go to `labeler train` after the ones below, so they win: --epochs 30,
# --device cuda, --fine-tune-encoder... The encoder is frozen and its features cached in
# OUT/features-cache, so only the first epoch runs the backbone. A rerun with --resume goes on
# with an interrupted run.
set -euo pipefail

usage="usage: $0 KARPATHY_JSON IMAGES_DIR OUT [labeler train options...]"
data=${1:?$usage}
images=${2:?$usage}
out=${3:?$usage}
shift 3
mkdir -p "$out"

# EfficientNet-Lite0's ImageNet weights come with labeler's install; the taps add the pooled
# outputs of earlier blocks (colours, textures) to the image's representation.
labeler train "$data" --images "$images" -o "$out/model.pt" \
    --backbone efficientnet_lite0 --pretrained DEFAULT --feature-taps 2,5,10 \
    --epochs 20 --patience 3 --beam 3 "$@"

# The test split, decoded as the model was validated (its beam and maximum length).
labeler evaluate "$data" --images "$images" --model "$out/model.pt" --split test \
    --out "$out/eval"
