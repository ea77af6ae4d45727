"""The CLIP tokenizer, rebuilt offline from the BPE file shipped with easel.

Stable Diffusion 1.x, 2.x and SDXL all tokenize prompts with OpenAI's CLIP BPE
vocabulary (49,408 tokens). Instead of downloading ``openai/clip-vit-large-patch14``'s
tokenizer from the Hugging Face hub, easel ships ``bpe_simple_vocab_16e6.txt.gz`` (the
file open_clip ships) and rebuilds ``vocab.json`` and ``merges.txt`` from it exactly as
open_clip's ``SimpleTokenizer`` does, so the ids are the real CLIP ids::

    "a photo of a cat" -> [49406, 320, 1125, 539, 320, 2368, 49407]

The folder is built once per pad token under a cache directory and written atomically
(a temporary folder renamed into place), so concurrent processes never read half of it.
SD1.x pads with ``<|endoftext|>``; SD2.x and SDXL's second tokenizer pad with ``!``.
"""

from __future__ import annotations

import gzip
import hashlib
import json
import os
import shutil
import tempfile
from functools import lru_cache
from pathlib import Path
from typing import TYPE_CHECKING

from runner.errors import ModelError

if TYPE_CHECKING:
    from transformers import CLIPTokenizer

BPE_PATH = Path(__file__).resolve().parent.parent / "assets" / "bpe_simple_vocab_16e6.txt.gz"
"""The CLIP BPE merges file (from open_clip's wheel)."""

BOS_TOKEN = "<|startoftext|>"
EOS_TOKEN = "<|endoftext|>"
VOCAB_SIZE = 49408
MODEL_MAX_LENGTH = 77

# Bump when the layout of the generated folder changes, so old caches are not reused.
_FORMAT_VERSION = 1
_FILES = ("vocab.json", "merges.txt", "tokenizer_config.json", "special_tokens_map.json")
_PAD_SLUGS = {EOS_TOKEN: "pad-eot", "!": "pad-bang"}


def bytes_to_unicode() -> dict[int, str]:
    """Return GPT-2/CLIP's reversible map from the 256 byte values to printable characters.

    Printable Latin-1 bytes map to themselves; the others map to code points from 256 up,
    in byte order. This is the table both open_clip and Hugging Face use.
    """
    bs = (
        list(range(ord("!"), ord("~") + 1))
        + list(range(ord("¡"), ord("¬") + 1))
        + list(range(ord("®"), ord("ÿ") + 1))
    )
    cs = bs[:]
    n = 0
    for b in range(256):
        if b not in bs:
            bs.append(b)
            cs.append(256 + n)
            n += 1
    return dict(zip(bs, (chr(c) for c in cs), strict=True))


@lru_cache(maxsize=1)
def _vocab_and_merges() -> tuple[tuple[str, ...], tuple[str, ...]]:
    """Read the BPE file and build (vocabulary in id order, merge lines) as open_clip does."""
    try:
        text = gzip.decompress(BPE_PATH.read_bytes()).decode("utf-8")
    except OSError as exc:
        raise ModelError(f"cannot read the CLIP BPE file {BPE_PATH}: {exc}") from exc
    lines = text.split("\n")
    merges = lines[1 : 49152 - 256 - 2 + 1]
    byte_chars = list(bytes_to_unicode().values())
    vocab = byte_chars + [c + "</w>" for c in byte_chars]
    vocab += ["".join(line.split()) for line in merges]
    vocab += [BOS_TOKEN, EOS_TOKEN]
    if len(vocab) != VOCAB_SIZE or len(set(vocab)) != VOCAB_SIZE:
        raise ModelError(
            f"the CLIP BPE file {BPE_PATH} gave {len(vocab)} tokens ({len(set(vocab))} distinct), "
            f"expected {VOCAB_SIZE}: the file is damaged"
        )
    return tuple(vocab), tuple(merges)


def _tokenizer_config(pad_token: str) -> dict[str, object]:
    return {
        "tokenizer_class": "CLIPTokenizer",
        "model_max_length": MODEL_MAX_LENGTH,
        "bos_token": BOS_TOKEN,
        "eos_token": EOS_TOKEN,
        "unk_token": EOS_TOKEN,
        "pad_token": pad_token,
        "do_lower_case": True,
        "errors": "replace",
        "add_prefix_space": False,
        "clean_up_tokenization_spaces": True,
    }


