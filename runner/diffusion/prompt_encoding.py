"""Prompt encoding as ComfyUI's CLIPTextEncode does it (``comfy/sd1_clip.py``): emphasis
weights, prompts over 75 tokens, textual-inversion embeddings and the stop layer.

* ``(word)`` multiplies the weight by 1.1, ``(word:1.3)`` sets it; ``\\(`` and ``\\)``
  are literal parentheses.
* The prompt is cut into *segments* of one weight (and at each ``embedding:`` that follows
  whitespace); each segment is tokenized as a whole. Segments are packed into chunks of
  75 tokens, each encoded between its own start and end tokens and padded to 77, and the
  chunks concatenated, so nothing is truncated. A segment that does not fit in what is
  left of a chunk moves whole to the next chunk when it is short (under 8 tokens);
  a longer one fills the chunk and goes on in the next (ComfyUI's ``max_word_length``).
* ``embedding:name`` (``embedding:name.pt``, ``(embedding:name:1.2)``) puts the vectors of
  a textual-inversion embedding in place of tokens; an embedding that is not found is
  reported through ``warn`` and left out (the rest of the text is encoded).
* A weighted token's embedding is moved away from the empty prompt's embedding at the
  same position: ``z = (z - z_empty) * weight + z_empty`` (ComfyUI's default); tokens of
  weight 1 are kept bit for bit.
* The stop layer (CLIPSetLastLayer) is ComfyUI's ``layer_idx``: SD1/SD2 use the last
  layer by default and an earlier one through the final layer norm; SDXL's encoders use
  the penultimate layer by default, without the final norm, so -2 changes nothing there
  and -1 is the last layer.

A prompt with no weights, no embedding and at most 75 tokens, at the default layer, is
encoded by diffusers' own ``encode_prompt`` (:func:`needs_custom_encoding` says when not),
so plain prompts give exactly what a diffusers pipeline gives.
"""

from __future__ import annotations

import math
import re
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

import torch

from runner.errors import ModelError

CHUNK = 75  # tokens per chunk, between the start and end tokens
LONG_SEGMENT = 8  # a segment this long may be split across chunks (ComfyUI's max_word_length)
EMBEDDING_PREFIX = "embedding:"
_PLACEHOLDER_ID = 0  # token id under an embedding vector: never the end token, never the largest id

Token = int | torch.Tensor
"""A token id, or one vector of a textual-inversion embedding."""
Chunk = list[tuple[Token, float]]
"""The tokens of one chunk (without start, end and padding) with their weights."""
EmbeddingLookup = Callable[[str], Any]
"""``lookup(name)`` -> an object with ``vectors(key) -> Tensor [n, width]``, or None when
there is no embedding of that name (:class:`runner.models.embeddings.Embedding`)."""


@dataclass
class Segment:
    text: str
    weight: float


# --------------------------------------------------------------------------- parsing


def _split_parentheses(string: str) -> list[str]:
    """Top-level pieces: ``(...)`` groups and the text between them. As in ComfyUI, a
    closing bracket without an opening one lowers the depth below zero, after which
    brackets are plain text until the depth is back at zero."""
    pieces: list[str] = []
    current = ""
    depth = 0
    for char in string:
        if char == "(":
            if depth == 0:
                if current:
                    pieces.append(current)
                current = "("
            else:
                current += char
            depth += 1
        elif char == ")":
            depth -= 1
            if depth == 0:
                pieces.append(current + ")")
                current = ""
            else:
                current += char
        else:
            current += char
    if current:
        pieces.append(current)
    return pieces


def _weighted_pieces(string: str, weight: float) -> list[Segment]:
    out: list[Segment] = []
    for piece in _split_parentheses(string):
        if len(piece) >= 2 and piece[0] == "(" and piece[-1] == ")":
            inner = piece[1:-1]
            inner_weight = weight * 1.1
            colon = inner.rfind(":")
            if colon > 0:
                try:
                    value = float(inner[colon + 1 :])
                except ValueError:
                    value = None
                if value is not None and math.isfinite(value):
                    inner_weight, inner = value, inner[:colon]
            out += _weighted_pieces(inner, inner_weight)
        else:
            out.append(Segment(piece, weight))
    return out


def _escape(prompt: str) -> str:
    return prompt.replace("\\(", "\0\1").replace("\\)", "\0\2")


def _unescape(text: str) -> str:
    return text.replace("\0\1", "(").replace("\0\2", ")")


def segments(prompt: str) -> list[Segment]:
    """The prompt's segments as ComfyUI's ``token_weights`` gives them: one per piece of
    text between brackets, with its weight, neighbours of equal weight kept apart (each
    is tokenized on its own). A weight that is not a finite number is kept as text."""
    return [Segment(_unescape(s.text), s.weight) for s in _weighted_pieces(_escape(prompt), 1.0)]


