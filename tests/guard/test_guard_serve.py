"""`mlsafety serve`: a real uvicorn server on 127.0.0.1 (a free port, in a thread), bounded load, bad requests."""

from __future__ import annotations

import asyncio
import base64
import io
import socket
import threading
import time
from collections.abc import Iterator
from typing import Any

import pytest
import torch
from click.testing import CliRunner
from torch import nn

from mlsafety.core import Classifier, forward
from mlsafety.guard import ACCEPTED, DriftAlarm, Guard
from mlsafety.monitoring import ood
from mlsafety.systemic import Monitor

httpx = pytest.importorskip("httpx")
uvicorn = pytest.importorskip("uvicorn")
serve_mod = pytest.importorskip("mlsafety.cli._serve")

SHAPE = (1, 8, 8)
MAX_BODY = 200_000


def tiny_guard(seed: int = 0) -> tuple[Guard, DriftAlarm]:
    """A seeded conv net on 1x8x8 inputs guarded by mahalanobis+confidence fitted on random inputs."""
    torch.manual_seed(seed)
    model = nn.Sequential(
        nn.Conv2d(1, 4, 3, padding=1), nn.ReLU(), nn.Flatten(), nn.Linear(4 * 64, 16), nn.ReLU(), nn.Linear(16, 3)
    ).eval()
    g = torch.Generator().manual_seed(seed)
    x = torch.rand(300, *SHAPE, generator=g)
    clf = Classifier(model)
    out = forward(clf, x)
    labels = out.logits.argmax(1)
    det = ood.create("mahalanobis").fit_outputs(clf, out, labels)
    scores = det.score_outputs(clf, out)
    correct = torch.ones(300, dtype=torch.bool)
    mon = Monitor.fit(
        "mahalanobis+confidence", scores, correct, 0.1, val_confidence=out.probs.amax(1), detector="mahalanobis"
    )
    guard = Guard(model, mon, det).eval()
    drift = DriftAlarm(guard.decide(out).score, arl=1000)
    return guard, drift


@pytest.fixture(scope="module")
def server() -> Iterator[tuple[str, Guard]]:
    guard, drift = tiny_guard()
    app = serve_mod.build_app(guard, drift, SHAPE, max_batch=16, max_wait_ms=10, max_images=32, max_body_bytes=MAX_BODY)
    sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM, socket.IPPROTO_TCP)  # TCP: asyncio sets NODELAY
    sock.bind(("127.0.0.1", 0))
    port = sock.getsockname()[1]
    srv = uvicorn.Server(uvicorn.Config(app, log_level="error", lifespan="on"))
    thread = threading.Thread(target=srv.run, kwargs={"sockets": [sock]}, daemon=True)
    thread.start()
    deadline = time.monotonic() + 20
    while not srv.started:
        assert time.monotonic() < deadline, "server did not start"
        time.sleep(0.05)
    yield f"http://127.0.0.1:{port}", guard
    srv.should_exit = True
    thread.join(10)
    sock.close()


def _expected(guard: Guard, x: torch.Tensor) -> Any:
    with torch.no_grad():
        return guard(x)


TIE = 1e-4
"""Decisions are compared only away from ties: a row's logits and score come from a micro-batch of other
requests' rows, whose float sums may differ in the last bits from a lone request's on another CPU's kernels."""


def _assert_decisions_equal(guard: Guard, x: torch.Tensor, rows: list[dict[str, Any]], exp: Any) -> None:
    """Label, accept and reason of each served row equal the library's, for rows whose top-two logits and
    both monitor comparisons are more than :data:`TIE` apart (most rows: at least half are compared)."""
    mon, det = guard.monitor, guard.detector
    top2 = exp.logits.topk(2, dim=1).values
    clear = (top2[:, 0] - top2[:, 1]) > TIE
    if mon.score_threshold is not None:
        assert det is not None
        with torch.no_grad():
            scores = det.score_outputs(guard._clf, guard.outputs(x)).reshape(-1)
        clear &= (scores - mon.score_threshold).abs() > TIE
    if mon.confidence_threshold is not None:
        clear &= (exp.logits.softmax(dim=1).amax(dim=1) - mon.confidence_threshold).abs() > TIE
    keep = clear.nonzero().reshape(-1).tolist()
    assert 2 * len(keep) >= len(rows)  # else the comparisons below check little
    assert [rows[i]["label"] for i in keep] == [exp.pred.tolist()[i] for i in keep]
    assert [rows[i]["accept"] for i in keep] == [exp.accept.tolist()[i] for i in keep]
    assert [rows[i]["reason"] for i in keep] == [exp.reasons[i] for i in keep]


