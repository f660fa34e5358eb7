"""Teams: keys as data (who may call, with what role), what each key may use, its limits
and budgets, the usage counted per key, and the audit log of admin actions; all in aiml's
own SQL database (``database.py``: sqlite under AIML_HOME, or AIML_DATABASE_URL; Alembic's
migrations in ``migrations/``).

Imports only the base modules (types, errors) and SQLAlchemy: the API's middleware and
routes and the request gate use it; it knows nothing of them.
"""
