"""Bindings of an operator's workflow: which node input takes which request option.

A *binding* says that an option of a request (``prompt``, ``seed``, ``width``...) is
written into one or more ``(node id, input)`` places of a workflow in ComfyUI's API
format. Bindings are found without editing the graph, by reading it the way a person
who knows ComfyUI would (:func:`find_bindings`), and applied to a copy of the graph
(:func:`apply_bindings`). Everything here is a pure function of the graph (and,
optionally, the node types, to tell which links carry CONDITIONING).

Detection, in order of precedence (a later source replaces an earlier one, option by
option):

1. **Guessed from the graph.** The *first sampler* is the sampler node (``KSampler``,
   ``KSamplerAdvanced``, ``SamplerCustom``, ``SamplerCustomAdvanced``) that no other
   sampler feeds (its latent does not come from a sampler); among several, the lowest
   node id. With a base and a refiner, or a hires-fix second pass, the seed, steps, cfg,
   sampler, scheduler and denoise bindings apply to that first sampler only; the later
   passes keep the values the operator gave them.

   - ``prompt`` / ``negative``: the text encoder (``CLIPTextEncode``, ``text_g`` and
     ``text_l`` of ``CLIPTextEncodeSDXL``, ``CLIPTextEncodeSDXLRefiner``) found first
     when walking up the first sampler's positive / negative conditioning through any
     conditioning nodes (Combine, SetArea, ControlNetApply..., following a
     ``positive`` output to its ``positive`` input). Text encoders feeding a *later*
     sampler's positive (negative) that hold the same text as the first one are bound
     too, so a refiner's prompt follows the member's prompt.
   - ``seed``, ``steps``, ``cfg``, ``sampler``, ``scheduler``, ``denoise``: the first
     sampler's inputs; for ``SamplerCustom``/``SamplerCustomAdvanced`` those of its
     ``RandomNoise``, ``CFGGuider``, ``KSamplerSelect`` and ``BasicScheduler`` nodes.
   - ``width``, ``height``, ``batch_size``: the ``EmptyLatentImage`` (or another
     ``Empty*LatentImage``) the first sampler starts from, through ``RepeatLatentBatch``
     (whose ``amount`` is then the batch size).
   - ``image``: the ``LoadImage`` the first sampler's latent is encoded from
     (img2img), else the first ``LoadImage`` of the graph (a ControlNet's image).
   - ``model``: the ``CheckpointLoaderSimple`` the first sampler's model comes from
     (through LoRA loaders), else the first one of the graph.
   - ``loras``: the ``LoraLoader`` / ``LoraLoaderModelOnly`` nodes on that model's
     path, from the checkpoint outwards (see :attr:`Bindings.loras`).

2. **Node titles.** A node titled (``_meta.title``) like an option (``prompt``,
   ``negative``, ``seed``, ``image``..., case and spaces ignored) binds that option to
   its matching input (``text``, ``noise_seed``...).

3. **Explicit**: ``{"option": "node_id.input"}`` (or a list of them), e.g. from an
   operator's sidecar file.
"""

from __future__ import annotations

import copy
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from typing import Any

OPTIONS: tuple[str, ...] = (
    "prompt",
    "negative",
    "seed",
    "steps",
    "cfg",
    "sampler",
    "scheduler",
    "denoise",
    "width",
    "height",
    "batch_size",
    "model",
    "image",
)
"""The options a binding may name (``loras`` are bound separately)."""

SAMPLERS = ("KSampler", "KSamplerAdvanced", "SamplerCustom", "SamplerCustomAdvanced")
TEXT_INPUTS: dict[str, tuple[str, ...]] = {
    "CLIPTextEncode": ("text",),
    "CLIPTextEncodeSDXL": ("text_g", "text_l"),
    "CLIPTextEncodeSDXLRefiner": ("text",),
}
CHECKPOINT_LOADERS = ("CheckpointLoaderSimple", "CheckpointLoader", "unCLIPCheckpointLoader")
LORA_LOADERS = ("LoraLoader", "LoraLoaderModelOnly")
IMAGE_LOADERS = ("LoadImage",)
LATENT_PASSTHROUGH = {"RepeatLatentBatch": "samples", "SetLatentNoiseMask": "samples"}

