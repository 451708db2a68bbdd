"""The cost ledger against real databases: one row per request, whatever the path; nothing
lost when the database stops or the service is killed; /cost-comparison agrees with /metrics."""

from __future__ import annotations

import asyncio
import os
import signal
import threading
import time
import uuid
from pathlib import Path
from typing import Any

import httpx2
import pytest
from prometheus_client.parser import text_string_to_metric_families
from sqlalchemy import func, select

from tests.conftest import MODEL, Postgres, Service, dead_url, start_service
from vllm_service.storage import Database, ledger

CHAT = "/v1/chat/completions"


def chat(**fields: Any) -> dict[str, Any]:
    return {
        "model": MODEL,
        "messages": [{"role": "user", "content": "Say hi."}],
        "max_tokens": 4,
        **fields,
    }


def rows_for(url: str, request_ids: list[str]) -> dict[str, int]:
    """How many ledger rows each request id has."""

    async def read() -> dict[str, int]:
        db = Database(url)
        try:
            query = (
                select(ledger.c.request_id, func.count())
                .where(ledger.c.request_id.in_(request_ids))
                .group_by(ledger.c.request_id)
            )
            async with db.engine.connect() as conn:
                return {rid: n for rid, n in (await conn.execute(query)).all()}
        finally:
            await db.close()

    return asyncio.run(read())


def wait_for_rows(url: str, request_ids: list[str], timeout: float = 30) -> dict[str, int]:
    deadline = time.monotonic() + timeout
    while True:
        found = rows_for(url, request_ids)
        if len(found) == len(set(request_ids)) or time.monotonic() > deadline:
            return found
        time.sleep(0.2)


def sqlite_url(tmp: Path) -> str:
    return f"sqlite+aiosqlite:///{tmp / 'data' / 'vllm-service' / 'ledger.db'}"


def metric_total(service: Service, name: str) -> float:
    text = httpx2.get(f"{service.base_url}/metrics", timeout=10).text
    return sum(
        s.value
        for family in text_string_to_metric_families(text)
        for s in family.samples
        if s.name == name
    )


def send_every_kind(http: httpx2.Client) -> list[str]:
    """One request of each path a row must come from; their request ids."""
    ids: list[str] = []

    def post(path: str, body: dict[str, Any], stream: bool = False) -> httpx2.Response:
        rid = uuid.uuid4().hex
        ids.append(rid)
        headers = {"x-request-id": rid}
        if stream:
            with http.stream("POST", path, json=body, headers=headers) as r:
                r.read()
                return r
        return http.post(path, json=body, headers=headers)

    assert post(CHAT, chat(temperature=0)).status_code == 200  # a miss, stored
    assert post(CHAT, chat(temperature=0)).headers["x-cache"] == "hit"
    assert post(CHAT, chat(stream=True, n=2), stream=True).status_code == 200
    prompts = {"model": MODEL, "prompt": ["a", "b"], "n": 2, "max_tokens": 3}
    assert post("/v1/completions", prompts).status_code == 200
    assert post("/v1/completions", {**prompts, "stream": True}, stream=True).status_code == 200
    assert post(CHAT, chat(model="no-such-model")).status_code == 404
    assert post(CHAT, chat(max_tokens=-1)).status_code == 400
    return ids


def check_one_row_each(service: Service, url: str) -> None:
    prompt_before = metric_total(service, "vllm_prompt_tokens_total")
    with httpx2.Client(base_url=service.base_url, timeout=60) as http:
        ids = send_every_kind(http)
        # A client that leaves mid-stream.
        rid = uuid.uuid4().hex
        ids.append(rid)
        body = chat(stream=True, max_tokens=200, ignore_eos=True)
        with http.stream("POST", CHAT, json=body, headers={"x-request-id": rid}) as r:
            next(r.iter_lines())
    found = wait_for_rows(url, ids)
    assert found == dict.fromkeys(ids, 1)
    # The ledger's tokens are the metrics' tokens.
    prompt_after = metric_total(service, "vllm_prompt_tokens_total")

    async def ledger_prompt_tokens() -> int:
        db = Database(url)
        try:
            query = select(func.sum(ledger.c.prompt_tokens)).where(ledger.c.request_id.in_(ids))
            async with db.engine.connect() as conn:
                return int((await conn.execute(query)).scalar() or 0)
        finally:
            await db.close()

    assert asyncio.run(ledger_prompt_tokens()) == prompt_after - prompt_before


