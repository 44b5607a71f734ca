"""``python -m service report``: the dashboard's curves as static plots (PNG, or HTML with the plots and
tables) for a time range, for people without a browser on the server.

The numbers are the dashboard's (:func:`service.api.dashboard_data.dashboard_data`), read from the
database. The trainer's in-memory history lives in the serving process and is not reachable from a
command; the report's trainer plots come from the saved model versions instead (their update counts
and the losses recorded when each was saved).
"""

from __future__ import annotations

import base64
import html
import io
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

from service.errors import InvalidInputError

FORMATS = (".html", ".png")
DEFAULT_SPAN = timedelta(hours=1)


def parse_time(text: str, name: str, now: datetime) -> datetime:
    """An ISO 8601 time (``2026-12-02T12:00:00Z``; without an offset it is UTC) or ``now``."""
    if text.strip().lower() == "now":
        return now
    try:
        value = datetime.fromisoformat(text.strip().replace("Z", "+00:00").replace("z", "+00:00"))
    except ValueError:
        raise InvalidInputError(
            f"{name}: {text!r} is not a time (use ISO 8601, e.g. 2026-12-02T12:00:00Z, or 'now')", field=name
        ) from None
    return value.replace(tzinfo=UTC) if value.tzinfo is None else value.astimezone(UTC)


def check_out(path: str) -> Path:
    """The output file: ``.html`` or ``.png`` in a folder that exists."""
    out = Path(path)
    if out.suffix.lower() not in FORMATS:
        raise InvalidInputError(
            f"--out: {path!r} must end in .html or .png (the report's format)", field="--out"
        )
    if not out.parent.is_dir():
        raise InvalidInputError(f"--out: the folder {str(out.parent)!r} does not exist", field="--out")
    return out


def _times(data: dict[str, Any]) -> list[datetime]:
    half = data["window"]["bucket_s"] / 2
    return [datetime.fromtimestamp(s + half, UTC) for s in data["window"]["bucket_starts"]]


def _per_version(
    ax: Any, xs: list[datetime], by_version: dict[str, list[Any]], baseline: Any, label: str
) -> None:
    for version, ys in by_version.items():
        ax.plot(xs, [float("nan") if y is None else y for y in ys], marker="o", ms=3, label=f"v{version}")
    if baseline is not None:
        ax.axhline(baseline, color="0.3", ls="--", lw=1, label=label)
    if by_version or baseline is not None:
        ax.legend(fontsize=7, ncol=2)


def figure(data: dict[str, Any], versions: list[dict[str, Any]]) -> Any:
    """The report's six plots in one matplotlib figure."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.dates as mdates
    import matplotlib.pyplot as plt

    xs = _times(data)
    fig, axes = plt.subplots(3, 2, figsize=(13, 11), constrained_layout=True)
    (a_session, a_reward), (a_rate, a_explore), (a_updates, a_losses) = axes
    base = data["baseline"]
    _per_version(a_session, xs, data["return_per_session"], base["return_per_session"], "logs (per session)")
    a_session.set_title("Session return per model version")
    _per_version(a_reward, xs, data["reward_per_decision"], base["reward_per_step"], "logs (per step)")
    a_reward.set_title("Reward per decision per model version")
    a_rate.plot(xs, data["decisions_per_s"], marker="o", ms=3)
    a_rate.set_title("Decisions per second")
    a_explore.plot(
        xs, [float("nan") if v is None else v for v in data["exploration_share"]], marker="o", ms=3
    )
    a_explore.set_title("Exploration share")
    saved = sorted(versions, key=lambda m: m["created_at"])
    times = [datetime.fromisoformat(m["created_at"]) for m in saved]
    a_updates.plot(times, [m["n_updates"] for m in saved], marker="o", ms=3, drawstyle="steps-post")
    a_updates.set_title("Trainer: updates of each saved version (at its save)")
    for name in ("loss", "j_dq", "j_n", "j_e"):
        values = [m["metrics"].get(name) for m in saved]
        if any(isinstance(v, int | float) for v in values):
            a_losses.plot(
                times,
                [v if isinstance(v, int | float) else float("nan") for v in values],
                marker="o",
                ms=3,
                label=name,
            )
    if a_losses.lines:
        a_losses.legend(fontsize=7)
    a_losses.set_title("Trainer: losses recorded with each saved version")
    since, until = (datetime.fromisoformat(data["window"][k]) for k in ("since", "until"))
    for ax in axes.flat:
        ax.set_xlim(since, until)
        ax.xaxis.set_major_formatter(mdates.DateFormatter("%m-%d %H:%M", tz=UTC))
        ax.tick_params(labelsize=7)
        ax.grid(alpha=0.3)
    fig.suptitle(f"DQfD recommender, {since:%Y-%m-%d %H:%M} – {until:%Y-%m-%d %H:%M} UTC")
    return fig


def _table(headers: list[str], rows: list[list[Any]]) -> str:
    cell = lambda v: "–" if v is None else html.escape(f"{v:.4g}" if isinstance(v, float) else str(v))  # noqa: E731
    head = "".join(f"<th>{html.escape(h)}</th>" for h in headers)
    body = "".join("<tr>" + "".join(f"<td>{cell(v)}</td>" for v in row) + "</tr>" for row in rows)
    return f"<table><tr>{head}</tr>{body}</table>"


def html_page(data: dict[str, Any], png: bytes) -> str:
    """A self-contained HTML report: the plots (an embedded PNG) and the tables."""
    per_version = [
        [v, t["decisions"], t["explored"], t["reward_per_decision"], t["sessions"], t["return_per_session"]]
        for v, t in data["per_version"].items()
    ]
    models = [
        [
            m["version"],
            m["source"],
            m["created_at"],
            m["n_updates"],
            "yes" if m["is_active"] else "",
            m["activations"],
        ]
        for m in data["models"]
    ]
    activations = [[a["activated_at"], a["version"], a["reason"]] for a in data["activations"]]
    base, cov = data["baseline"], data["coverage"]
    image = base64.b64encode(png).decode()
    return f"""<!doctype html><html lang="en"><meta charset="utf-8"><title>DQfD recommender report</title>
