"""The errors a user can act on that are not ValueErrors, in a module that imports nothing.

The CLI catches them to print one line and exit 2; importing them from here keeps
`slicer-samba --help` and the benchmarks free of torch and of Slicer's MRML (vtk) until a
subcommand needs them (on a GPU machine without slicer-core the benchmarks still run).
"""


class BridgeError(RuntimeError):
    """A file could not be read or written; the message names the file and what to do."""


class BundleError(RuntimeError):
    """A bundle or weight file cannot be used; the message names the file and says what to do."""
