"""Operator workflows: the ComfyUI workflows an owner keeps in ``DATA_DIR/workflows/``.

Each file there (API JSON, UI JSON, or a PNG/WebP carrying a workflow) is a template
named after its file stem, used as ``/imagine workflow:NAME``, ``easel generate
--workflow NAME`` and by the buttons on its results. Its request template id is
``workflow:NAME`` (:data:`TEMPLATE_PREFIX`), so an operator's file never clashes with a
plugin's template. A sidecar ``NAME.easel.toml`` (or ``NAME.easel.json``) beside it may
hold::

    description = "Portraits, 2 passes"
    prompt = "6.text"              # explicit bindings: option = "node_id.input"
    allow = ["prompt", "seed", "image"]   # what members may change (default: all bound)
    max_steps = 30                 # per-workflow limits, on top of the member's own
    max_size = 1024                # largest width and height
    roles = [123456789012345678]   # role ids that may use it (default: everyone)

The same limits may be set by the owner in the bot settings (``workflow_limits``),
which win over the sidecar's. The description comes from the sidecar, else from the
workflow's first Note node.

Graphs run from a PNG (``@easel run``) are kept content-addressed in
``DATA_DIR/workflow-runs/<sha256>.json`` with the template id ``png-run:<sha256>``, so
that the buttons on their results rebuild them after a restart.
"""

from __future__ import annotations

import hashlib
import json
import re
import tomllib
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from runner.errors import TemplateError, WorkflowError
from runner.templates import GenerationRequest
from runner.workflow import load_workflow
from runner.workflow_bindings import (
    OPTIONS,
    BindingError,
    Bindings,
    apply_bindings,
    find_bindings,
    with_image_input,
)

WORKFLOWS_FOLDER = "workflows"
RUNS_FOLDER = "workflow-runs"
TEMPLATE_PREFIX = "workflow:"
PNG_RUN_PREFIX = "png-run:"
SUFFIXES = (".json", ".png", ".webp")
SIDECAR_SUFFIXES = (".easel.toml", ".easel.json")
NAME_RE = re.compile(r"^[a-z0-9][a-z0-9_-]{0,63}$")
MODEL_INPUTS = {
    "ckpt_name": "checkpoint",
    "lora_name": "LoRA",
    "vae_name": "VAE",
    "control_net_name": "ControlNet",
}
REQUEST_FIELDS = {
    "prompt": "prompt",
    "negative": "negative",
    "steps": "steps",
    "cfg": "cfg",
    "sampler": "sampler",
    "scheduler": "scheduler",
    "width": "width",
    "height": "height",
    "batch_size": "batch_size",
    "model": "model",
}
"""Binding option -> the :class:`GenerationRequest` field it takes (seed, image and
denoise are handled on their own)."""


class WorkflowRejected(ValueError):
    """A workflow that cannot be added or run; ``problems`` names every one."""

    def __init__(self, name: str, problems: Iterable[str]):
        self.name = name
        self.problems = list(problems)
        listed = "; ".join(self.problems)
        super().__init__(f"workflow {name!r} has {len(self.problems)} problem(s): {listed}")


class UnknownWorkflow(ValueError):
    """No workflow of that name."""

    def __init__(self, name: str, known: Iterable[str]):
        self.name = name
        names = ", ".join(sorted(known)) or "none yet"
        super().__init__(f"there is no workflow named {name!r} (workflows: {names})")


@dataclass(frozen=True)
class WorkflowLimits:
    """Per-workflow limits: steps, largest side, and the roles that may use it."""

    max_steps: int | None = None
    max_size: int | None = None
    roles: tuple[int, ...] = ()

    def merged(self, other: WorkflowLimits | None) -> WorkflowLimits:
        """These limits with ``other``'s set values winning."""
        if other is None:
            return self
        return WorkflowLimits(
            other.max_steps if other.max_steps is not None else self.max_steps,
            other.max_size if other.max_size is not None else self.max_size,
            other.roles or self.roles,
        )


def limits_from(data: Any) -> WorkflowLimits | None:
    """Limits from a sidecar or a settings entry (a mapping or an object with the fields)."""
    if data is None:
        return None
    get = data.get if isinstance(data, Mapping) else lambda k, d=None: getattr(data, k, d)
    roles = get("roles", None) or ()
    if isinstance(roles, (str, int)):
        roles = [roles]
    try:
        return WorkflowLimits(
            int(get("max_steps")) if get("max_steps") is not None else None,
            int(get("max_size")) if get("max_size") is not None else None,
            tuple(int(r) for r in roles),
        )
    except (TypeError, ValueError) as exc:
        raise ValueError(
            f"bad workflow limits {dict(data) if isinstance(data, Mapping) else data!r}: {exc}"
        ) from exc


