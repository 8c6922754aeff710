#!/usr/bin/python3
"""Prints the one-line-per-stage summary at the end of scripts/test.sh.

Inputs (all optional; a missing one is reported as such, never guessed):
  --stages FILE   lines "name<TAB>status<TAB>seconds" written by test.sh's stage runner
  --build DIR     the ctest build directory (labels come from `ctest --show-only=json-v1`)
  --junit FILE    ctest's --output-junit report (per-test outcome); repeatable
  --fuzz-log FILE scripts/fuzz.sh's output (executions, crashes; one line per fuzz target)

Exit status is always 0: the summary reports, test.sh decides.
"""

import argparse
import json
import os
import re
import subprocess
import xml.etree.ElementTree as ET


def read_stages(path):
    stages = []
    if path and os.path.exists(path):
        with open(path) as f:
            for line in f:
                parts = line.rstrip("\n").split("\t")
                if len(parts) == 3:
                    stages.append((parts[0], parts[1], float(parts[2])))
    return stages


def test_labels(build):
    """Test name -> list of labels, from ctest's own description of the suite."""
    try:
        out = subprocess.run(["ctest", "--test-dir", build, "--show-only=json-v1"], capture_output=True,
                             text=True, timeout=120, check=True).stdout
    except (OSError, subprocess.SubprocessError):
        return {}
    labels = {}
    for t in json.loads(out).get("tests", []):
        names = []
        for p in t.get("properties", []):
            if p.get("name") == "LABELS":
                names = list(p.get("value") or [])
        labels[t["name"]] = names or ["(no label)"]
    return labels


def junit_outcomes(path):
    """Test name -> (outcome, seconds); outcome is passed, failed or skipped."""
    out = {}
    if not path or not os.path.exists(path):
        return out
    for case in ET.parse(path).getroot().iter("testcase"):
        status = case.get("status", "run")
        if case.find("failure") is not None or status == "fail":
            outcome = "failed"
        elif case.find("skipped") is not None or status in ("notrun", "disabled"):
            outcome = "skipped"
        else:
            outcome = "passed"
        out[case.get("name")] = (outcome, float(case.get("time") or 0))
    return out


def fuzz_section(name, text):
    """One line for one libFuzzer run's output."""
    runs = re.findall(r"stat::number_of_executed_units:\s*(\d+)", text)
    done = re.findall(r"Done (\d+) runs in (\d+) second", text)
    crash = re.search(r"(==\d+==ERROR|deadly signal|SUMMARY: \w+Sanitizer|Test unit written to \S+)", text)
    execs = runs[-1] if runs else (done[-1][0] if done else None)
    secs = done[-1][1] if done else "?"
    if crash:
        return f"{name}: FAILED ({crash.group(0)}) after {execs or '?'} executions"
    if execs is None:
        return f"{name}: FAILED (no libFuzzer statistics in its output)"
    return f"{name}: ok, {execs} executions in {secs} s, no crash"


def fuzz_lines(path):
    """One line per fuzz target: scripts/fuzz.sh starts each run with "#### fuzz target NAME"; a log without
    those lines is one run."""
    if not path or not os.path.exists(path):
        return ["fuzz: did not run"]
    with open(path, errors="replace") as f:
        text = f.read()
    parts = re.split(r"^#### fuzz target (\S+).*$", text, flags=re.M)
    if len(parts) == 1:
        return [fuzz_section("fuzz", text)]
    # parts: [before, name1, text1, name2, text2, ...]
    return [fuzz_section(f"fuzz {parts[i]}", parts[i + 1]) for i in range(1, len(parts), 2)]


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--stages")
    ap.add_argument("--build")
    ap.add_argument("--junit", action="append", default=[],
                    help="ctest --output-junit report; repeat for several ctest runs")
    ap.add_argument("--fuzz-log")
    a = ap.parse_args()

    print("==== summary " + "=" * 60)
    for name, status, secs in read_stages(a.stages):
        print(f"stage {name}: {status} ({secs:.0f} s)")
    outcomes = {}
    for path in a.junit:
        outcomes.update(junit_outcomes(path))
    if not outcomes:
        print("ctest: no report (the test stage did not run)")
    else:
        labels = test_labels(a.build) if a.build else {}
        per = {}
        for name, (outcome, secs) in outcomes.items():
            for label in labels.get(name, ["(unknown)"]):
                d = per.setdefault(label, {"passed": 0, "failed": 0, "skipped": 0, "secs": 0.0, "names": []})
                d[outcome] += 1
                d["secs"] += secs
                if outcome == "failed":
                    d["names"].append(name)
        for label in sorted(per):
            d = per[label]
            line = (f"ctest {label}: {d['passed']} passed, {d['failed']} failed, {d['skipped']} skipped "
                    f"({d['secs']:.0f} s)")
            if d["names"]:
                line += " -- failed: " + ", ".join(d["names"])
            print(line)
    if outcomes:
        slowest = sorted(outcomes.items(), key=lambda kv: -kv[1][1])[:12]
        print("slowest tests: " + ", ".join(f"{name} {secs:.0f} s" for name, (_, secs) in slowest))
    if a.fuzz_log is not None:
        for line in fuzz_lines(a.fuzz_log):
            print(line)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