_TITLE_INPUTS: dict[str, tuple[str, ...]] = {
    "prompt": ("text", "text_g", "text_l", "value", "string"),
    "negative": ("text", "text_g", "text_l", "value", "string"),
    "seed": ("seed", "noise_seed", "value"),
    "steps": ("steps", "value"),
    "cfg": ("cfg", "value"),
    "sampler": ("sampler_name",),
    "scheduler": ("scheduler",),
    "denoise": ("denoise",),
    "width": ("width", "value"),
    "height": ("height", "value"),
    "batch_size": ("batch_size", "amount", "value"),
    "model": ("ckpt_name",),
    "image": ("image",),
}
_ALIASES = {
    "positive": "prompt",
    "positive prompt": "prompt",
    "negative prompt": "negative",
    "noise_seed": "seed",
    "sampler_name": "sampler",
    "ckpt_name": "model",
    "checkpoint": "model",
    "batch": "batch_size",
    "load image": "image",
    "init image": "image",
}


class BindingError(ValueError):
    """An explicit binding names a node or input the workflow lacks, or an unknown option."""


@dataclass(frozen=True)
class Target:
    """One place a binding writes: node ``node_id``'s input ``input``."""

    node_id: str
    input: str

    def __str__(self) -> str:
        return f"{self.node_id}.{self.input}"


@dataclass(frozen=True)
class Binding:
    """An option and the inputs it writes; ``source`` is ``graph``, ``title`` or ``explicit``."""

    option: str
    targets: tuple[Target, ...]
    source: str = "graph"


@dataclass
class Bindings:
    """What a workflow's options are bound to, and its first sampler."""

    options: dict[str, Binding] = field(default_factory=dict)
    loras: tuple[str, ...] = ()
    """LoRA loader node ids from the checkpoint outwards; a request's LoRAs fill them in order."""
    sampler: str | None = None
    """The first sampler's node id."""
    samplers: tuple[str, ...] = ()
    """Every sampler node id, the first one first."""

    def get(self, option: str) -> Binding | None:
        """The binding of ``option``, or None."""
        return self.options.get(option)

    def __contains__(self, option: str) -> bool:
        return option in self.options

    def value(self, workflow: Mapping[str, Any], option: str) -> Any:
        """The value the workflow holds now for ``option`` (its first target's), or None."""
        binding = self.options.get(option)
        if binding is None:
            return None
        target = binding.targets[0]
        return _inputs(workflow, target.node_id).get(target.input)

    def values(self, workflow: Mapping[str, Any]) -> dict[str, Any]:
        """Every bound option's current value."""
        return {name: self.value(workflow, name) for name in self.options}


# -- reading the graph -----------------------------------------------------------------


def _inputs(workflow: Mapping[str, Any], node_id: str) -> dict[str, Any]:
    node = workflow.get(node_id)
    if not isinstance(node, dict):
        return {}
    inputs = node.get("inputs")
    return inputs if isinstance(inputs, dict) else {}


def _class(workflow: Mapping[str, Any], node_id: str) -> str:
    node = workflow.get(node_id)
    return str(node.get("class_type", "")) if isinstance(node, dict) else ""


def _link(value: Any) -> tuple[str, int] | None:
    if (
        isinstance(value, (list, tuple))
        and len(value) == 2
        and isinstance(value[1], int)
        and not isinstance(value[1], bool)
    ):
        return str(value[0]), value[1]
    return None


def _id_key(node_id: str) -> tuple[int, int, str]:
    return (0, int(node_id), "") if node_id.isdigit() else (1, 0, node_id)


def _upstream(workflow: Mapping[str, Any], node_id: str, input_name: str) -> tuple[str, int] | None:
    link = _link(_inputs(workflow, node_id).get(input_name))
    if link is None or link[0] not in workflow:
        return None
    return link


def _ancestors(workflow: Mapping[str, Any], node_id: str) -> set[str]:
    seen: set[str] = set()
    stack = [node_id]
    while stack:
        current = stack.pop()
        for value in _inputs(workflow, current).values():
            link = _link(value)
            if link and link[0] in workflow and link[0] not in seen:
                seen.add(link[0])
                stack.append(link[0])
    return seen