def parse_weights(prompt: str) -> list[Segment]:
    """Split a prompt into text segments with emphasis weights, as ComfyUI parses them:
    ``(text)`` is x1.1, ``(text:1.3)`` sets 1.3, ``\\(`` is a literal bracket; neighbours of
    equal weight merged. Unbalanced brackets are kept as text, never an error."""
    merged: list[Segment] = []
    for seg in segments(prompt):
        if not seg.text:
            continue
        if merged and abs(merged[-1].weight - seg.weight) < 1e-9:
            merged[-1].text += seg.text
        else:
            merged.append(Segment(seg.text, seg.weight))
    return merged


def needs_custom_encoding(prompt: str, tokenizer) -> bool:
    """True if the prompt has emphasis syntax, an ``embedding:`` or more tokens than one
    chunk holds (diffusers' ``encode_prompt`` would then differ from ComfyUI)."""
    if EMBEDDING_PREFIX in prompt:
        return True
    parsed = parse_weights(prompt)
    if any(abs(s.weight - 1.0) > 1e-9 for s in parsed) or "".join(s.text for s in parsed) != prompt:
        return True  # weights, or syntax such as "(word:1.0)" or "\\(" that must not reach the tokenizer
    return len(tokenizer(prompt, add_special_tokens=False).input_ids) > CHUNK


# ------------------------------------------------------------------------ tokenizing


def _embedding_name(rest: str) -> tuple[str, str]:
    """``(name, leftover text)`` of the text after ``embedding:``: the name ends at
    whitespace or at ``<`` / ``[``."""
    parts = rest.split()
    if not parts:
        return "", ""
    name, leftover = parts[0], " ".join(parts[1:])
    cut = re.search(r"[<\[]", name)
    if cut is not None:
        leftover = name[cut.start() :] + (" " + leftover if leftover else "")
        name = name[: cut.start()]
    return name, leftover


def _find_embedding(rest: str, lookup: EmbeddingLookup):
    """``(embedding or None, name, leftover)``: a name with trailing commas
    (``embedding:x,``) is tried as written, then without them (the commas stay text)."""
    name, leftover = _embedding_name(rest)
    found = lookup(name) if name else None
    if found is None:
        stripped = name.strip(",")
        if stripped and len(stripped) < len(name):
            found = lookup(stripped)
            if found is not None:
                leftover = f"{name[len(stripped) :]} {leftover}"
                name = stripped
    return found, name, leftover


def _lookup_or_warn(rest: str, lookup: EmbeddingLookup, warn: Callable[[str], None] | None):
    """:func:`_find_embedding`, a file that cannot be read counting as missing (with its
    reason in the warning)."""
    try:
        found, name, leftover = _find_embedding(rest, lookup)
    except ModelError as exc:
        name, leftover = _embedding_name(rest)
        if warn is not None:
            warn(f"embedding:{name} could not be loaded, ignoring it: {exc}")
        return None, name, leftover, True
    return found, name, leftover, False


def _token_groups(
    prompt: str,
    tokenizer,
    *,
    key: str,
    lookup: EmbeddingLookup | None,
    warn: Callable[[str], None] | None,
) -> list[list[tuple[Token, float]]]:
    """The groups that are packed into chunks: each segment's tokens, and each embedding's
    vectors, with their weights."""
    groups: list[list[tuple[Token, float]]] = []
    for seg in segments(prompt):
        pieces = re.split(rf"(?<=\s){re.escape(EMBEDDING_PREFIX)}", seg.text)
        pieces = [pieces[0]] + [EMBEDDING_PREFIX + p for p in pieces[1:]]
        for piece in pieces:
            if not piece:
                continue
            if piece.startswith(EMBEDDING_PREFIX) and lookup is not None:
                found, name, leftover, warned = _lookup_or_warn(
                    piece[len(EMBEDDING_PREFIX) :], lookup, warn
                )
                if found is None:
                    if warn is not None and not warned:
                        warn(f"embedding:{name} does not exist, ignoring it")
                else:
                    vectors = found.vectors(key)
                    vectors = vectors.reshape(-1, vectors.shape[-1])
                    groups.append([(vectors[i], seg.weight) for i in range(vectors.shape[0])])
                if not leftover:
                    continue
                piece = leftover
            ids = tokenizer(piece).input_ids[1:-1]  # without the start and end tokens
            groups.append([(int(t), seg.weight) for t in ids])
    return groups


