"""easel's Discord bot: the client, its cogs, the result views, prompt parsing and rendering.

Importing this package does not import discord.py; its modules do.
"""