@pytest.fixture
def sqlite_service(tmp_path: Path) -> Any:
    svc = start_service(
        tmp_path,
        {"cache": {"enabled": True}, "cost": {"hardware": {"hourly": 0.5}}},
    )
    yield svc
    svc.stop()


def test_every_request_has_one_row_in_sqlite(sqlite_service: Service, tmp_path: Path) -> None:
    check_one_row_each(sqlite_service, sqlite_url(tmp_path))


def test_every_request_has_one_row_in_postgresql(tmp_path: Path, postgres: Postgres) -> None:
    svc = start_service(tmp_path, {"cache": {"enabled": True}, "ledger": {"url": postgres.url}})
    try:
        check_one_row_each(svc, postgres.url)
    finally:
        svc.stop()


def test_cost_comparison_adds_up_the_ledger(sqlite_service: Service) -> None:
    base = sqlite_service.base_url
    with httpx2.Client(base_url=base, timeout=60) as http:
        before = http.get("/cost-comparison", params={"period": "hour"}).json()
        for _ in range(3):
            assert http.post(CHAT, json=chat(temperature=0.7)).status_code == 200
        time.sleep(1.0)  # the writer moves the journal every 0.2 s
        after = http.get("/cost-comparison", params={"period": "hour"}).json()
    o_before, o_after = before["overall"], after["overall"]
    assert o_after["requests"] - o_before["requests"] == 3
    assert o_after["local_cost_usd"] > 0  # a configured hardware cost: never $0
    hosted = o_after["hosted_cost_usd"]["gpt-4o-mini"]
    tokens = o_after["prompt_tokens"] * 0.15e-6 + o_after["completion_tokens"] * 0.6e-6
    assert hosted == pytest.approx(tokens)
    assert after["models"][MODEL]["requests"] == o_after["requests"]


def test_an_answer_costs_its_tokens_at_the_rolling_rate(sqlite_service: Service) -> None:
    with httpx2.Client(base_url=sqlite_service.base_url, timeout=60) as http:
        for _ in range(2):
            r = http.post(CHAT, json=chat(temperature=0.7))
    info = r.json()["cost_info"]
    assert info["local_cost_basis"] == "rolling_rate"
    # $0.50 an hour over the tokens served so far: a real, positive cost.
    assert info["local_cost_usd"] > 0
    hosted = info["hosted_cost_usd"]["gpt-4o-mini"]
    assert info["savings_usd"]["gpt-4o-mini"] == pytest.approx(hosted - info["local_cost_usd"])


@pytest.mark.parametrize(
    ("params", "param"),
    [
        ({"period": "century"}, "period"),
        ({"since": "yesterday"}, "since"),
        ({"since": "2999-01-01T00:00:00"}, "since"),
        ({"since": "nan"}, "since"),
        ({"period": "day", "since": "0"}, "since"),
        ({"model": "no-such-model"}, "model"),
    ],
)
def test_cost_comparison_refuses_bad_input(
    sqlite_service: Service, params: dict[str, str], param: str
) -> None:
    r = httpx2.get(f"{sqlite_service.base_url}/cost-comparison", params=params, timeout=10)
    assert r.status_code == 400
    assert r.json()["error"]["param"] == param
    assert httpx2.get(f"{sqlite_service.base_url}/health", timeout=10).status_code == 200


def load(base: str, ids: list[str], stop: threading.Event, done: list[str]) -> None:
    """Sends requests until stopped; ``done`` gets the ids of answers received complete."""
    with httpx2.Client(base_url=base, timeout=60) as http:
        while not stop.is_set():
            rid = uuid.uuid4().hex
            ids.append(rid)
            try:
                r = http.post(CHAT, json=chat(max_tokens=2), headers={"x-request-id": rid})
            except httpx2.TransportError:
                return
            if r.status_code == 200 and r.json()["choices"]:
                done.append(rid)