def pack_chunks(groups: Sequence[Sequence[tuple[Token, float]]]) -> list[Chunk]:
    """Pack token groups into chunks of at most 75 (ComfyUI's rule): a group that does not
    fit in the current chunk starts the next one when it is shorter than 8 tokens, and
    otherwise fills the current chunk and goes on in the next. Always at least one chunk."""
    chunks: list[Chunk] = [[]]
    for group in groups:
        rest = list(group)
        splittable = len(rest) >= LONG_SEGMENT
        while rest:
            room = CHUNK - len(chunks[-1])
            if len(rest) <= room:
                chunks[-1].extend(rest)
                break
            if splittable:
                chunks[-1].extend(rest[:room])
                rest = rest[room:]
            chunks.append([])
    return chunks


def weighted_chunks(
    prompt: str,
    tokenizer,
    *,
    key: str = "clip_l",
    embeddings: EmbeddingLookup | None = None,
    warn: Callable[[str], None] | None = None,
) -> list[Chunk]:
    """Token ids (and embedding vectors) with weights, in chunks of at most 75, as
    ComfyUI's ``tokenize_with_weights`` makes them (without start, end and padding).
    ``key`` picks an embedding file's vectors for this encoder (``clip_l``, ``clip_g``)."""
    return pack_chunks(_token_groups(prompt, tokenizer, key=key, lookup=embeddings, warn=warn))


# ------------------------------------------------------------------------- encoding


@dataclass(frozen=True)
class TextEncoder:
    """One of a pipeline's text encoders as ComfyUI sees it: its tokenizer and model, the
    embedding-file key of its vectors, its default stop layer (None: the last layer) and
    whether an earlier layer goes through the final layer norm."""

    tokenizer: Any
    model: Any
    key: str
    default_layer: int | None
    norm_hidden: bool

    @property
    def width(self) -> int:
        return int(self.model.config.hidden_size)

    @property
    def depth(self) -> int:
        return int(self.model.config.num_hidden_layers)


def text_encoders(pipe) -> list[TextEncoder]:
    """The pipeline's text encoders, in the order their embeddings are concatenated: SD1 /
    SD2 one (last layer, normed); SDXL CLIP-L then OpenCLIP-G (penultimate, not normed);
    the SDXL refiner only OpenCLIP-G."""
    first = getattr(pipe, "text_encoder", None)
    second = getattr(pipe, "text_encoder_2", None)
    if second is None:
        if first is None:
            raise ValueError("the checkpoint has no text encoder to encode a prompt with")
        return [TextEncoder(pipe.tokenizer, first, "clip_l", None, True)]
    out = []
    if first is not None:
        out.append(TextEncoder(pipe.tokenizer, first, "clip_l", -2, False))
    out.append(TextEncoder(pipe.tokenizer_2, second, "clip_g", -2, False))
    return out


def _special_ids(tokenizer) -> tuple[int, int, int]:
    bos, eos = tokenizer.bos_token_id, tokenizer.eos_token_id
    pad = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else eos
    return bos, eos, pad


def _chunk_inputs(
    chunk: Chunk, encoder: TextEncoder, warn: Callable[[str], None] | None
) -> tuple[list[int], list[float], dict[int, torch.Tensor]]:
    """``(ids [77], weights [77], {position: vector})`` for one chunk. An embedding vector of
    the wrong width is left out (and the chunk padded at its end), as ComfyUI does."""
    bos, eos, pad = _special_ids(encoder.tokenizer)
    ids, weights, vectors = [bos], [1.0], {}
    dropped = 0
    for token, weight in chunk:
        if isinstance(token, torch.Tensor):
            if token.shape[-1] != encoder.width:
                dropped += 1
                continue
            vectors[len(ids)] = token
            ids.append(_PLACEHOLDER_ID)
        else:
            ids.append(int(token))
        weights.append(float(weight))
    if dropped and warn is not None:
        warn(
            f"an embedding's vectors are {_first_width(chunk, encoder)} wide but "
            f"this text encoder ({encoder.key}) is {encoder.width} wide; the embedding is ignored"
        )
    ids.append(eos)
    weights.append(1.0)
    ids += [pad] * (CHUNK + 2 - len(ids))
    weights += [1.0] * (CHUNK + 2 - len(weights))
    return ids, weights, vectors


def _first_width(chunk: Chunk, encoder: TextEncoder) -> int:
    for token, _ in chunk:
        if isinstance(token, torch.Tensor) and token.shape[-1] != encoder.width:
            return int(token.shape[-1])
    return 0


def _layer(encoder: TextEncoder, stop_at_layer: int | None) -> int | None:
    """The hidden state to take (a negative index into hidden states), None for the
    output of the last layer through the final norm; ComfyUI's rule: a layer index deeper
    than the encoder means the last layer."""
    layer = encoder.default_layer if stop_at_layer is None else stop_at_layer
    if layer is None or abs(layer) > encoder.depth:
        return None
    return layer


