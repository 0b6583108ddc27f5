"""load/cost.py: $ per conversation-minute from measured concurrency and prices, and load/call_cost.py's
figures (what callers heard, CPU per call), on inputs whose answers are worked out by hand."""

from __future__ import annotations

import pytest

from load import call_cost_figures, cost


def test_gpu_only_cost_per_minute():
    # $2.40 per GPU-hour over 40 concurrent conversations = 2400 conversation-minutes -> $0.001.
    breakdown = cost.cost_per_minute(cost.CostInputs(conversations_per_gpu=40, gpu_hourly=2.40))
    assert breakdown.gpu_per_min == pytest.approx(0.001)
    assert breakdown.edge_per_min == 0
    assert breakdown.per_hour_of_talk == pytest.approx(0.06)


def test_edge_nodes_and_utilization_add_up():
    inputs = cost.CostInputs(conversations_per_gpu=40, gpu_hourly=2.40, edge_conversations_per_node=200,
                             edge_node_hourly=0.60, utilization=0.5)
    breakdown = cost.cost_per_minute(inputs)
    # edge: 0.60 / 12000 = 0.00005; half the capacity idle doubles both.
    assert breakdown.edge_per_min == pytest.approx(0.0001)
    assert breakdown.per_min == pytest.approx(0.0021)


def test_replica_set_measurement_converts_to_per_gpu():
    # 20 conversations on a replica set taking 0.8 of a GPU (h100 plan: 0.1 + 0.6 + 0.1).
    assert cost.conversations_per_gpu(20, 0.8) == pytest.approx(25)
    with pytest.raises(ValueError):
        cost.conversations_per_gpu(20, 0)


def test_break_even_against_reference_prices():
    inputs = cost.CostInputs(conversations_per_gpu=40, gpu_hourly=2.40, edge_conversations_per_node=200,
                             edge_node_hourly=0.60)
    # 2.40 / ((0.18 - 0.00005) * 60) conversations per GPU cost as much as the open stack.
    assert cost.break_even_concurrency(inputs, 0.18) == pytest.approx(2.40 / (0.17995 * 60))
    assert cost.break_even_concurrency(inputs, 0.00001) == float("inf")


@pytest.mark.parametrize("kwargs, message", [
    ({"conversations_per_gpu": 0, "gpu_hourly": 1}, "conversations_per_gpu"),
    ({"conversations_per_gpu": 1, "gpu_hourly": -1}, "negative"),
    ({"conversations_per_gpu": 1, "gpu_hourly": 1, "utilization": 0}, "utilization"),
    ({"conversations_per_gpu": 1, "gpu_hourly": 1, "edge_node_hourly": 1}, "edge_conversations_per_node"),
])
def test_bad_inputs_are_named(kwargs, message):
    with pytest.raises(ValueError, match=message):
        cost.CostInputs(**kwargs)


def test_cli_prints_total_and_comparisons(capsys):
    assert cost.main(["--conversations-per-replica-set", "20", "--gpus-per-replica-set", "0.8",
                      "--gpu-hourly", "3.00"]) == 0
    out = capsys.readouterr().out
    # 3.00 / (25 * 60) = $0.0020 per minute: 1.1% of $0.18, 0.4% of $0.50.
    assert "total: $0.0020 per conversation-minute" in out
    assert "1.1% of it" in out and "0.4% of it" in out
    with pytest.raises(SystemExit):
        cost.main(["--conversations-per-gpu", "0", "--gpu-hourly", "1"])


# -- load/call_cost.py: what the callers heard and CPU per call -----------------------------------

def test_a_reply_played_back_to_back_has_no_underrun():
    # 20 ms frames arriving 10 ms apart (the edge's lead): the buffer never runs dry.
    log = call_cost_figures.CallerLog(utterances=[(0.0, 4.0)], frames=[(4.5 + 0.010 * k, 0.020) for k in range(50)])
    figures = call_cost_figures.heard([log])
    assert figures["underruns"] == 0 and figures["underrun_ms"] == 0
    assert figures["ttfat_ms_p50"] == pytest.approx(500)


def test_a_late_frame_is_an_underrun_of_its_lateness():
    # Frames 0-9 on time (played until 4.7 s); frame 10 arrives at 4.80: 100 ms heard as silence.
    # Then on time again from its own playback (4.80 + 0.02 per frame).
    frames = [(4.5 + 0.020 * k, 0.020) for k in range(10)] + [(4.80 + 0.020 * k, 0.020) for k in range(10)]
    figures = call_cost_figures.heard([call_cost_figures.CallerLog(utterances=[(0.0, 4.0)], frames=frames)])
    assert figures["underruns"] == 1
    assert figures["underrun_ms"] == pytest.approx(100, abs=0.1)
    assert figures["replies_with_underruns"] == 1