def samplers_in_order(workflow: Mapping[str, Any]) -> list[str]:
    """Sampler node ids, the first sampler first: a sampler no other sampler feeds comes
    before those it feeds; ties by node id."""
    ids = sorted((str(k) for k in workflow if _class(workflow, str(k)) in SAMPLERS), key=_id_key)
    depth = {s: len([a for a in _ancestors(workflow, s) if a in ids]) for s in ids}
    return sorted(ids, key=lambda s: (depth[s], _id_key(s)))


def _is_conditioning(
    workflow: Mapping[str, Any], source: tuple[str, int], input_name: str, node_types: Any
) -> bool:
    spec = node_types.get(_class(workflow, source[0])) if node_types else None
    if spec is not None:
        outputs = tuple(spec.outputs)
        return source[1] < len(outputs) and outputs[source[1]] == "CONDITIONING"
    lowered = input_name.lower()
    return lowered in ("positive", "negative") or lowered.startswith(("conditioning", "cond"))


def _output_name(workflow: Mapping[str, Any], source: tuple[str, int], node_types: Any) -> str:
    spec = node_types.get(_class(workflow, source[0])) if node_types else None
    names = tuple(getattr(spec, "output_names", ()) or ()) if spec is not None else ()
    if source[1] < len(names):
        return names[source[1]]
    inputs = _inputs(workflow, source[0])
    if "positive" in inputs and "negative" in inputs:  # ControlNetApplyAdvanced & co.
        return ("positive", "negative")[source[1]] if source[1] < 2 else ""
    return ""


def text_encoders(
    workflow: Mapping[str, Any], source: tuple[str, int] | None, node_types: Any = None
) -> list[str]:
    """Text encoder node ids found walking up a conditioning link, depth first, each
    node's conditioning inputs in order (a ``positive`` output follows its
    ``positive`` input, a ``negative`` output its ``negative`` input)."""
    found: list[str] = []
    seen: set[tuple[str, int]] = set()

    def walk(link: tuple[str, int]) -> None:
        if link in seen or link[0] not in workflow:
            return
        seen.add(link)
        node_id = link[0]
        if _class(workflow, node_id) in TEXT_INPUTS:
            found.append(node_id)
            return
        inputs = _inputs(workflow, node_id)
        side = _output_name(workflow, link, node_types)
        names = [side] if side in ("positive", "negative") and side in inputs else list(inputs)
        for name in names:
            up = _link(inputs.get(name))
            if up and _is_conditioning(workflow, up, name, node_types):
                walk(up)

    if source is not None:
        walk(source)
    return found


def _text_targets(workflow: Mapping[str, Any], node_id: str) -> list[Target]:
    inputs = _inputs(workflow, node_id)
    return [
        Target(node_id, name)
        for name in TEXT_INPUTS.get(_class(workflow, node_id), ())
        if name in inputs and _link(inputs[name]) is None
    ]


def _sampler_parts(workflow: Mapping[str, Any], sampler: str) -> dict[str, tuple[str, str]]:
    """option -> (node id, input) for a sampler's own settings, through the helper nodes
    of ``SamplerCustom`` / ``SamplerCustomAdvanced``."""
    kind = _class(workflow, sampler)
    parts: dict[str, tuple[str, str]] = {}
    inputs = _inputs(workflow, sampler)

    def put(option: str, node_id: str | None, name: str) -> None:
        if node_id is not None and name in _inputs(workflow, node_id):
            if _link(_inputs(workflow, node_id)[name]) is None:
                parts.setdefault(option, (node_id, name))

    def helper(name: str) -> str | None:
        link = _upstream(workflow, sampler, name)
        return link[0] if link else None

    if kind in ("KSampler", "KSamplerAdvanced"):
        put("seed", sampler, "seed" if "seed" in inputs else "noise_seed")
        for option, name in (
            ("steps", "steps"),
            ("cfg", "cfg"),
            ("sampler", "sampler_name"),
            ("scheduler", "scheduler"),
            ("denoise", "denoise"),
        ):
            put(option, sampler, name)
        return parts
    put("seed", sampler, "noise_seed")
    put("cfg", sampler, "cfg")
    noise = helper("noise")
    put("seed", noise, "noise_seed")
    guider = helper("guider")
    put("cfg", guider, "cfg")
    put("sampler", helper("sampler"), "sampler_name")
    sigmas = helper("sigmas")
    for option in ("steps", "scheduler", "denoise"):
        put(option, sigmas, option)
    return parts


