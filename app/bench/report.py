"""The report: the headline ratios, the tables of bench.md and the plot of bench.png.

Apart from the measuring, so the figures are computed from points alone (the tests build
``Point``s by hand and read the tables). The two targets the service is held to are here: best
service img/s >= 0.95 x best raw img/s, and service p50 at concurrency 1 <= 1.10 x raw batch-1 p50.
"""

from __future__ import annotations

import math
from pathlib import Path
from typing import Any

from .peers import peer_tables
from .phone import phone_table
from .points import Point, fmt
from .protocols import protocol_table
from .tensors import tensor_table

TARGET_THROUGHPUT_RATIO = 0.95  # best service img/s >= 0.95 x best naive raw img/s (issue 18)
TARGET_LATENCY_RATIO = 1.10  # service p50 at concurrency 1 <= 1.10 x naive raw batch-1 p50 (issue 18)
NOISY_CORES = 0.25  # "other" CPU above this during a point: something else was running


def ratios(points: list[Point]) -> dict[str, Any]:
    """The two headline ratios, with the values they come from and whether each meets its target;
    with a batcher point, also how the throughput gap splits between batching and HTTP."""
    found: dict[str, Any] = {}
    raw = [p for p in points if p.phase == "raw"]
    batcher = next((p for p in points if p.phase == "batcher"), None)
    every_service = [p for p in points if p.phase == "service"]
    service = [p for p in every_service if p.images_per_request == 1]  # the headline ratios: one image each
    best_raw = max(raw, key=lambda p: p.images_per_s, default=None)
    best_service = max(service, key=lambda p: p.images_per_s, default=None)
    split = [p for p in points if p.phase == "split"]
    best_split = max(split, key=lambda p: p.images_per_s, default=None)
    served = next((p for p in split if best_raw and (p.batch, p.threads) == (best_raw.batch, best_raw.threads)), None)
    if best_raw and best_raw.images_per_s and served and served.images_per_s:
        found["graph"] = {
            "ratio": round(served.images_per_s / best_raw.images_per_s, 3),
            "setting": best_raw.setting,
            "served_images_per_s": served.images_per_s,
            "naive_images_per_s": best_raw.images_per_s,
        }
    if best_raw and best_raw.images_per_s and batcher and batcher.images_per_s:
        found["split"] = {
            "batcher_over_raw": round(batcher.images_per_s / best_raw.images_per_s, 3),
            "service_over_batcher": (
                round(best_service.images_per_s / batcher.images_per_s, 3) if best_service else None
            ),
            "batcher": {"setting": batcher.setting, "images_per_s": batcher.images_per_s},
        }
    if best_raw and best_service and best_raw.images_per_s:
        value = best_service.images_per_s / best_raw.images_per_s
        found["throughput"] = {
            "ratio": round(value, 3),
            "target": f">= {TARGET_THROUGHPUT_RATIO}",
            "met": value >= TARGET_THROUGHPUT_RATIO,
            "service": {"setting": best_service.setting, "images_per_s": best_service.images_per_s},
            "raw": {"setting": best_raw.setting, "images_per_s": best_raw.images_per_s},
            "per_mode": {
                mode: round(max(p.images_per_s for p in service if p.mode == mode) / best_raw.images_per_s, 3)
                for mode in dict.fromkeys(p.mode for p in service)
            },
        }
    raw_one = next((p for p in raw if p.batch == 1 and p.threads == 1 and p.p50_ms), None)
    at_one = [p for p in service if p.concurrency == 1 and p.p50_ms]
    if raw_one and at_one:
        best = min(at_one, key=lambda p: p.p50_ms or math.inf)
        value = (best.p50_ms or 0) / (raw_one.p50_ms or 1)
        found["latency"] = {
            "ratio": round(value, 3),
            "target": f"<= {TARGET_LATENCY_RATIO}",
            "met": value <= TARGET_LATENCY_RATIO,
            "service": {"setting": best.setting, "p50_ms": best.p50_ms},
            "raw": {"setting": raw_one.setting, "p50_ms": raw_one.p50_ms},
            "per_mode": {p.mode: round((p.p50_ms or 0) / (raw_one.p50_ms or 1), 3) for p in at_one},
        }
    if best_raw and best_raw.images_per_s and best_split and best_split.images_per_s:
        found["engine"] = _engine_targets(best_raw, best_split, best_service, every_service, raw_one, at_one)
    sizes = sorted({p.images_per_request for p in every_service})
    if best_raw and best_raw.images_per_s and any(size > 1 for size in sizes):
        found["per_request"] = {}
        for size in sizes:
            best = max((p for p in every_service if p.images_per_request == size), key=lambda p: p.images_per_s)
            found["per_request"][str(size)] = {
                "ratio": round(best.images_per_s / best_raw.images_per_s, 3),
                "service": {"setting": best.setting, "images_per_s": best.images_per_s,
                            "requests_per_s": round(best.images_per_s / size, 2)},
                "raw": {"setting": best_raw.setting, "images_per_s": best_raw.images_per_s},
            }
    return found

