"""Call recordings: real calls through the bridge with `record = true`, and the recording's audio as a WAV."""

from __future__ import annotations

import audioop
import base64
import io
import json
import logging
import re
import shutil
import threading
import wave
from collections.abc import AsyncIterator
from datetime import datetime
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from support import API_KEY, AUTH_TOKEN, CLINIC, bridge_for, new_call
from telephony_bridge import __version__
from telephony_bridge.cli import main
from telephony_bridge.observe.recording import CallRecorder, RecordingWriter, read_recording
from telephony_bridge.testing.realtime_simulator import RealtimeSimulator, speech_like_pcm16
from telephony_bridge.testing.twilio_simulator import SimulatedCall, speech_like_ulaw

RECORDED = "+15005550123"
REDACTED = "+15005550124"
RECORDINGS = Path(__file__).parent / "recordings"


def recording_config(folder: Path) -> str:
    return f"""
[recording]
folder = "{folder.as_posix()}"

[numbers."{RECORDED}"]
record = true

[numbers."{REDACTED}"]
record = true
redact = true
"""


@pytest.fixture
async def realtime() -> AsyncIterator[RealtimeSimulator]:
    async with RealtimeSimulator(require_key=API_KEY, answer_audio=speech_like_pcm16(1000)) as simulator:
        yield simulator


async def answered_call(realtime: RealtimeSimulator, folder: Path, number: str) -> SimulatedCall:
    """A call that asks, hears the whole answer and hangs up; returns once the bridge has shut down."""
    async with bridge_for(realtime, extra_config=recording_config(folder)) as bridge:
        call = new_call(bridge, number)
        await call.dial()
        await call.connect()
        session = await realtime.wait_for_session(0)
        await session.wait_for("session.update")
        call.say(speech_like_ulaw(400))
        await call.wait_heard(realtime.answer_ms, timeout=10)
        await call.hang_up()
        await session.wait_closed()
    return call


def lines_of(folder: Path) -> list[dict[str, Any]]:
    (path,) = folder.glob("*.jsonl")
    return [json.loads(line) for line in path.read_text(encoding="utf-8").splitlines()]


def messages(lines: list[dict[str, Any]], direction: str) -> list[Any]:
    return [line["msg"] for line in lines[1:] if line["dir"] == direction and "msg" in line]


def socket_lines(lines: list[dict[str, Any]]) -> list[dict[str, Any]]:
    return [{k: v for k, v in line.items() if k != "t"} for line in lines[1:] if "socket" in line]


def decoded(payloads: list[str]) -> list[bytes]:
    return [base64.b64decode(payload) for payload in payloads]


async def test_a_recorded_call_is_a_header_then_every_frame_as_sent_or_received(
    tmp_path: Path, realtime: RealtimeSimulator
) -> None:
    call = await answered_call(realtime, tmp_path, RECORDED)
    (path,) = tmp_path.glob("*.jsonl")
    assert re.fullmatch(rf"\d{{8}}T\d{{6}}-{call.call_sid}\.jsonl", path.name)
    lines = lines_of(tmp_path)
    header = lines[0]
    assert {k: header[k] for k in ("format", "version", "call_sid", "called_number", "dialect", "redacted")} == {
        "format": "telephony-bridge-recording", "version": 3, "call_sid": call.call_sid,
        "called_number": RECORDED, "dialect": "ga", "redacted": False,
    }
    assert header["bridge_version"] == __version__
    assert header["config"]["record"] is True and header["config"]["voice"] == "marin"
    assert datetime.fromisoformat(header["started_at"]).utcoffset().total_seconds() == 0
    assert socket_lines(lines) == [{"dir": "realtime>bridge", "socket": "open"}]
    frames = [line for line in lines[1:] if "socket" not in line]
    assert all(set(line) == {"t", "dir", "msg"} and isinstance(line["t"], float) for line in frames)
    assert [line["t"] for line in lines[1:]] == sorted(line["t"] for line in lines[1:])
    session = realtime.sessions[0]
    assert messages(lines, "bridge>twilio") == [message for _, message in call.received]
    assert messages(lines, "realtime>bridge") == session.sent
    assert messages(lines, "bridge>realtime") == session.received
    from_twilio = messages(lines, "twilio>bridge")
    assert [m["event"] for m in from_twilio].count("media") == call.media_sent
    assert [m for m in from_twilio if m["event"] != "media"][1:] == [m for _, m in call.sent[2:]]


