"""A benchmark report as an aligned text table and as a Markdown page fragment, each with the ratios in
words."""
from __future__ import annotations

TABLE_HEADER = ["", "batch", "s/epoch", "samples/s", "GFLOP/s", "% peak", "vs numpy", "compile s"]


def _table(report: dict) -> list[list[str]]:
    """The report's rows as the cells of ``TABLE_HEADER``."""
    numpy_s = report["rows"][0]["seconds_per_model_epoch"]
    return [[r["name"], str(r["batch_size"]),
             f"{r['seconds_per_model_epoch']:.3f}" + ("/model" if r["models"] > 1 else ""),
             f"{r['samples_per_second']:,.0f}", f"{r['gflops']:.1f}", f"{r['fraction_of_peak'] * 100:.0f}%",
             f"{numpy_s / r['seconds_per_model_epoch']:.1f}x",
             "-" if r["compile_seconds"] is None else f"{r['compile_seconds']:.2f}"] for r in report["rows"]]


def _findings(report: dict) -> list[str]:
    """The ratios, one sentence each."""
    q = report["ratios"]
    return [f"fused epoch: {q['fused_speedup_vs_numpy']:.2f}x the numpy notebook, "
            f"{q['fused_speedup_vs_jit_loop']:.2f}x the jitted-step loop; its matmuls alone take "
            f"{q['fused_matmul_share'] * 100:.0f}% of its time",
            f"chunked engine: {q['chunked_vs_fused']:.3f}x the fused epoch's time in 4 chunks, "
            f"{q['one_chunk_vs_fused']:.3f}x in one; a user's loss through jaxmlp.train: "
            f"{q['user_loss_vs_builtin']:.3f}x the built-in step's epoch",
            f"sweep: {q['sweep_cost_per_model_vs_single']:.2f}x a single run (one chunk an epoch) and "
            f"{q['sweep_cost_per_model_vs_fused']:.2f}x a fused epoch per model-epoch (floor here: "
            f"{q['sweep_cost_floor_at_peak']:.2f}x, a sweep at 100% of the matmul peak)",
            f"sweep with one wide first layer (a prototype): {q['wide_sweep_cost_per_model_vs_fused']:.2f}x a "
            f"fused epoch per model-epoch",
            f"large batch: {q['large_batch_fraction_of_peak'] * 100:.0f}% of the matmul peak; its matmuls alone "
            f"take {q['large_batch_matmul_share'] * 100:.0f}% of its time",
            f"recompilations while timed: {report['recompiles_while_timed']}",
            f"peak RSS: {report['peak_rss_mb']:.0f} MiB"]


def format_report(report: dict) -> str:
    """The report as an aligned text table plus the ratios."""
    m = report["machine"]
    lines = [f"machine: {m['cpu']}, {m['cores']} cores, {m['backend']} ({m['device']}), jax {m['jax']}",
             f"data: {report['data']}; {report['train_examples']} examples; model "
             f"{'-'.join(map(str, report['layer_sizes']))}; {report['flops_per_epoch'] / 1e9:.1f} GFLOP per epoch",
             f"matmul peak ({report['matmul_peak_size']}^2 float32): {report['matmul_peak_gflops']:.1f} GFLOP/s", ""]
    table = _table(report)
    widths = [max(len(h), *(len(t[i]) for t in table)) for i, h in enumerate(TABLE_HEADER)]
    fmt = lambda cells: "  ".join(c.ljust(w) if i == 0 else c.rjust(w)  # noqa: E731
                                  for i, (c, w) in enumerate(zip(cells, widths)))
    lines += [fmt(TABLE_HEADER), *map(fmt, table)]
    if report.get("persistent_compile_cache"):
        lines.append(f"(compile s may be loads from the persistent cache {report['persistent_compile_cache']}; "
                     f"JAXMLP_COMPILE_CACHE=0 times cold compiles)")
    return "\n".join([*lines, "", *_findings(report)])


def format_markdown(report: dict, date: str | None = None) -> str:
    """The report as a Markdown page fragment: the machine and software it ran on (CPU model, cores, GPU,
    jax/jaxlib/numpy versions), the date, the settings, the table and the ratios. No paths: where the
    data was read from is left out.

    Args:
        report: ``run_bench``'s report.
        date: the date to stamp (default: today, UTC, as YYYY-MM-DD).
    """
    import datetime

    m = report["machine"]
    date = date or datetime.datetime.now(datetime.timezone.utc).date().isoformat()
    gpu = f"{m['device']} x {m['device_count']}" if m["backend"] == "gpu" else "none"
    data = report["data"].split(" from ")[0].split(" (")[0]  # "mnist from /a/path" -> "mnist"
    sizes = "-".join(map(str, report["layer_sizes"]))
    cell = lambda text: text.replace("|", "\\|")  # noqa: E731
    lines = ["<!-- Written by `jaxmlp bench --markdown FILE`; run it again rather than edit this. -->", "",
             "| | |", "| --- | --- |",
             f"| date | {date} |", f"| CPU | {cell(m['cpu'])}, {m['cores']} cores |", f"| GPU | {cell(gpu)} |",
             f"| JAX backend | {m['backend']}, {m['device_count']} device(s) |",
             f"| load average | {m.get('load_average') or 'unknown'} at the end (1 minute; above {m['cores']}, "
             f"other work shared the CPU) |",
             f"| software | Python {m['python']}, jax {m['jax']}, jaxlib {m.get('jaxlib', '?')}, numpy {m['numpy']}, "
             f"{m['system']} |",
             f"| data | {data}, {report['train_examples']:,} training examples |",
             f"| model | {sizes}, SGD lr {report['lr']:g}; {report['flops_per_epoch'] / 1e9:.1f} GFLOP of matmuls "
             f"an epoch |",
             f"| matmul peak | {report['matmul_peak_gflops']:.1f} GFLOP/s (float32, {report['matmul_peak_size']}^2) |",
             f"| timing | {report['timing']} |",
             "| compile s | " + ("some programs loaded from the persistent compile cache (JAXMLP_COMPILE_CACHE=0 "
                                "times cold compiles)" if report.get("persistent_compile_cache") else
                                "cold: every program compiled in this process") + " |", "",
             "| row | " + " | ".join(TABLE_HEADER[1:]) + " |", "| --- |" + " ---: |" * (len(TABLE_HEADER) - 1)]
    lines += ["| " + " | ".join(cell(c) for c in row) + " |" for row in _table(report)]
    return "\n".join([*lines, "", *(f"- {line}" for line in _findings(report)), ""])