def test_concurrent_load_no_request_lost_or_doubled(server: tuple[str, Guard]) -> None:
    url, guard = server
    g = torch.Generator().manual_seed(5)
    sizes = [1 + i % 3 for i in range(48)]
    batches = [torch.rand(k, *SHAPE, generator=g) for k in sizes]
    batches[7] = batches[7] * 0 + 1.0  # a far-off input among them (likely rejected)

    async def go() -> list[Any]:
        limits = httpx.Limits(max_connections=24)
        async with httpx.AsyncClient(base_url=url, timeout=30, limits=limits) as client:
            calls = [client.post("/predict", json={"id": f"r{i}", "images": b.tolist()}) for i, b in enumerate(batches)]
            return await asyncio.wait_for(asyncio.gather(*calls), 60)

    responses = asyncio.run(go())
    ids = []
    for i, (r, x) in enumerate(zip(responses, batches)):
        assert r.status_code == 200, r.text
        body = r.json()
        ids.append(body["id"])
        assert body["id"] == f"r{i}"
        exp = _expected(guard, x)
        got = body["results"]
        assert len(got) == x.shape[0]
        _assert_decisions_equal(guard, x, got, exp)
        assert torch.allclose(torch.tensor([row["score"] for row in got]), exp.score, rtol=1e-4, atol=1e-4)
        assert torch.allclose(torch.tensor([row["logits"] for row in got]), exp.logits, rtol=1e-4, atol=1e-5)
    assert sorted(ids) == sorted(f"r{i}" for i in range(len(batches)))  # each answered exactly once
    metrics = httpx.get(f"{url}/metrics", timeout=10).text
    values = {ln.split(" ")[0]: float(ln.split(" ")[1]) for ln in metrics.splitlines() if ln and ln[0] != "#"}
    assert values["mlsafety_inputs_total"] >= sum(sizes)
    assert values["mlsafety_batches_total"] < values["mlsafety_requests_total"]  # requests were grouped
    assert 'mlsafety_request_latency_seconds_bucket{le="+Inf"}' in values
    assert "mlsafety_drift_statistic" in values and "mlsafety_drift_alarm" in values


def test_png_input_equals_array_input(server: tuple[str, Guard]) -> None:
    from PIL import Image

    url, guard = server
    x = torch.rand(2, *SHAPE, generator=torch.Generator().manual_seed(6))
    q = (x * 255).round().to(torch.uint8)
    pngs = []
    for img in q:
        buf = io.BytesIO()
        Image.fromarray(img[0].numpy(), mode="L").save(buf, format="PNG")
        pngs.append(base64.b64encode(buf.getvalue()).decode())
    r = httpx.post(f"{url}/predict", json={"png": pngs}, timeout=30)
    assert r.status_code == 200, r.text
    exp = _expected(guard, q.float() / 255)
    assert [row["label"] for row in r.json()["results"]] == exp.pred.tolist()
    assert [row["reason"] for row in r.json()["results"]] == exp.reasons


def _images_of(value: bytes) -> bytes:
    """A JSON body of one 1x8x8 image whose every entry is ``value``."""
    row = b"[" + b",".join([value] * 8) + b"]"
    return b'{"images": [[[' + b",".join([row] * 8) + b"]]]}"


def _png_header_only(h: int, w: int) -> str:
    """The first bytes of a blank h x w grey PNG: its header states the size, its pixels are cut off."""
    from PIL import Image

    buf = io.BytesIO()
    Image.new("L", (w, h)).save(buf, format="PNG")
    return base64.b64encode(buf.getvalue()[:2000]).decode()


def _gif() -> str:
    from PIL import Image

    buf = io.BytesIO()
    Image.new("L", (8, 8)).save(buf, format="GIF")
    return base64.b64encode(buf.getvalue()).decode()


