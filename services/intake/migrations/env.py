"""Alembic environment for intake: online migrations on the engine the host hands in."""

from alembic import context

from services.common.migrations import run_env
from services.intake.models import metadata

run_env(context, metadata)
