"""The model manager on scripted engines: load on demand, LRU, keep_alive, memory, failures."""

from __future__ import annotations

import asyncio
import math
from collections.abc import Callable
from pathlib import Path

import pytest

from gemma_worker.core.errors import ErrorCode, WorkerError
from gemma_worker.engine.interface import Engine, EngineState
from gemma_worker.engine.llama import ModelLoadError
from gemma_worker.engine.memory import MemoryNeed
from gemma_worker.runtime.models import ModelManager, ModelStatus
from gemma_worker.runtime.registry import ModelRegistry, ModelSpec, request_limits
from tests.conftest import make_settings
from tests.fake_engine import FakeEngine

MB = 1024 * 1024


class FailingEngine(FakeEngine):
    async def start(self) -> None:
        raise ModelLoadError("failed to load model from file /secret/dir/beta.gguf: bad tensor")


class Farm:
    """A manager over a folder of three models, recording the engines it makes."""

    def __init__(self, folder: Path, **kw: object) -> None:
        for name in ("alpha", "beta", "gamma"):
            (folder / f"{name}.gguf").write_bytes(b"GGUF")
        self.settings = make_settings(models_dir=folder)
        self.registry = ModelRegistry.from_settings(self.settings)
        self.made: list[tuple[str, FakeEngine]] = []
        self.failing: set[str] = set()
        self.gate: asyncio.Event | None = None
        self.manager = ModelManager(
            self.registry,
            self.make,
            limits_for=lambda spec: request_limits(self.settings, spec),
            **{"keep_alive": 300.0, "max_loaded": 2, **kw},  # type: ignore[arg-type]
        )

    def make(self, spec: ModelSpec) -> Engine:
        engine = (FailingEngine if spec.id in self.failing else FakeEngine)(load_delay=0.01)
        self.made.append((spec.id, engine))
        return engine

    def loaded(self) -> list[str]:
        return sorted(v.spec.id for v in self.manager.loaded())

    async def touch(self, name: str, keep_alive: float | None = None) -> Engine:
        use = await self.manager.use(name)
        use.release(keep_alive)
        return use.engine


@pytest.fixture
async def farm(tmp_path: Path) -> Farm:
    return Farm(tmp_path)


async def test_the_least_recently_used_idle_model_makes_room(farm: Farm) -> None:
    first = await farm.touch("alpha")
    await farm.touch("beta")
    await farm.touch("alpha")  # alpha is now the most recent
    await farm.touch("gamma")
    assert farm.loaded() == ["alpha", "gamma"]
    assert first.state is EngineState.READY
    beta = next(e for name, e in farm.made if name == "beta")
    assert beta.state is EngineState.CLOSED
    assert [v.status for v in farm.manager.views()] == [
        ModelStatus.UNLOADED,  # the default, never used here
        ModelStatus.UNLOADED,  # the built-in embedding model
        ModelStatus.LOADED,
        ModelStatus.UNLOADED,
        ModelStatus.LOADED,
    ]
    await farm.manager.close()


async def test_a_model_in_use_is_never_unloaded(tmp_path: Path) -> None:
    farm = Farm(tmp_path, max_loaded=1, busy_wait_s=0.3)
    held = await farm.manager.use("alpha")
    with pytest.raises(WorkerError) as err:
        await farm.manager.use("beta")
    assert err.value.code is ErrorCode.OVERLOADED
    assert farm.loaded() == ["alpha"] and held.engine.state is EngineState.READY
    waiting = asyncio.ensure_future(farm.manager.use("beta"))
    await asyncio.sleep(0.05)
    assert not waiting.done()
    held.release()  # alpha goes idle: beta takes its place
    beta = await asyncio.wait_for(waiting, 2)
    assert farm.loaded() == ["beta"]
    beta.release()
    await farm.manager.close()


async def test_requests_for_a_loading_model_share_one_load(farm: Farm) -> None:
    told: list[str] = []
    uses = await asyncio.gather(
        *(farm.manager.use("beta", lambda spec: told.append(spec.id)) for _ in range(5))
    )
    assert [name for name, _ in farm.made] == ["beta"]
    assert told == ["beta"] * 5
    assert farm.manager.view(uses[0].spec).running == 5
    for use in uses:
        use.release()
    told.clear()
    (await farm.manager.use("beta", lambda spec: told.append(spec.id))).release()
    assert told == []  # loaded: nothing to report
    await farm.manager.close()


async def test_keep_alive_zero_unloads_after_the_answer(farm: Farm) -> None:
    use = await farm.manager.use("alpha")
    assert farm.manager.view(use.spec).expires_at is None  # in use: no countdown
    use.release(0)
    await asyncio.sleep(0.05)
    assert farm.loaded() == []
    await farm.touch("alpha")  # a request that does not say: the default again
    await asyncio.sleep(0.05)
    assert farm.loaded() == ["alpha"]
    assert farm.manager.view(farm.registry.resolve("alpha")).expires_at is not None
    await farm.touch("alpha", keep_alive=math.inf)
    assert farm.manager.view(farm.registry.resolve("alpha")).expires_at is None
    await farm.manager.close()


