"""The benchmark's report: `results.md` and `results.png` from the results.

Pure functions of the results dictionary that `run.py` writes to
`results.json` (no measuring here), so that a report can be made again from
a stored run:

    python benchmarks/report.py benchmarks/results/results.json
"""

import sys

import numpy as np

from networks import BASE
from networks import CA
from networks import NO_CA
from networks import SE_REDUCTION
from summary import TARGET_RATIO


def _fmt_ms(stats):
    return (f"{stats['median_ms']:.2f} "
            f"[{stats['p25_ms']:.2f}-{stats['p75_ms']:.2f}]")


def _ratio(row):
    return (f"**{row['ratio']:.3f}** "
            f"[{row['ratio_p25']:.2f}-{row['ratio_p75']:.2f}]")


def _cpu(row):
    value = row.get("cpu_ratio")
    return "" if value is None else f"{value:.3f}"


def _load(values):
    if not values:
        return "?"
    return "/".join(f"{v:.1f}" for v in values)


# --------------------------------------------------------------------------
# Markdown: one function per section, each a list of lines
# --------------------------------------------------------------------------


def header(result):
    """The title, the command and its settings, the machine, the legend."""
    cfg = result["config"]
    m = result["machine"]
    isa = ", ".join(k for k, v in m.get("isa", {}).items() if v) or "unknown"
    return [
        "# Benchmark results",
        "",
        f"`{result['command']}` — alpha {cfg['alpha']}, {cfg['size']}x"
        f"{cfg['size']}, random weights; {cfg['repeats']} timed runs "
        f"({cfg['heavy_repeats']} for large batches and training, "
        f"{cfg.get('slowest_repeats', cfg['heavy_repeats'])} for XLA at the "
        f"large batch and JAX training) after up to {cfg['warmup']} warm-up "
        "runs, models interleaved; "
        f"{result.get('wall_seconds', 0):.0f} s in all.",
        "",
        f"Machine: {m.get('cpu_model')} ({m.get('cpu_count')} cores; "
        f"{isa}); load average {_load(m.get('loadavg_start'))} at the "
        f"start, {_load(m.get('loadavg_end'))} at the end (1/5/15 min). "
        "Versions: "
        + ", ".join(f"{k} {v}" for k, v in m.get("versions", {}).items()
                    if v) + ".",
        "",
        "Times in ms: median [25th-75th percentile] of the wall clock. "
        f"Ratio: {CA} / {BASE} medians [quartiles of the per-round ratios]; "
        "CPU ratio: the same with the process CPU time (all threads), "
        "which leaves out time spent waiting for a core. Absolute times "
        "are this machine's; the ratios are what carry over.",
        "",
    ]


def counts_section(result):
    counts = result.get("counts") or {}
    if not counts:
        return []
    lines = ["## Multiply-adds and parameters", "",
             "| model | MACs / image | params (total) | trainable |",
             "|---|---|---|---|"]
    for name in (CA, BASE, NO_CA):
        if name in counts:
            c = counts[name]
            lines.append(f"| {name} | {c['macs']:,} | {c['params']:,} | "
                         f"{c['trainable_params']:,} |")
    ca = counts[CA]
    lines += ["", f"MAC ratio CA/base: {counts['mac_ratio']:.4f}; CA's "
              f"own convolutions: {ca['attention_macs']:,} MACs "
              f"in {ca['attention_layers']} layers, plus "
              f"{ca['attention_elementwise']:,} element-wise "
              "operations (pools and gate products) per image."]
    ref = result.get("reference_224") or {}
    if ref.get(CA):
        lines += ["", f"At alpha 1.0, 224x224: {CA} "
                  f"{ref[CA]['macs']:,} MACs, {BASE} "
                  f"{ref[BASE]['macs']:,} (ratio "
                  f"{ref['mac_ratio']:.4f}; paper: 300M and 310M)."]
    return lines + [""]


def keras_section(result):
    if not result["keras"]:
        return []
    lines = ["## Keras inference", "",
             f"| backend | engine | batch | {CA} ms | {BASE} ms | ratio |"
             " CPU ratio | CA GFLOP/s | CA images/s |",
             "|---|---|---|---|---|---|---|---|---|"]
    for r in result["keras"]:
        a, b = r["models"][CA], r["models"][BASE]
        lines.append(
            f"| {r['backend']} | {r['engine']} | {r['batch']} | "
            f"{_fmt_ms(a)} | {_fmt_ms(b)} | {_ratio(r)} | {_cpu(r)} | "
            f"{a.get('gflops', 0):.1f} | {a['images_per_s']:.1f} |")
    return lines + [""]


def train_section(result):
    if not result["train"]:
        return []
    lines = ["## Training step (forward + backward + SGD)", "",
             f"| backend | batch | {CA} ms | {BASE} ms | ratio | "
             "CPU ratio | CA GFLOP/s (3x forward MACs) |",
             "|---|---|---|---|---|---|---|"]
    for r in result["train"]:
        a, b = r["models"][CA], r["models"][BASE]
        lines.append(
            f"| {r['backend']} | {r['batch']} | {_fmt_ms(a)} | "
            f"{_fmt_ms(b)} | {_ratio(r)} | {_cpu(r)} | "
            f"{a.get('gflops', 0):.1f} |")
    return lines + [""]