ENGINE_TARGETS = {  # issue 26: the service on its engine against the naive TF ceiling and the split one
    "service_over_split": 0.85, "service_over_raw": 1.2, "eight_per_request_over_raw": 1.35,
}
ENGINE_LATENCY_TARGET = 0.6  # service p50 at concurrency 1 <= 0.6 x the naive batch-1 sess.run p50


def _engine_targets(best_raw: Point, best_split: Point, best_service: Point | None, every_service: list[Point],
                    raw_one: Point | None, at_one: list[Point]) -> dict[str, Any]:
    """The split ceiling (preprocessing Session + the chosen engine) and the service against it."""
    found: dict[str, Any] = {
        "split": {"setting": best_split.setting, "images_per_s": best_split.images_per_s},
        "split_over_raw": round(best_split.images_per_s / best_raw.images_per_s, 3),
    }
    values: dict[str, float] = {}
    if best_service:
        values["service_over_split"] = best_service.images_per_s / best_split.images_per_s
        values["service_over_raw"] = best_service.images_per_s / best_raw.images_per_s
    eight = [p for p in every_service if p.images_per_request == 8]
    if eight:
        values["eight_per_request_over_raw"] = max(p.images_per_s for p in eight) / best_raw.images_per_s
    for name, value in values.items():
        found[name] = {"ratio": round(value, 3), "target": f">= {ENGINE_TARGETS[name]}",
                       "met": value >= ENGINE_TARGETS[name]}
    if raw_one and at_one:
        value = min(p.p50_ms or math.inf for p in at_one) / (raw_one.p50_ms or 1)
        found["latency_over_raw"] = {"ratio": round(value, 3), "target": f"<= {ENGINE_LATENCY_TARGET}",
                                     "met": value <= ENGINE_LATENCY_TARGET}
    return found


def outside(point: Point) -> float | None:
    total = point.server.get("total_ms")
    return None if total is None or point.mean_ms is None else point.mean_ms - total

