"""Alembic's environment for aiml's tables: run on the connection aiml hands it.

aiml runs the migrations itself (``aiml.teams.database.open_database``), passing its
connection in ``config.attributes``; its own version table keeps it apart from MLflow's
(``alembic_version``) when both live in one database.
"""

from alembic import context

from aiml.teams.tables import metadata

connection = context.config.attributes["connection"]
context.configure(
    connection=connection,
    target_metadata=metadata,
    version_table="aiml_alembic_version",
    render_as_batch=True,  # sqlite's ALTER TABLE is limited: later migrations copy tables
)
with context.begin_transaction():
    context.run_migrations()
