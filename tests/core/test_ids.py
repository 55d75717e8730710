"""Request, session and error ids."""

from __future__ import annotations

import uuid

from gemma_worker.core.ids import new_id


def test_ids_are_uuid4_text_and_distinct() -> None:
    ids = [new_id() for _ in range(2000)]
    assert len(set(ids)) == len(ids)
    for text in ids:
        parsed = uuid.UUID(text)
        assert str(parsed) == text
        assert parsed.version == 4 and parsed.variant == uuid.RFC_4122