@pytest.mark.parametrize(
    ("body", "status", "words"),
    [
        (b"{not json", 400, "malformed JSON"),
        (b"[1, 2]", 400, "JSON object"),
        (b'{"images": [[[0.5]]]}', 422, "shape"),
        (_images_of(b"2.0"), 422, "[0, 1]"),
        (b'{"images": "x"}', 400, "non-empty list"),
        (b'{"images": [[["a"]]]}', 422, "numbers"),
        (b'{"png": ["@@@"]}', 400, "base64"),
        (('{"png": ["' + _gif() + '"]}').encode(), 415, "unsupported image"),
        (b'{"png": ["aGVsbG8="]}', 415, "PNG"),
        (b'{"images": [], "png": []}', 400, "exactly one"),
        (b"{" + b" " * (MAX_BODY + 10) + b"}", 413, "at most"),
        (('{"images": ' + str([[[[0.5] * 8] * 8]] * 33) + "}").encode(), 413, "at most 32"),
        (b'{"images": ' + b"[" * 50_000 + b"]" * 50_000 + b"}", 400, "malformed JSON"),  # past the parser's stack
        (_images_of(b"1" + b"0" * 400), 422, "[0, 1]"),  # an integer beyond float range
        (('{"png": ["' + _png_header_only(9000, 9000) + '"]}').encode(), 422, "9000x9000"),  # not decoded first
        (('{"png": ["' + _png_header_only(15000, 15000) + '"]}').encode(), 422, "too many pixels"),  # PIL's bomb limit
    ],
)
def test_bad_requests_are_one_clear_4xx(server: tuple[str, Guard], body: bytes, status: int, words: str) -> None:
    url, _ = server
    r = httpx.post(f"{url}/predict", content=body, headers={"content-type": "application/json"}, timeout=30)
    assert r.status_code == status, r.text
    detail = r.json()["detail"]
    assert words in detail and "\n" not in detail
    assert httpx.get(f"{url}/healthz", timeout=10).json()["status"] == "ok"  # still serving


def test_sixteen_bit_png_keeps_its_levels(server: tuple[str, Guard]) -> None:
    """A 16-bit grey PNG's levels are divided by 65535, as the data loaders read them (PIL's convert('L')
    clips every level above 255 to white)."""
    import numpy as np
    from PIL import Image

    url, guard = server
    levels = torch.randint(0, 65536, (8, 8), generator=torch.Generator().manual_seed(10)).to(torch.int32)
    buf = io.BytesIO()
    Image.fromarray(levels.numpy().astype(np.uint16)).save(buf, format="PNG")
    assert Image.open(io.BytesIO(buf.getvalue())).mode.startswith("I;16")
    r = httpx.post(f"{url}/predict", json={"png": [base64.b64encode(buf.getvalue()).decode()]}, timeout=30)
    assert r.status_code == 200, r.text
    exp = _expected(guard, (levels.double() / 65535).float().reshape(1, *SHAPE))
    got = r.json()["results"]
    assert torch.allclose(torch.tensor([row["logits"] for row in got]), exp.logits, rtol=1e-5, atol=1e-6)
    assert [row["score"] for row in got] == pytest.approx(exp.score.tolist(), rel=1e-5, abs=1e-6)


def test_micro_batches_keep_to_max_batch_and_each_request_gets_its_rows() -> None:
    """Requests of 10, 10, 3, 5, 20 and 1 inputs queued together with max_batch 16: no batch runs more than
    16 inputs unless one request alone is larger, every request is answered once with its own rows in
    order, and the drift alarm sees every input once."""
    guard, drift = tiny_guard()
    sizes = [10, 10, 3, 5, 20, 1]
    g = torch.Generator().manual_seed(11)
    xs = [torch.rand(k, *SHAPE, generator=g) for k in sizes]
    ran: list[int] = []

    class Recording(serve_mod.Batcher):
        def _judge(self, x: torch.Tensor) -> tuple[Any, float]:
            ran.append(x.shape[0])
            return super()._judge(x)

    async def go() -> list[Any]:
        batcher = Recording(guard, drift, serve_mod.Metrics(), max_batch=16, max_wait_ms=200)
        batcher.start()
        try:
            return await asyncio.wait_for(asyncio.gather(*(batcher.submit(x) for x in xs)), 30)
        finally:
            await batcher.stop()

    replay = DriftAlarm(drift.reference, drift.arl, drift.kappa, drift.seed)
    answers = asyncio.run(go())
    assert sum(ran) == sum(sizes) == drift.steps
    for x in xs:  # the drift alarm was fed in arrival order: replaying the requests one by one gives its state
        replay.update(_expected(guard, x).score)
    assert drift.statistic == pytest.approx(replay.statistic, rel=1e-6) and drift.alarms == replay.alarms
    assert all(k <= 16 for k in ran if k != 20) and len(ran) < len(sizes)  # grouped, never past the cap
    for x, rows in zip(xs, answers, strict=True):
        exp = _expected(guard, x)
        _assert_decisions_equal(guard, x, rows, exp)
        assert [row["score"] for row in rows] == pytest.approx(exp.score.tolist(), rel=1e-4, abs=1e-4)


