"""The bot's cogs, each a small package: ``setup`` in ``__init__``, the cog in ``cog.py``.
Cogs parse options, call the services and render; the logic lives elsewhere."""
