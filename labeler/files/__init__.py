"""Files into the store: walking folders (`walk`), reading image headers fast (`headers`),
checking one file for the scan (`probe`) and decoding one for the model (`decode`), the scan job
(`scan`) and moving a dataset's root (`relocate`). Import the submodules you need."""
