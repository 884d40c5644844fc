"""Training and judging the model: captioned data sets (`readers`, `scenes`, `store_reader`),
cached backbone features (`features`), training (`train`) and its calibrator (`calibrator`),
scores (`metrics`, `evaluate`) and the offline demo (`demo`). Import the submodules you need."""
