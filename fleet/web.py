"""``gridedge fleet serve``: the fleet as read-only, server-rendered web pages (Starlette + Jinja2).

Three pages: ``/`` (the fleet table and the rollouts), ``/device/{site}/{device}`` (forecast vs measured
as an inline SVG drawn here, alerts, model history) and ``/rollout/{id}`` (progress per stage, the outcome
of every device with its reason). Nothing on them changes the store, which is opened read-only.
Authentication belongs in front of it (a reverse proxy, docs/fleet.md); ``auth_token`` is the cheap
built-in alternative: every request must carry it as ``Authorization: Bearer <token>`` or as the password
of HTTP Basic (so a browser asks for it once).
"""

from __future__ import annotations

import base64
import binascii
import hmac
import json
import time
from dataclasses import dataclass
from datetime import datetime
from typing import TYPE_CHECKING, Any

from edge_agent.errors import FleetError, missing_extra
from gridedge.fleet.rollouts import RolloutStore
from gridedge.fleet.views import STATE_COLOURS, age_label, fleet_rows, iso_utc, stage_progress

try:
    from jinja2 import Environment, PackageLoader, select_autoescape
    from markupsafe import Markup
    from starlette.applications import Starlette
    from starlette.requests import Request
    from starlette.responses import HTMLResponse, Response
    from starlette.routing import Route
except ImportError as exc:  # the fleet extra
    raise missing_extra(exc.name or "starlette", "fleet") from exc

if TYPE_CHECKING:
    from gridedge.fleet.store import FleetStore

RECENT_SUMMARIES = 96
RECENT_ALERTS = 20
RECENT_ROLLOUTS = 20
CHART_WIDTH, CHART_HEIGHT, CHART_MARGIN = 720, 260, 40


@dataclass(frozen=True)
class Series:
    """A named line of (epoch seconds, value) points."""

    name: str
    colour: str
    points: list[tuple[float, float]]


def svg_chart(series: list[Series], unit: str | None) -> Markup:
    """A line chart as inline SVG: no image files, no client-side scripts, readable without styles."""
    points = [point for line in series for point in line.points]
    if not points:
        return Markup("<p>No forecast or measurement received yet.</p>")
    t0, t1 = min(p[0] for p in points), max(p[0] for p in points)
    v0, v1 = min(p[1] for p in points), max(p[1] for p in points)
    t1, v1 = (t1 if t1 > t0 else t0 + 1), (v1 if v1 > v0 else v0 + 1)
    width, height, margin = CHART_WIDTH, CHART_HEIGHT, CHART_MARGIN

    def x(t: float) -> float:
        return margin + (t - t0) / (t1 - t0) * (width - 2 * margin)

    def y(v: float) -> float:
        return height - margin - (v - v0) / (v1 - v0) * (height - 2 * margin)

    parts = [
        f'<svg xmlns="http://www.w3.org/2000/svg" role="img" class="chart" viewBox="0 0 {width} {height}" '
        f'width="{width}" height="{height}"><title>forecast vs measured</title>',
        f'<rect x="{margin}" y="{margin}" width="{width - 2 * margin}" height="{height - 2 * margin}" '
        'fill="#fafafa" stroke="#ccc"/>',
    ]
    for value in (v0, (v0 + v1) / 2, v1):
        parts.append(f'<text x="4" y="{y(value) + 4:.1f}" font-size="11">{value:.2f}</text>')
    for moment in (t0, t1):
        parts.append(
            f'<text x="{x(moment):.1f}" y="{height - 12}" font-size="11" text-anchor="middle">'
            f"{iso_utc(moment, 'seconds')[5:16].replace('T', ' ')}</text>"
        )
    for index, line in enumerate(series):
        if not line.points:
            continue
        path = " ".join(f"{x(t):.1f},{y(v):.1f}" for t, v in sorted(line.points))
        parts.append(
            f'<polyline class="series" data-name="{line.name}" fill="none" stroke="{line.colour}" '
            f'stroke-width="2" points="{path}"/>'
        )
        parts.append(
            f'<text x="{margin + 8 + 210 * index}" y="{margin - 10}" font-size="12" fill="{line.colour}">'
            f"{line.name}{f' ({unit})' if unit else ''}</text>"
        )
    parts.append("</svg>")
    return Markup("".join(parts))


def forecast_series(summaries: list[dict[str, Any]]) -> tuple[list[Series], str | None, str | None]:
    """Measured means of the forecast target, the one-step-ahead forecasts made for the same times, and
    the latest full forecast; with the target name and unit."""
    documents = [json.loads(row["payload"]) for row in summaries]
    target = next((doc["forecasts"][0]["target"] for doc in reversed(documents) if doc.get("forecasts")), None)
    if target is None:
        return [], None, None
    measured, ahead, latest = [], [], []
    unit = None
    for doc in documents:
        channel = doc.get("channels", {}).get(target)
        if channel and channel.get("mean") is not None:
            measured.append((datetime.fromisoformat(doc["window_end"]).timestamp(), float(channel["mean"])))
            unit = unit or channel.get("unit")
        for forecast in doc.get("forecasts", []):
            if forecast["target"] == target and forecast["values"] and forecast["values"][0] is not None:
                origin = datetime.fromisoformat(forecast["origin"]).timestamp()
                ahead.append((origin + forecast["step_s"], float(forecast["values"][0])))
    last = next((f for doc in reversed(documents) for f in doc.get("forecasts", []) if f["target"] == target), None)
    if last is not None:
        origin = datetime.fromisoformat(last["origin"]).timestamp()
        latest = [
            (origin + (step + 1) * last["step_s"], float(value))
            for step, value in enumerate(last["values"])
            if value is not None
        ]
        unit = unit or last.get("unit")
    return (
        [
            Series("measured", "#1f77b4", measured),
            Series("forecast, 1 step ahead", "#ff7f0e", ahead),
            Series("latest forecast", "#2ca02c", latest),
        ],
        target,
        unit,
    )


