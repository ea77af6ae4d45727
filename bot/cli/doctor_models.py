"""``easel doctor``'s check of the model files: checkpoints whose header shows them broken
(truncated, random bytes, a renamed pickle, not a Stable Diffusion checkpoint) and symbolic
links out of the models folders, which the model lists leave out."""

from __future__ import annotations

from bot.cli.doctor import Check


def model_file_checks(manager) -> list[Check]:
    """One warning per file the model lists leave out (the manager read only headers)."""
    checks: list[Check] = []
    for skipped in manager.skipped_models():
        outside = "outside the models folders" in skipped.reason
        checks.append(
            Check(
                "warn",
                f"{skipped.kind} {skipped.name} left out",
                skipped.reason,
                "set allow_model_symlinks_outside = true if you trust where the link leads, "
                "or copy the file into the models folder"
                if outside
                else "download the file again, or remove it (its header shows it cannot load)",
            )
        )
    return checks