def test_a_killed_service_loses_no_row_its_clients_received(tmp_path: Path) -> None:
    url = sqlite_url(tmp_path)
    # A slow writer: rows wait in the journal when the process is killed.
    config = {"ledger": {"flush_interval": 30}}
    svc = start_service(tmp_path, config)
    ids: list[str] = []
    done: list[str] = []
    stop = threading.Event()
    workers = [
        threading.Thread(target=load, args=(svc.base_url, ids, stop, done)) for _ in range(4)
    ]
    for w in workers:
        w.start()
    time.sleep(3)
    os.kill(svc.process.pid, signal.SIGKILL)
    svc.process.wait()
    stop.set()
    for w in workers:
        w.join()
    assert len(done) > 5
    restarted = start_service(tmp_path, config)  # replays the dead process's journal
    try:
        found = wait_for_rows(url, done)
        assert found == dict.fromkeys(done, 1)
    finally:
        restarted.stop()


def test_no_row_is_lost_while_postgresql_is_down(tmp_path: Path, postgres: Postgres) -> None:
    svc = start_service(tmp_path, {"ledger": {"url": postgres.url}})
    ids: list[str] = []
    done: list[str] = []
    stop = threading.Event()
    workers = [
        threading.Thread(target=load, args=(svc.base_url, ids, stop, done)) for _ in range(4)
    ]
    try:
        for w in workers:
            w.start()
        time.sleep(1)
        postgres.stop()
        time.sleep(10)
        postgres.start()
        time.sleep(1)
        stop.set()
        for w in workers:
            w.join()
        found = wait_for_rows(postgres.url, done, timeout=60)
        assert found == dict.fromkeys(done, 1)
        assert len(done) > 10
        assert metric_total(svc, "vllm_ledger_dropped_total") == 0
        assert metric_total(svc, "vllm_ledger_write_errors_total") > 0  # it did see the outage
        assert metric_total(svc, "vllm_ledger_rows_total") >= len(done)
    finally:
        stop.set()
        svc.stop()


def test_a_broken_ledger_url_stops_the_start_naming_the_key(tmp_path: Path) -> None:
    with pytest.raises(RuntimeError, match=r"ledger\.url"):
        start_service(tmp_path, {"ledger": {"url": "postgresql+asyncpg://nobody@127.0.0.1:1/x"}})
    with pytest.raises(RuntimeError, match=r"ledger\.url: not a database URL"):
        start_service(tmp_path, {"ledger": {"url": "not a url"}})


def test_an_unwritable_data_dir_stops_the_start_naming_the_key(tmp_path: Path) -> None:
    blocker = tmp_path / "a-file"
    blocker.write_text("not a directory")
    with pytest.raises(RuntimeError, match=r"ledger\.data_dir"):
        start_service(tmp_path, {"ledger": {"data_dir": str(blocker / "data")}})


def test_32_concurrent_writers_on_postgresql_lose_nothing(
    postgres: Postgres, tmp_path: Path
) -> None:
    """Replicas writing overlapping batches (replays) at once: every row once, none lost."""
    from vllm_service.accounting.cost import HardwareCost, HostedPrice, PriceTable
    from vllm_service.accounting.ledger import Ledger, LedgerSettings

    run_id = uuid.uuid4().hex[:8]
    rows = [
        {
            "id": f"{run_id}{i:08d}",
            "time": time.time(),
            "request_id": f"{run_id}-{i}",
            "route": CHAT,
            "model": MODEL,
            "status": 200,
            "stream": False,
            "fallback": False,
            "choices": 1,
            "prompt_tokens": 3,
            "completion_tokens": 2,
            "cached_tokens": 0,
            "usage_estimated": False,
            "hosted": {"gpt-4o-mini": ["gpt-4o-mini@2024-07-18", 1e-6]},
        }
        for i in range(3200)
    ]

    async def scenario() -> list[int]:
        writers = []
        for w in range(32):
            settings = LedgerSettings(
                url=postgres.url, journal_dir=tmp_path / f"j{w}", batch_rows=50
            )
            writers.append(Ledger(settings, PriceTable([HostedPrice()]), HardwareCost()))
        await writers[0].db.upgrade()
        # Each writer commits its own share and, reversed, its neighbour's (a replay).
        shares = [rows[w * 100 : (w + 1) * 100] for w in range(32)]
        await asyncio.gather(
            *(
                writer._commit(shares[w] + list(reversed(shares[(w + 1) % 32])))
                for w, writer in enumerate(writers)
            )
        )
        # The report's queries on PostgreSQL (its minute buckets use floor()).
        from vllm_service.accounting.cost_report import cost_report

        rep = await cost_report(
            writers[0].db, HardwareCost(hourly=1.0), since=time.time() - 600, until=time.time()
        )
        assert rep.overall.requests >= len(rows)
        assert (
            rep.peak_tokens_per_hour >= 5 * len(rows) * 60 / 2
        )  # 3200 rows within a minute or two
        for writer in writers:
            await writer.db.close()
        return [writer.committed for writer in writers]

    committed = asyncio.run(scenario())
    assert sum(committed) == 2 * len(rows)  # every batch went in (duplicates ignored)
    found = rows_for(postgres.url, [r["request_id"] for r in rows])
    assert found == {r["request_id"]: 1 for r in rows}


