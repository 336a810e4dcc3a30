"""The one exception type for a user's mistake (the CLI turns it into exit status 2)."""


class UserError(Exception):
    """A mistake the user can fix; its message is one line saying what and how."""
