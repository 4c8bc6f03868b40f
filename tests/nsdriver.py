"""Run inside a PID namespace (see `test_security_disk`): plant forged state files, let
launchers adopt them, and report as JSON who is still alive. Never run on the host's pid space."""

from __future__ import annotations

import asyncio
import json
import os
import subprocess
import sys
from pathlib import Path

from model_starter.config import ProcessSpec, parse_config
from model_starter.launchers import ProcessLauncher
from model_starter.logfile import LogFile
from model_starter.statefile import process_start_time

SLEEP = ["sleep", "600"]


def spec(name: str, command: list[str]) -> ProcessSpec:
    text = f"models:\n  {name}:\n    command: {json.dumps(command)}\n    port: 9\n"
    model = parse_config(text, "ns.yaml", environ={}).models[name]
    assert isinstance(model, ProcessSpec)
    return model


async def main(work: Path) -> dict[str, object]:
    assert os.getpid() == 1, "must run as the init of its own PID namespace"
    state, logs = work / "state", work / "logs"
    state.mkdir(mode=0o700)
    # A victim in its own group (a group leader, not ours) and one in our group.
    leader = subprocess.Popen(SLEEP, start_new_session=True)
    member = subprocess.Popen(["sleep", "601"])
    ours = subprocess.Popen(["sleep", "602"], start_new_session=True)  # a genuine record
    start = {p.pid: process_start_time(p.pid) for p in (leader, member, ours)}
    forged: dict[str, object] = {
        "pid_true": {"pid": True, "command": ["x"]},
        "pid_zero": {"pid": 0, "command": ["x"]},
        "pid_minus": {"pid": -1, "start_time": 1, "command": ["x"]},
        "no_start": {"pid": leader.pid, "command": ["x"]},
        "null_command": {"pid": 99999, "command": None},
        "not_json": "{",
        "list": [1, 2],
        # right start time, but /proc/PID/cmdline is not what the record says
        "other_cmdline": {"pid": leader.pid, "start_time": start[leader.pid], "command": ["x"]},
        # everything right, but it does not lead its own group (killpg would miss or misfire)
        "not_leader": {"pid": member.pid, "start_time": start[member.pid],
                       "command": ["sleep", "601"]},
        "good": {"pid": ours.pid, "start_time": start[ours.pid], "command": ["sleep", "602"]},
    }
    for name, data in forged.items():
        text = data if isinstance(data, str) else json.dumps(data)
        (state / f"{name}.json").write_text(text)
    adopted = {}
    for name in forged:
        command = ["sleep", "602"] if name == "good" else ["model", name]
        launcher = ProcessLauncher(spec(name, command), LogFile(logs / f"{name}.log", 4096), state)
        try:
            adopted[name] = await launcher.adopt()
        except Exception as exc:  # the old code crashed startup here
            adopted[name] = f"raised {type(exc).__name__}"
        if name == "good" and adopted[name] is True:
            await launcher.stop()  # its own record: this one may be signalled
    alive = {name: p.poll() is None for name, p in
             (("leader", leader), ("member", member), ("ours", ours))}
    for p in (leader, member, ours):
        p.kill()
        p.wait()
    return {"adopted": adopted, "alive": alive,
            "left": sorted(p.name for p in state.iterdir())}


if __name__ == "__main__":
    print(json.dumps(asyncio.run(main(Path(sys.argv[1])))))
