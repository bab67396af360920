"""The base of every error a user's input can cause (a bad path, config field, file or checkpoint).

Each module defines its own kind (DataError, TaskError, ...) on this base and says in the message what is
wrong and what to do; the CLI catches the base, prints the message as one line and exits 2. This module
imports nothing, so the CLI can catch errors without loading JAX or TensorFlow first.
"""


class UserError(Exception):
    """Input that cannot be used; the message names the file, field or flag and what to do."""
