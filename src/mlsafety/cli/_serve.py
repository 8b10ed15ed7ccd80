"""``mlsafety serve DIR``: a guard directory as an HTTP service (FastAPI + uvicorn, the ``serve`` extra).

Endpoints:
    ``POST /predict``  body ``{"id": "...", "images": [[[...]]]}`` (nested arrays (N, C, H, W) or (N, H, W)
                       for one channel, values in [0, 1]) or ``{"id": "...", "png": ["<base64>", ...]}``;
                       answers ``{"id": ..., "results": [{"label", "accept", "score", "reason", "logits"}]}``.
    ``GET /healthz``   ``{"status": "ok", ...}``.
    ``GET /metrics``   Prometheus text format: requests, inputs, rejections, errors by status, a latency
                       histogram, model seconds, batches, the drift statistic and alarm.

Concurrent requests are micro-batched: one worker takes requests from an asyncio queue, groups those
that arrive within ``max_wait_ms`` up to ``max_batch`` inputs, runs the guard once on the group (in a
thread, so the event loop keeps accepting), updates the drift alarm in arrival order and answers each
request with its own slice. Bad requests get a 4xx with one line (``{"detail": "..."}``).
"""

# no `from __future__ import annotations`: FastAPI reads the endpoints' annotations (Request) at runtime

import asyncio
import base64
import binascii
import io
import json
import socket
import time
from dataclasses import dataclass, field
from typing import Any

import click
import numpy as np
import torch

from mlsafety.cli._common import EXIT_BAD_INPUT, Finite, friendly, line
from mlsafety.core import InputError
from mlsafety.guard import DriftAlarm, Guard

INSTALL = "mlsafety serve needs the serve extra: pip install 'mlsafety[serve]'"
MAX_WAIT_MS = 10_000.0
"""The longest batching window ``--max-wait-ms`` takes: a request waits that long for others to join it."""
LATENCY_BUCKETS = (0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0)


class BadRequest(Exception):
    """A request the service refuses: an HTTP status and one line."""

    def __init__(self, status: int, detail: str) -> None:
        super().__init__(detail)
        self.status = status
        self.detail = detail


@dataclass
class Metrics:
    """Counters of the service (read by ``GET /metrics``)."""

    requests: int = 0
    inputs: int = 0
    rejections: int = 0
    batches: int = 0
    model_seconds: float = 0.0
    errors: dict[int, int] = field(default_factory=dict)
    buckets: list[int] = field(default_factory=lambda: [0] * len(LATENCY_BUCKETS))
    latency_sum: float = 0.0
    latency_count: int = 0

    def observe(self, seconds: float) -> None:
        self.latency_sum += seconds
        self.latency_count += 1
        for i, b in enumerate(LATENCY_BUCKETS):
            if seconds <= b:
                self.buckets[i] += 1

    def text(self, drift: DriftAlarm) -> str:
        out = [
            "# HELP mlsafety_requests_total Predict requests answered with 200.",
            "# TYPE mlsafety_requests_total counter",
            f"mlsafety_requests_total {self.requests}",
            "# HELP mlsafety_inputs_total Inputs judged by the guard.",
            "# TYPE mlsafety_inputs_total counter",
            f"mlsafety_inputs_total {self.inputs}",
            "# HELP mlsafety_rejections_total Inputs the monitor rejected.",
            "# TYPE mlsafety_rejections_total counter",
            f"mlsafety_rejections_total {self.rejections}",
            "# HELP mlsafety_request_errors_total Requests refused, by HTTP status.",
            "# TYPE mlsafety_request_errors_total counter",
            *(f'mlsafety_request_errors_total{{status="{k}"}} {v}' for k, v in sorted(self.errors.items())),
            "# HELP mlsafety_batches_total Micro-batches run through the guard.",
            "# TYPE mlsafety_batches_total counter",
            f"mlsafety_batches_total {self.batches}",
            "# HELP mlsafety_model_seconds_total Seconds spent in the guard's forward pass.",
            "# TYPE mlsafety_model_seconds_total counter",
            f"mlsafety_model_seconds_total {self.model_seconds:.6f}",
            "# HELP mlsafety_request_latency_seconds Predict latency (queue, batch, answer).",
            "# TYPE mlsafety_request_latency_seconds histogram",
            *(
                f'mlsafety_request_latency_seconds_bucket{{le="{b:g}"}} {c}'
                for b, c in zip(LATENCY_BUCKETS, self.buckets)
            ),
            f'mlsafety_request_latency_seconds_bucket{{le="+Inf"}} {self.latency_count}',
            f"mlsafety_request_latency_seconds_sum {self.latency_sum:.6f}",
            f"mlsafety_request_latency_seconds_count {self.latency_count}",
            "# HELP mlsafety_drift_statistic Shiryaev-Roberts statistic of the conformal drift alarm.",
            "# TYPE mlsafety_drift_statistic gauge",
            f"mlsafety_drift_statistic {drift.statistic:.6g}",
            "# HELP mlsafety_drift_alarm 1 once the drift alarm has been raised.",
            "# TYPE mlsafety_drift_alarm gauge",
            f"mlsafety_drift_alarm {int(drift.alarm)}",
            "# HELP mlsafety_drift_alarms_total Drift alarms raised.",
            "# TYPE mlsafety_drift_alarms_total counter",
            f"mlsafety_drift_alarms_total {drift.alarms}",
            "# HELP mlsafety_drift_level Alarm level (mean in-distribution inputs before a false alarm, at least).",
            "# TYPE mlsafety_drift_level gauge",
            f"mlsafety_drift_level {drift.arl:g}",
        ]
        return "\n".join(out) + "\n"