@dataclass
class OperatorWorkflow:
    """One workflow of the folder, read and bound."""

    name: str
    path: Path | None
    graph: dict[str, Any]
    bindings: Bindings
    description: str = ""
    allow: frozenset[str] | None = None
    """Options members may change; None = every bound option."""
    limits: WorkflowLimits = field(default_factory=WorkflowLimits)
    template: str = ""

    def __post_init__(self) -> None:
        if not self.template:
            self.template = TEMPLATE_PREFIX + self.name

    def allowed(self, option: str) -> bool:
        """Whether members may change ``option`` (it must be bound)."""
        if option not in self.bindings.options:
            return False
        return self.allow is None or option in self.allow

    def current(self) -> dict[str, Any]:
        """Every bound option's value in the workflow as saved."""
        return self.bindings.values(self.graph)

    def node_types(self) -> list[str]:
        """The node types it uses, sorted."""
        return sorted(
            {str(n.get("class_type")) for n in self.graph.values() if isinstance(n, dict)}
        )

    def models(self) -> list[tuple[str, str]]:
        """``(kind, file name)`` of every model file it names (checkpoints, LoRAs...)."""
        found: list[tuple[str, str]] = []
        for node in self.graph.values():
            for key, kind in MODEL_INPUTS.items():
                value = (node.get("inputs") or {}).get(key) if isinstance(node, dict) else None
                if isinstance(value, str) and (kind, value) not in found:
                    found.append((kind, value))
        return found

    def usable_by(self, role_ids: Iterable[int], *, owner: bool = False) -> bool:
        """Whether a member with these roles may use it (owners always)."""
        if owner or not self.limits.roles:
            return True
        return bool(set(self.limits.roles) & {int(r) for r in role_ids})

    def describe(self) -> list[str]:
        """Lines saying what is bound (option -> node id, class, input, value), what
        members may change, and the node types and models needed."""
        lines = [f"workflow {self.name}" + (f": {self.description}" if self.description else "")]
        lines.append("bindings:")
        for option, binding in self.bindings.options.items():
            for target in binding.targets:
                node = self.graph.get(target.node_id, {})
                value = (node.get("inputs") or {}).get(target.input)
                shown = json.dumps(value) if not isinstance(value, str) else repr(value[:60])
                lines.append(
                    f"  {option} -> node {target.node_id} ({node.get('class_type')}).{target.input}"
                    f" = {shown} [{binding.source}]"
                )
        for node_id in self.bindings.loras:
            inputs = self.graph[node_id].get("inputs") or {}
            lines.append(
                f"  lora -> node {node_id} ({self.graph[node_id].get('class_type')}) = {inputs.get('lora_name')!r}"
            )
        if self.bindings.sampler:
            lines.append(f"first sampler: node {self.bindings.sampler}")
        may = [o for o in self.bindings.options if self.allowed(o)]
        lines.append("members may change: " + (", ".join(may) or "nothing"))
        limits = []
        if self.limits.max_steps:
            limits.append(f"at most {self.limits.max_steps} steps")
        if self.limits.max_size:
            limits.append(f"at most {self.limits.max_size} px a side")
        if self.limits.roles:
            limits.append("roles " + ", ".join(str(r) for r in self.limits.roles))
        if limits:
            lines.append("limits: " + "; ".join(limits))
        lines.append("node types: " + ", ".join(self.node_types()))
        models = self.models()
        lines.append("models: " + (", ".join(f"{k} {n}" for k, n in models) or "none"))
        return lines

    # -- requests ----------------------------------------------------------------------
    def request_defaults(self) -> dict[str, Any]:
        """The workflow's own values under the request's field names (steps, cfg,
        sampler, scheduler, width, height, count, model, negative, strength): what a
        member's request starts from."""
        now = self.current()
        out: dict[str, Any] = {}
        for option, name in REQUEST_FIELDS.items():
            if now.get(option) is not None and option not in ("prompt", "batch_size"):
                out[name] = now[option]
        if now.get("batch_size") is not None:
            out["count"] = now["batch_size"]
        if now.get("denoise") is not None:
            out["strength"] = now["denoise"]
        return out

    def check_request(self, request: GenerationRequest, *, image: bool = False) -> list[str]:
        """Every way ``request`` goes beyond this workflow: options members may not change
        that differ from the workflow's values, an image where its allow list has none,
        steps or size over its limits."""
        problems = []
        now = self.current()
        for option, name in REQUEST_FIELDS.items():
            if option in ("prompt",) or option not in self.bindings.options:
                continue
            if getattr(request, name) != now.get(option) and not self.allowed(option):
                problems.append(f"{option} cannot be changed in this workflow")
        if (
            request.seed is not None
            and "seed" in self.bindings.options
            and not self.allowed("seed")
        ):
            problems.append("seed cannot be changed in this workflow")
        if image and self.allow is not None and "image" not in self.allow:
            # An allow list without "image" refuses one, also where easel would add
            # the LoadImage itself (a text-to-image workflow).
            problems.append("this workflow takes no image")
        if request.loras and len(request.loras) > len(self.bindings.loras):
            have = len(self.bindings.loras)
            problems.append(
                f"this workflow takes {'no LoRAs' if not have else f'at most {have} LoRA(s)'}"
            )
        if self.limits.max_steps and request.steps > self.limits.max_steps:
            problems.append(
                f"steps {request.steps} is more than this workflow's limit of {self.limits.max_steps}"
            )
        side = self.limits.max_size
        if side and (request.width > side or request.height > side):
            problems.append(
                f"size {request.width}x{request.height} is larger than this workflow's limit of {side}x{side}"
            )
        return problems

    def check_again(
        self, request: GenerationRequest, earlier: GenerationRequest, *, image: bool = False
    ) -> list[str]:
        """Every way a result button's ``request`` (reroll, variation, upscale, reuse
        seed) goes beyond this workflow as it is now, ``earlier`` being the request of
        the result clicked: :meth:`check_request` (allow list, steps and size limits)
        with two things a button does on its own let through: keeping the seed of an
        earlier run of the workflow, and making fewer images than the result had (V, U).
        A new prompt or negative is refused when members may no longer change it."""
        checked = request.model_copy(update={"seed": None})
        if request.batch_size < earlier.batch_size:
            checked = checked.model_copy(update={"batch_size": earlier.batch_size})
        problems = self.check_request(checked, image=image)
        if (
            request.prompt != earlier.prompt
            and "prompt" in self.bindings.options
            and not self.allowed("prompt")
        ):
            problems.insert(0, "prompt cannot be changed in this workflow")
        return problems

    def build(self, request: GenerationRequest) -> dict[str, Any]:
        """The workflow to run for ``request`` (seed set): its bound options written in;
        with an init image, the image goes into the bound LoadImage (a text-to-image
        workflow is given one, see :func:`~runner.workflow_bindings.with_image_input`)
        and the strength into the first sampler's denoise; LoRAs fill its LoRA loaders;
        every SaveImage gets the request's file prefix. Raises :class:`TemplateError`."""
        if request.seed is None:
            raise TemplateError("the request has no seed; call request.with_seed() first")
        graph, bindings = self.graph, self.bindings
        if request.init_image:
            graph, bindings = with_image_input(graph, bindings)
        values: dict[str, Any] = {}
        for option, name in REQUEST_FIELDS.items():
            if option in bindings.options:
                values[option] = getattr(request, name)
        if "seed" in bindings.options:
            values["seed"] = request.seed
        if request.init_image:
            if "image" not in bindings.options:
                raise TemplateError(f"workflow {self.name!r} has no place for an init image")
            values["image"] = request.init_image
            if "denoise" in bindings.options:
                values["denoise"] = request.strength
        loras = [(lora.name, lora.strength_model, lora.clip_strength) for lora in request.loras]
        try:
            out = apply_bindings(graph, bindings, values, loras=loras)
        except BindingError as exc:
            raise TemplateError(f"workflow {self.name!r}: {exc}") from exc
        for node in out.values():
            if isinstance(node, dict) and node.get("class_type") == "SaveImage":
                inputs = node.setdefault("inputs", {})
                if not isinstance(inputs.get("filename_prefix"), list):
                    inputs["filename_prefix"] = request.filename_prefix
        return out