def model_history(messages: list[dict[str, Any]]) -> list[dict[str, str]]:
    """When each model (name, version, runtime) was first reported, oldest first."""
    history: list[dict[str, str]] = []
    for row in messages:
        model = json.loads(row["payload"]).get("model")
        if not model:
            continue
        label = " ".join(str(model.get(key) or "") for key in ("name", "version", "runtime", "precision")).strip()
        if not history or history[-1]["model"] != label:
            history.append({"model": label, "since": row["ts"], "seq": str(row["seq"])})
    return history


class _TokenGate:
    """ASGI middleware refusing requests without the token (Bearer, or HTTP Basic's password)."""

    def __init__(self, app: Any, token: str):
        self.app, self.token = app, token.encode()

    def _allowed(self, header: str) -> bool:
        scheme, _, credentials = header.partition(" ")
        if scheme.lower() == "bearer":
            return hmac.compare_digest(credentials.strip().encode(), self.token)
        if scheme.lower() == "basic":
            try:
                decoded = base64.b64decode(credentials.strip(), validate=True)
            except (binascii.Error, ValueError):
                return False
            return hmac.compare_digest(decoded.partition(b":")[2], self.token)
        return False

    async def __call__(self, scope: dict[str, Any], receive: Any, send: Any) -> None:
        if scope["type"] == "http":
            headers = dict(scope.get("headers") or [])
            if not self._allowed(headers.get(b"authorization", b"").decode("latin-1")):
                response = Response(
                    "authentication required\n", status_code=401,
                    headers={"WWW-Authenticate": 'Basic realm="gridedge fleet"'},
                )
                await response(scope, receive, send)
                return
        await self.app(scope, receive, send)


def create_app(store: FleetStore, *, auth_token: str | None = None, stale_after_s: float = 900.0) -> Any:
    """The ASGI application over ``store`` (which it only reads)."""
    templates = Environment(loader=PackageLoader("gridedge.fleet", "templates"), autoescape=select_autoescape())
    templates.globals.update(
        age_label=age_label, iso_utc=iso_utc, colours=STATE_COLOURS, stage_progress=stage_progress
    )
    rollouts = RolloutStore(store)

    def render(name: str, status_code: int = 200, **context: Any) -> HTMLResponse:
        return HTMLResponse(templates.get_template(name).render(**context), status_code=status_code)

    async def fleet_page(request: Request) -> HTMLResponse:
        rows = fleet_rows(store, time.time(), stale_after_s)
        return render(
            "fleet.html", rows=rows, dead_letters=store.dead_letter_count(), generated=iso_utc(time.time(), "seconds"),
            rollouts=rollouts.list_rollouts()[:RECENT_ROLLOUTS], now=time.time(),
        )

    async def rollout_page(request: Request) -> HTMLResponse:
        rollout_id = request.path_params["rollout_id"]
        try:
            rollout = rollouts.get(rollout_id)
        except FleetError:
            return render("missing.html", status_code=404, what=f"rollout {rollout_id}")
        return render("rollout.html", rollout=rollout, now=time.time(), generated=iso_utc(time.time(), "seconds"))

    async def device_page(request: Request) -> HTMLResponse:
        site, device = request.path_params["site"], request.path_params["device"]
        row = next(
            (r for r in fleet_rows(store, time.time(), stale_after_s) if (r.site, r.device) == (site, device)),
            None,
        )
        if row is None:
            return render("missing.html", status_code=404, what=f"device {site}/{device}")
        summaries = store.recent_messages(site, device, "summary", RECENT_SUMMARIES)
        series, target, unit = forecast_series(summaries)
        statuses = store.recent_messages(site, device, "status", RECENT_SUMMARIES)
        history = model_history(sorted(statuses + summaries, key=lambda r: r["seq"]))
        alerts = [
            {**json.loads(r["payload"]), "ts": r["ts"]}
            for r in reversed(store.recent_messages(site, device, "alert", RECENT_ALERTS))
        ]
        return render(
            "device.html", row=row, chart=svg_chart(series, unit), target=target, alerts=alerts,
            history=list(reversed(history)), generated=iso_utc(time.time(), "seconds"),
        )

    app = Starlette(
        routes=[
            Route("/", fleet_page),
            Route("/device/{site}/{device}", device_page),
            Route("/rollout/{rollout_id}", rollout_page),
        ],
    )
    return _TokenGate(app, auth_token) if auth_token else app
