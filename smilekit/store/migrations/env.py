"""Alembic environment: migrations run on the connection ``smilekit.store.migrate.upgrade`` hands over (inside its lock)."""
from alembic import context

connection = context.config.attributes.get("connection")
if connection is None:
    raise SystemExit("run SmileKit's migrations through smilekit.store.migrate.upgrade (FeedbackStore does on open)")
context.configure(connection=connection, target_metadata=None)
with context.begin_transaction():
    context.run_migrations()
