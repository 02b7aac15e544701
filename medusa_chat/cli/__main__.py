"""``python -m medusa_chat.cli``."""

from . import app

app()
