"""Settings from environment variables, one way for every package: typed readers (``Env``)
that raise one ``ConfigError`` naming the variable, and ``Secret`` for credentials.

It sits at the bottom of the package graph and depends only on attrs and the stdlib.
"""

from .env import FALSE_WORDS, TRUE_WORDS, Case, Env
from .errors import ConfigError
from .secret import Secret

__all__ = ["FALSE_WORDS", "TRUE_WORDS", "Case", "ConfigError", "Env", "Secret"]