def _conditioning_source(workflow: Mapping[str, Any], sampler: str, side: str):
    """The link feeding a sampler's positive/negative (through a CFGGuider, or a
    BasicGuider's ``conditioning`` for the positive side)."""
    link = _upstream(workflow, sampler, side)
    if link is None:
        guider = _upstream(workflow, sampler, "guider")
        if guider is not None:
            link = _upstream(workflow, guider[0], side)
            if link is None and side == "positive":
                link = _upstream(workflow, guider[0], "conditioning")
    return link


def _model_source(workflow: Mapping[str, Any], sampler: str) -> str | None:
    link = _upstream(workflow, sampler, "model")
    if link is None:
        guider = _upstream(workflow, sampler, "guider")
        link = _upstream(workflow, guider[0], "model") if guider else None
    return link[0] if link else None


def _model_chain(workflow: Mapping[str, Any], start: str | None) -> tuple[str | None, list[str]]:
    """(checkpoint loader, LoRA loaders from the checkpoint outwards) on a MODEL path."""
    loras: list[str] = []
    seen: set[str] = set()
    current = start
    while current is not None and current not in seen:
        seen.add(current)
        kind = _class(workflow, current)
        if kind in CHECKPOINT_LOADERS:
            return current, loras[::-1]
        if kind in LORA_LOADERS:
            loras.append(current)
        link = _upstream(workflow, current, "model")
        current = link[0] if link else None
    return None, loras[::-1]


def _latent_parts(workflow: Mapping[str, Any], sampler: str) -> dict[str, tuple[str, str]]:
    parts: dict[str, tuple[str, str]] = {}
    link = _upstream(workflow, sampler, "latent_image")
    seen: set[str] = set()
    while link is not None and link[0] not in seen:
        node_id = link[0]
        seen.add(node_id)
        kind = _class(workflow, node_id)
        inputs = _inputs(workflow, node_id)
        if kind == "RepeatLatentBatch" and _link(inputs.get("amount")) is None:
            parts.setdefault("batch_size", (node_id, "amount"))
        if kind.startswith("Empty") and kind.endswith("LatentImage"):
            for name in ("width", "height", "batch_size"):
                if name in inputs and _link(inputs[name]) is None:
                    parts.setdefault(name, (node_id, name))
            return parts
        if kind in IMAGE_LOADERS:
            parts.setdefault("image", (node_id, "image"))
            return parts
        upstream = [
            _link(inputs[name])
            for name in ("samples", "pixels", "image", "images")
            if name in inputs and _link(inputs[name]) is not None
        ]
        link = upstream[0] if upstream else None
    return parts


def _normal_title(title: str) -> str | None:
    key = " ".join(title.strip().lower().replace("-", " ").split())
    key = _ALIASES.get(key, key).replace(" ", "_")
    return key if key in OPTIONS else None


def _title_bindings(workflow: Mapping[str, Any]) -> dict[str, Binding]:
    out: dict[str, Binding] = {}
    for node_id in sorted((str(k) for k in workflow), key=_id_key):
        node = workflow[node_id]
        meta = node.get("_meta") if isinstance(node, dict) else None
        title = meta.get("title") if isinstance(meta, dict) else None
        option = _normal_title(title) if isinstance(title, str) else None
        if option is None or option in out:
            continue
        inputs = _inputs(workflow, node_id)
        names = [n for n in _TITLE_INPUTS[option] if n in inputs and _link(inputs[n]) is None]
        if option in ("prompt", "negative") and _class(workflow, node_id) in TEXT_INPUTS:
            names = [t.input for t in _text_targets(workflow, node_id)]
        elif names:
            names = names[:1]
        if names:
            out[option] = Binding(option, tuple(Target(node_id, n) for n in names), "title")
    return out


def parse_target(text: str) -> Target:
    """``"12.text"`` -> ``Target("12", "text")``; raises :class:`BindingError`."""
    node_id, dot, name = str(text).strip().partition(".")
    if not dot or not node_id or not name:
        raise BindingError(f"binding {text!r} is not of the form NODE_ID.INPUT (e.g. '6.text')")
    return Target(node_id, name)


