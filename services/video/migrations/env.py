"""Alembic environment for video: online migrations on the engine the host hands in."""

from alembic import context

from services.common.migrations import run_env
from services.video.models import metadata

run_env(context, metadata)