def test_an_oversized_body_without_length_is_refused_unread() -> None:
    """A body streamed without Content-Length is read only up to the limit, then refused with 413."""
    guard, drift = tiny_guard()
    app = serve_mod.build_app(guard, drift, SHAPE, max_body_bytes=MAX_BODY)
    sent = []

    async def body() -> Any:
        yield b'{"images": '
        for _ in range(100):  # 1 MB of blanks, five times the limit
            sent.append(1)
            yield b" " * 10_000

    async def go() -> Any:
        async with httpx.AsyncClient(transport=httpx.ASGITransport(app=app), base_url="http://t") as client:
            return await client.post("/predict", content=body(), headers={"content-type": "application/json"})

    r = asyncio.run(go())
    assert r.status_code == 413 and "at most" in r.json()["detail"]
    assert len(sent) <= MAX_BODY // 10_000 + 2  # stopped reading at the limit


def test_metrics_follow_the_prometheus_text_format() -> None:
    """Text format 0.0.4: HELP then TYPE once per family before its samples; a histogram's buckets are
    cumulative (``le`` inclusive), its +Inf bucket equals ``_count``, ``_sum`` the sum; counters end in _total."""
    _, drift = tiny_guard()
    m = serve_mod.Metrics()
    for seconds in (0.0005, 0.001, 0.003, 0.2, 7.0):
        m.observe(seconds)
    m.errors[422] = 2
    text = m.text(drift)
    assert text.endswith("\n")
    families: dict[str, str] = {}
    samples: dict[str, float] = {}
    for ln in text.splitlines():
        if ln.startswith("# HELP "):
            name = ln.split(" ")[2]
            assert name not in families
            families[name] = ""
        elif ln.startswith("# TYPE "):
            _, _, name, kind = ln.split(" ")
            assert families.get(name) == ""  # right after its HELP, once
            families[name] = kind
        else:
            key, value = ln.rsplit(" ", 1)
            base = key.split("{")[0]
            fam = next(f for f in families if base in (f, f + "_bucket", f + "_sum", f + "_count"))
            assert families[fam] != ""
            assert (base == fam) == (families[fam] != "histogram")
            samples[key] = float(value)
    assert all(name.endswith("_total") for name, kind in families.items() if kind == "counter")
    h = "mlsafety_request_latency_seconds"
    assert families[h] == "histogram"
    want = {"0.001": 2, "0.0025": 2, "0.005": 3, "0.01": 3, "0.025": 3, "0.05": 3, "0.1": 3, "0.25": 4,
            "0.5": 4, "1": 4, "2.5": 4, "5": 4, "+Inf": 5}  # fmt: skip
    assert {k: samples[f'{h}_bucket{{le="{k}"}}'] for k in want} == want
    assert samples[f"{h}_count"] == 5 and samples[f"{h}_sum"] == pytest.approx(7.2045, abs=1e-6)
    assert samples['mlsafety_request_errors_total{status="422"}'] == 2


def test_reasons_name_the_part_that_rejected() -> None:
    guard, _ = tiny_guard()
    x = torch.cat([torch.rand(20, *SHAPE, generator=torch.Generator().manual_seed(8)), torch.ones(2, *SHAPE) * 50])
    out = _expected(guard, x)
    assert not bool(out.accept[-1])
    assert out.reasons[-1] != ACCEPTED and "detector score" in out.reasons[-1]
    for acc, why, s in zip(out.accept.tolist(), out.reasons, out.score.tolist()):
        assert acc == (why == ACCEPTED) and acc == (s <= 0)


def test_serve_without_extra_names_the_install(monkeypatch: pytest.MonkeyPatch, tmp_path: Any) -> None:
    from mlsafety.cli import main

    monkeypatch.setattr(serve_mod, "_has_serve_extra", lambda: False)
    r = CliRunner().invoke(main, ["serve", str(tmp_path)])
    assert r.exit_code == 2
    assert "pip install 'mlsafety[serve]'" in r.output


def test_detector_state_follows_the_module() -> None:
    """`guard.to(...)` converts the detector's learned tensors with the model (dtype here; device alike)."""
    guard, _ = tiny_guard()
    x = torch.rand(5, *SHAPE, generator=torch.Generator().manual_seed(9))
    with torch.no_grad():
        ref = guard(x)
        guard.double()
        out = guard(x.double())
    assert out.logits.dtype == torch.float64
    assert guard.detector is not None
    assert all(t.dtype == torch.float64 for k, t in vars(guard.detector).items() if isinstance(t, torch.Tensor))
    assert torch.equal(out.accept, ref.accept)