def markdown_tables(points: list[Point], found: dict[str, Any]) -> str:
    lines = [
        "| phase | setting | img/s | p50 ms | p99 ms | errors | CPU measured | CPU client | CPU other |",
        "|---|---|--:|--:|--:|--:|--:|--:|--:|",
    ]
    for p in points:
        lines.append(
            f"| {p.phase} | {p.setting} | {fmt(p.images_per_s)} | {fmt(p.p50_ms, 2)} | {fmt(p.p99_ms, 2)} | {p.errors} "
            f"| {fmt(p.cpu.get('measured'), 2)} | {fmt(p.cpu.get('client'), 2)} | {fmt(p.cpu.get('other'), 2)} |"
        )
    sizes = sorted({p.images_per_request for p in points if p.phase == "service" and p.images_per_request > 1})
    if sizes:
        lines += ["", f"Rows marked N/request ({', '.join(map(str, sizes))}) send N copies of the image in one multipart "
                  "request: img/s = requests/s x N; p50/p99 are per request."]
    service = [p for p in points if p.phase == "service"]
    if service:
        lines += [
            "",
            "Where a request's time goes (server means from /metrics over the window; "
            "outside = client mean - server total: HTTP, waitress, Flask, the client):",
            "",
            "| setting | mean batch | sess.run/s | queue ms | run ms | postprocess ms | server total ms "
            "| client mean ms | outside ms |",
            "|---|--:|--:|--:|--:|--:|--:|--:|--:|",
        ]
        for p in service:
            s = p.server
            lines.append(
                f"| {p.setting} | {fmt(s.get('mean_batch'), 2)} | {fmt(s.get('runs_per_s'))} "
                f"| {fmt(s.get('queue_ms'), 2)} "
                f"| {fmt(s.get('run_ms'), 2)} | {fmt(s.get('postprocess_ms'), 2)} | {fmt(s.get('total_ms'), 2)} "
                f"| {fmt(p.mean_ms, 2)} | {fmt(outside(p), 2)} |"
            )
    lines.append("")
    if "throughput" in found:
        t = found["throughput"]
        lines.append(
            f"- service / raw throughput: **{t['ratio']:.3f}** "
            f"(target {t['target']}: {'met' if t['met'] else 'NOT met'}) = "
            f"{t['service']['images_per_s']:.1f} img/s ({t['service']['setting']}) / "
            f"{t['raw']['images_per_s']:.1f} img/s ({t['raw']['setting']}); per mode: "
            + ", ".join(f"{mode} {value:.3f}" for mode, value in t["per_mode"].items())
        )
    if "latency" in found:
        t = found["latency"]
        lines.append(
            f"- service p50 at concurrency 1 / raw batch-1 p50: **{t['ratio']:.3f}** (target {t['target']}: "
            f"{'met' if t['met'] else 'NOT met'}) = {t['service']['p50_ms']:.2f} ms ({t['service']['setting']}) / "
            f"{t['raw']['p50_ms']:.2f} ms ({t['raw']['setting']}); per mode: "
            + ", ".join(f"{mode} {value:.3f}" for mode, value in t["per_mode"].items())
        )
    if "graph" in found:
        t = found["graph"]
        lines.append(
            f"- the served graph on its engine / the naive graph on TensorFlow, raw at {t['setting']}: "
            f"**{t['ratio']:.3f}** = {t['served_images_per_s']:.1f} / {t['naive_images_per_s']:.1f} img/s "
            "(\"raw\" is the naive graph)"
        )
    if "engine" in found:
        t = found["engine"]
        text = (f"- split ceiling (preprocessing Session + engine): {t['split']['images_per_s']:.1f} img/s "
                f"({t['split']['setting']}) = **{t['split_over_raw']:.3f}** x the naive raw ceiling")
        for name, label in (("service_over_split", "service / split ceiling"),
                            ("service_over_raw", "service / naive raw"),
                            ("eight_per_request_over_raw", "8 per request / naive raw"),
                            ("latency_over_raw", "p50 at c=1 / naive batch-1 p50")):
            if name in t:
                text += f"; {label} **{t[name]['ratio']:.3f}** ({t[name]['target']}: {'met' if t[name]['met'] else 'NOT met'})"
        lines.append(text)
    if "split" in found:
        t = found["split"]
        text = (
            f"- where the throughput goes: in-process batcher / raw best **{t['batcher_over_raw']:.3f}** "
            f"({t['batcher']['images_per_s']:.1f} img/s, {t['batcher']['setting']}: batching alone)"
        )
        if t["service_over_batcher"] is not None:
            text += f"; service / in-process batcher **{t['service_over_batcher']:.3f}** (HTTP, waitress, Flask)"
        lines.append(text)
    for size, t in found.get("per_request", {}).items():
        lines.append(
            f"- best service img/s at {size} image{'s' if size != '1' else ''} per request / best raw img/s: "
            f"**{t['ratio']:.3f}** = {t['service']['images_per_s']:.1f} img/s "
            f"({t['service']['requests_per_s']:.1f} requests/s, {t['service']['setting']}) / "
            f"{t['raw']['images_per_s']:.1f} img/s ({t['raw']['setting']})"
        )
    protocols = protocol_table(points)
    if protocols:
        lines += ["Protocols (one server, the same image; client processes send each protocol's request bytes):",
                  "", protocols]
    tensors = tensor_table(points)
    if tensors:
        lines += ["", "Tensors (one server, the model's own tensor; rows/s, each answer checked against in-process):",
                  "", tensors]
    for extra in (peer_tables(points), phone_table(points)):
        if extra:
            lines += ["", extra]
    noisy = [f"{p.phase} {p.setting} ({p.cpu['other']:.2f})" for p in points if p.cpu.get("other", 0) > NOISY_CORES]
    if noisy:
        lines.append(f"- noisy: other processes kept more than {NOISY_CORES} cores busy during " + "; ".join(noisy))
    return "\n".join(lines) + "\n"

