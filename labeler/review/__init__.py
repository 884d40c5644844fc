"""The drafts out to reviewers and their verdicts back: exports (`export`, with `readahead`),
imports (`importer`), how far p_accept can be trusted (`stats`), refitting it (`calibrate`) and
the HTML report (`report`, `report_html`). Import the submodules you need."""