def _png(data: str, shape: tuple[int, ...]) -> torch.Tensor:
    from PIL import Image, UnidentifiedImageError

    try:
        raw = base64.b64decode(data, validate=True)
    except (binascii.Error, ValueError, TypeError):
        raise BadRequest(400, "an entry of 'png' is not valid base64") from None
    unreadable = "an entry of 'png' is not a readable PNG image; send PNG or nested arrays"
    try:
        opened = Image.open(io.BytesIO(raw))  # reads the header only
    except Image.DecompressionBombError:
        raise BadRequest(422, f"PNG of too many pixels; the model takes {shape[1]}x{shape[2]}") from None
    except (UnidentifiedImageError, OSError):
        raise BadRequest(415, unreadable) from None
    if opened.format != "PNG":
        raise BadRequest(415, f"unsupported image format {opened.format}; send PNG or nested arrays")
    if (opened.height, opened.width) != shape[1:]:  # checked before the pixels are decoded
        raise BadRequest(422, f"PNG is {opened.height}x{opened.width}; the model takes {shape[1]}x{shape[2]}")
    try:
        if opened.mode.startswith("I;16") or opened.mode == "I":  # 16-bit grey: convert("L") clips above 255
            levels = torch.from_numpy(np.array(opened.convert("F"), dtype=np.float32)).div(65535.0)  # as the loaders
            return levels.reshape(1, *shape[1:]).expand(shape[0], -1, -1).clone()
        img = opened.convert("L" if shape[0] == 1 else "RGB")
    except OSError:
        raise BadRequest(415, unreadable) from None
    t = torch.frombuffer(bytearray(img.tobytes()), dtype=torch.uint8).float().div(255.0)
    return t.reshape(img.height, img.width, shape[0]).permute(2, 0, 1)


