#!/usr/bin/env python3
"""Executes one Jupyter Deno notebook headless; scripts/notebooks.ts drives it.

Usage: python3 scripts/notebook_run.py [--write] [--timeout S] NOTEBOOK.ipynb

Runs every code cell in order on a fresh `deno` kernel (started in the
notebook's folder, with NO_COLOR=1) and prints one JSON line:
{"notebook", "ok", "seconds", "cells": [{"id", "seconds", "status"}], "error"}.
Stops at the first cell that fails. With --write (and no failure) the
notebook is saved with its new outputs and execution counts.

Why not `jupyter nbconvert --execute`: Deno 2.9's kernel sometimes publishes
`status: idle` before a cell's last outputs, and nbclient stops collecting at
idle, so outputs go missing at random. Here a cell's outputs are collected
until its reply and idle status have arrived and its channel stayed quiet for
a grace period.
"""
import argparse
import json
import os
import queue
import sys
import time

try:
    import jupyter_client
except ImportError:  # pragma: no cover
    print(json.dumps({"ok": False, "error": "python3 cannot import jupyter_client "
                      "(apt-get install -y python3-jupyter-client python3-ipykernel)"}))
    sys.exit(2)

GRACE_S = 0.3


def text_of(value):
    return "".join(value) if isinstance(value, list) else value


def split_lines(text):
    lines = text.splitlines(keepends=True)
    return lines


def run_cell(kc, code, timeout):
    """Returns (outputs, execution_count, status, error_text)."""
    msg_id = kc.execute(code, store_history=True, allow_stdin=False)
    outputs = []
    reply = None
    idle = False
    count = None
    deadline = time.time() + timeout
    last_message = time.time()
    while True:
        now = time.time()
        if now > deadline:
            return outputs, count, "timeout", f"cell ran past {timeout} s"
        if reply is None:
            try:
                msg = kc.get_shell_msg(timeout=0.05)
                if msg["parent_header"].get("msg_id") == msg_id:
                    reply = msg["content"]
                    count = reply.get("execution_count")
                    last_message = time.time()
            except queue.Empty:
                pass
        try:
            msg = kc.get_iopub_msg(timeout=0.05)
        except queue.Empty:
            if reply is not None and idle and time.time() - last_message > GRACE_S:
                break
            continue
        if msg["parent_header"].get("msg_id") != msg_id:
            continue
        last_message = time.time()
        kind, content = msg["msg_type"], msg["content"]
        if kind == "status":
            idle = content["execution_state"] == "idle"
        elif kind == "stream":
            if outputs and outputs[-1]["output_type"] == "stream" and \
                    outputs[-1]["name"] == content["name"]:
                outputs[-1]["text"] += content["text"]
            else:
                outputs.append({"output_type": "stream", "name": content["name"],
                                "text": content["text"]})
        elif kind in ("display_data", "execute_result"):
            out = {"output_type": kind, "data": content["data"],
                   "metadata": content.get("metadata", {})}
            if kind == "execute_result":
                out["execution_count"] = content.get("execution_count")
            outputs.append(out)
        elif kind == "error":
            outputs.append({"output_type": "error", "ename": content["ename"],
                            "evalue": content["evalue"], "traceback": content["traceback"]})
        elif kind == "clear_output":
            outputs = []
    status = reply.get("status", "error")
    error = None
    if status != "ok":
        error = f"{reply.get('ename', '')}: {reply.get('evalue', '')}".strip(": ")
    return outputs, count, status, error


def to_nbformat(outputs):
    """Multi-line strings as lists of lines, the way Jupyter stores them."""
    result = []
    for out in outputs:
        out = dict(out)
        if out["output_type"] == "stream":
            out["text"] = split_lines(out["text"])
        elif "data" in out:
            out["data"] = {k: (split_lines(v) if isinstance(v, str) and not k.endswith("json")
                               else v) for k, v in out["data"].items()}
        result.append(out)
    return result


def main():
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("notebook")
    parser.add_argument("--write", action="store_true")
    parser.add_argument("--timeout", type=float, default=600)
    args = parser.parse_args()
    path = os.path.abspath(args.notebook)
    with open(path, encoding="utf-8") as f:
        nb = json.load(f)
    report = {"notebook": args.notebook, "ok": True, "cells": [], "error": None}
    missing = [i for i, c in enumerate(nb["cells"]) if not c.get("id")]
    if missing:
        report.update(ok=False, error=f"cells {missing} have no id")
        print(json.dumps(report))
        sys.exit(1)
    env = dict(os.environ, NO_COLOR="1")
    env.setdefault("XDG_RUNTIME_DIR", "/tmp")
    km = jupyter_client.KernelManager(kernel_name="deno")
    started = time.time()
    km.start_kernel(cwd=os.path.dirname(path), env=env)
    kc = km.client()
    kc.start_channels()
    try:
        kc.wait_for_ready(timeout=120)
        for cell in nb["cells"]:
            if cell["cell_type"] != "code":
                continue
            code = text_of(cell["source"])
            t0 = time.time()
            outputs, count, status, error = run_cell(kc, code, args.timeout)
            seconds = round(time.time() - t0, 2)
            report["cells"].append({"id": cell["id"], "seconds": seconds, "status": status})
            cell["outputs"] = to_nbformat(outputs)
            cell["execution_count"] = count
            if status != "ok":
                report.update(ok=False, error=f"cell {cell['id']}: {error}")
                break
    finally:
        kc.stop_channels()
        km.shutdown_kernel(now=True)
    report["seconds"] = round(time.time() - started, 1)
    if report["ok"] and args.write:
        with open(path, "w", encoding="utf-8") as f:
            json.dump(nb, f, indent=1, ensure_ascii=False)
            f.write("\n")
    print(json.dumps(report))
    sys.exit(0 if report["ok"] else 1)


if __name__ == "__main__":
    main()
