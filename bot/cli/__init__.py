"""The ``easel`` command line."""

from __future__ import annotations

import click

from bot.cli.common import setup_logging
from bot.cli.doctor import doctor
from bot.cli.engine_commands import generate, models, nodes, run_workflows


@click.group(context_settings={"help_option_names": ["-h", "--help"]})
@click.option("-v", "--verbose", count=True, help="More log output (-vv for debug).")
@click.version_option(package_name="easel")
def cli(verbose: int) -> None:
    """easel: Stable Diffusion workflows (ComfyUI format) from the command line and Discord."""
    setup_logging(verbose)


for command in (generate, run_workflows, nodes, models, doctor):
    cli.add_command(command)

from bot.cli.data_commands import DATA_COMMANDS  # noqa: E402

for command in DATA_COMMANDS:
    cli.add_command(command)

from bot.cli.bot_command import bot  # noqa: E402

cli.add_command(bot)

from bot.cli.plugin_commands import plugins  # noqa: E402

cli.add_command(plugins)

from bot.cli.queue_commands import QUEUE_COMMANDS  # noqa: E402
from bot.cli.workflow_commands import WORKFLOW_COMMANDS  # noqa: E402

for command in WORKFLOW_COMMANDS:
    cli.add_command(command)

for command in QUEUE_COMMANDS:
    cli.add_command(command)


def main() -> None:
    """Entry point of the ``easel`` console script."""
    cli(prog_name="easel")
