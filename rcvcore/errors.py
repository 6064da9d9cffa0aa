"""User-facing errors: the CLI prints their message (no traceback) and exits with status 2."""


class UserError(ValueError):
    """Bad input from the user: the message names the parameter or file and the next step."""


class WeightsUnavailable(UserError):
    """Pretrained weights are neither cached nor downloadable."""


class Notice(UserWarning):
    """Something the user should know, that did not stop the job (a damaged cache healed, a
    table read in another encoding, duplicate rows merged). The CLI prints it as one line,
    ``warning: <message>``."""


class SkippedFile(Notice):
    """A file of a dataset was left out (unreadable, outside the folder, hidden by the crop);
    the message is ``skipped PATH: reason``."""