def test_cost_report_counts_exactly_the_answered_requests(tmp_path: Path) -> None:
    import json
    import subprocess

    from tests.conftest import service_command

    # The writer would wait 30 s: the rows reach the database through the flush at SIGTERM.
    config = {"ledger": {"hash_users": True, "flush_interval": 30}}
    svc = start_service(tmp_path, config)
    answered = 7
    with httpx2.Client(base_url=svc.base_url, timeout=60) as http:
        for i in range(answered):
            r = http.post(CHAT, json=chat(user=f"user-{i % 2}", temperature=0.5))
            assert r.status_code == 200
    svc.stop()  # SIGTERM: the journal is flushed before the process exits
    env = {**os.environ, "XDG_DATA_HOME": str(tmp_path / "data")}
    env = {k: v for k, v in env.items() if not k.startswith("VLLM_SERVICE_")}
    report = subprocess.run(
        [*service_command(), "cost", "report", "--since", "1h", "--format", "json"],
        capture_output=True,
        text=True,
        env=env,
        timeout=120,
        check=True,
    )
    body = json.loads(report.stdout)
    assert body["overall"]["requests"] == answered
    assert [row["requests"] for row in body["rows"]] == [answered]
    # Users were stored hashed: two distinct users, neither in clear text.
    users = asyncio.run(_users(sqlite_url(tmp_path)))
    assert len(users) == 2
    assert not {"user-0", "user-1"} & users


async def _users(url: str) -> set[str]:
    db = Database(url)
    try:
        async with db.engine.connect() as conn:
            return {u for (u,) in (await conn.execute(select(ledger.c.user).distinct())).all()}
    finally:
        await db.close()


def test_a_fallback_answer_has_one_row_that_says_so(tmp_path: Path) -> None:
    dead = {"base_url": dead_url(), "model": "x"}
    config = {
        "models": [
            {"name": "remote", "options": dead, "fallbacks": [MODEL]},
            {"name": MODEL},
        ]
    }
    svc = start_service(tmp_path, config)
    rid = uuid.uuid4().hex
    try:
        r = httpx2.post(
            f"{svc.base_url}{CHAT}",
            json=chat(model="remote"),
            headers={"x-request-id": rid},
            timeout=60,
        )
        assert r.status_code == 200
        assert r.headers["x-vllm-service-fallback"] == "true"
        url = sqlite_url(tmp_path)
        assert wait_for_rows(url, [rid]) == {rid: 1}

        async def fallback_of() -> tuple[bool, str]:
            db = Database(url)
            try:
                query = select(ledger.c.fallback, ledger.c.deployment).where(
                    ledger.c.request_id == rid
                )
                async with db.engine.connect() as conn:
                    fallback, deployment = (await conn.execute(query)).one()
                return bool(fallback), deployment
            finally:
                await db.close()

        assert asyncio.run(fallback_of()) == (True, MODEL)
    finally:
        svc.stop()
