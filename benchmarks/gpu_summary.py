"""The summary of benchmarks/gpu_check.sh: one table of its steps (exit code, seconds, result), the gpu tests'
outcome, every benchmark table, and the issue's targets read from them (reported, not asserted).

  python benchmarks/gpu_summary.py /tmp/gpu-check
"""
from __future__ import annotations

import os
import re
import sys

TARGETS = "scorer >= 60% of the FLOP floor (MFU of the fused row) and >= Liger's CE-only throughput; " \
          "pretraining >= 45% MFU at 124M"


def tables(text: str) -> list[tuple[str, list[dict[str, str]]]]:
    """The markdown tables of a benchmark's output: ``[(title line, rows as dicts)]``."""
    out, lines = [], text.splitlines()
    i = 0
    while i < len(lines):
        if lines[i].startswith("|") and i + 1 < len(lines) and set(lines[i + 1].replace("|", "").strip()) <= set("-: "):
            header = [c.strip() for c in lines[i].strip("|").split("|")]
            title = next((lines[j] for j in range(i - 1, -1, -1) if lines[j].strip()), "")
            rows, i = [], i + 2
            while i < len(lines) and lines[i].startswith("|"):
                rows.append(dict(zip(header, (c.strip() for c in lines[i].strip("|").split("|")))))
                i += 1
            out.append((title, rows))
        else:
            i += 1
    return out


def _number(text: str) -> float:
    m = re.search(r"-?[\d,]*\.?\d+", text or "")
    return float(m.group(0).replace(",", "")) if m else float("nan")


def targets(logs: dict[str, str]) -> list[str]:
    lines = []
    for title, rows in tables(logs.get("bench_scorer", "")):
        fused = [r for r in rows if "fused" in r.get("path", "")]
        liger = [r for r in rows if "liger" in r.get("path", "").lower()]
        if fused:
            f = max(fused, key=lambda r: _number(r.get("tokens/s", "")))
            line = f"scorer ({title.strip()[:60]}): fused MFU {f.get('MFU', '?')} (target >= 60%)"
            if liger:
                ratio = _number(f.get("tokens/s", "")) / _number(liger[0].get("tokens/s", ""))
                line += f"; fused / Liger CE tokens/s = {ratio:.2f} (target >= 1.00)"
            lines.append(line)
    for title, rows in tables(logs.get("bench_train", "")):
        for r in rows:
            if r.get("path", "").startswith("proxy-exp DeepSpeed"):
                lines.append(f"pretraining {title.split(':')[0]} {r['path']}: MFU {r.get('MFU', '?')} (target >= 45%)")
    return lines


def main(out: str) -> None:
    steps = [line.split() for line in open(os.path.join(out, "steps.txt")) if line.strip()]
    logs = {name: open(os.path.join(out, f"{name}.log"), errors="replace").read() for name, *_ in steps
            if os.path.exists(os.path.join(out, f"{name}.log"))}
    device = open(os.path.join(out, "device.txt")).read().strip() if os.path.exists(os.path.join(out, "device.txt")) \
        else "?"
    print(f"# GPU check\n\ndevice: {device}\n")
    print("| step | exit | seconds | result |\n|---|---|---|---|")
    for name, rc, seconds in steps:
        last = [line for line in logs.get(name, "").splitlines() if line.strip()]
        result = next((line for line in reversed(last) if re.search(r"\d+ (passed|failed|error)", line)), "")
        if not result:  # a killed step may have printed nothing at all
            result = ("timed out" if rc in ("124", "137") else "ok" if rc == "0"
                      else last[-1][:100] if last else "no output")
        print(f"| {name} | {rc} | {seconds} | {result.strip()[:120]} |")
    print()
    for line in logs.get("gpu_tests", "").splitlines():
        if "32k-token trace" in line:  # printed by the test, after pytest's own "path::test " on the same line
            print(f"- {line[line.index('32k-token trace'):].removesuffix('PASSED').strip()}")
        elif line.startswith(("FAILED", "ERROR")):
            print(f"- {line}")
    print(f"\n## Targets ({TARGETS})\n")
    print("\n".join(f"- {line}" for line in targets(logs)) or "- (no benchmark table to read)")
    for name in ("bench_scorer", "bench_scorer_32k", "bench_train", "bench_small_models"):
        text = logs.get(name, "")
        device_line = next((line for line in text.splitlines() if line.startswith("device:")), "")
        print(f"\n## {name}\n\n{device_line}\n")
        for title, rows in tables(text):
            if not rows:
                continue
            print(title)
            cols = list(rows[0])
            print("| " + " | ".join(cols) + " |\n|" + "---|" * len(cols))
            for r in rows:
                print("| " + " | ".join(r.get(c, "") for c in cols) + " |")
            print()


if __name__ == "__main__":
    main(sys.argv[1] if len(sys.argv) > 1 else "/tmp/gpu-check")
