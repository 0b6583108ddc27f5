"""load/cost.py: $ per conversation-minute from measured concurrency and prices, on inputs whose
answers are worked out by hand."""

from __future__ import annotations

import pytest

from load import cost


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
