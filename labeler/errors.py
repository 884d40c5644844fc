"""The one error hierarchy. The CLI turns any of these into a one-line message and exit code 1."""


class LabelerError(Exception):
    """A failure the user can act on; its message is shown as is, without a traceback."""


class InputError(LabelerError):
    """A path, option or file given by the user cannot be used."""


class StoreError(LabelerError):
    """The store cannot be opened, upgraded or written."""


class ModelError(LabelerError):
    """A model, its weights or a checkpoint cannot be built or loaded."""


class FormatError(LabelerError):
    """A file to read is malformed; the message names the line or record."""