def _run_encoder(
    encoder: TextEncoder,
    ids: torch.Tensor,
    vectors: dict[tuple[int, int], torch.Tensor],
    layer: int | None,
) -> tuple[torch.Tensor, torch.Tensor | None]:
    """``(hidden [batch, 77, width], pooled or None)``: the model run on ``ids`` with the
    token embeddings at ``vectors``' (row, position) keys replaced by those vectors."""
    model = encoder.model
    embedding_layer = model.get_input_embeddings()

    def put_vectors(_module, _args, output):
        output = output.clone()
        for (row, pos), vector in vectors.items():
            output[row, pos] = vector.to(output.device, output.dtype)
        return output

    handle = embedding_layer.register_forward_hook(put_vectors) if vectors else None
    try:
        out = model(ids, output_hidden_states=True)
    finally:
        if handle is not None:
            handle.remove()
    pooled = getattr(out, "text_embeds", None)
    if layer is None:
        return out.last_hidden_state, pooled
    hidden = out.hidden_states[layer]
    if encoder.norm_hidden:
        # transformers 5 flattened CLIPTextModel (no .text_model); older versions nest it.
        hidden = getattr(model, "text_model", model).final_layer_norm(hidden)
    return hidden, pooled


def _encode_chunks(
    encoder: TextEncoder,
    chunks: list[Chunk],
    *,
    device,
    stop_at_layer: int | None,
    warn: Callable[[str], None] | None,
) -> tuple[torch.Tensor, torch.Tensor | None]:
    """One encoder's ``(embeds [1, 77 * chunks, width], pooled of the first chunk)``."""
    rows, weights, vectors = [], [], {}
    for row, chunk in enumerate(chunks):
        ids, w, vecs = _chunk_inputs(chunk, encoder, warn)
        rows.append(ids)
        weights.append(w)
        vectors.update({(row, pos): v for pos, v in vecs.items()})
    weighted = any(x != 1.0 for w in weights for x in w)
    if weighted:  # the empty prompt, for moving weighted tokens away from it
        bos, eos, pad = _special_ids(encoder.tokenizer)
        rows.append([bos, eos] + [pad] * CHUNK)
    ids = torch.tensor(rows, device=device)
    hidden, pooled = _run_encoder(encoder, ids, vectors, _layer(encoder, stop_at_layer))
    z = hidden[: len(chunks)]
    if weighted:
        z_empty = hidden[-1:]
        w = torch.tensor(weights, dtype=z.dtype, device=z.device).unsqueeze(-1)
        z = torch.where(w != 1.0, (z - z_empty) * w + z_empty, z)
    embeds = z.reshape(1, -1, z.shape[-1])
    return embeds, None if pooled is None else pooled[:1]


def encode_text(
    pipe,
    text: str,
    *,
    device,
    stop_at_layer: int | None = None,
    text_l: str | None = None,
    embeddings: EmbeddingLookup | None = None,
    warn: Callable[[str], None] | None = None,
    pad_to_match: bool = False,
) -> tuple[torch.Tensor, torch.Tensor | None]:
    """``(embeds [1, 77 * chunks, width], pooled or None)`` of ``text`` with ComfyUI's
    weighting, chunking, embeddings and stop layer (see the module docstring).

    ``text_l`` is what SDXL's CLIP-L encoder gets instead of ``text`` (CLIPTextEncodeSDXL's
    ``text_l``; ``text`` then goes to OpenCLIP-G). Where the two encoders' chunk counts
    differ, ``pad_to_match`` adds empty-prompt chunks to the shorter (CLIPTextEncodeSDXL);
    otherwise both are cut to the shorter (CLIPTextEncode). Call under inference mode."""
    encoders = text_encoders(pipe)
    chunked = []
    for encoder in encoders:
        own = text_l if (text_l is not None and encoder.key == "clip_l") else text
        chunked.append(
            weighted_chunks(
                own, encoder.tokenizer, key=encoder.key, embeddings=embeddings, warn=warn
            )
        )
    if len(chunked) > 1 and pad_to_match:
        longest = max(len(c) for c in chunked)
        chunked = [c + [[] for _ in range(longest - len(c))] for c in chunked]
    parts, pooled_out = [], None
    for encoder, chunks in zip(encoders, chunked, strict=True):
        embeds, pooled = _encode_chunks(
            encoder, chunks, device=device, stop_at_layer=stop_at_layer, warn=warn
        )
        parts.append(embeds)
        if pooled is not None:
            pooled_out = pooled  # the last encoder's: SDXL's OpenCLIP-G
    length = min(p.shape[1] for p in parts)
    return torch.cat([p[:, :length] for p in parts], dim=-1), pooled_out


__all__ = [
    "CHUNK",
    "Chunk",
    "EmbeddingLookup",
    "Segment",
    "TextEncoder",
    "encode_text",
    "needs_custom_encoding",
    "pack_chunks",
    "parse_weights",
    "segments",
    "text_encoders",
    "weighted_chunks",
]
