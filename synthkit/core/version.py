"""synthkit's version, in a module below every other: each file records it (meta.provenance), and the package's
__init__.py, which also re-exports what users call (open_store, from above the stores), gives it as
synthkit.__version__."""

__version__ = "0.1.0"
