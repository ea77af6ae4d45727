"""What the scheduler moves around: a job's specification, its outcome, and what it needs.

A :class:`JobSpec` is plain data (picklable, no locks), so it can cross into a Ray
actor; a job's :class:`~runner.context.CancelToken` stays with the runner.
"""

from __future__ import annotations

import hashlib
import json
import time
from dataclasses import dataclass, field
from typing import Any

SAMPLER_CLASSES = ("KSampler", "KSamplerAdvanced")
OUTPUT_CLASSES = ("SaveImage", "PreviewImage")
DONE, FAILED, CANCELLED = "done", "failed", "cancelled"
OUTCOMES = (DONE, FAILED, CANCELLED)


@dataclass
class JobSpec:
    """One job for the scheduler: an API-format workflow and who asked for it.

    ``job_id`` is any unique string (the job service uses the database id). ``batch_key``
    groups jobs that may share one sampler call (see :func:`batch_key`); ``meta`` is
    carried along untouched for the caller.
    """

    job_id: str
    workflow: dict[str, Any]
    user_id: int | None = None
    priority: int = 0
    batch_key: str | None = None
    previews: bool = False
    steps: int = 0
    """Sampling steps (for wait estimates); :func:`make_job` reads them from the workflow."""
    submitted_at: float = field(default_factory=time.time)
    meta: dict[str, Any] = field(default_factory=dict)

    @property
    def models(self) -> tuple[str, ...]:
        """Checkpoint names the workflow loads."""
        return workflow_resources(self.workflow)[0]

    @property
    def loras(self) -> tuple[str, ...]:
        """LoRA names the workflow applies."""
        return workflow_resources(self.workflow)[1]


@dataclass
class OutputImage:
    """One image a job produced, as bytes (so it can travel through Ray's object store)."""

    filename: str
    data: bytes
    node_id: str = ""
    path: str | None = None
    """Where the worker wrote it, when the worker shares this machine's disk."""


@dataclass
class JobOutcome:
    """How a job ended: ``status`` is done, failed or cancelled."""

    job_id: str
    status: str
    images: list[OutputImage] = field(default_factory=list)
    error: str | None = None
    seconds: float = 0.0
    worker: str = ""
    batch_size: int = 1
    outputs: dict[str, Any] = field(default_factory=dict)
    """The output nodes' reports (SaveImage's ``{"images": [...]}``) as the worker saw them."""

    @property
    def ok(self) -> bool:
        return self.status == DONE


def make_job(
    job_id: str,
    workflow: dict[str, Any],
    *,
    user_id: int | None = None,
    priority: int = 0,
    previews: bool = False,
    batchable: bool = True,
    meta: dict[str, Any] | None = None,
) -> JobSpec:
    """A :class:`JobSpec` with its steps and batch key read from ``workflow``."""
    return JobSpec(
        job_id=str(job_id),
        workflow=workflow,
        user_id=user_id,
        priority=priority,
        batch_key=batch_key(workflow) if batchable else None,
        previews=previews,
        steps=workflow_steps(workflow),
        meta=dict(meta or {}),
    )


def _literal(node: dict[str, Any], name: str) -> Any:
    value = (node.get("inputs") or {}).get(name)
    return None if isinstance(value, list) else value


def workflow_resources(workflow: dict[str, Any]) -> tuple[tuple[str, ...], tuple[str, ...]]:
    """``(checkpoint names, LoRA names)`` a workflow loads, for routing jobs to a worker
    that already holds them."""
    models: list[str] = []
    loras: list[str] = []
    for node in workflow.values():
        if not isinstance(node, dict):
            continue
        cls = node.get("class_type")
        if cls in ("CheckpointLoaderSimple", "CheckpointLoader"):
            name = _literal(node, "ckpt_name")
            if isinstance(name, str):
                models.append(name)
        elif cls in ("LoraLoader", "LoraLoaderModelOnly"):
            name = _literal(node, "lora_name")
            if isinstance(name, str):
                loras.append(name)
    return tuple(dict.fromkeys(models)), tuple(dict.fromkeys(loras))


def workflow_steps(workflow: dict[str, Any]) -> int:
    """Sampling steps of all the samplers in a workflow (0 when it has none)."""
    total = 0
    for node in workflow.values():
        if isinstance(node, dict) and node.get("class_type") in SAMPLER_CLASSES:
            steps = _literal(node, "steps")
            try:
                total += int(steps)
            except (TypeError, ValueError):
                continue
    return total


def batch_key(workflow: dict[str, Any]) -> str | None:
    """A key shared by workflows that may run as one batched sampler call, or None.

    Two workflows share a key when they are the same graph except for the sampler's seed,
    the texts of the prompts it is given and the names of the files written: so the same
    model, LoRAs and weights, size,
    steps, sampler, scheduler, cfg and denoise. Only workflows with exactly one sampler
    qualify. Each job still runs its own graph (own prompts, own seed, own file); only
    the sampler's denoising loop is shared.
    """
    samplers = [
        nid
        for nid, n in workflow.items()
        if isinstance(n, dict) and n.get("class_type") in SAMPLER_CLASSES
    ]
    if len(samplers) != 1:
        return None
    sampler_id = samplers[0]
    canonical = json.loads(json.dumps(workflow, default=str))
    inputs = canonical[sampler_id].setdefault("inputs", {})
    for seed_name in ("seed", "noise_seed"):
        if seed_name in inputs and not isinstance(inputs[seed_name], list):
            inputs[seed_name] = None
    for node in canonical.values():  # each job still writes its own files
        if isinstance(node, dict) and node.get("class_type") in OUTPUT_CLASSES:
            node_inputs = node.setdefault("inputs", {})
            if not isinstance(node_inputs.get("filename_prefix"), list):
                node_inputs["filename_prefix"] = None
    for side in ("positive", "negative"):
        link = inputs.get(side)
        if isinstance(link, list) and len(link) == 2:
            source = canonical.get(str(link[0]))
            if isinstance(source, dict) and source.get("class_type") == "CLIPTextEncode":
                text = (source.get("inputs") or {}).get("text")
                if not isinstance(text, list):
                    source["inputs"]["text"] = None
    payload = json.dumps(canonical, sort_keys=True)
    return hashlib.sha256(payload.encode()).hexdigest()[:24]
