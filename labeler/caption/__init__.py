"""Drafts from the model into the store: the caption job (`job`), where the model runs
(`engines`), the loader processes that decode images (`loader`) and who holds the job's claims
(`holders`). Import the submodules you need; this package imports nothing."""
