"""``python -m aiml`` is the ``aiml`` command."""

from aiml.cli import app

app()
