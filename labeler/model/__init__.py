"""The Show and Tell model core. Import the submodules you need; this package imports nothing,
so `labeler.model.drafts` and `labeler.model.vocab` load without torch.

- drafts.py: DecodeSettings, Draft, ImageDrafts (what a caption run asks for and gets back)
- vocab.py: tokenisation and the word <-> id vocabulary
- preprocessing.py: resize/crop/normalise settings saved with the model
- encoder.py: torchvision backbones, ImageNet weights, projection to the embed size
- decoder.py: the LSTM decoder (teacher-forced forward and single step)
- show_tell.py: ModelConfig, ShowAndTell, build_model
- beam.py: batched beam search over a step function
- checkpoint.py: self-describing, atomically written checkpoints
- captioner.py: the Captioner interface and ShowTellCaptioner
"""