# -- reading files -------------------------------------------------------------------------


def _ui_data(path: Path) -> dict[str, Any] | None:
    """The UI-format workflow of a file (JSON, or a PNG's ``workflow`` chunk), or None."""
    try:
        if path.suffix.lower() == ".json":
            data = json.loads(path.read_text(encoding="utf-8"))
        else:
            from runner.images import image_workflow_text

            text = image_workflow_text(path.read_bytes()).get("workflow")
            data = json.loads(text) if text else None
    except (OSError, ValueError):
        return None
    from runner.ui_format import is_ui_workflow

    return data if is_ui_workflow(data) else None


def _ui_model_problems(path: Path, env: Any) -> list[str]:
    """The missing models of a UI-format file that cannot be converted (it uses node
    types easel lacks): each node of a known type has its widget values read as that
    type's inputs, and the model files they name are checked, so that a refusal names
    them beside the unknown nodes."""
    from runner.ui_format import MODE_BYPASS, MODE_NEVER, VIRTUAL_TYPES, map_widget_values

    data = _ui_data(path)
    graph: dict[str, Any] = {}
    for node in (data or {}).get("nodes") or []:
        if not isinstance(node, dict) or node.get("mode") in (MODE_NEVER, MODE_BYPASS):
            continue
        node_type = env.node_types.get(node.get("type"))
        if node_type is None or node.get("type") in VIRTUAL_TYPES:
            continue
        try:
            inputs = map_widget_values(node_type, node.get("widgets_values"))
        except (TypeError, ValueError, WorkflowError):
            continue
        graph[str(node.get("id"))] = {"class_type": node["type"], "inputs": inputs}
    return _model_problems(graph, env)


