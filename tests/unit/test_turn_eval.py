"""The evaluation set's spec and labels, and the scoring of dialogues on synthetic timelines whose
answer is known (no cluster, no clock)."""

from __future__ import annotations

from collections import Counter

import numpy as np
import pytest
import yaml
from pydantic import ValidationError

from load.eval_set import LEAD_S, RATE, TAIL_S, Dialogue, Step, load_spec, noise_burst, render
from load.turn_scoring import Sound, Timeline, score, summarize


def test_the_spec_holds_a_few_dozen_dialogues_of_every_category_with_consistent_labels():
    dialogues = load_spec()
    counts = Counter(d.category for d in dialogues)
    assert 30 <= len(dialogues) <= 60 and set(counts) == {"complete", "pause", "backchannel", "barge_in", "noise",
                                                          "silent"}
    assert len({d.name for d in dialogues}) == len(dialogues)
    for dialogue in dialogues:
        labels = [s.label for s in dialogue.steps if s.say]
        if dialogue.category == "pause":
            pauses = [s.pause for s in dialogue.steps if s.pause]
            assert labels == ["question", "continuation"] and len(pauses) == 1 and 0.5 <= pauses[0] <= 1.2
        elif dialogue.category in ("backchannel", "barge_in"):
            assert labels == ["question", dialogue.category]
            assert dialogue.steps[1].wait_agent  # the overlap comes while the agent speaks
        elif dialogue.category == "noise":
            assert labels == ["question"] and any(s.noise for s in dialogue.steps) and dialogue.steps[1].wait_agent
        elif dialogue.category == "silent":
            assert not labels and not any(s.noise for s in dialogue.steps)


def test_a_step_is_exactly_one_thing():
    with pytest.raises(ValidationError, match="exactly one"):
        Step(say="hi", pause=1.0)
    with pytest.raises(ValidationError):
        Step(say="hi", label="cough")


