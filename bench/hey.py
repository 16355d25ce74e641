"""Reading `hey`'s text report, for the bench/ scripts.

As a module: `parse(text)` -> Report (requests/s, latency percentiles in ms, answers by
status code, connection errors). As a command, one markdown table row:
    python3 bench/hey.py LABEL... < report
prints `| LABEL... | req/s | p50 ms | p99 ms | non-200 |` (non-200 counts connection
errors too).
"""
import re
import sys
from typing import NamedTuple


class Report(NamedTuple):
    requests_per_sec: float
    latency_ms: dict  # percentile -> milliseconds
    status_codes: dict  # status code -> responses
    errors: int  # connection errors (timeouts, resets)

    def non_200(self):
        return sum(n for code, n in self.status_codes.items() if code != 200) + self.errors


def parse(text):
    rps = float(re.search(r"Requests/sec:\s+([\d.]+)", text).group(1))
    # hey prints "50%% in 0.0123 secs" (sic).
    pct = {int(p): float(s) * 1000 for p, s in re.findall(r"(\d+)%+ in ([\d.]+) secs", text)}
    codes = {int(c): int(n) for c, n in re.findall(r"\[(\d+)\]\s+(\d+) responses", text)}
    errors = 0
    if "Error distribution" in text:
        errors = sum(int(n) for n in re.findall(r"\[(\d+)\]\s+\S", text.split("Error distribution")[1]))
    return Report(rps, pct, codes, errors)


if __name__ == "__main__":
    r = parse(sys.stdin.read())
    labels = " | ".join(sys.argv[1:])
    print(f"| {labels} | {r.requests_per_sec:.1f} | {r.latency_ms.get(50, float('nan')):.1f} | {r.latency_ms.get(99, float('nan')):.1f} | {r.non_200()} |")