def _note_text(path: Path) -> str:
    """The first Note node's text of a UI-format workflow file (JSON or PNG), or ''."""
    data = _ui_data(path)
    for node in (data or {}).get("nodes", []) if isinstance(data, dict) else []:
        if isinstance(node, dict) and node.get("type") in ("Note", "MarkdownNote"):
            values = node.get("widgets_values") or []
            if values and isinstance(values[0], str) and values[0].strip():
                return " ".join(values[0].split())[:200]
    return ""


def read_sidecar(path: Path) -> dict[str, Any]:
    """A sidecar file's table; raises :class:`WorkflowError` naming a bad file."""
    try:
        data = path.read_bytes()
    except OSError as exc:
        raise WorkflowError(f"sidecar {path.name} cannot be read: {exc}") from exc
    return parse_sidecar(data, path.name)


def parse_sidecar(data: bytes, filename: str) -> dict[str, Any]:
    """The table of a sidecar's bytes: JSON when ``filename`` ends in ``.json``, else
    TOML. Raises :class:`WorkflowError` naming the file and what is wrong."""
    try:
        text = data.decode("utf-8")
        table = json.loads(text) if filename.lower().endswith(".json") else tomllib.loads(text)
    except ValueError as exc:  # UnicodeDecodeError, JSONDecodeError, TOMLDecodeError
        raise WorkflowError(f"sidecar {filename} cannot be read: {exc}") from exc
    if not isinstance(table, dict):
        raise WorkflowError(f"sidecar {filename} must be a table of settings")
    return table


def bind_workflow(
    name: str,
    graph: dict[str, Any],
    node_types: Mapping[str, Any],
    sidecar: Mapping[str, Any] | None = None,
    *,
    path: Path | None = None,
    description: str = "",
    settings_limits: Any = None,
    template: str = "",
) -> OperatorWorkflow:
    """An :class:`OperatorWorkflow` from an API graph and its sidecar's table; raises
    :class:`WorkflowRejected` naming every problem of the sidecar."""
    sidecar = dict(sidecar or {})
    problems: list[str] = []
    explicit = dict(sidecar.get("bindings") or {})
    explicit.update({k: v for k, v in sidecar.items() if k in OPTIONS})
    try:
        bindings = find_bindings(graph, node_types, explicit)
    except BindingError as exc:
        problems.append(str(exc))
        bindings = find_bindings(graph, node_types)
    allow = sidecar.get("allow")
    if allow is not None:
        if isinstance(allow, str) or not all(isinstance(a, str) for a in allow):
            problems.append("allow must be a list of option names")
            allow = None
        else:
            unknown = [a for a in allow if a not in OPTIONS]
            if unknown:
                problems.append(f"allow names unknown option(s) {', '.join(unknown)}")
            allow = frozenset(allow)
    known = {"description", "allow", "bindings", "max_steps", "max_size", "roles", *OPTIONS}
    extra = sorted(set(sidecar) - known)
    if extra:
        problems.append(f"sidecar has unknown key(s) {', '.join(extra)}")
    try:
        limits = (limits_from(sidecar) or WorkflowLimits()).merged(limits_from(settings_limits))
    except ValueError as exc:
        problems.append(str(exc))
        limits = WorkflowLimits()
    if problems:
        raise WorkflowRejected(name, problems)
    return OperatorWorkflow(
        name,
        path,
        graph,
        bindings,
        str(sidecar.get("description") or description or ""),
        allow,
        limits,
        template,
    )


