"""One tokenizer's identity as a hash: a teacher cache, a student version and the teacher must agree on it, or token
ids mean different things on each side (the trainer checks caches with it, the gateway checks a new student)."""

from __future__ import annotations

import hashlib
import json
from pathlib import Path


def tokenizer_hash(tokenizer_dir: Path) -> str:
    """sha256 over what decides token ids and prompt rendering: the vocabulary files, the chat template and the
    special tokens. Save-time noise does not change it: paths and flags in tokenizer_config.json, and the padding
    and truncation settings in tokenizer.json (a tokenizer saved by `transformers` after use drops its padding
    section, and the trainer's own output student must still match its teacher's caches)."""
    folder = Path(tokenizer_dir)
    vocabulary = [folder / name for name in ("tokenizer.json", "vocab.json", "merges.txt", "tokenizer.model")
                  if (folder / name).is_file()]
    if not vocabulary:
        raise ValueError(f"{tokenizer_dir} holds no tokenizer files (tokenizer.json, vocab.json, ...)")
    digest = hashlib.sha256()
    for path in vocabulary:
        digest.update(path.name.encode())
        digest.update(_without_padding(path) if path.name == "tokenizer.json" else path.read_bytes())
    config_path = folder / "tokenizer_config.json"
    config = json.loads(config_path.read_text()) if config_path.is_file() else {}
    decisive = {key: config.get(key) for key in ("chat_template", "bos_token", "eos_token", "pad_token", "unk_token",
                                                 "added_tokens_decoder")}
    template = folder / "chat_template.jinja"
    decisive["chat_template_file"] = template.read_text() if template.is_file() else None
    digest.update(json.dumps(decisive, sort_keys=True, default=str).encode())
    return digest.hexdigest()


def _without_padding(path: Path) -> bytes:
    tokenizer = json.loads(path.read_text())
    for setting in ("padding", "truncation"):  # how batches are shaped, not which ids a text becomes
        tokenizer.pop(setting, None)
    return json.dumps(tokenizer, sort_keys=True, ensure_ascii=False).encode()
