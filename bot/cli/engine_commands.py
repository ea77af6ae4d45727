"""``easel generate``, ``easel run``, ``easel nodes`` and ``easel models``."""

from __future__ import annotations

import json
import sys
from pathlib import Path
from typing import Any

import click

from bot.cli.common import (
    EXIT_BAD_INPUT,
    EXIT_FAILED,
    close_environment,
    handle_errors,
    load_settings,
    make_environment,
)
from bot.cli.progress import JsonlEvents, ProgressDisplay
from runner.templates import DEFAULTS

OUT_FORMATS = {".png": "PNG", ".jpg": "JPEG", ".jpeg": "JPEG", ".webp": "WEBP"}


def parse_lora_option(text: str) -> tuple[str, float]:
    """A ``--lora`` value, ``NAME:WEIGHT`` (weight optional, default 1.0; the name is a
    file of the runner's loras folder and may itself hold ':') -> (name, weight).
    Not the bot's ``<lora:...>`` tags: see :func:`bot.services.parsing.parse_lora_tag`."""
    name, sep, weight = text.rpartition(":")
    if not sep:
        return text, 1.0
    try:
        value = float(weight)
    except ValueError:
        raise click.BadParameter(
            f"{text!r}: the weight after ':' must be a number, got {weight!r}", param_hint="--lora"
        ) from None
    if not name:
        raise click.BadParameter(f"{text!r}: give NAME:WEIGHT", param_hint="--lora")
    return name, value


def store_input_image(settings, path: Path) -> str:
    """Check an init image and copy it into the input folder under its content hash; returns
    the name LoadImage takes."""
    from runner.images import BadImage, open_image, sha256_bytes

    try:
        image = open_image(path, max_bytes=int(settings.max_upload_mb * 1024 * 1024))
    except BadImage as exc:
        raise click.ClickException(f"--init-image: {exc}") from None
    import io

    buf = io.BytesIO()
    image.save(buf, format="PNG")
    data = buf.getvalue()
    name = f"{sha256_bytes(data)[:20]}.png"
    target = settings.input_dir / name
    if not target.exists():
        _write(target, data, "the init image")
    return name


def _write(target: Path, data: bytes, what: str) -> None:
    """Write a file atomically, or say in one sentence why it cannot be written (a full
    disk, a read-only folder)."""
    from runner.files import write_atomic

    try:
        target.parent.mkdir(parents=True, exist_ok=True)
        write_atomic(target, data)
    except OSError as exc:
        raise click.ClickException(f"cannot write {what} {target}: {exc.strerror or exc}") from None


def write_outputs(images: list[str], out: Path) -> list[Path]:
    """Copy the saved PNGs to ``out`` (``out_2.png``... for more than one), converting to the
    format the suffix names."""
    from PIL import Image

    fmt = OUT_FORMATS.get(out.suffix.lower())
    if fmt is None:
        raise click.BadParameter(f"{out}: use a .png, .jpg or .webp file name", param_hint="--out")
    written = []
    for i, source in enumerate(images):
        target = out if i == 0 else out.with_name(f"{out.stem}_{i + 1}{out.suffix}")
        if fmt == "PNG":
            data = Path(source).read_bytes()
        else:
            import io

            buf = io.BytesIO()
            with Image.open(source) as im:
                im.convert("RGB").save(buf, format=fmt, quality=92)
            data = buf.getvalue()
        _write(target, data, "the image")
        written.append(target)
    return written