def validation_problems(workflow: OperatorWorkflow, env: Any) -> list[str]:
    """Every reason ``workflow`` cannot run here: unknown node types, missing models,
    bad values (the bound image input is left out: members fill it)."""
    from runner.validation import validate

    image = workflow.bindings.get("image")
    skip = {(t.node_id, t.input) for t in image.targets} if image else set()
    result = validate(workflow.graph, env.node_types, env)
    out = []
    for issue in result.issues:
        if (issue.node_id, issue.input_name) in skip:
            continue
        if issue.input_name in MODEL_INPUTS and issue.type == "value_not_in_list":
            continue  # said below, for every node, reachable or not
        out.append(str(issue))
    return _missing_models(workflow, env) + out


def _missing_models(workflow: OperatorWorkflow, env: Any) -> list[str]:
    """A sentence for each model file a node names that this machine does not have
    (checked on every node, also those validation does not reach past a bad node)."""
    return _model_problems(workflow.graph, env)


def _model_problems(graph: Mapping[str, Any], env: Any) -> list[str]:
    """:func:`_missing_models` of an API-format graph."""
    out = []
    for node_id, node in graph.items():
        if not isinstance(node, dict):
            continue
        node_type = env.node_types.get(node.get("class_type"))
        for key, kind in MODEL_INPUTS.items():
            value = (node.get("inputs") or {}).get(key)
            spec = node_type.input(key) if node_type is not None else None
            if not isinstance(value, str) or spec is None or spec.choices is None:
                continue
            choices = spec.choices(env) if callable(spec.choices) else spec.choices
            if value in (choices or ()):
                continue
            if spec.check is not None and spec.check(value, env) is None:
                continue
            out.append(
                f"node {node_id} ({node.get('class_type')}): the {kind} {value!r} is not installed"
            )
    return out