def parse_inputs(body: Any, shape: tuple[int, ...], max_images: int) -> tuple[str | None, torch.Tensor]:
    """The request id and images (N, C, H, W) in [0, 1] of a decoded JSON body; :class:`BadRequest` otherwise."""
    if not isinstance(body, dict):
        raise BadRequest(400, "the body must be a JSON object with 'images' (nested arrays) or 'png' (base64 list)")
    rid = body.get("id")
    if rid is not None and not isinstance(rid, (str, int)):
        raise BadRequest(400, "'id' must be a string or an integer")
    has_images, has_png = "images" in body, "png" in body
    if has_images == has_png:
        raise BadRequest(400, "give exactly one of 'images' (nested arrays) or 'png' (list of base64 PNG)")
    items = body["images"] if has_images else body["png"]
    if not isinstance(items, list) or not items:
        raise BadRequest(400, f"'{'images' if has_images else 'png'}' must be a non-empty list")
    if len(items) > max_images:
        raise BadRequest(413, f"{len(items)} images in one request; at most {max_images}")
    if has_png:
        if not all(isinstance(s, str) for s in items):
            raise BadRequest(400, "'png' must be a list of base64 strings")
        x = torch.stack([_png(s, shape) for s in items])
    else:
        try:
            x = torch.tensor(items, dtype=torch.float32)
        except OverflowError:  # an integer beyond float range
            raise BadRequest(422, "image values must be finite and lie in [0, 1]") from None
        except (ValueError, TypeError, RuntimeError):
            raise BadRequest(422, f"'images' must be numbers nested as (N, {', '.join(map(str, shape))})") from None
        if x.dim() == len(shape) and shape[0] == 1:
            x = x.unsqueeze(1)
        if tuple(x.shape[1:]) != shape:
            raise BadRequest(422, f"images have shape {tuple(x.shape[1:])}; the model takes {shape}")
        if not bool(torch.isfinite(x).all()) or float(x.min()) < 0.0 or float(x.max()) > 1.0:
            raise BadRequest(422, "image values must be finite and lie in [0, 1]")
    return (None if rid is None else str(rid)), x


@dataclass
class _Job:
    x: torch.Tensor
    future: asyncio.Future[Any]


class Batcher:
    """Groups queued requests into micro-batches for one guard (one worker task)."""

    def __init__(self, guard: Guard, drift: DriftAlarm, metrics: Metrics, max_batch: int, max_wait_ms: float) -> None:
        self.guard, self.drift, self.metrics = guard, drift, metrics
        self.max_batch, self.max_wait = max_batch, max_wait_ms / 1000.0
        self.queue: asyncio.Queue[_Job] = asyncio.Queue()
        self._worker: asyncio.Task[None] | None = None
        self._next: _Job | None = None  # taken from the queue, too large for the batch before: opens the next

    def start(self) -> None:
        self._worker = asyncio.get_running_loop().create_task(self._run())

    async def stop(self) -> None:
        if self._worker is not None:
            self._worker.cancel()
            try:
                await self._worker
            except asyncio.CancelledError:
                pass

    async def submit(self, x: torch.Tensor) -> list[dict[str, Any]]:
        fut: asyncio.Future[Any] = asyncio.get_running_loop().create_future()
        await self.queue.put(_Job(x, fut))
        result: list[dict[str, Any]] = await fut
        return result

    def _judge(self, x: torch.Tensor) -> tuple[Any, float]:
        t0 = time.perf_counter()
        with torch.no_grad():
            out = self.guard(x)
        return out, time.perf_counter() - t0

    async def _run(self) -> None:
        loop = asyncio.get_running_loop()
        while True:
            if self._next is not None:
                first, self._next = self._next, None
            else:
                first = await self.queue.get()
            jobs = [first]
            n = first.x.shape[0]
            deadline = loop.time() + self.max_wait
            while n < self.max_batch:
                left = deadline - loop.time()
                if left <= 0:
                    break
                try:
                    job = await asyncio.wait_for(self.queue.get(), left)
                except asyncio.TimeoutError:
                    break
                if n + job.x.shape[0] > self.max_batch:  # kept whole, in order, for the next batch
                    self._next = job
                    break
                jobs.append(job)
                n += job.x.shape[0]
            try:
                out, secs = await asyncio.to_thread(self._judge, torch.cat([j.x for j in jobs]))
                self.drift.update(out.score)
            except Exception as e:  # answered to every waiting request, the worker lives on
                for j in jobs:
                    if not j.future.done():
                        j.future.set_exception(e)
                continue
            self.metrics.batches += 1
            self.metrics.model_seconds += secs
            logits = out.logits.float().cpu()
            accept, score, pred = out.accept.cpu(), out.score.cpu(), logits.argmax(dim=1)
            i = 0
            for j in jobs:
                k = j.x.shape[0]
                rows = [
                    {
                        "label": int(pred[t]),
                        "accept": bool(accept[t]),
                        "score": float(score[t]),
                        "reason": out.reasons[t],
                        "logits": [float(v) for v in logits[t]],
                    }
                    for t in range(i, i + k)
                ]
                i += k
                if not j.future.done():
                    j.future.set_result(rows)