@click.command()
@click.argument("prompt")
@click.option("--negative", default=DEFAULTS.negative, help="What the image should not show.")
@click.option("--seed", type=click.IntRange(0, 2**64 - 1), help="Random when not given.")
@click.option("--steps", type=click.IntRange(1, None), default=DEFAULTS.steps, show_default=True)
@click.option(
    "--cfg",
    type=float,
    default=DEFAULTS.cfg,
    show_default=True,
    help="Classifier-free guidance scale.",
)
@click.option(
    "--sampler",
    default=DEFAULTS.sampler,
    show_default=True,
    help="A ComfyUI sampler name (easel nodes KSampler).",
)
@click.option(
    "--scheduler", default=DEFAULTS.scheduler, show_default=True, help="A ComfyUI scheduler name."
)
@click.option("--width", type=click.IntRange(16, None), default=DEFAULTS.width, show_default=True)
@click.option("--height", type=click.IntRange(16, None), default=DEFAULTS.height, show_default=True)
@click.option(
    "--batch",
    type=click.IntRange(1, None),
    default=1,
    show_default=True,
    help="Images in one batch.",
)
@click.option("--model", help="Checkpoint name (easel models); the configured default otherwise.")
@click.option(
    "--lora", "loras", multiple=True, metavar="NAME:WEIGHT", help="Apply a LoRA; repeatable."
)
@click.option(
    "--init-image", type=click.Path(dir_okay=False, path_type=Path), help="Image for img2img."
)
@click.option(
    "--strength",
    type=click.FloatRange(0.0, 1.0),
    default=DEFAULTS.strength,
    show_default=True,
    help="img2img denoise.",
)
@click.option(
    "--best",
    type=click.IntRange(2, 100),
    metavar="N",
    help="Make N candidates in one batch and keep the best by CLIP score against the prompt "
    "(the clip_model setting ranks them).",
)
@click.option(
    "--keep",
    type=click.IntRange(1, 100),
    metavar="K",
    help="With --best: how many of the best candidates to keep, best first (default 1).",
)
@click.option("--template", help="Workflow template (txt2img, img2img, or one from a plugin).")
@click.option(
    "--workflow",
    help="An operator workflow (easel workflows list); options not given keep its values.",
)
@click.option(
    "--out",
    type=click.Path(dir_okay=False, path_type=Path),
    help="Write the image here (.png/.jpg/.webp).",
)
@click.option(
    "--events", type=click.Choice(["jsonl"]), help="Print every event as JSON lines on stdout."
)
@click.option(
    "--print-workflow", is_flag=True, help="Print the workflow the template built and stop."
)
@click.option(
    "--backend",
    type=click.Choice(["local", "ray"]),
    help="Run here, or on a Ray worker (default: the configured backend).",
)
@click.option(
    "--ray-address",
    help="Ray cluster address for --backend ray (auto, HOST:6379, ray://HOST:10001).",
)
@handle_errors
def generate(
    prompt,
    negative,
    seed,
    steps,
    cfg,
    sampler,
    scheduler,
    width,
    height,
    batch,
    model,
    loras,
    init_image,
    strength,
    best,
    keep,
    template,
    workflow,
    out,
    events,
    print_workflow,
    backend,
    ray_address,
):
    """Generate an image from PROMPT with a workflow template (txt2img, or img2img with --init-image)."""
    from pydantic import ValidationError

    from runner.templates import GenerationRequest

    settings = load_settings()
    parsed_loras = [parse_lora_option(text) for text in loras]
    if init_image is not None and not init_image.is_file():
        raise click.BadParameter(f"{init_image}: no such file", param_hint="--init-image")
    if out is not None and out.suffix.lower() not in OUT_FORMATS:
        raise click.BadParameter(f"{out}: use a .png, .jpg or .webp file name", param_hint="--out")
    try:
        request = GenerationRequest(
            prompt=prompt,
            negative=negative,
            seed=seed,
            steps=steps,
            cfg=cfg,
            sampler=sampler,
            scheduler=scheduler,
            width=width,
            height=height,
            batch_size=batch,
            loras=parsed_loras,
            strength=strength,
            model=model,
            template=template,
        ).with_seed()
    except ValidationError as exc:
        problems = "; ".join(f"{'.'.join(map(str, e['loc']))}: {e['msg']}" for e in exc.errors())
        raise click.ClickException(problems) from None
    env = make_environment(settings)
    operator = None
    if workflow:
        from bot.cli.workflow_commands import workflow_request

        operator, request = workflow_request(env, settings, workflow, _given(request))
    if init_image is not None:
        request = request.model_copy(update={"init_image": store_input_image(settings, init_image)})
    request = _best_of(request, settings, best, keep)
    if operator:
        from runner.templates import rank_with_clip

        workflow = rank_with_clip(operator.build, request)
    else:
        workflow = env.build_workflow(request)
    if print_workflow:
        click.echo(json.dumps(workflow, indent=2))
        return
    click.echo(f"seed {request.seed}", err=True)
    if (backend or settings.backend) == "ray":
        from runner.jobs.ray_run import run_on_ray

        def on_ray(on_event: Any) -> list[str]:
            return run_on_ray(
                settings,
                workflow,
                address=ray_address,
                lora_resolver=env.models.lora_path,
                on_event=on_event,
            )

        if events:
            images = on_ray(JsonlEvents())
        else:
            with ProgressDisplay() as display:
                images = on_ray(display)
    else:
        if events:
            result = env.run(workflow, on_event=JsonlEvents())
        else:
            with ProgressDisplay() as display:
                result = env.run(workflow, on_event=display)
        images = result.images
        _say_ranking(result.outputs)
    paths = write_outputs(images, out) if out else [Path(p) for p in images]
    for path in paths:
        click.echo(str(path), err=bool(events))
    close_environment(env)