def explicit_bindings(
    workflow: Mapping[str, Any], spec: Mapping[str, str | Iterable[str]]
) -> dict[str, Binding]:
    """Bindings from ``{"option": "node.input" | ["node.input", ...]}``; every bad entry
    (unknown option, missing node or input) is named in one :class:`BindingError`."""
    out: dict[str, Binding] = {}
    problems: list[str] = []
    for option, raw in spec.items():
        name = _ALIASES.get(str(option).lower(), str(option).lower())
        if name not in OPTIONS:
            problems.append(f"unknown option {option!r} (known: {', '.join(OPTIONS)})")
            continue
        items = [raw] if isinstance(raw, str) else list(raw)
        targets = []
        for item in items:
            try:
                target = parse_target(item)
            except BindingError as exc:
                problems.append(str(exc))
                continue
            if target.node_id not in workflow:
                problems.append(f"{option} = {item!r}: the workflow has no node {target.node_id!r}")
            elif target.input not in _inputs(workflow, target.node_id):
                problems.append(
                    f"{option} = {item!r}: node {target.node_id} "
                    f"({_class(workflow, target.node_id)}) has no input {target.input!r}"
                )
            else:
                targets.append(target)
        if targets:
            out[name] = Binding(name, tuple(targets), "explicit")
    if problems:
        raise BindingError("; ".join(problems))
    return out


def find_bindings(
    workflow: Mapping[str, Any],
    node_types: Mapping[str, Any] | None = None,
    explicit: Mapping[str, str | Iterable[str]] | None = None,
) -> Bindings:
    """The bindings of ``workflow`` (API format): guessed from the graph, then node
    titles, then ``explicit`` ones, each replacing the one before (see the module's
    docstring for the rules). ``node_types`` (name -> :class:`runner.nodes.NodeType`)
    tells which links carry CONDITIONING; without it, input names decide."""
    found: dict[str, Binding] = {}
    order = samplers_in_order(workflow)
    first = order[0] if order else None
    loras: list[str] = []

    def bind(option: str, places: Iterable[tuple[str, str]]) -> None:
        targets = tuple(dict.fromkeys(Target(n, i) for n, i in places))
        if targets and option not in found:
            found[option] = Binding(option, targets, "graph")

    if first is not None:
        for side, option in (("positive", "prompt"), ("negative", "negative")):
            encoders = text_encoders(
                workflow, _conditioning_source(workflow, first, side), node_types
            )
            if not encoders:
                continue
            head = encoders[0]
            targets = _text_targets(workflow, head)
            text = _inputs(workflow, head).get(targets[0].input) if targets else None
            for later in order[1:]:
                for other in text_encoders(
                    workflow, _conditioning_source(workflow, later, side), node_types
                ):
                    extra = _text_targets(workflow, other)
                    if other != head and extra:
                        if _inputs(workflow, other).get(extra[0].input) == text:
                            targets += extra
            bind(option, [(t.node_id, t.input) for t in targets])
        for option, place in _sampler_parts(workflow, first).items():
            bind(option, [place])
        for option, place in _latent_parts(workflow, first).items():
            bind(option, [place])
        checkpoint, loras = _model_chain(workflow, _model_source(workflow, first))
        if checkpoint is not None:
            bind("model", [(checkpoint, "ckpt_name")])
    ids = sorted((str(k) for k in workflow), key=_id_key)
    if "image" not in found:
        loaders = [i for i in ids if _class(workflow, i) in IMAGE_LOADERS]
        if loaders:
            bind("image", [(loaders[0], "image")])
    if "model" not in found:
        ckpts = [i for i in ids if _class(workflow, i) in CHECKPOINT_LOADERS]
        if ckpts and "ckpt_name" in _inputs(workflow, ckpts[0]):
            bind("model", [(ckpts[0], "ckpt_name")])
    found = {k: v for k, v in found.items() if all(t.input for t in v.targets)}
    found.update(_title_bindings(workflow))
    if explicit:
        found.update(explicit_bindings(workflow, explicit))
    ordered = {o: found[o] for o in OPTIONS if o in found}
    return Bindings(ordered, tuple(loras), first, tuple(order))