class OperatorWorkflows:
    """The workflows folder of one data folder, with ``env``'s node types."""

    def __init__(self, settings: Any, env: Any):
        self.settings = settings
        self.env = env

    @property
    def folder(self) -> Path:
        """``DATA_DIR/workflows``."""
        return Path(self.settings.data_dir) / WORKFLOWS_FOLDER

    @property
    def runs_folder(self) -> Path:
        """``DATA_DIR/workflow-runs``: graphs run from PNGs, by content hash."""
        return Path(self.settings.data_dir) / RUNS_FOLDER

    def _files(self) -> dict[str, Path]:
        out: dict[str, Path] = {}
        if not self.folder.is_dir():
            return out
        for path in sorted(self.folder.iterdir()):
            if path.name.endswith(SIDECAR_SUFFIXES) or path.suffix.lower() not in SUFFIXES:
                continue
            name = path.stem.lower()
            if NAME_RE.match(name) and name not in out:
                out[name] = path
        return out

    def names(self) -> list[str]:
        """The workflow names, sorted."""
        return sorted(self._files())

    def _sidecar(self, name: str) -> Path | None:
        for suffix in SIDECAR_SUFFIXES:
            path = self.folder / f"{name}{suffix}"
            if path.is_file():
                return path
        return None

    def _settings_limits(self, name: str) -> Any:
        table = getattr(self.settings, "workflow_limits", None) or {}
        return table.get(name)

    def get(self, name: str) -> OperatorWorkflow:
        """The workflow ``name`` (a name or its template id), read from disk now.
        Raises :class:`UnknownWorkflow` or :class:`WorkflowRejected`."""
        name = name.removeprefix(TEMPLATE_PREFIX).strip().lower()
        files = self._files()
        path = files.get(name)
        if path is None:
            raise UnknownWorkflow(name, files)
        sidecar_path = self._sidecar(name)
        try:
            graph = load_workflow(path, self.env.node_types)
        except WorkflowError as exc:
            models = _ui_model_problems(path, self.env)
            raise WorkflowRejected(name, [str(exc), *models]) from exc
        try:
            sidecar = read_sidecar(sidecar_path) if sidecar_path else {}
        except WorkflowError as exc:
            raise WorkflowRejected(name, [str(exc)]) from exc
        return bind_workflow(
            name,
            graph,
            self.env.node_types,
            sidecar,
            path=path,
            description=_note_text(path),
            settings_limits=self._settings_limits(name),
        )

    def list(self) -> list[OperatorWorkflow | WorkflowRejected]:
        """Every workflow, or the reason it cannot be read."""
        out: list[OperatorWorkflow | WorkflowRejected] = []
        for name in self.names():
            try:
                out.append(self.get(name))
            except WorkflowRejected as exc:
                out.append(exc)
        return out

    def visible(
        self, role_ids: Iterable[int] = (), *, owner: bool = False
    ) -> list[OperatorWorkflow]:
        """The readable workflows a member with these roles may use."""
        return [
            w
            for w in self.list()
            if isinstance(w, OperatorWorkflow) and w.usable_by(role_ids, owner=owner)
        ]

    # -- adding and removing -------------------------------------------------------------
    def check(
        self,
        data: bytes,
        filename: str,
        *,
        name: str | None = None,
        sidecar: Mapping[str, Any] | None = None,
    ) -> OperatorWorkflow:
        """Read and validate a workflow file's bytes without storing it. Raises
        :class:`WorkflowRejected` naming every problem (bad name or file, unknown node
        types, missing models, bad sidecar)."""
        stem = Path(filename).stem if name is None else name
        name = stem.strip().lower().replace(" ", "-")
        suffix = Path(filename).suffix.lower()
        problems = []
        if not NAME_RE.match(name):
            problems.append(
                f"the name {name!r} must be 1-64 letters, digits, '-' or '_', starting with a letter or digit"
            )
        if suffix not in SUFFIXES:
            raise WorkflowRejected(
                name, [f"{filename!r} is not a .json, .png or .webp file", *problems]
            )
        import tempfile

        with tempfile.TemporaryDirectory() as tmp:
            path = Path(tmp) / f"upload{suffix}"
            path.write_bytes(data)
            try:
                graph = load_workflow(path, self.env.node_types)
            except WorkflowError as exc:
                models = _ui_model_problems(path, self.env)
                raise WorkflowRejected(name, [*problems, str(exc), *models]) from exc
            description = _note_text(path)
        try:
            workflow = bind_workflow(
                name,
                graph,
                self.env.node_types,
                sidecar,
                description=description,
                settings_limits=self._settings_limits(name),
            )
        except WorkflowRejected as exc:
            raise WorkflowRejected(name, [*problems, *exc.problems]) from exc
        problems += validation_problems(workflow, self.env)
        if workflow.bindings.sampler is None:
            problems.append("it has no sampler (KSampler, KSamplerAdvanced, SamplerCustom...)")
        if problems:
            raise WorkflowRejected(name, problems)
        return workflow

    def add(
        self,
        data: bytes,
        filename: str,
        *,
        name: str | None = None,
        sidecar: Mapping[str, Any] | None = None,
        replace: bool = False,
    ) -> OperatorWorkflow:
        """Validate (see :meth:`check`) and store a workflow as ``workflows/NAME.<ext>``
        (with its sidecar as ``NAME.easel.json`` when given). An existing workflow of
        that name is replaced only with ``replace``."""
        workflow = self.check(data, filename, name=name, sidecar=sidecar)
        if workflow.name in self._files() and not replace:
            raise WorkflowRejected(
                workflow.name,
                [f"a workflow named {workflow.name!r} exists; replace it or pick another name"],
            )
        self.folder.mkdir(parents=True, exist_ok=True)
        self._delete_files(workflow.name, keep_sidecar=sidecar is None)
        target = self.folder / f"{workflow.name}{Path(filename).suffix.lower()}"
        tmp = target.with_name(target.name + ".part")
        tmp.write_bytes(data)
        tmp.replace(target)
        if sidecar is not None:
            (self.folder / f"{workflow.name}.easel.json").write_text(
                json.dumps(dict(sidecar), indent=2)
            )
        workflow.path = target
        return workflow

    def _delete_files(self, name: str, *, keep_sidecar: bool = False) -> list[Path]:
        gone = []
        for path in list(self.folder.iterdir()) if self.folder.is_dir() else []:
            if path.name.endswith(SIDECAR_SUFFIXES):
                if not keep_sidecar and path.name.lower().startswith(name + ".easel."):
                    path.unlink()
                    gone.append(path)
            elif path.suffix.lower() in SUFFIXES and path.stem.lower() == name:
                path.unlink()
                gone.append(path)
        return gone

    def remove(self, name: str) -> list[Path]:
        """Delete workflow ``name`` and its sidecar; returns the files deleted."""
        name = name.removeprefix(TEMPLATE_PREFIX).strip().lower()
        if name not in self._files():
            raise UnknownWorkflow(name, self._files())
        return self._delete_files(name)

    # -- graphs from PNGs ----------------------------------------------------------------
    def png_run(self, data: bytes) -> OperatorWorkflow:
        """The graph a ComfyUI PNG (or WebP) carries, validated, stored by content hash,
        as a workflow whose template id is ``png-run:<sha256>``. Raises
        :class:`WorkflowRejected`."""
        import tempfile

        with tempfile.TemporaryDirectory() as tmp:
            path = Path(tmp) / "image.png"
            path.write_bytes(data)
            try:
                graph = load_workflow(path, self.env.node_types)
            except WorkflowError as exc:
                models = _ui_model_problems(path, self.env)
                raise WorkflowRejected("that image", [str(exc), *models]) from exc
        text = json.dumps(graph, sort_keys=True)
        digest = hashlib.sha256(text.encode()).hexdigest()
        workflow = bind_workflow(
            digest[:12], graph, self.env.node_types, template=PNG_RUN_PREFIX + digest
        )
        problems = validation_problems(workflow, self.env)
        if workflow.bindings.sampler is None:
            problems.append("it has no sampler")
        if problems:
            raise WorkflowRejected("that image's workflow", problems)
        self.runs_folder.mkdir(parents=True, exist_ok=True)
        (self.runs_folder / f"{digest}.json").write_text(text)
        return workflow

    def _png_workflow(self, template: str) -> OperatorWorkflow:
        digest = template.removeprefix(PNG_RUN_PREFIX)
        if not re.fullmatch(r"[0-9a-f]{64}", digest):
            raise TemplateError(f"bad PNG-run template {template!r}")
        path = self.runs_folder / f"{digest}.json"
        try:
            graph = json.loads(path.read_text())
        except (OSError, ValueError) as exc:
            raise TemplateError(f"the graph of {template!r} is gone: {exc}") from exc
        return bind_workflow(digest[:12], graph, self.env.node_types, template=template)

    # -- templates -----------------------------------------------------------------------
    def for_template(self, template: str) -> OperatorWorkflow | None:
        """The workflow behind a template id (``workflow:NAME`` or ``png-run:SHA``), or
        None for any other template."""
        try:
            if template.startswith(TEMPLATE_PREFIX):
                return self.get(template)
            if template.startswith(PNG_RUN_PREFIX):
                return self._png_workflow(template)
        except (UnknownWorkflow, WorkflowRejected) as exc:
            raise TemplateError(str(exc)) from exc
        return None

    def builder(
        self, fallback: Callable[[GenerationRequest], dict[str, Any]]
    ) -> Callable[[GenerationRequest], dict[str, Any]]:
        """A workflow builder (as :class:`bot.services.history.History` takes) that builds
        operator workflows and PNG runs itself and hands other templates to ``fallback``."""

        def build(request: GenerationRequest) -> dict[str, Any]:
            workflow = self.for_template(request.template_name)
            if workflow is None:
                return fallback(request)
            return workflow.build(request)

        build.operator_workflows = self  # type: ignore[attr-defined]
        return build


def is_workflow_template(template: str | None) -> bool:
    """Whether a template id names an operator workflow or a PNG run."""
    return bool(template) and str(template).startswith((TEMPLATE_PREFIX, PNG_RUN_PREFIX))


__all__ = [
    "PNG_RUN_PREFIX",
    "TEMPLATE_PREFIX",
    "OperatorWorkflow",
    "OperatorWorkflows",
    "UnknownWorkflow",
    "WorkflowLimits",
    "WorkflowRejected",
    "bind_workflow",
    "is_workflow_template",
    "parse_sidecar",
    "read_sidecar",
    "validation_problems",
]