def test_a_jitter_under_the_tolerance_is_not_counted():
    frames = [(5.0, 0.020), (5.025, 0.020), (5.040, 0.020)]  # 5 ms late once: under the 10 ms tolerance
    figures = call_cost_figures.heard([call_cost_figures.CallerLog(utterances=[(1.0, 4.0)], frames=frames)])
    assert figures["underruns"] == 0


def test_replies_are_split_at_the_next_utterance_and_silence_between_replies_is_no_underrun():
    # Two utterances; the first reply ends at 6.2 s, the second begins at 24.3 s: no gap across them.
    first = [(5.0 + 0.020 * k, 0.020) for k in range(60)]
    second = [(24.3 + 0.020 * k, 0.020) for k in range(30)]
    log = call_cost_figures.CallerLog(utterances=[(0.0, 4.0), (20.0, 24.0)], frames=first + second)
    assert [len(frames) for _, frames in call_cost_figures.replies(log)] == [60, 30]
    figures = call_cost_figures.heard([log, call_cost_figures.CallerLog(utterances=[(3.0, 7.0)])])
    assert figures["turns"] == 3 and figures["unanswered"] == 1
    assert figures["underruns"] == 0
    # TTFAT 1000 and 300 ms; percentiles interpolate linearly (numpy's default).
    assert figures["ttfat_ms_p50"] == pytest.approx(650)
    assert figures["ttfat_ms_p95"] == pytest.approx(965)


def test_two_replies_to_one_utterance_are_not_an_underrun():
    # The edge answered twice (the ASR heard two utterances): reply one ends, its end arrives at
    # 5.25, reply two begins 0.6 s later. Inside reply two one frame comes 50 ms late.
    first = [(5.0 + 0.020 * k, 0.020) for k in range(10)]
    second = [(5.8 + 0.020 * k, 0.020) for k in range(5)] + [(5.95, 0.020)]
    log = call_cost_figures.CallerLog(utterances=[(0.0, 4.0)], frames=first + second, reply_ends=[5.25])
    assert call_cost_figures.split_at(first + second, [5.25]) == [first, second]
    figures = call_cost_figures.heard([log])
    assert figures["underruns"] == 1 and figures["underrun_ms"] == pytest.approx(50, abs=0.1)
    unsplit = call_cost_figures.heard([call_cost_figures.CallerLog(utterances=[(0.0, 4.0)], frames=first + second)])
    assert unsplit["underruns"] == 2  # without the reply end the 0.6 s between replies would count


def test_caller_errors_are_reported():
    figures = call_cost_figures.heard([call_cost_figures.CallerLog(error="ConnectionClosedError: 4401")])
    assert figures["caller_errors"] == ["ConnectionClosedError: 4401"] and figures["turns"] == 0
    assert figures["ttfat_ms_p50"] is None


def test_per_call_cpu_subtracts_the_idle_cluster():
    # 30 s, 5 callers: the proxy used 3.0 s more than idle -> 3000 / 30 / 5 = 20 ms/s per call;
    # the edge 1.5 s more -> 10; ASR 0.05 s more -> 0.33, under 0.5: left out.
    idle = {"proxy": 1.0, "edge": 0.5, "asr": 0.2}
    busy = {"proxy": 4.0, "edge": 2.0, "asr": 0.25}
    figures = call_cost_figures.per_call_cpu(idle, busy, callers=5, seconds=30)
    assert figures["ms_per_s_per_call"] == {"proxy": 20.0, "edge": 10.0}
    assert list(figures["ms_per_s_per_call"]) == ["proxy", "edge"]  # largest first
    assert figures["total_ms_per_s_per_call"] == 30.0
    with pytest.raises(ValueError):
        call_cost_figures.per_call_cpu(idle, busy, callers=0, seconds=30)


def test_speech_plan_spreads_the_first_utterances_over_one_period():
    plan = call_cost_figures.speech_plan(callers=4, seconds=30, every_s=20)
    assert plan == [[2.0, 22.0], [7.0, 27.0], [12.0], [17.0]]
    with pytest.raises(ValueError):
        call_cost_figures.speech_plan(callers=1, seconds=30, every_s=0)