def _best_of(request, settings, best: int | None, keep: int | None):
    """``request`` made best of ``best`` (keeping ``keep``, else an explicit --batch,
    else 1) with the configured CLIP model; unchanged without --best. The rules are
    /imagine's (:func:`bot.services.best_of.best_of_choice`), said in the CLI's terms."""
    from click.core import ParameterSource

    from bot.services.best_of import MAX_CANDIDATES, best_of_choice
    from bot.services.parsing import Limits, ParseError

    if best is None and keep is None:
        return request
    if best is not None and not settings.clip_model:
        raise click.UsageError(
            "--best needs a CLIP model to rank the candidates: set clip_model (a folder in "
            "models/clip) in the configuration, or leave --best out."
        )
    asked: dict[str, Any] = {"best_of": best, "keep": keep}
    ctx = click.get_current_context()
    if ctx.get_parameter_source("batch") is ParameterSource.COMMANDLINE:
        asked["count"] = request.batch_size
    try:
        chosen, kept = best_of_choice(
            {k: v for k, v in asked.items() if v is not None},
            {},
            settings.clip_model,
            Limits(max_count=MAX_CANDIDATES),
        )
    except ParseError as exc:
        message = str(exc).replace("best_of", "--best").replace("keep ", "--keep ", 1)
        raise click.UsageError(message) from None
    return request.model_copy(
        update={"best_of": chosen, "best_of_clip": settings.clip_model, "batch_size": kept}
    )


def _say_ranking(outputs) -> None:
    """Every candidate's CLIP score, best first, on stderr (a best-of run only)."""
    from bot.services.best_of import ranking_report

    report = ranking_report(outputs)
    if report is None:
        return
    scores = [float(s) for s in report.get("scores") or []]
    kept = [int(i) for i in report.get("ranking") or []]
    order = sorted(range(len(scores)), key=lambda i: (-scores[i], i))
    parts = ", ".join(f"{'*' if i in kept else ''}image {i + 1} {scores[i]:.2f}" for i in order)
    click.echo(
        f"best {len(kept)} of {len(scores)} by CLIP {report.get('clip_name')}: {parts}", err=True
    )


def _given(request) -> dict[str, Any]:
    """The request fields given on the command line (not left at their defaults)."""
    from click.core import ParameterSource

    ctx = click.get_current_context()
    names = {"batch": "batch_size", "loras": "loras"}
    out: dict[str, Any] = {"prompt": request.prompt}
    for param in (
        "negative",
        "seed",
        "steps",
        "cfg",
        "sampler",
        "scheduler",
        "width",
        "height",
        "batch",
        "model",
        "loras",
        "strength",
    ):
        if ctx.get_parameter_source(param) is ParameterSource.COMMANDLINE:
            field = names.get(param, param)
            out[field] = getattr(request, field)
    return out


@click.command("run")
@click.argument("workflows", nargs=-1, required=True, type=click.Path(path_type=Path))
@click.option(
    "--set",
    "overrides",
    multiple=True,
    metavar="NODE.INPUT=VALUE",
    help="Override an input; repeatable.",
)
@click.option(
    "--events", type=click.Choice(["jsonl"]), help="Print every event as JSON lines on stdout."
)
@click.option("--previews", is_flag=True, help="Include small step previews in progress events.")
@handle_errors
def run_workflows(workflows, overrides, events, previews):
    """Run WORKFLOWS in order, in one process, so the node cache carries over between them.

    Each is a ComfyUI workflow in the API format (Export (API)) or the UI format (Save), as
    JSON, or a PNG/WebP image carrying one (its ``prompt`` chunk, else its ``workflow``)."""
    from runner.errors import (
        EaselError,
        JobCancelled,
        NodeExecutionError,
        WorkflowError,
        WorkflowInvalid,
    )
    from runner.workflow import apply_overrides, load_workflow

    settings = load_settings()
    env = make_environment(settings)  # its node types convert UI-format files
    loaded = []
    for path in workflows:  # read everything first: a typo in the 3rd file fails before any work
        try:
            workflow = load_workflow(path, node_types=env.node_types)
            loaded.append((path, apply_overrides(workflow, list(overrides))))
        except WorkflowError as exc:
            click.echo(f"error: {path}: {exc}", err=True)
            close_environment(env)
            sys.exit(EXIT_BAD_INPUT)
    worst = 0
    for path, workflow in loaded:
        try:
            if events:
                result = env.run(workflow, on_event=JsonlEvents(), previews=previews)
            else:
                with ProgressDisplay() as display:
                    result = env.run(workflow, on_event=display, previews=previews)
        except WorkflowInvalid as exc:
            click.echo(f"error: {path}: {exc}", err=True)
            worst = max(worst, EXIT_BAD_INPUT)
            continue
        except JobCancelled:
            raise
        except (NodeExecutionError, EaselError) as exc:
            click.echo(f"error: {path}: {exc}", err=True)
            worst = max(worst, EXIT_FAILED)
            continue
        summary = f"{path}: ran {len(result.executed)} node(s), {len(result.cached)} from cache, {result.seconds:.2f}s"
        click.echo(summary, err=True)
        for image in result.images:
            click.echo(image, err=bool(events))
    close_environment(env)
    if worst:
        sys.exit(worst)