async def test_an_idle_model_unloads_after_its_keep_alive(tmp_path: Path) -> None:
    farm = Farm(tmp_path, keep_alive=0.2)
    await farm.touch("alpha")
    view = farm.manager.view(farm.registry.resolve("alpha"))
    assert view.status is ModelStatus.LOADED and view.expires_at is not None
    await farm.touch("beta", keep_alive=5)
    await asyncio.sleep(0.4)
    assert farm.loaded() == ["beta"]
    await farm.manager.close()


async def test_unload_waits_for_running_requests(farm: Farm) -> None:
    use = await farm.manager.use("alpha")
    assert await farm.manager.unload("alpha")
    assert farm.loaded() == ["alpha"]
    use.release()
    await asyncio.sleep(0.05)
    assert farm.loaded() == []
    assert not await farm.manager.unload("alpha")
    await farm.manager.close()


def sized(needs: dict[str, int], total: int, farm_ref: list[Farm]) -> dict[str, object]:
    def need_of(spec: ModelSpec) -> MemoryNeed | None:
        return MemoryNeed(needs.get(spec.id, 0), 0, 0)

    def available() -> int:
        return total - sum(needs.get(name, 0) for name in farm_ref[0].loaded())

    return {"need_of": need_of, "available": available, "max_loaded": 3}


async def test_a_model_too_big_for_memory_unloads_nothing(tmp_path: Path) -> None:
    ref: list[Farm] = []
    farm = Farm(tmp_path, **sized({"alpha": 300 * MB, "gamma": 5000 * MB}, 1000 * MB, ref))
    ref.append(farm)
    await farm.touch("alpha")
    with pytest.raises(WorkerError) as err:
        await farm.manager.use("gamma")
    assert err.value.code is ErrorCode.MODEL_TOO_LARGE
    assert "'gamma'" in err.value.message and "GiB" in err.value.message
    assert farm.loaded() == ["alpha"]  # nothing was unloaded for a hopeless load
    assert farm.manager.view(farm.registry.resolve("gamma")).error == err.value.message
    await farm.manager.close()


async def test_memory_is_made_by_unloading_idle_models(tmp_path: Path) -> None:
    ref: list[Farm] = []
    needs = {"alpha": 400 * MB, "beta": 400 * MB, "gamma": 400 * MB}
    farm = Farm(tmp_path, **sized(needs, 1000 * MB, ref))
    ref.append(farm)
    await farm.touch("alpha")
    await farm.touch("beta")
    await farm.touch("gamma")  # 3 may be loaded, but only 2 fit
    assert farm.loaded() == ["beta", "gamma"]
    await farm.manager.close()


async def test_a_failed_load_fails_its_requests_and_stays_loadable(farm: Farm) -> None:
    farm.failing.add("beta")
    await farm.touch("alpha")
    results = await asyncio.gather(
        farm.manager.use("beta"), farm.manager.use("beta"), return_exceptions=True
    )
    for result in results:
        assert isinstance(result, WorkerError)
        assert result.code is ErrorCode.MODEL_LOAD_FAILED
        assert "/secret" not in result.message and "beta.gguf" in result.message
    assert farm.loaded() == ["alpha"]
    assert farm.manager.healthy()
    farm.failing.clear()
    await farm.touch("beta")  # the file was fixed: it loads now
    assert farm.loaded() == ["alpha", "beta"]
    assert farm.manager.view(farm.registry.resolve("beta")).error is None
    await farm.manager.close()


async def test_unknown_names_are_not_found(farm: Farm) -> None:
    for name in ("delta", "../alpha", "/etc/passwd"):
        with pytest.raises(WorkerError) as err:
            await farm.manager.use(name)
        assert err.value.code is ErrorCode.MODEL_NOT_FOUND
    assert farm.made == []
    await farm.manager.close()


async def test_a_crashed_engine_fails_until_it_is_unloaded(farm: Farm) -> None:
    engine = await farm.touch("alpha")
    assert isinstance(engine, FakeEngine)
    engine._state = EngineState.FAILED  # as a crashed engine thread leaves it
    assert not farm.manager.healthy()
    with pytest.raises(WorkerError) as err:
        await farm.manager.use("alpha")
    assert err.value.code is ErrorCode.OVERLOADED and "internal error" in err.value.message
    await farm.touch("beta")  # the other models serve on
    assert await farm.manager.unload("alpha")  # an admin's way out, short of a restart
    assert farm.manager.healthy()
    again = await farm.touch("alpha")
    assert again is not engine and again.state is EngineState.READY
    await farm.manager.close()


def _names(manager: ModelManager, pick: Callable[[ModelStatus], bool]) -> list[str]:
    return [v.spec.id for v in manager.views() if pick(v.status)]


async def test_a_loading_model_shows_as_loading(farm: Farm) -> None:
    task = asyncio.ensure_future(farm.manager.use("gamma"))
    await asyncio.sleep(0.001)
    assert _names(farm.manager, lambda s: s is ModelStatus.LOADING) == ["gamma"]
    (await task).release()
    assert _names(farm.manager, lambda s: s is ModelStatus.LOADED) == ["gamma"]
    await farm.manager.close()
