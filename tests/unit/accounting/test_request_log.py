"""The request record: usage from the response's tally, timing from final deltas, and a log
line of numbers and names only."""

from __future__ import annotations

import json
import logging

import pytest

from vllm_service.accounting.request_log import RequestRecord
from vllm_service.engine import FinishReason, TokenDelta
from vllm_service.engine.base import Timing, Usage


def test_the_log_line_carries_usage_timing_and_no_text(caplog: pytest.LogCaptureFixture) -> None:
    rec = RequestRecord("req-1", "/v1/chat/completions", "POST", started=0.0)
    rec.status, rec.model, rec.latency, rec.ttft = 200, "m", 0.5, 0.1
    rec.usage.add(0, Usage(prompt_tokens=10, completion_tokens=5, cached_tokens=4))
    timing = Timing(queue_time=0.02, time_to_first_token=0.1, inter_token_times=(0.1,) * 4)
    rec.add_final(TokenDelta(text="secret answer", finish_reason=FinishReason.STOP, timing=timing))
    assert rec.queue_time == 0.02
    assert rec.inter_token_times == [0.1] * 4
    assert rec.time_per_output_token == pytest.approx(0.1)
    logger = logging.getLogger("vllm_service.requests")
    logger.addHandler(caplog.handler)
    try:
        with caplog.at_level(logging.INFO, logger="vllm_service.requests"):
            rec.log()
    finally:
        logger.removeHandler(caplog.handler)
    line = json.loads(caplog.records[-1].getMessage())
    assert (line["prompt_tokens"], line["completion_tokens"], line["cached_tokens"]) == (10, 5, 4)
    assert line["usage_estimated"] is False
    assert (line["latency_ms"], line["queue_ms"]) == (500.0, 20.0)
    assert "secret" not in caplog.records[-1].getMessage()


def test_an_upstream_queue_it_cannot_see_stays_unknown() -> None:
    rec = RequestRecord("r", "/v1/completions", "POST", started=0.0)
    timing = Timing(queue_time=None, time_to_first_token=0.2)
    rec.add_final(TokenDelta(text="", finish_reason=FinishReason.STOP, timing=timing))
    assert rec.queue_time is None