def fake_speech(text: str, rate: int) -> np.ndarray:
    """0.1 s of silence, 0.1 s per word of a tone, 0.1 s of silence (as a synthesizer pads its speech)."""
    tone = 0.5 * np.sin(np.arange(int(0.1 * rate * len(text.split()))) / 3)
    return np.concatenate([np.zeros(rate // 10), tone, np.zeros(rate // 10)])


def test_render_places_each_sound_where_it_is_heard_and_is_deterministic():
    dialogue = Dialogue("pause-x", "pause", (Step(say="one two three"), Step(pause=0.8),
                                             Step(say="four five", label="continuation"), Step(noise=0.3)))
    audio, spans, waits = render(dialogue, speak=fake_speech)
    assert [s.kind for s in spans] == ["question", "continuation", "noise"]
    # The synthesizer's leading and trailing silence is cut: a pause is as long as the spec says.
    assert spans[0].start_s == pytest.approx(LEAD_S, abs=0.001) and spans[0].end_s == pytest.approx(LEAD_S + 0.3, abs=0.001)
    assert spans[1].start_s - spans[0].end_s == pytest.approx(0.8, abs=0.001)
    assert audio.size == pytest.approx((LEAD_S + 0.3 + 0.8 + 0.2 + 0.3 + TAIL_S) * RATE, abs=320)
    # After the last sound, on a caller frame boundary: the reply's start is awaited.
    assert [(w.offset, w.speaking_s) for w in waits] == [(audio.size - int(TAIL_S * RATE), 0.0)]
    assert waits[0].offset % 320 == 0 and waits[0].offset >= spans[-1].end_s * RATE
    again, _, _ = render(dialogue, speak=fake_speech)
    assert np.array_equal(audio, again)
    assert 0.1 < np.abs(noise_burst(0.3, 1)).max() <= 0.4 and np.array_equal(noise_burst(0.3, 1), noise_burst(0.3, 1))


def frames(start: float, end: float) -> list[float]:
    return list(np.arange(start, end, 0.02))


def test_a_reply_during_a_mid_thought_pause_is_premature():
    sounds = [Sound("question", 1.0, 2.0), Sound("continuation", 2.8, 3.6)]
    early = score("pause", Timeline(sounds, frames(2.9, 6.0)))
    assert early["premature"] and early["ttfat_ms"] is None
    patient = score("pause", Timeline(sounds, frames(4.1, 6.0)))
    assert not patient["premature"] and patient["ttfat_ms"] == pytest.approx(500, abs=1)


def test_a_backchannel_that_brings_an_interruption_is_counted():
    sounds = [Sound("question", 0.5, 1.5), Sound("backchannel", 4.0, 4.4)]
    kept = score("backchannel", Timeline(sounds, frames(2.3, 10.0), [(4.6, {"type": "backchannel"})]))
    assert kept["agent_speaking"] and not kept["interrupted"]
    cut = score("backchannel", Timeline(sounds, frames(2.3, 4.3), [(4.9, {"type": "interruption"})]))
    assert cut["interrupted"]
    # Heard late ("MM5" for an espeak "mm-hmm"): the agent resumed on the timeout, then was cut.
    late = score("backchannel", Timeline(sounds, frames(2.3, 12.0), [(6.6, {"type": "agent_resumed"}),
                                                                    (10.5, {"type": "interruption"})]))
    assert late["interrupted"] and late["resumed"]


def test_a_barge_in_is_missed_when_the_agent_stops_late_or_not_at_all():
    sounds = [Sound("question", 0.5, 1.5), Sound("barge_in", 4.0, 6.0)]
    interruption = [(4.5, {"type": "interruption"})]
    prompt = score("barge_in", Timeline(sounds, frames(2.3, 4.3), interruption, ended=12.0))
    assert not prompt["missed"] and prompt["stop_ms"] == pytest.approx(280, abs=21)
    late = score("barge_in", Timeline(sounds, frames(2.3, 4.7), interruption, ended=12.0))
    assert late["missed"] and late["stop_ms"] == pytest.approx(680, abs=21)
    ignored = score("barge_in", Timeline(sounds, frames(2.3, 11.0), [], ended=12.0))
    assert ignored["missed"] and not ignored["interrupted"]
    never_stopped = score("barge_in", Timeline(sounds, frames(2.3, 12.0), interruption, ended=12.0))
    assert never_stopped["missed"] and never_stopped["stop_ms"] is None


def test_noise_that_paused_the_agent_and_resumed_is_a_recovery_and_silence_gets_no_reply():
    sounds = [Sound("question", 0.5, 1.5), Sound("noise", 4.0, 4.5)]
    events = [(4.3, {"type": "agent_paused"}), (5.2, {"type": "agent_resumed"})]
    row = score("noise", Timeline(sounds, frames(2.3, 4.3) + frames(5.2, 9.0), events))
    assert row["paused"] and row["resumed"] and not row["interrupted"]
    assert score("silent", Timeline([], []))["spurious_reply"] is False
    assert score("silent", Timeline([], frames(3.0, 4.0)))["spurious_reply"] is True


def test_summarize_counts_each_outcome():
    rows = [{"category": "complete", "premature": False, "answered": True, "ttfat_ms": 400.0},
            {"category": "pause", "premature": True, "answered": True, "ttfat_ms": None},
            {"category": "barge_in", "missed": True, "stop_ms": 900.0, "interrupted": True, "resumed": False,
             "agent_speaking": True},
            {"category": "backchannel", "interrupted": True, "resumed": False, "agent_speaking": True},
            {"category": "noise", "interrupted": False, "resumed": True, "agent_speaking": False},
            {"category": "silent", "spurious_reply": False}]
    summary = summarize(rows)
    assert summary["premature_replies"] == 1 and summary["turns"] == 2 and summary["premature_in_pauses"] == 1
    assert summary["missed_barge_ins"] == 1 and summary["backchannels_interrupted"] == 1
    assert summary["false_interruption_recoveries"] == 1 and summary["not_speaking_at_overlap"] == 1
    assert summary["ttfat_p50_ms"] == 400.0 and summary["spurious_replies"] == 0 and summary["unanswered"] == 0


def test_turn_latency_credits_each_reply_to_its_own_utterance():
    from load.timed_call import TimedCall
    from load.turn_latency import turn_rows

    bounds = [(0, 100), (200, 300)]
    call = TimedCall(sent={0: 1.0, 100: 2.0, 200: 10.0, 300: 11.0},
                     audio=[2.9, 2.92, 11.8],
                     events=[(2.85, {"type": "agent_audio_start"}), (11.7, {"type": "agent_audio_start"})])
    assert [round(row["ttfat_ms"]) for row in turn_rows(call, bounds)] == [900, 800]
    # The first reply comes only after the second utterance ended: neither turn is credited with it.
    late = TimedCall(sent=call.sent, audio=[11.3], events=[(11.2, {"type": "agent_audio_start"})])
    assert [row["ttfat_ms"] for row in turn_rows(late, bounds)] == [None, None]


def test_a_wait_for_the_agent_sits_on_a_frame_boundary_where_the_overlap_starts():
    dialogue = Dialogue("barge_in-x", "barge_in", (Step(say="one two three"), Step(wait_agent=1.5),
                                                    Step(say="stop please", label="barge_in")))
    _, spans, waits = render(dialogue, speak=fake_speech)
    assert waits[0].speaking_s == 1.5 and waits[0].offset % 320 == 0
    assert spans[1].start_s * RATE == pytest.approx(waits[0].offset, abs=0.5)


def test_benchmark_edge_settings_nest_and_merge_into_the_edge_args():
    import argparse

    from load.reference_cluster import edge_setting, merge, nested

    settings = nested([edge_setting("segments.first_min_words=1"), edge_setting("turn_taking.preemptive.silence_ms=100")])
    assert settings == {"segments": {"first_min_words": 1}, "turn_taking": {"preemptive": {"silence_ms": 100}}}
    edge = {"turn_taking": {"min_silence_ms": 300, "preemptive": {"enabled": True}}}
    merge(edge, settings)
    assert edge == {"turn_taking": {"min_silence_ms": 300, "preemptive": {"enabled": True, "silence_ms": 100}},
                    "segments": {"first_min_words": 1}}
    with pytest.raises(argparse.ArgumentTypeError):
        edge_setting("segments.first_min_words")


def test_the_reference_config_can_turn_the_real_asrs_partials_off_and_set_edge_args(tmp_path):
    from load.reference_cluster import Ports, Timings, reference_config

    ports = Ports(gcs=1, dashboard=2, http=3, grpc=4)
    for partials in (True, False):
        path = reference_config(tmp_path / f"{partials}.yaml", Timings(), ports, end_of_turn="smart_turn", real_asr=True,
                                partials=partials, edge_args={"turn_taking": {"preemptive": {"silence_ms": 96}}})
        apps = {app["name"]: app["args"] for app in yaml.safe_load(path.read_text())["applications"]}
        assert ("partial_interval_ms" in apps["asr"]) is not partials
        assert apps["edge"]["turn_taking"]["preemptive"] == {"enabled": True, "silence_ms": 96}
        assert apps["edge"]["turn_taking"]["end_of_turn"]["kind"] == "smart_turn"
        assert apps["asr"]["engine"]["model"] == "models/cpu/whisper-base"
    tiny_en = reference_config(tmp_path / "tiny.en.yaml", Timings(), ports, real_asr=True,
                               asr_model="models/cpu/whisper-tiny.en")
    apps = {app["name"]: app["args"] for app in yaml.safe_load(tiny_en.read_text())["applications"]}
    assert apps["asr"]["engine"]["kind"] == "faster_whisper"
    assert apps["asr"]["engine"]["model"] == "models/cpu/whisper-tiny.en"


def test_an_operators_own_dialogues_load_from_their_file_and_a_bad_category_is_refused(tmp_path):
    own = tmp_path / "calls.yaml"
    own.write_text(yaml.safe_dump({"categories": {
        "pause": [[{"say": "My order number is"}, {"pause": 1.5}, {"say": "seven seven two.", "label": "continuation"}]],
        "barge_in": [[{"say": "Read me my balance."}, {"wait_agent": 2.0}, {"say": "No, stop.", "label": "barge_in"}]],
    }}, sort_keys=False))
    dialogues = load_spec(own)
    assert [(d.name, d.category) for d in dialogues] == [("pause-1", "pause"), ("barge_in-1", "barge_in")]
    assert dialogues[0].steps[1].pause == 1.5 and dialogues[1].steps[1].wait_agent == 2.0

    own.write_text(yaml.safe_dump({"categories": {"chitchat": [[{"say": "hello"}]]}}))
    with pytest.raises(ValidationError, match="chitchat"):
        load_spec(own)