def build_app(
    guard: Guard,
    drift: DriftAlarm,
    input_shape: tuple[int, ...],
    max_batch: int = 64,
    max_wait_ms: float = 5.0,
    max_images: int = 256,
    max_body_bytes: int = 16 * 1024 * 1024,
) -> Any:
    """The FastAPI application serving ``guard`` (see the module docstring).

    Args:
        guard: the loaded guard (its device is where inputs go).
        drift: the drift alarm fed with every judged input's score, in arrival order.
        input_shape: (C, H, W) the model takes.
        max_batch: most inputs in one micro-batch (a larger request runs alone).
        max_wait_ms: how long the worker waits for more requests to join a batch.
        max_images: most images in one request (more: 413).
        max_body_bytes: largest request body (larger: 413).
    """
    from contextlib import asynccontextmanager

    from fastapi import FastAPI, Request
    from fastapi.responses import JSONResponse, PlainTextResponse

    metrics = Metrics()
    shape = tuple(int(s) for s in input_shape)
    state: dict[str, Batcher] = {}

    @asynccontextmanager
    async def lifespan(_app: Any) -> Any:
        batcher = Batcher(guard, drift, metrics, max_batch, max_wait_ms)
        batcher.start()
        state["batcher"] = batcher
        yield
        await batcher.stop()

    app = FastAPI(title="mlsafety guard", lifespan=lifespan)
    app.state.metrics = metrics

    def refuse(status: int, detail: str) -> Any:
        metrics.errors[status] = metrics.errors.get(status, 0) + 1
        return JSONResponse({"detail": detail}, status_code=status)

    @app.post("/predict")
    async def predict(request: Request) -> Any:
        t0 = time.perf_counter()
        declared = request.headers.get("content-length")
        if declared is not None and declared.isdigit() and int(declared) > max_body_bytes:
            return refuse(413, f"request body of {declared} bytes; at most {max_body_bytes}")
        chunks, size = [], 0
        async for chunk in request.stream():  # a body without Content-Length is read only up to the limit
            size += len(chunk)
            if size > max_body_bytes:
                return refuse(413, f"request body of more than {max_body_bytes} bytes; at most {max_body_bytes}")
            chunks.append(chunk)
        try:
            body = json.loads(b"".join(chunks))
        except (ValueError, UnicodeDecodeError) as e:
            return refuse(400, f"malformed JSON: {e}")
        except RecursionError:
            return refuse(400, "malformed JSON: nested too deeply")
        try:
            rid, x = parse_inputs(body, shape, max_images)
        except BadRequest as e:
            return refuse(e.status, e.detail)
        try:
            rows = await state["batcher"].submit(x)
        except InputError as e:
            return refuse(422, str(e).splitlines()[0])
        metrics.requests += 1
        metrics.inputs += len(rows)
        metrics.rejections += sum(not r["accept"] for r in rows)
        metrics.observe(time.perf_counter() - t0)
        return {"id": rid, "results": rows, "drift_alarm": drift.alarm}

    @app.get("/healthz")
    async def healthz() -> Any:
        return {"status": "ok", "monitor": guard.monitor.name, "input_shape": list(shape), "drift_alarm": drift.alarm}

    @app.get("/metrics")
    async def prom() -> Any:
        return PlainTextResponse(metrics.text(drift), media_type="text/plain; version=0.0.4")

    return app


