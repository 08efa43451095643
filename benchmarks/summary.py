"""Headline figures of a run and how they compare with the project's targets."""
from __future__ import annotations


def summarise(res: dict) -> dict:
    """Headline figures from one main-scan result (`bench.bench_scan`)."""
    out: dict = {}
    st = res.get("stitch") or {}
    if st.get("returncode") == 0:
        t = st["result"]["timings"]
        out["ours_wall_s"] = st["wall_s"]
        out["ours_in_process_s"] = st["result"]["in_process_s"]
        out["ours_reg_plus_fusion_s"] = t["registration"] + t["fusion"]
        out["ours_cpu_s"] = st["cpu_s"]
        out["ours_rss_mb"] = st["peak_rss_mb"]
        out["focus_check_share"] = t.get("focus check", 0.0) / out["ours_in_process_s"]
    fl = res.get("floor") or {}
    if fl.get("returncode") == 0 and "ours_wall_s" in out:
        out["floor_s"] = fl["result"]["floor_s"]
        out["floor_wall_s"] = fl["wall_s"]
        out["ratio_command_to_floor"] = out["ours_wall_s"] / out["floor_wall_s"]
        out["ratio_total_to_floor"] = out["ours_in_process_s"] / out["floor_s"]
        out["ratio_reg_fusion_to_floor"] = out["ours_reg_plus_fusion_s"] / out["floor_s"]
    su = res.get("startup") or {}
    if su.get("returncode") == 0:
        out["help_s"] = su["result"]["help_s"]
    again = res.get("rerun") or {}
    if again.get("returncode") == 0 and "ours_wall_s" in out:
        out["rerun_wall_s"] = again["wall_s"]
        out["rerun_registration_s"] = again["result"]["timings"]["registration"]
        out["first_registration_s"] = st["result"]["timings"]["registration"]
    ofs = res.get("ofs") or {}
    if ofs.get("returncode") == 0 and "ours_wall_s" in out:
        out["ofs_wall_s"] = ofs["wall_s"]
        out["ofs_over_ours"] = ofs["wall_s"] / out["ours_wall_s"]
        out["ours_over_ofs"] = out["ours_wall_s"] / ofs["wall_s"]
    idx = (res.get("stages") or {}).get("index") or {}
    if idx.get("returncode") == 0:
        out["index_warm_s"] = idx["result"]["warm_s"]
    return out


def targets(res: dict, s: dict, memory: list[dict] | None = None) -> list[dict]:
    """Each target with what this run measured and whether it is met (yes / no / borderline / ?)."""
    out = []
    if "ratio_command_to_floor" in s:
        v = s["ratio_command_to_floor"]
        out.append({"target": "whole `ofm-tiling stitch` command (defaults, everything a user gets) ≤ 2.0× the floor",
                    "measured": f"{v:.2f}×", "met": "yes" if v <= 2.0 else "no"})
    if "focus_check_share" in s:
        v = s["focus_check_share"]
        out.append({"target": "focus check ≤ 10 % of a default run", "measured": f"{100 * v:.1f} %",
                    "met": "yes" if v <= 0.10 else "no"})
    if "help_s" in s:
        v = s["help_s"]
        out.append({"target": "`ofm-tiling --help` under 0.3 s", "measured": f"{v:.3f} s",
                    "met": "yes" if v < 0.3 else "no"})
    if "ratio_reg_fusion_to_floor" in s:
        v = s["ratio_reg_fusion_to_floor"]
        out.append({"target": "registration + pyramidal OME-TIFF ≤ 2.5× the floor",
                    "measured": f"{v:.2f}× (whole stitch incl. collect: {s['ratio_total_to_floor']:.2f}×)",
                    "met": "yes" if v <= 2.5 else "no"})
    else:
        out.append({"target": "registration + pyramidal OME-TIFF ≤ 2.5× the floor", "measured": "not measured",
                    "met": "?"})
    if "ofs_over_ours" in s:
        v = s["ofs_over_ours"]
        out.append({"target": "≥ 10× faster than openflexure-stitching on the same tiles",
                    "measured": f"{v:.1f}× (wall)", "met": "yes" if v >= 10 else "no"})
    else:
        ofs = res.get("ofs")
        why = "openflexure-stitching not run" if not ofs else "openflexure-stitching failed"
        out.append({"target": "≥ 10× faster than openflexure-stitching on the same tiles", "measured": why, "met": "?"})
    mem = [r for r in (memory or []) if r.get("returncode") == 0]
    if mem:
        peak = max(r["rss_mb"] for r in mem)
        growth = max(r["rss_mb"] for r in mem) - min(r["rss_mb"] for r in mem)
        grown = max(r["mosaic_mb"] for r in mem) - min(r["mosaic_mb"] for r in mem)
        wide = max(int(r["grid"].split("x")[0]) for r in mem)
        out.append({"target": f"peak memory does not grow with the mosaic (by < 1/4 of what the mosaic grows); "
                              f"{wide} tiles wide within 2 GB",
                    "measured": f"{peak:.0f} MB at most; +{growth:.0f} MB for a mosaic {grown:.0f} MiB larger",
                    "met": "yes" if peak < 2048 and growth < 0.25 * grown else "no"})
    if "index_warm_s" in s:
        v = s["index_warm_s"]
        n = (res.get("stages") or {}).get("index", {}).get("result", {})
        per_position = n.get("images", 0) // max(n.get("positions", 1), 1)
        out.append({"target": "collect indexing of 100 positions × 9 images well under 1 s (warm cache)",
                    "measured": f"{v:.3f} s for {n.get('positions')} × {per_position}",
                    "met": "yes" if v < 0.5 else ("borderline" if v < 1 else "no")})
    return out