async def test_a_session_the_service_drops_is_recorded_with_its_close_code_then_the_new_one_opening(
    tmp_path: Path, realtime: RealtimeSimulator
) -> None:
    async with bridge_for(realtime, extra_config=recording_config(tmp_path)) as bridge:
        call = new_call(bridge, RECORDED)
        await call.dial()
        await call.connect()
        first = await realtime.wait_for_session(0)
        await first.wait_for("session.update")
        await first.drop(1011)
        second = await realtime.wait_for_session(1)
        await second.wait_for("session.update")
        await call.hang_up()
        await second.wait_closed()
    lines = lines_of(tmp_path)
    assert socket_lines(lines) == [
        {"dir": "realtime>bridge", "socket": "open"},
        {"dir": "realtime>bridge", "socket": "closed", "code": 1011},
        {"dir": "realtime>bridge", "socket": "open"},
    ]
    reopened = max(index for index, line in enumerate(lines) if line.get("socket") == "open")
    assert messages(lines[reopened:], "bridge>realtime")[0]["type"] == "session.update"


async def test_a_number_without_record_is_not_recorded(tmp_path: Path, realtime: RealtimeSimulator) -> None:
    await answered_call(realtime, tmp_path, CLINIC)
    assert list(tmp_path.iterdir()) == []


async def test_redaction_writes_every_audio_payload_as_silence_of_the_same_length(
    tmp_path: Path, realtime: RealtimeSimulator
) -> None:
    call = await answered_call(realtime, tmp_path, REDACTED)
    lines = lines_of(tmp_path)
    assert lines[0]["redacted"] is True
    session = realtime.sessions[0]
    inbound = decoded([m["media"]["payload"] for m in messages(lines, "twilio>bridge") if m["event"] == "media"])
    assert inbound == [b"\xff" * 160] * call.media_sent
    to_caller = decoded([m["media"]["payload"] for m in messages(lines, "bridge>twilio") if m["event"] == "media"])
    heard = decoded([m["media"]["payload"] for m in call.messages("media")])
    assert to_caller == [b"\xff" * len(chunk) for chunk in heard] and sum(map(len, heard)) == 8000
    appends = decoded([m["audio"] for m in messages(lines, "bridge>realtime") if m["type"] == "input_audio_buffer.append"])
    received_appends = decoded([e["audio"] for e in session.events("input_audio_buffer.append")])
    assert appends == [bytes(len(chunk)) for chunk in received_appends]
    deltas = decoded([m["delta"] for m in messages(lines, "realtime>bridge") if m["type"] == "response.output_audio.delta"])
    sent_deltas = decoded([e["delta"] for e in session.events("response.output_audio.delta", sent=True)])
    assert deltas == [bytes(len(chunk)) for chunk in sent_deltas]
    marks = [m for m in messages(lines, "bridge>twilio") if m["event"] == "mark"]
    assert marks == call.messages("mark")


async def test_no_secret_reaches_the_recording_and_only_its_owner_can_read_it(
    tmp_path: Path, realtime: RealtimeSimulator
) -> None:
    call = await answered_call(realtime, tmp_path, RECORDED)
    (path,) = tmp_path.glob("*.jsonl")
    assert path.stat().st_mode & 0o077 == 0
    text = path.read_text(encoding="utf-8")
    stream_token = call.parameters["token"]
    for secret in (API_KEY, AUTH_TOKEN, stream_token, stream_token.partition(".")[2]):
        assert secret not in text
    (start,) = [m for m in messages(lines_of(tmp_path), "twilio>bridge") if m["event"] == "start"]
    assert start["start"]["customParameters"] == {"to": RECORDED, "token": "<redacted>"}


