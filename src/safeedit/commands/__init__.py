"""Sub-command groups of the ``safeedit`` CLI, one module each.

Every module here defines ``register(subparsers)``; ``safeedit.cli`` imports them by name so the
library never imports the CLI.
"""

#: modules of this package that add sub-commands, in help order
COMMAND_MODULES = ("methods", "mend", "judge", "bench", "build")
