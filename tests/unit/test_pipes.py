"""The supervisor's view of a job's pipes: every event arrives, in few wake-ups, and what a job
wrote before it was killed is still read (it waits in the kernel's pipe buffer)."""

from __future__ import annotations

import json
import os
import socket
import time

from workers.process import pipes
from workers.process.forkclient import JobProcess


def fake_job() -> tuple[JobProcess, int, int, socket.socket]:
    """A JobProcess over real pipes and a status socket; returns it and the job's write ends."""
    events_r, events_w = os.pipe()
    output_r, output_w = os.pipe()
    ours, server = socket.socketpair()
    ours.setblocking(False)
    return JobProcess(os.getpid(), ours, events_r, output_r), events_w, output_w, server


def test_a_burst_of_events_is_read_whole_in_order_with_few_wakeups() -> None:
    proc, events_w, output_w, server = fake_job()
    watched = pipes.JobPipes(proc)
    batches: list[list[dict]] = []
    step, deadline = 0, time.monotonic() + 1.0
    while time.monotonic() < deadline:  # ~1 s of a job writing an event every millisecond
        os.write(events_w, (json.dumps({"type": "progress", "step": step}) + "\n").encode())
        step += 1
        time.sleep(0.001)
        watched.wait(0)
        if events := watched.take()[1]:
            batches.append(events)
    server.sendall(json.dumps({"exit": 0}).encode())
    os.close(events_w)
    os.close(output_w)
    while watched.wait(1.0) is None:
        pass
    watched.drain(1.0)
    batches.append(watched.take()[1])
    assert [e["step"] for batch in batches for e in batch] == list(range(step))
    assert len(batches) <= 1.0 / pipes.READ_GAP_S + 3, len(batches)  # not one per event
    assert proc.returncode == 0
    watched.close()
    server.close()


def test_what_a_killed_job_wrote_during_the_rest_is_still_read() -> None:
    proc, events_w, output_w, server = fake_job()
    watched = pipes.JobPipes(proc)
    os.write(events_w, b'{"type": "progress", "step": 1}\n')
    assert watched.wait(1.0) is None  # read step 1; the pipes now rest
    os.write(events_w, b'{"type": "progress", "step": 2}\n')  # the job's last words
    os.write(output_w, b"last line\n")
    os.close(events_w)
    os.close(output_w)
    server.close()  # the job and its server are gone, as after a SIGKILL
    started = time.monotonic()
    while watched.wait(1.0) is None:
        assert time.monotonic() - started < 5
    watched.drain(1.0)
    output, events = watched.take()
    assert [e["step"] for e in events] == [1, 2]
    assert output == b"last line\n"
    watched.close()


def test_output_flowing_fast_is_read_in_big_chunks_without_waiting_out_a_rest() -> None:
    """A job writing as fast as it can is never made to wait READ_GAP_S per pipeful: the rest
    shrinks with the rate it writes at. Counted in rests, not seconds (a unit test)."""
    proc, events_w, output_w, server = fake_job()
    watched = pipes.JobPipes(proc)
    line = b"x" * 99 + b"\n"
    block = line * (pipes.PIPE_BYTES // len(line))
    got = bytearray()
    os.set_blocking(output_w, False)
    for _ in range(40):  # 40 pipefuls
        try:
            os.write(output_w, block)
        except BlockingIOError:
            pass
        watched.wait(1.0)
        got += watched.take_output()
    # after the first pipeful, every rest is far under READ_GAP_S: the pipe was full at once
    assert watched._rest_until - time.monotonic() < pipes.READ_GAP_S / 4
    assert len(got) >= 20 * len(block) and got.count(b"\n") * len(line) == len(got)
    server.sendall(json.dumps({"exit": 0}).encode())
    os.close(events_w)
    os.close(output_w)
    watched.close()
    server.close()


def test_a_line_that_never_ends_is_passed_on_in_pieces() -> None:
    proc, events_w, output_w, server = fake_job()
    watched = pipes.JobPipes(proc)
    os.set_blocking(output_w, False)
    sent = 0
    while sent <= pipes.LINE_MAX:
        try:
            sent += os.write(output_w, b"y" * (1 << 16))
        except BlockingIOError:
            pass
        watched.wait(0)
        watched._rest_until = 0.0  # no rests: this test is about lines, not timing
    output = watched.take_output()
    assert output.endswith(b"\n") and len(output) > pipes.LINE_MAX
    assert output.count(b"\n") == 1
    server.close()
    os.close(events_w)
    os.close(output_w)
    watched.close()


def test_output_not_taken_waits_in_the_pipe_past_the_backlog_cap(monkeypatch) -> None:
    """While output is not taken (a job being stopped), the supervisor holds at most
    BACKLOG_MAX of it: the job then waits on its full pipe, nothing is dropped."""
    monkeypatch.setattr(pipes, "BACKLOG_MAX", 2 << 20)
    proc, events_w, output_w, server = fake_job()
    watched = pipes.JobPipes(proc)
    os.set_blocking(output_w, False)
    line = b"z" * 1023 + b"\n"
    sent = 0
    for _ in range(200):  # until the pipe stays full: the reader holds
        try:
            sent += os.write(output_w, line * 256)
        except BlockingIOError:
            watched.wait(0)
            watched._rest_until = 0.0
            if watched.backlog >= pipes.BACKLOG_MAX:
                try:
                    sent += os.write(output_w, line * 256)
                except BlockingIOError:
                    break
            continue
        watched.wait(0)
        watched._rest_until = 0.0
    assert pipes.BACKLOG_MAX <= watched.backlog < pipes.BACKLOG_MAX + (2 << 20)
    got = len(watched.take_output())  # taken: reading resumes
    os.close(output_w)
    os.close(events_w)
    server.close()
    started = time.monotonic()
    while watched.wait(1.0) is None:
        assert time.monotonic() - started < 5
    watched.drain(2.0)
    got += len(watched.take_output())
    assert got == sent
    watched.close()