async def test_a_folder_that_cannot_be_created_leaves_the_call_unrecorded_but_answered(
    tmp_path: Path, realtime: RealtimeSimulator, caplog: pytest.LogCaptureFixture
) -> None:
    blocker = tmp_path / "a-file"
    blocker.write_text("not a folder")
    call = await answered_call(realtime, blocker / "recordings", RECORDED)
    assert call.heard_ms() >= realtime.answer_ms
    assert [r.message for r in caplog.records if r.levelno == logging.ERROR and "not recorded" in r.message]


MEDIA = '{"event":"media","media":{"payload":"//8="}}'


class MemoryFile(io.StringIO):
    """A recording file in memory that notes which thread wrote each line."""

    name = "memory.jsonl"

    def __init__(self) -> None:
        super().__init__()
        self.writers: set[str] = set()

    def write(self, text: str) -> int:
        self.writers.add(threading.current_thread().name)
        return super().write(text)

    def close(self) -> None:
        self.text = self.getvalue()
        super().close()


def recorder_on(
    file: io.TextIOBase, writer: RecordingWriter, *, max_bytes: int = 10**6, opened: threading.Event | None = None
) -> CallRecorder:
    def open_file() -> io.TextIOBase:
        if opened is not None:
            opened.wait(5)
        return file
    return CallRecorder(writer, open_file, {"format": "x"}, lambda: 0.0, redact=False, max_bytes=max_bytes)  # type: ignore[arg-type]


@pytest.mark.skipif(not Path("/dev/full").exists(), reason="needs /dev/full, a disk that is always full")
def test_a_full_disk_stops_the_recording_once_and_never_raises(caplog: pytest.LogCaptureFixture) -> None:
    writer = RecordingWriter()
    recorder = recorder_on(open("/dev/full", "w", encoding="utf-8", buffering=1), writer)
    for _ in range(3):
        recorder("twilio>bridge", MEDIA)
    recorder.close()
    writer.close()
    assert not recorder.recording
    assert len([r for r in caplog.records if r.levelno == logging.ERROR]) == 1


def test_lines_are_written_on_the_writers_thread_never_the_callers() -> None:
    writer, file = RecordingWriter(), MemoryFile()
    recorder = recorder_on(file, writer)
    for _ in range(100):
        recorder("twilio>bridge", MEDIA)
    recorder.close()
    writer.close()
    assert file.writers == {"call-recordings"}
    assert len(file.text.splitlines()) == 101


def test_a_recording_whose_lines_cannot_be_queued_is_cut_there_and_says_so() -> None:
    writer, file, opened = RecordingWriter(max_queued_lines=3), MemoryFile(), threading.Event()
    recorder = recorder_on(file, writer, opened=opened)
    for _ in range(10):
        recorder("twilio>bridge", MEDIA)
    assert not recorder.recording
    opened.set()
    recorder.close()
    writer.close()
    lines = [json.loads(line) for line in file.text.splitlines()]
    assert len(lines) == 1 + 3 + 1
    assert lines[-1] == {"t": 0.0, "cut": "backlog", "max_bytes": 10**6}


