"""The model registry: which files are models, what names mean, models.toml."""

import os
from pathlib import Path

import pytest

from gemma_worker.core.errors import ErrorCode, WorkerError
from gemma_worker.engine.minilm import MINILM_ID
from gemma_worker.runtime.registry import (
    EMBEDDED_ID,
    ModelRegistry,
    ModelsConfigError,
    engine_config,
    read_models_toml,
    request_limits,
)
from tests.conftest import make_settings


def registry_of(folder: Path, toml: str | None = None) -> ModelRegistry:
    if toml is not None:
        (folder / "models.toml").write_text(toml)
    return ModelRegistry.from_settings(make_settings(models_dir=folder))


@pytest.fixture
def folder(tmp_path: Path) -> Path:
    models = tmp_path / "models"
    models.mkdir()
    for name in ("alpha.gguf", "beta-q8.gguf"):
        (models / name).write_bytes(b"GGUF")
    return models


def test_every_gguf_directly_in_the_folder_is_a_model(folder: Path, tmp_path: Path) -> None:
    (folder / "notes.txt").write_text("x")
    (folder / ".hidden.gguf").write_bytes(b"GGUF")
    (folder / "sub").mkdir()
    (folder / "sub" / "deep.gguf").write_bytes(b"GGUF")
    (folder / "dir.gguf").mkdir()
    (folder / "has space.gguf").write_bytes(b"GGUF")
    outside = tmp_path / "outside.gguf"
    outside.write_bytes(b"GGUF")
    (folder / "escape.gguf").symlink_to(outside)
    (folder / "passwd.gguf").symlink_to("/etc/passwd")
    (folder / "inside-link.gguf").symlink_to(folder / "alpha.gguf")
    registry = registry_of(folder)
    ids = [s.id for s in registry.specs()]
    assert ids == [EMBEDDED_ID, MINILM_ID, "alpha", "beta-q8", "inside-link"]
    assert registry.specs()[0].default


def test_names_resolve_and_unknown_ones_are_not_found(folder: Path) -> None:
    registry = registry_of(folder, '[models.alpha]\naliases = ["a:small", "first"]\n')
    assert registry.resolve("alpha").id == "alpha"
    assert registry.resolve("first").id == "alpha"
    assert registry.resolve("a:small").id == "alpha"
    assert registry.resolve("alpha:latest").id == "alpha"
    assert registry.resolve("beta:q8").id == "beta-q8"
    assert registry.resolve("gemma3:270m").id == EMBEDDED_ID
    assert registry.resolve(None).id == EMBEDDED_ID
    for name in ("nope", "../alpha", str(folder / "alpha.gguf"), "alpha\x00", "escape"):
        with pytest.raises(WorkerError) as err:
            registry.resolve(name)
        assert err.value.code is ErrorCode.MODEL_NOT_FOUND
        assert str(folder) not in err.value.message


def test_without_a_folder_every_other_name_is_the_one_model() -> None:
    registry = ModelRegistry.from_settings(make_settings())
    assert registry.folder is None
    assert registry.resolve("gpt-4o").id == EMBEDDED_ID
    # beside it only the built-in embedding model, which answers to its own names
    assert [s.id for s in registry.specs()] == [EMBEDDED_ID, MINILM_ID]


def test_a_new_file_shows_up_and_a_swapped_in_symlink_is_refused(
    folder: Path, tmp_path: Path
) -> None:
    registry = registry_of(folder)
    (folder / "gamma.gguf").write_bytes(b"GGUF")
    assert registry.resolve("gamma").id == "gamma"  # an unknown name rescans
    spec = registry.resolve("alpha")
    registry.check_file(spec)
    os.remove(folder / "alpha.gguf")
    (folder / "alpha.gguf").symlink_to(tmp_path)
    with pytest.raises(WorkerError) as err:
        registry.check_file(spec)
    assert err.value.code is ErrorCode.MODEL_NOT_FOUND