def apply_bindings(
    workflow: Mapping[str, Any],
    bindings: Bindings,
    values: Mapping[str, Any],
    *,
    loras: Iterable[tuple[str, float, float]] = (),
) -> dict[str, Any]:
    """A copy of ``workflow`` with each given option's value written into its bound
    inputs (options not bound are an error naming them; None values are skipped), and
    ``loras`` (``(file name, model strength, clip strength)``) written into the bound
    LoRA loaders in order (more LoRAs than loaders is an error)."""
    out = copy.deepcopy(dict(workflow))
    unbound = [k for k, v in values.items() if v is not None and k not in bindings.options]
    if unbound:
        raise BindingError(f"this workflow has no binding for {', '.join(sorted(unbound))}")
    for option, value in values.items():
        if value is None:
            continue
        for target in bindings.options[option].targets:
            out[target.node_id].setdefault("inputs", {})[target.input] = value
    loras = list(loras)
    if len(loras) > len(bindings.loras):
        raise BindingError(
            f"{len(loras)} LoRA(s) given but this workflow has {len(bindings.loras)} LoRA loader(s)"
        )
    for node_id, (name, strength_model, strength_clip) in zip(bindings.loras, loras, strict=False):
        inputs = out[node_id].setdefault("inputs", {})
        inputs["lora_name"] = name
        inputs["strength_model"] = strength_model
        if "strength_clip" in inputs:
            inputs["strength_clip"] = strength_clip
    return out


def with_image_input(
    workflow: Mapping[str, Any], bindings: Bindings
) -> tuple[dict[str, Any], Bindings]:
    """For a workflow with no image binding (text to image): a copy whose first sampler
    starts from ``LoadImage -> ImageScale -> VAEEncode`` instead of its latent, so that
    an init image (an attachment, a variation's source) goes in; ``image``, ``width``
    and ``height`` are bound to the new nodes (ids ``easel_image``, ``easel_scale``,
    ``easel_encode``), the batch size is dropped. The VAE is the one decoding the first
    sampler's output, else the checkpoint's. A workflow that has an image binding, or
    no sampler, comes back unchanged."""
    if "image" in bindings.options or bindings.sampler is None:
        return copy.deepcopy(dict(workflow)), bindings
    out = copy.deepcopy(dict(workflow))
    vae = None
    for node_id in sorted(out, key=_id_key):
        inputs = _inputs(out, node_id)
        if _class(out, node_id).startswith("VAEDecode") and _link(inputs.get("vae")):
            vae = list(_link(inputs["vae"]))
            break
    if vae is None:
        model = bindings.get("model")
        if model is None:
            return out, bindings
        vae = [model.targets[0].node_id, 2]
    width = bindings.value(workflow, "width") or 512
    height = bindings.value(workflow, "height") or 512
    out["easel_image"] = {"class_type": "LoadImage", "inputs": {"image": ""}}
    out["easel_scale"] = {
        "class_type": "ImageScale",
        "inputs": {
            "image": ["easel_image", 0],
            "upscale_method": "bicubic",
            "width": width,
            "height": height,
            "crop": "center",
        },
    }
    out["easel_encode"] = {
        "class_type": "VAEEncode",
        "inputs": {"pixels": ["easel_scale", 0], "vae": vae},
    }
    out[bindings.sampler]["inputs"]["latent_image"] = ["easel_encode", 0]
    options = {k: v for k, v in bindings.options.items() if k != "batch_size"}
    options["image"] = Binding("image", (Target("easel_image", "image"),), "graph")
    options["width"] = Binding("width", (Target("easel_scale", "width"),), "graph")
    options["height"] = Binding("height", (Target("easel_scale", "height"),), "graph")
    ordered = {o: options[o] for o in OPTIONS if o in options}
    return out, Bindings(ordered, bindings.loras, bindings.sampler, bindings.samplers)


__all__ = [
    "OPTIONS",
    "SAMPLERS",
    "Binding",
    "BindingError",
    "Bindings",
    "Target",
    "apply_bindings",
    "explicit_bindings",
    "find_bindings",
    "parse_target",
    "samplers_in_order",
    "text_encoders",
    "with_image_input",
]
