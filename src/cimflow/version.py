"""The package version, in a module of its own so that any layer can read it without importing
the ``cimflow`` package (whose verbs sit above every layer). ``cimflow.__version__`` is this."""

__version__ = "0.1.0"
