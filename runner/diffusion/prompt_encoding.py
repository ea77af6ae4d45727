"""Prompt encoding as ComfyUI's CLIPTextEncode does it: emphasis weights and long prompts.

* ``(word)`` multiplies the weight by 1.1, ``(word:1.3)`` sets it; ``\\(`` and ``\\)``
  are literal parentheses.
* Prompts longer than 75 tokens are split into chunks of 75 (words kept whole where they
  fit), each encoded with its own start and end tokens, and the chunks concatenated, so
  nothing is truncated.
* A weighted token's embedding is moved away from the empty prompt's embedding at the
  same position: ``z = (z - z_empty) * weight + z_empty`` (ComfyUI's default).

A prompt with no weights that fits in one chunk is encoded by diffusers' own
``encode_prompt``, so plain prompts give exactly what a diffusers pipeline gives.
"""

from __future__ import annotations

import math
import re
from dataclasses import dataclass

import torch

CHUNK = 75  # tokens per chunk, between the start and end tokens


@dataclass
class Segment:
    text: str
    weight: float


def _parse_parentheses(string: str) -> list[str]:
    result: list[str] = []
    current = ""
    depth = 0
    for char in string:
        if char == "(":
            if depth == 0:
                if current:
                    result.append(current)
                current = "("
            else:
                current += char
            depth += 1
        elif char == ")" and depth > 0:
            depth -= 1
            current += char
            if depth == 0:
                result.append(current)
                current = ""
        else:
            current += char
    if current:
        result.append(current)
    return result


def _token_weights(string: str, weight: float) -> list[Segment]:
    out: list[Segment] = []
    for part in _parse_parentheses(string):
        if len(part) >= 2 and part[0] == "(" and part[-1] == ")":
            inner = part[1:-1]
            inner_weight = weight * 1.1
            colon = inner.rfind(":")
            if colon > 0:
                try:
                    value = float(inner[colon + 1 :])
                except ValueError:
                    value = None
                if value is not None and math.isfinite(value):
                    inner_weight, inner = value, inner[:colon]
            out += _token_weights(inner, inner_weight)
        else:
            out.append(Segment(part, weight))
    return out


def parse_weights(prompt: str) -> list[Segment]:
    """Split a prompt into text segments with emphasis weights, exactly as ComfyUI parses
    them: ``(text)`` is x1.1, ``(text:1.3)`` sets 1.3, ``\\(`` is a literal bracket.
    Unbalanced brackets are kept as text, never an error."""
    escaped = prompt.replace("\\(", "\0\1").replace("\\)", "\0\2")
    segments = []
    for seg in _token_weights(escaped, 1.0):
        text = seg.text.replace("\0\1", "(").replace("\0\2", ")")
        if not text:
            continue
        if segments and abs(segments[-1].weight - seg.weight) < 1e-9:
            segments[-1].text += text
        else:
            segments.append(Segment(text, seg.weight))
    return segments


def needs_custom_encoding(prompt: str, tokenizer) -> bool:
    """True if the prompt has emphasis syntax or more tokens than one chunk holds."""
    segments = parse_weights(prompt)
    if (
        any(abs(s.weight - 1.0) > 1e-9 for s in segments)
        or "".join(s.text for s in segments) != prompt
    ):
        return True  # weights, or syntax such as "(word:1.0)" or "\\(" that must not reach the tokenizer
    return len(tokenizer(prompt, add_special_tokens=False).input_ids) > CHUNK


def weighted_chunks(prompt: str, tokenizer) -> list[list[tuple[int, float]]]:
    """Token ids with weights, in chunks of at most 75, words kept whole where they fit."""
    words: list[list[tuple[int, float]]] = []
    for seg in parse_weights(prompt):
        for word in re.findall(r"\S+", seg.text):
            ids = tokenizer(word, add_special_tokens=False).input_ids
            if ids:
                words.append([(i, seg.weight) for i in ids])
    chunks: list[list[tuple[int, float]]] = [[]]
    for word in words:
        if len(chunks[-1]) + len(word) > CHUNK:
            if len(word) <= CHUNK // 3 and chunks[-1]:
                chunks.append([])
            while len(chunks[-1]) + len(word) > CHUNK:
                room = CHUNK - len(chunks[-1])
                chunks[-1].extend(word[:room])
                word = word[room:]
                chunks.append([])
        chunks[-1].extend(word)
    return chunks


def _ids(chunk: list[tuple[int, float]], tokenizer) -> tuple[torch.Tensor, list[float]]:
    bos, eos = tokenizer.bos_token_id, tokenizer.eos_token_id
    pad = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else eos
    ids = [bos] + [t for t, _ in chunk] + [eos]
    weights = [1.0] + [w for _, w in chunk] + [1.0]
    ids += [pad] * (CHUNK + 2 - len(ids))
    weights += [1.0] * (CHUNK + 2 - len(weights))
    return torch.tensor([ids]), weights


def _hidden(
    text_encoder, ids: torch.Tensor, *, xl: bool, clip_skip: int | None, device
) -> tuple[torch.Tensor, torch.Tensor | None]:
    out = text_encoder(ids.to(device), output_hidden_states=True)
    pooled = out[0] if out[0].ndim == 2 else None
    if xl:
        hidden = out.hidden_states[-2 if clip_skip is None else -(clip_skip + 2)]
    elif clip_skip is None:
        hidden = out[0]
    else:
        # transformers 5 flattened CLIPTextModel (no .text_model); older versions nest it.
        final_norm = getattr(text_encoder, "text_model", text_encoder).final_layer_norm
        hidden = final_norm(out.hidden_states[-(clip_skip + 1)])
    return hidden, pooled


def encode_weighted(
    pipe, prompt: str, *, device, clip_skip: int | None, xl: bool
) -> tuple[torch.Tensor, torch.Tensor | None]:
    """``(embeds [1, 77 * chunks, D], pooled or None)`` with ComfyUI's weighting."""
    pairs = [(pipe.tokenizer, pipe.text_encoder)]
    if xl:
        pairs = [
            (t, e)
            for t, e in (
                (pipe.tokenizer, pipe.text_encoder),
                (pipe.tokenizer_2, pipe.text_encoder_2),
            )
            if e is not None
        ]
    per_encoder: list[torch.Tensor] = []
    pooled_out = None
    for tokenizer, encoder in pairs:
        chunks = weighted_chunks(prompt, tokenizer) or [[]]
        empty_ids, _ = _ids([], tokenizer)
        z_empty, _ = _hidden(encoder, empty_ids, xl=xl, clip_skip=clip_skip, device=device)
        parts = []
        for index, chunk in enumerate(chunks):
            ids, weights = _ids(chunk, tokenizer)
            z, pooled = _hidden(encoder, ids, xl=xl, clip_skip=clip_skip, device=device)
            if index == 0 and pooled is not None:
                pooled_out = pooled
            w = torch.tensor(weights, dtype=z.dtype, device=z.device).view(1, -1, 1)
            # Only weighted positions move (as in ComfyUI): weight 1 keeps z bit for bit.
            parts.append(torch.where(w != 1.0, (z - z_empty) * w + z_empty, z))
        per_encoder.append(torch.cat(parts, dim=1))
    return torch.cat(per_encoder, dim=-1), pooled_out