@click.command()
@click.argument("names", nargs=-1)
@click.option("--json", "as_json", is_flag=True, help="Print JSON.")
@handle_errors
def nodes(names, as_json):
    """List node types with their inputs and outputs (or only NAMES)."""
    settings = load_settings()
    env = make_environment(settings)
    chosen = (
        [env.node_types[n] for n in names if n in env.node_types]
        if names
        else list(env.node_types.values())
    )
    missing = [n for n in names if n not in env.node_types]
    if missing:
        raise click.ClickException(f"unknown node type(s): {', '.join(missing)}")
    described = [nt.describe() for nt in sorted(chosen, key=lambda n: (n.category, n.name))]
    for item, nt in zip(described, sorted(chosen, key=lambda n: (n.category, n.name)), strict=True):
        for spec in nt.inputs:
            allowed = spec.allowed(env)
            if allowed is not None:
                item["inputs"][spec.name]["choices"] = allowed
    if as_json:
        click.echo(json.dumps(described, indent=2, default=str))
        return
    for item in described:
        outs = ", ".join(f"{o['name']}:{o['type']}" for o in item["outputs"]) or "(output node)"
        click.echo(f"{item['class_type']}  [{item['category']}, {item['plugin']}]  -> {outs}")
        if item["description"]:
            click.echo(f"    {item['description']}")
        for name, spec in item["inputs"].items():
            extra = []
            if "default" in spec:
                extra.append(f"default {spec['default']}")
            if "min" in spec or "max" in spec:
                extra.append(f"{spec.get('min', '')}..{spec.get('max', '')}")
            if "choices" in spec:
                shown = spec["choices"][:12]
                extra.append(
                    "one of "
                    + ", ".join(map(str, shown))
                    + (" ..." if len(spec["choices"]) > 12 else "")
                )
            opt = "" if spec["required"] else " (optional)"
            click.echo(
                f"    {name}: {spec['type']}{opt}" + (f"  [{'; '.join(extra)}]" if extra else "")
            )


@click.command()
@click.option("--json", "as_json", is_flag=True, help="Print JSON.")
@handle_errors
def models(as_json):
    """List the models that can be loaded, grouped by kind (checkpoints, LoRAs, VAEs, text
    encoders, upscalers), and where easel looks for them."""
    settings = load_settings()
    from bot.cli.common import quiet_libraries

    quiet_libraries()
    from runner.models.manager import ModelManager

    info = ModelManager(settings).describe()
    if as_json:
        click.echo(json.dumps(info, indent=2))
        return
    click.echo(f"device: {info['device']} ({info['dtype']})")
    click.echo(
        "models folders (ComfyUI layout: checkpoints/, loras/, vae/): "
        + ", ".join(info["models_folders"])
    )
    for kind, names in info["by_kind"].items():
        click.echo(f"{kind}:" + ("" if names else " (none)"))
        for name in names:
            click.echo(f"  {name}")
    if info.get("extra_model_paths"):
        click.echo("extra model folders (extra_model_paths.yaml):")
        for kind, folders in info["extra_model_paths"].items():
            click.echo(f"  {kind}: {', '.join(folders)}")
    if info["refused_unsafe_files"]:
        click.echo("refused (pickle-based: convert to .safetensors, or allow_pickle_weights):")
        for name in info["refused_unsafe_files"]:
            click.echo(f"  {name}")
    if info["skipped"]:
        click.echo("left out (broken, or a link out of the models folders):", err=True)
        for skipped in info["skipped"]:
            click.echo(
                f"  warning: {skipped['kind']} {skipped['name']}: {skipped['reason']}", err=True
            )
