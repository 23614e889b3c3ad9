"""Runs one command as the workers of a local multi-worker cluster (TF_CONFIG on 127.0.0.1)."""

import json
import os
import socket
import subprocess
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def free_ports(count: int) -> list[int]:
    sockets = [socket.socket() for _ in range(count)]
    for s in sockets:
        s.bind(("127.0.0.1", 0))
    ports = [s.getsockname()[1] for s in sockets]
    for s in sockets:
        s.close()
    return ports


def run_workers(command: list[str], count: int = 2, timeout: float = 600) -> list[str]:
    """Runs `command` once per worker, each with its TF_CONFIG; returns their outputs and
    fails with a worker's last output if it does not exit 0."""
    workers = [f"127.0.0.1:{port}" for port in free_ports(count)]
    processes = []
    for index in range(count):
        tf_config = {"cluster": {"worker": workers}, "task": {"type": "worker", "index": index}}
        env = dict(os.environ, PYTHONPATH=str(ROOT), TF_CPP_MIN_LOG_LEVEL="3")
        env["TF_CONFIG"] = json.dumps(tf_config)
        processes.append(
            subprocess.Popen(
                command, cwd=ROOT, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT
            )
        )
    outputs = []
    try:
        for process in processes:
            output, _ = process.communicate(timeout=timeout)
            outputs.append(output.decode(errors="replace"))
            assert process.returncode == 0, outputs[-1][-3000:]
    finally:
        for process in processes:
            process.kill()
    return outputs