def check_bind(host: str, port: int) -> socket.socket:
    """The socket bound to ``host:port`` (not yet listening), or :class:`InputError`, before the guard is
    loaded: uvicorn reports an unknown host or a port in use only after the model is loaded, with exit 1 or
    3, and binds an empty host on every interface. ``serve`` hands this socket to uvicorn, so ``--port 0``
    serves on the one port the OS picked here (uvicorn binding a name itself gives each of its addresses
    its own port)."""
    if not host.strip():
        raise InputError("--host is empty (it would bind every interface); give an address, e.g. --host 127.0.0.1")
    try:
        family, kind, proto, _, address = socket.getaddrinfo(host, port, type=socket.SOCK_STREAM)[0]
    except (socket.gaierror, UnicodeError) as exc:
        raise InputError(
            f"--host {host!r} is not an address of this machine ({exc}); use e.g. --host 127.0.0.1"
        ) from None
    sock = socket.socket(family, kind, proto)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)  # as uvicorn binds
    try:
        sock.bind(address)
    except OSError as exc:
        sock.close()
        raise InputError(f"cannot bind {host}:{port} ({exc.strerror or exc}); pass another --port or --host") from None
    return sock


def url_of(sock: socket.socket) -> str:
    """``http://host:port`` of a bound socket: the address it really has (the port the OS picked for 0)."""
    host, port = sock.getsockname()[:2]
    return f"http://[{host}]:{port}" if ":" in host else f"http://{host}:{port}"


def _has_serve_extra() -> bool:
    import importlib.util

    return all(importlib.util.find_spec(m) is not None for m in ("fastapi", "uvicorn"))


@click.command("serve")
@click.argument("guard_dir", type=click.Path())
@click.option("--host", default="127.0.0.1", show_default=True, help="Address to bind.")
@click.option("--port", default=8000, show_default=True, type=click.IntRange(0, 65535), help="Port to bind.")
@click.option("--device", default="cpu", show_default=True, help="Where the guard runs (cpu, cuda, cuda:1...).")
@click.option("--max-batch", default=64, show_default=True, type=click.IntRange(1), help="Most inputs per micro-batch.")
@click.option("--max-wait-ms", default=5.0, show_default=True, type=Finite(0, MAX_WAIT_MS), help="Batching window.")
@friendly
def serve(guard_dir: str, host: str, port: int, device: str, max_batch: int, max_wait_ms: float) -> None:
    """Serve a guard directory (from `mlsafety guard export`) over HTTP: /predict, /healthz, /metrics."""
    if not _has_serve_extra():
        line("error:", INSTALL)
        raise SystemExit(EXIT_BAD_INPUT)
    import uvicorn

    from mlsafety.guard import load_guard

    class Server(uvicorn.Server):
        async def startup(self, sockets: list[socket.socket] | None = None) -> None:
            await super().startup(sockets=sockets)
            if self.started and sockets:  # listening: the address a client can reach now (uvicorn logs no info)
                click.echo(f"serving {guard_dir} on {url_of(sockets[0])} (Ctrl+C stops)")

    sock = check_bind(host, port)
    with sock:
        loaded = load_guard(guard_dir, device=device)
        shape = tuple(loaded.config["input"]["shape"])
        app = build_app(loaded.guard, loaded.drift, shape, max_batch=max_batch, max_wait_ms=max_wait_ms)
        server = Server(uvicorn.Config(app, log_level="warning"))
        try:
            server.run(sockets=[sock])
        except KeyboardInterrupt:  # Ctrl+C: uvicorn re-raises the signal it caught once it has shut down
            pass
    if not server.started:  # as uvicorn.run: the app's startup failed
        raise SystemExit(3)