def _layer_line(r, key, t):
    ca, se = t["coordinate_attention"], t["se_block"]
    one = t["elementwise_pass"]
    engine = "Keras" if key == "keras" else "LiteRT"
    return (f"| {r['backend']} | {engine} | {tuple(r['shape'])} | "
            f"{r['count']} | {r['macs']['coordinate_attention']:,} | "
            f"{ca['median_ms']:.3f} | {se['median_ms']:.3f} | "
            f"{one['median_ms']:.3f} | "
            f"{ca['median_ms'] / one['median_ms']:.1f} |")


def _layer_summary_line(s):
    return (f"- {s['backend']} ({s['network_engine']}): CA holds "
            f"{100 * s['attention_macs_share']:.1f} % of the MACs; its "
            f"layers alone add up to {s['sum_of_layers_ms']:.2f} ms = "
            f"{100 * s['layers_share_of_network_time']:.1f} % of the "
            f"network's {s['network_ms']:.2f} ms (SE blocks at the same "
            f"places: {s['se_sum_of_layers_ms']:.2f} ms; one CA layer "
            f"costs {s['elementwise_passes_equivalent']:.1f} element-wise"
            " passes over its feature map); network difference "
            f"CA - base: {100 * s['network_difference_share']:.1f} %.")


def layer_section(result):
    if not result["layer"]:
        return []
    lines = ["## The layer alone (batch 1)", "",
             "Per feature-map shape of the network (x: how many CA "
             "layers have it): coordinate attention, a squeeze-and-"
             f"excitation block (Keras layers, reduction {SE_REDUCTION})"
             " and one element-wise pass (`x * 0.5`) over the same map. "
             "Keras: wall clock; LiteRT: 1 thread, CPU time.", "",
             "| backend | engine | shape (H, W, C) | x | CA MACs | "
             "CA ms | SE ms | 1 pass ms | CA / pass |",
             "|---|---|---|---|---|---|---|---|---|"]
    for r in result["layer"]:
        lines += [_layer_line(r, key, t) for key, t in r["timings"].items()]
    lines.append("")
    lines += [_layer_summary_line(s) for s in result["layer_summary"]]
    return lines + [""]


def _litert_line(r):
    a, b = r["models"][CA], r["models"][BASE]
    no = r.get("cpu_ratio_vs_no_attention")
    outside = ", ".join(f"{k} x{v}" for k, v in
                        a["delegate"]["outside_delegate"].items())
    return (f"| {r['kind']} | {r['threads']} | {_fmt_ms(a)} | "
            f"{_fmt_ms(b)} | {_ratio(r)} | {_cpu(r)} | "
            f"{'' if no is None else f'{no:.3f}'} | "
            f"{a['file_bytes'] / 1e6:.2f} | {b['file_bytes'] / 1e6:.2f} | "
            f"{a['delegate']['partitions']} | {outside or '-'} |")


def litert_section(result):
    if not result["litert"]:
        return []
    lines = ["## LiteRT (XNNPACK), batch 1", "",
             f"| kind | threads | {CA} ms | {BASE} ms | ratio | "
             f"CPU ratio | CA / {NO_CA} (CPU) | CA MB | base MB | "
             "CA partitions | CA ops outside XNNPACK |",
             "|---|---|---|---|---|---|---|---|---|---|---|"]
    lines += [_litert_line(r) for r in result["litert"]]
    return lines + [""]


def torch_section(result):
    if not result["torch"]:
        return []
    lines = ["## PyTorch eager (the authors' network) vs LiteRT float",
             "", f"{CA} at batch 1 in both; the PyTorch network is "
             "`benchmarks/torch_reference.py` (random weights, eval mode, "
             "`torch.inference_mode`).", "",
             "| threads | PyTorch eager ms | LiteRT float ms | "
             "LiteRT / PyTorch | CPU ratio |", "|---|---|---|---|---|"]
    for r in result["torch"]:
        lines.append(
            f"| {r['threads']} | {_fmt_ms(r['models']['pytorch_eager'])}"
            f" | {_fmt_ms(r['models']['litert_float'])} | {_ratio(r)} | "
            f"{_cpu(r)} |")
    return lines + [""]


def targets_section(result):
    if not result.get("targets"):
        return []
    lines = ["## Targets (issue 8)", "",
             "| target | wall | CPU time | limit | met (wall / CPU) |",
             "|---|---|---|---|---|"]
    for t in result["targets"]:
        cpu = "" if t["value_cpu"] is None else f"{t['value_cpu']:.3f}"
        met = "yes" if t["met"] else "no"
        if t["met_cpu"] is not None:
            met += " / " + ("yes" if t["met_cpu"] else "no")
        lines.append(f"| {t['target']} | {t['value']:.3f} | {cpu} | "
                     f"{t['limit']} | {met} |")
    return lines + [""]