def _special_tokens_map(pad_token: str) -> dict[str, str]:
    return {
        "bos_token": BOS_TOKEN,
        "eos_token": EOS_TOKEN,
        "unk_token": EOS_TOKEN,
        "pad_token": pad_token,
    }


def _folder_name(pad_token: str) -> str:
    slug = _PAD_SLUGS.get(pad_token)
    if slug is None:
        slug = "pad-" + hashlib.sha1(pad_token.encode("utf-8")).hexdigest()[:12]
    return f"clip-tokenizer-v{_FORMAT_VERSION}-{slug}"


def write_clip_tokenizer_files(folder: Path, pad_token: str = EOS_TOKEN) -> None:
    """Write ``vocab.json``, ``merges.txt``, ``tokenizer_config.json`` and
    ``special_tokens_map.json`` of the CLIP tokenizer into ``folder`` (not atomic: callers
    that share the folder use :func:`clip_tokenizer_dir`)."""
    vocab, merges = _vocab_and_merges()
    if pad_token not in vocab:
        raise ModelError(f"pad token {pad_token!r} is not in the CLIP vocabulary")
    folder.mkdir(parents=True, exist_ok=True)
    with open(folder / "vocab.json", "w", encoding="utf-8") as fh:
        json.dump({tok: i for i, tok in enumerate(vocab)}, fh, ensure_ascii=False)
    with open(folder / "merges.txt", "w", encoding="utf-8") as fh:
        fh.write("#version: 0.2\n")
        fh.write("\n".join(merges))
        fh.write("\n")
    with open(folder / "tokenizer_config.json", "w", encoding="utf-8") as fh:
        json.dump(_tokenizer_config(pad_token), fh, indent=2)
    with open(folder / "special_tokens_map.json", "w", encoding="utf-8") as fh:
        json.dump(_special_tokens_map(pad_token), fh, indent=2)


def clip_tokenizer_dir(cache_dir: Path, pad_token: str = EOS_TOKEN) -> Path:
    """Return a folder holding the CLIP tokenizer files, building it once under ``cache_dir``.

    The folder holds ``vocab.json`` (49,408 tokens, the real CLIP ids), ``merges.txt``,
    ``tokenizer_config.json`` (``model_max_length`` 77, bos ``<|startoftext|>``, eos and unk
    ``<|endoftext|>``, pad ``pad_token``) and ``special_tokens_map.json``; one folder per
    pad token. It is written to a temporary folder and renamed into place, so a concurrent
    process sees either no folder or a complete one.
    """
    cache_dir = Path(cache_dir)
    target = cache_dir / _folder_name(pad_token)
    if all((target / name).is_file() for name in _FILES):
        return target
    cache_dir.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{target.name}.", dir=cache_dir))
    try:
        write_clip_tokenizer_files(tmp, pad_token)
        for attempt in range(2):
            try:
                os.rename(tmp, target)
                break
            except OSError:
                # Another process won the race (the target exists and is complete), or
                # an incomplete folder left by hand is in the way: remove it, try again.
                if all((target / name).is_file() for name in _FILES):
                    return target
                if attempt:
                    raise
                shutil.rmtree(target, ignore_errors=True)
    finally:
        if tmp.exists():
            shutil.rmtree(tmp, ignore_errors=True)
    return target


def load_clip_tokenizer(cache_dir: Path, pad_token: str = EOS_TOKEN) -> CLIPTokenizer:
    """Return a ``transformers.CLIPTokenizer`` over the real CLIP vocabulary, offline.

    ``pad_token`` is ``<|endoftext|>`` for SD1.x and SDXL's first tokenizer and ``!`` for
    SD2.x and SDXL's second tokenizer.
    """
    from transformers import CLIPTokenizer

    folder = clip_tokenizer_dir(cache_dir, pad_token)
    try:
        return CLIPTokenizer.from_pretrained(str(folder), local_files_only=True)
    except Exception as exc:  # a damaged cache folder: say where it is
        raise ModelError(
            f"cannot load the CLIP tokenizer from {folder}: {exc}; delete that folder to rebuild it"
        ) from exc