<style>body{{font-family:sans-serif;margin:1.5em}}table{{border-collapse:collapse;margin-bottom:1em}}
td,th{{border:1px solid #ccc;padding:2px 6px;text-align:right}}img{{max-width:100%}}</style>
<h1>DQfD recommender: {html.escape(data["window"]["since"])} – {html.escape(data["window"]["until"])}</h1>
<p>Logs' baseline: {_fmt(base["reward_per_step"])} reward per logged step, {_fmt(base["return_per_session"])}
per logged session ({base["steps"]} steps, {base["sessions"]} sessions). Catalogue coverage (the hour before
the end): {cov["distinct_items_last_hour"]} of {cov["active_items"]} active items.</p>
<img alt="the report's plots" src="data:image/png;base64,{image}">
<h2>Per model version</h2>{
        _table(
            ["version", "decisions", "explored", "reward / decision", "sessions", "return / session"],
            per_version,
        )
    }
<h2>Model versions</h2>{_table(["version", "source", "created", "updates", "active", "activations"], models)}
<p>Off-policy estimates are not computed by the service yet.</p>
<h2>Activation history</h2>{_table(["when", "version", "reason"], activations)}
</html>
"""


def _fmt(value: float | None) -> str:
    return "–" if value is None else f"{value:.3f}"


def write_report(session: Any, since: datetime, until: datetime, buckets: int, out: Path) -> dict[str, Any]:
    """Write the report for ``[since, until)`` to ``out`` (.png or .html); returns its numbers."""
    from sqlalchemy import select

    from service.api.dashboard_data import dashboard_data
    from service.store.models import ModelVersion
    from service.store.timeseries import make_window

    window = make_window(since, until, buckets)
    data = dashboard_data(session, window, until)
    versions = [
        {"created_at": r.created_at.isoformat(), "n_updates": int(r.n_updates), "metrics": r.metrics or {}}
        for r in session.execute(
            select(ModelVersion.created_at, ModelVersion.n_updates, ModelVersion.metrics).where(
                ModelVersion.created_at >= window.since, ModelVersion.created_at < window.until
            )
        )
    ]
    fig = figure(data, versions)
    buffer = io.BytesIO()
    fig.savefig(buffer, format="png", dpi=100)
    import matplotlib.pyplot as plt

    plt.close(fig)
    if out.suffix.lower() == ".png":
        out.write_bytes(buffer.getvalue())
    else:
        out.write_text(html_page(data, buffer.getvalue()), encoding="utf-8")
    return data
