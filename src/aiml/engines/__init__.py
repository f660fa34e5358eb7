"""The engines: what runs a model, each behind one interface, all listed in one table.

At the package root, ``table.py``: the engine table and :func:`build_engines` (nothing above
the engines names one by one; it alone imports the families). Beside it, what the families
share: ``base.py`` (the :class:`Engine` interface), ``details.py`` (what a model can do),
``local.py`` (what in-process engines share), ``threads.py`` (blocking iterators driven
from the loop), ``cores.py`` (thread shares), ``tool_shapes.py`` (tools on the wire),
``pool/`` (the loaded models and their leases). In subpackages, the families, each
importing only those shared modules, never the table nor another family: ``llamacpp/``,
``transformers/``, ``media/``, ``remote/``. Engines import the registry and the base
modules, never inference or the API (``pyproject.toml``'s import-linter contracts check
all of this).
"""