def errors_section(result):
    if not result["errors"]:
        return []
    lines = ["## Errors", ""]
    for e in result["errors"]:
        lines.append(f"- {e.get('backend')} {e['section']}: {e['error']}")
    return lines + [""]


SECTIONS = (header, counts_section, keras_section, train_section,
            layer_section, litert_section, torch_section, targets_section,
            errors_section)


def markdown(result):
    """`results.md`: the sections in order, those without rows left out."""
    lines = []
    for section in SECTIONS:
        lines += section(result)
    return "\n".join(lines)


# --------------------------------------------------------------------------
# Plot
# --------------------------------------------------------------------------


def _ratio_rows(result):
    """(label, row) of every CA / base comparison, in the table's order."""
    short = {"tensorflow": "TF", "jax": "JAX"}
    rows = [(f"{short[r['backend']]} {r['engine']} b{r['batch']}", r)
            for r in result["keras"]]
    rows += [(f"{short[r['backend']]} train step b{r['batch']}", r)
             for r in result["train"]]
    rows += [(f"LiteRT {r['kind']} {r['threads']} thr", r)
             for r in result["litert"]]
    return rows


def _ratio_panel(ax, result, rows):
    """Left: the latency ratios, quartile bars, CPU-time dots, targets."""
    labels = [label for label, _ in rows]
    ratios = [r["ratio"] for _, r in rows]
    lows = [r["ratio_p25"] for _, r in rows]
    highs = [r["ratio_p75"] for _, r in rows]
    cpus = [r.get("cpu_ratio", np.nan) for _, r in rows]
    y = np.arange(len(labels))
    err = np.array([np.subtract(ratios, lows), np.subtract(highs, ratios)])
    ax.barh(y, ratios, xerr=np.clip(err, 0, None), color="#4c72b0",
            label="wall clock")
    ax.plot(cpus, y, "o", color="orange", ms=5, label="CPU time")
    ax.axvline(1.0, color="black", lw=0.8)
    ax.axvline(TARGET_RATIO, color="red", ls="--", lw=1,
               label=f"target {TARGET_RATIO}")
    mac_ratio = (result.get("counts") or {}).get("mac_ratio")
    if mac_ratio:
        ax.axvline(mac_ratio, color="green", ls=":", lw=1,
                   label=f"MAC ratio {mac_ratio:.3f}")
    ax.set_yticks(y, labels, fontsize=8)
    ax.invert_yaxis()
    ax.set_xlabel(f"latency {CA} / {BASE} (median; bars: quartiles of "
                  "the per-round ratios)", fontsize=8)
    ax.legend(fontsize=7, loc="lower left", bbox_to_anchor=(0.0, 1.0),
              ncol=4, frameon=False)


def _latency_panel(ax, result):
    """Right: LiteRT and PyTorch milliseconds at the first thread count."""
    threads = result["config"]["threads"][0]
    names, values = [], []
    for r in result["litert"]:
        if r["threads"] == threads:
            for model in (CA, BASE):
                names.append(f"{r['kind']} {model}")
                values.append(r["models"][model]["median_ms"])
    for r in result["torch"]:
        if r["threads"] == threads:
            names.append(f"PyTorch eager {CA}")
            values.append(r["models"]["pytorch_eager"]["median_ms"])
    if not names:
        ax.axis("off")
        return
    yy = np.arange(len(names))
    ax.barh(yy, values, color="#dd8452")
    ax.set_yticks(yy, names, fontsize=8)
    ax.invert_yaxis()
    ax.set_xlabel(f"ms, batch 1, {threads} thread(s) (this machine)")


def plot(result, path):
    """`results.png`: the ratios (left) and the batch-1 latencies (right)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    rows = _ratio_rows(result)
    fig, axes = plt.subplots(1, 2, figsize=(13, 0.35 * max(len(rows), 6)
                                            + 1.5))
    _ratio_panel(axes[0], result, rows)
    _latency_panel(axes[1], result)
    fig.suptitle(f"{CA} vs {BASE}: alpha {result['config']['alpha']}, "
                 f"{result['config']['size']}px, "
                 f"{result['machine'].get('cpu_model', '')}", fontsize=9)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def main(argv=None):
    """Writes `results.md` (and `results.png`) next to a `results.json`."""
    import json
    import os

    argv = sys.argv[1:] if argv is None else argv
    if len(argv) != 1:
        print("usage: python benchmarks/report.py RESULTS_JSON",
              file=sys.stderr)
        return 2
    with open(argv[0]) as f:
        result = json.load(f)
    folder = os.path.dirname(os.path.abspath(argv[0]))
    with open(os.path.join(folder, "results.md"), "w") as f:
        f.write(markdown(result))
    plot(result, os.path.join(folder, "results.png"))
    return 0


if __name__ == "__main__":
    sys.exit(main())