def plot(points: list[Point], found: dict[str, Any], title: str, path: Path) -> bool:
    """Throughput and p50 latency vs concurrency per mode and peer, raw ceiling as lines; False without
    matplotlib."""
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        return False
    figure, (left, right) = plt.subplots(1, 2, figsize=(12, 4.8))
    for mode, size in dict.fromkeys((p.mode, p.images_per_request) for p in points if p.phase == "service"):
        series = sorted(
            (p for p in points if p.phase == "service" and p.mode == mode and p.images_per_request == size),
            key=lambda p: p.concurrency,
        )
        xs = [p.concurrency for p in series]
        name = mode if size == 1 else f"{mode}, {size}/request"  # latency is per request
        (line,) = left.plot(xs, [p.images_per_s for p in series], marker="o", label=f"service, {name}")
        color = line.get_color()
        right.plot(xs, [p.p50_ms for p in series], marker="o", color=color, label=f"service p50, {name}")
        right.plot(xs, [p.p99_ms for p in series], marker=".", linestyle=":", color=color, label=f"service p99, {name}")
    for name in dict.fromkeys(p.mode for p in points if p.phase == "peer"):
        series = sorted((p for p in points if p.phase == "peer" and p.mode == name), key=lambda p: p.concurrency)
        xs = [p.concurrency for p in series]
        (line,) = left.plot(xs, [p.images_per_s for p in series], marker="s", linestyle="--", label=f"peer: {name}")
        color = line.get_color()
        right.plot(xs, [p.p50_ms for p in series], marker="s", linestyle="--", color=color, label=f"{name} p50")
        right.plot(xs, [p.p99_ms for p in series], marker=".", linestyle=":", color=color, label=f"{name} p99")
    if "split" in found:
        batcher = found["split"]["batcher"]
        left.axhline(batcher["images_per_s"], color="green", linestyle="-.", label=f"batcher ({batcher['setting']})")
    if "throughput" in found:
        raw = found["throughput"]["raw"]
        left.axhline(raw["images_per_s"], color="black", linestyle="--", label=f"raw best ({raw['setting']})")
        left.axhline(
            raw["images_per_s"] * TARGET_THROUGHPUT_RATIO,
            color="gray",
            linestyle=":",
            label=f"{TARGET_THROUGHPUT_RATIO} x raw best",
        )
    if "latency" in found:
        raw = found["latency"]["raw"]
        right.axhline(raw["p50_ms"], color="black", linestyle="--", label=f"raw p50 ({raw['setting']})")
    ticks = sorted({p.concurrency for p in points if p.phase in ("service", "peer")})
    for axis, label in ((left, "images / s"), (right, "latency ms")):
        axis.set_xscale("log", base=2)
        axis.set_xticks(ticks, [str(t) for t in ticks])
        axis.set_xlabel("concurrent connections")
        axis.set_ylabel(label)  # latency: per request, whatever its number of images
        axis.grid(True, alpha=0.3)
        axis.legend(fontsize=8)
    right.set_yscale("log")
    left.set_title("throughput")
    right.set_title("latency")
    figure.suptitle(title)
    figure.tight_layout()
    figure.savefig(path, dpi=110)
    plt.close(figure)
    return True
