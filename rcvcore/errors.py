"""User-facing errors: the CLI prints their message (no traceback) and exits with status 2."""


class UserError(ValueError):
    """Bad input from the user: the message names the parameter or file and the next step."""


class WeightsUnavailable(UserError):
    """Pretrained weights are neither cached nor downloadable."""
