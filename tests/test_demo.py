"""The README's first command: a whole simulated call through the real bridge, end to end."""

from __future__ import annotations

import asyncio
import json
import os
import re
import subprocess
import sys
import wave
from pathlib import Path

import numpy as np

from telephony_bridge.wire import ULAW_RATE_HZ


def test_the_demo_places_a_call_with_a_barge_in_and_writes_what_it_promises(tmp_path: Path) -> None:
    out = tmp_path / "demo-out"
    result = subprocess.run(
        [sys.executable, "-m", "telephony_bridge", "demo", "--out", str(out), "--log-level", "warning"],
        capture_output=True, text=True, timeout=120,
    )
    assert result.returncode == 0, result.stderr
    printed = result.stdout
    assert "caller  interrupts" in printed and "bridge  clear" in printed and "caller  hangs up" in printed
    truncate, heard = map(int, re.search(r"truncate point\s+(\d+) ms; the caller heard (\d+) ms", printed).groups())
    assert 1000 < truncate < 5000 and abs(truncate - heard) <= 20
    assert re.search(r"bridge latency caller>model median [\d.]+ ms", printed)

    with wave.open(str(out / "call.wav")) as wav:
        assert (wav.getnchannels(), wav.getframerate()) == (2, ULAW_RATE_HZ)
        stereo = np.frombuffer(wav.readframes(wav.getnframes()), dtype=np.int16).reshape(-1, 2)
    clear_at_s = float(re.search(r"([\d.]+) s  bridge  clear", printed).group(1))
    heard = stereo[:, 1].astype(float)
    before = heard[int((clear_at_s - 0.5) * ULAW_RATE_HZ) : int((clear_at_s - 0.05) * ULAW_RATE_HZ)]
    after = heard[int((clear_at_s + 0.1) * ULAW_RATE_HZ) : int((clear_at_s + 0.6) * ULAW_RATE_HZ)]
    assert np.sqrt(np.mean(before**2)) > 300, "the model was speaking before the interruption"
    assert np.sqrt(np.mean(after**2)) < 30, "the model went on speaking after the interruption"
    assert np.sqrt(np.mean(stereo[:, 0].astype(float) ** 2)) > 100, "the caller's side is in the left channel"

    svg = (out / "timeline.svg").read_text()
    assert svg.startswith("<svg") and "barge-in" in svg
    recordings = list((out / "recording").glob("*.jsonl"))
    assert len(recordings) == 1


async def test_live_mode_talks_to_the_realtime_service_the_environment_names(tmp_path: Path) -> None:
    from telephony_bridge.testing.realtime_simulator import RealtimeSimulator

    async with RealtimeSimulator(require_key="sk-live-test") as service:
        process = await asyncio.create_subprocess_exec(
            sys.executable, "-m", "telephony_bridge", "demo", "--live", "--out", str(tmp_path),
            env={**os.environ, "OPENAI_API_KEY": "sk-live-test", "REALTIME_URL": service.url},
            stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE,
        )
        stdout, stderr = await asyncio.wait_for(process.communicate(), timeout=120)
    printed = stdout.decode()
    assert process.returncode == 0, stderr.decode()
    assert "the real Realtime API at ws://127.0.0.1" in printed and "caller  hangs up" in printed
    assert len(service.sessions) == 1 and service.sessions[0].events("conversation.item.truncate")


def test_the_transfer_demo_dials_the_front_desk_once_the_hand_over_was_heard_and_whispers_the_summary(tmp_path: Path) -> None:
    out = tmp_path / "transfer-out"
    result = subprocess.run(
        [sys.executable, "-m", "telephony_bridge", "demo", "--transfer", "--out", str(out), "--log-level", "warning"],
        capture_output=True, text=True, timeout=120, env={k: v for k, v in os.environ.items() if not k.startswith("TWILIO_")},
    )
    assert result.returncode == 0, result.stderr
    printed = result.stdout
    order = ["caller  speaking", "REST POST Calls/{CallSid}.json: <Dial> front desk (HTTP 200)", "desk    answers and hears",
             "caller and front desk joined", "DialCallStatus=completed", "call over"]
    positions = [printed.find(line) for line in order]
    assert -1 not in positions and positions == sorted(positions), printed
    assert "Ada Lovelace wants to move her Tuesday cleaning to Friday." in printed.split("desk    answers")[1]
    delay = float(re.search(r"hand-over heard -> <Dial>\s+(\d+) ms", printed).group(1))
    assert 0 <= delay < 500, "the <Dial> follows the hand-over's last mark echo within 500 ms"

    svg = (out / "timeline.svg").read_text()
    assert svg.startswith("<svg") and "REST POST" in svg and "whisper to the front desk" in svg and "with the front desk" in svg
    (recording,) = (out / "recording").glob("*.jsonl")
    rest = [json.loads(line) for line in recording.read_text().splitlines() if '"dir":"twilio-rest"' in line]
    assert [entry["msg"]["kind"] for entry in rest] == ["request", "response"]
    assert "<Dial" in rest[0]["msg"]["params"]["Twiml"] and "+14155550199" in rest[0]["msg"]["params"]["Twiml"]


def test_the_transfer_demo_runs_only_with_the_simulators() -> None:
    result = subprocess.run(
        [sys.executable, "-m", "telephony_bridge", "demo", "--transfer", "--live"], capture_output=True, text=True, timeout=60
    )
    assert result.returncode != 0 and "--transfer runs with the simulators only" in result.stderr