async def test_a_recording_is_cut_at_its_size_cap_and_reads_back_as_cut(tmp_path: Path, realtime: RealtimeSimulator) -> None:
    cap = 20 * 1024
    async with bridge_for(realtime, extra_config=recording_config(tmp_path).replace(
        "[recording]\n", f"[recording]\nmax_megabytes = {cap / 1024 / 1024}\n"
    )) as bridge:
        call = new_call(bridge, RECORDED)
        await call.dial()
        await call.connect()
        session = await realtime.wait_for_session(0)
        call.say(speech_like_ulaw(400))
        await call.wait_heard(realtime.answer_ms, timeout=10)
        await call.hang_up()
        await session.wait_closed()
    (path,) = tmp_path.glob("*.jsonl")
    text = path.read_text(encoding="utf-8")
    cut = json.loads(text.splitlines()[-1])
    assert len(text) - len(text.splitlines()[-1]) - 1 <= cap
    assert cut["cut"] == "max_bytes" and cut["max_bytes"] == cap
    recording = read_recording(path)
    assert recording.cut is not None and recording.cut.reason == "max_bytes"
    assert recording.frames and recording.frames[-1].t_ms <= recording.cut.t_ms
    assert call.heard_ms() >= realtime.answer_ms


def test_replaying_a_cut_recording_reports_the_cut(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    lines = (RECORDINGS / "greeting.jsonl").read_text(encoding="utf-8").splitlines()
    kept = lines[: len(lines) // 2]
    cut_at = json.loads(kept[-1])["t"]
    source = tmp_path / "cut.jsonl"
    cut_marker = json.dumps({"t": cut_at, "cut": "max_bytes", "max_bytes": 1000})
    source.write_text("\n".join([*kept, cut_marker]) + "\n", encoding="utf-8")
    with pytest.raises(SystemExit) as exited:
        main(["replay", str(source)])
    assert exited.value.code in (0, 1)
    assert f"the recording was cut at {cut_at / 1000:.1f} s (max_bytes)" in capsys.readouterr().out


def test_a_recording_cut_mid_line_by_a_crash_reads_up_to_its_last_whole_line(tmp_path: Path) -> None:
    whole = RECORDINGS / "conversation.jsonl"
    text = whole.read_text(encoding="utf-8")
    cut = tmp_path / "cut.jsonl"
    cut.write_text(text[: text.rindex("\n", 0, len(text) - 1) + 40], encoding="utf-8")
    assert read_recording(cut).frames == read_recording(whole).frames[:-1]


def test_export_wav_lays_the_caller_left_and_what_they_heard_right_cut_at_the_clear(tmp_path: Path) -> None:
    source = tmp_path / "barge-in.jsonl"
    shutil.copy(RECORDINGS / "barge-in-mid-answer.jsonl", source)
    with pytest.raises(SystemExit) as exited:
        main(["export-wav", str(source), "--out", str(tmp_path / "call")])
    assert exited.value.code == 0
    with wave.open(str(tmp_path / "call.wav"), "rb") as wav:
        assert (wav.getnchannels(), wav.getframerate(), wav.getsampwidth()) == (2, 8000, 2)
        stereo = np.frombuffer(wav.readframes(wav.getnframes()), "<i2").reshape(-1, 2)
    recording = read_recording(source)
    assert abs(len(stereo) - recording.duration_ms * 8) <= 160
    inbound = [f for f in recording.frames if f.direction == "twilio>bridge" and f.kind == "media"]
    caller = np.frombuffer(audioop.ulaw2lin(b"".join(f.audio() for f in inbound), 2), "<i2")
    first = round(inbound[0].t_ms * 8)
    assert np.array_equal(stereo[first : first + len(caller), 0], caller)
    outbound = [f for f in recording.frames if f.direction == "bridge>twilio" and f.kind == "media"]
    (clear,) = [f for f in recording.frames if f.kind == "clear"]
    start, cut = round(outbound[0].t_ms * 8), round(clear.t_ms * 8)
    played = np.frombuffer(audioop.ulaw2lin(b"".join(f.audio() for f in outbound), 2), "<i2")
    assert cut - start < len(played), "the recording's clear cut nothing"
    assert np.array_equal(stereo[start:cut, 1], played[: cut - start])
    assert not stereo[cut:, 1].any() and not stereo[:start, 1].any()