def test_models_toml_settings_apply_to_their_model(folder: Path) -> None:
    toml = (
        "[models.alpha]\nn_ctx = 2048\nparallel = 2\ntemperature = 0.2\n"
        'keep_alive = "10m"\nchat_template = "{{ messages }}"\n'
        f'[models."{EMBEDDED_ID}"]\naliases = ["tiny"]\n'
    )
    settings = make_settings(models_dir=folder, data_dir=folder.parent / "data")
    (folder / "models.toml").write_text(toml)
    registry = ModelRegistry.from_settings(settings)
    alpha = registry.resolve("alpha")
    config = engine_config(settings, alpha)
    assert (config.n_ctx, config.parallel, config.chat_template) == (2048, 2, "{{ messages }}")
    assert config.model_path == folder / "alpha.gguf"
    assert (
        config.kv_dir == folder.parent / "data" / "kv-models" / "alpha"
    )  # a prefix cache per model
    assert engine_config(settings, registry.default).kv_dir == folder.parent / "data" / "kv"
    assert request_limits(settings, alpha).temperature == 0.2
    assert alpha.keep_alive(300.0) == 600.0
    assert registry.resolve("beta-q8").keep_alive(300.0) == 300.0
    assert registry.resolve("tiny").id == EMBEDDED_ID


@pytest.mark.parametrize(
    ("toml", "message"),
    [
        ("[models.alpha]\nn_ctx = 1\n", "models.alpha.n_ctx"),
        ("[models.alpha]\ncolour = 1\n", "models.alpha.colour"),
        ('[models.alpha]\naliases = ["../x"]\n', "plain model name"),
        ('[models.alpha]\nkeep_alive = "soon"\n', "keep_alive"),
        ('[models."../x"]\nn_ctx = 512\n', "not a model id"),
        ("[other]\n", "unknown table"),
        ("[models.alpha\n", "models.toml"),
    ],
)
def test_a_bad_models_toml_says_where(tmp_path: Path, toml: str, message: str) -> None:
    path = tmp_path / "models.toml"
    path.write_text(toml)
    with pytest.raises(ModelsConfigError, match=message.replace(".", r"\.")):
        read_models_toml(path)


def test_an_ambiguous_alias_is_ignored(folder: Path) -> None:
    registry = registry_of(
        folder, '[models.alpha]\naliases = ["x", "beta-q8"]\n[models.beta-q8]\naliases = ["x"]\n'
    )
    assert registry.resolve("beta-q8").id == "beta-q8"  # an id wins over an alias
    assert registry.resolve("x").id == "alpha"  # the first claim wins


def test_the_built_in_embedding_model_and_what_embedding_names_mean(folder: Path) -> None:
    bare = ModelRegistry.from_settings(make_settings())
    minilm = bare.resolve_embedding(None)
    assert minilm.id == MINILM_ID and minilm.embeds_only and "all-minilm" in minilm.aliases
    # Without a folder, OpenAI clients' own names mean it; a generative model named embeds.
    assert bare.resolve_embedding("text-embedding-3-small").id == MINILM_ID
    assert bare.resolve_embedding("gemma3:270m").id == EMBEDDED_ID
    assert bare.resolve("all-minilm:latest").id == MINILM_ID
    assert [s.id for s in bare.specs()] == [EMBEDDED_ID, MINILM_ID]
    # With a folder an unknown name is not found, and models.toml makes a file an embedder.
    reg = registry_of(folder, '[models.alpha]\nembedding = true\npooling = "cls"\n')
    with pytest.raises(WorkerError) as exc:
        reg.resolve_embedding("nope")
    assert exc.value.code is ErrorCode.MODEL_NOT_FOUND
    alpha = reg.resolve_embedding("alpha")
    assert alpha.embeds_only and alpha.pooling == "cls"
    assert not reg.resolve("beta-q8").embeds_only
    with pytest.raises(ModelsConfigError, match="pooling"):
        read_models_toml_text(folder, '[models.alpha]\npooling = "max"\n')


def read_models_toml_text(folder: Path, toml: str) -> None:
    (folder / "models.toml").write_text(toml)
    read_models_toml(folder / "models.toml")
