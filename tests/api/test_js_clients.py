"""The JavaScript ``openai`` SDK (openai-node, installed in tests/js by scripts/test-deps.sh)
against a live worker: a forced tool call streamed at ``max_tokens`` 30 validates 20/20."""

from __future__ import annotations

import json
import shutil
import subprocess
from pathlib import Path

import jsonschema
import pytest

from tests.api.test_structured_budget import LOGS
from tests.conftest import RunningWorker

JS = Path(__file__).resolve().parents[1] / "js"


@pytest.mark.usefixtures("wait_idle")
def test_openai_node_streams_a_forced_tool_call_that_validates(worker: RunningWorker) -> None:
    node = shutil.which("node")
    assert node and (JS / "node_modules" / "openai").is_dir(), "run scripts/test-deps.sh"
    out = subprocess.run(
        [node, str(JS / "forced_tool_call.mjs"), worker.http, json.dumps(LOGS)],
        capture_output=True,
        text=True,
        timeout=600,
        check=True,
    )
    answers = [json.loads(line) for line in out.stdout.splitlines()]
    assert [a["seed"] for a in answers] == list(range(20))
    for answer in answers:
        assert answer["finish_reason"] == "tool_calls" and answer["name"] == "read_logs"
        jsonschema.validate(json.loads(answer["arguments"]), LOGS)
