#!/usr/bin/env bash
# Review the drafts in Label Studio and bring the reviews back into the store.
#
#   examples/label_studio_round_trip.sh export          # writes tasks.json, tasks.config.xml
#   ... review in Label Studio: the steps below ...
#   examples/label_studio_round_trip.sh import project-1-at-2026-11-23-10-00-1a2b3c4d.json
#
# The store is $LABELER_DB (default ./labeler.db). DOCUMENT_ROOT (default $HOME) is the folder
# Label Studio serves local files from; the images must lie under it.
set -euo pipefail

DOCUMENT_ROOT=${DOCUMENT_ROOT:-$HOME}

case "${1:-}" in
export)
    # The 500 unreviewed drafts least likely to be accepted, worst first, each with the
    # alternatives the caption run kept (up to two more: its --n-best). Image links read
    # /data/local-files/?d=<path under DOCUMENT_ROOT>.
    labeler export -f label-studio -o tasks.json --document-root "$DOCUMENT_ROOT" \
        --review unreviewed --limit 500 --n-best 3 --force
    ;;

# In Label Studio:
# 1. Start it so that it serves files under the same root:
#      LABEL_STUDIO_LOCAL_FILES_SERVING_ENABLED=true \
#      LABEL_STUDIO_LOCAL_FILES_DOCUMENT_ROOT="$DOCUMENT_ROOT" label-studio start
# 2. Create a project. Settings > Labeling Interface > Code: paste tasks.config.xml.
# 3. Settings > Cloud Storage > Add Source Storage > Local files, with the absolute path of the
#    dataset's folder (under the document root). Do not sync it: the tasks come from the file.
# 4. Data Manager > Import: tasks.json. Each task shows the best draft, editable, with p_accept
#    as the prediction score (sort by it), and the alternatives as text.
# 5. Reviewers submit a draft as it is (accepted), edit it (edited), empty it (rejected) or skip.
# 6. Export > JSON (JSON_MIN and CSV work too), and import the file it downloads:

import)
    labeler import "${2:?usage: $0 import LABEL_STUDIO_EXPORT}"
    # Acceptance per p_accept band, calibration, and the threshold that keeps 95% accepted.
    labeler stats --target 0.95
    ;;

*)
    echo "usage: $0 export | import LABEL_STUDIO_EXPORT" >&2
    exit 2
    ;;
esac
