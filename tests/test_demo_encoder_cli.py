"""`copycatch demo --encoder` is a door onto bench.encoder_demo (its story is tested in tests/test_encoders.py on the
tiny preset): the CLI passes the seed and data folder through api.demo, over HTTP, and refuses another modality."""

import inspect

import copycatch.bench.encoder_demo as encoder_demo
from copycatch.cli.main import main
from copycatch.cli.options import EXIT_ERROR


def test_demo_encoder_runs_the_encoder_story_with_the_given_seed_over_http(monkeypatch, capsys):
    calls = []
    story = inspect.signature(encoder_demo.run_encoder_demo)
    monkeypatch.setattr(encoder_demo, "run_encoder_demo", lambda **kw: calls.append(kw) or {})
    assert main(["demo", "--encoder", "--seed", "3", "--data-dir", "/nowhere", "-q"]) == 0
    assert len(calls) == 1 and calls[0]["seed"] == 3 and calls[0]["data_dir"] == "/nowhere" and calls[0]["http"]
    story.bind(**calls[0])  # the door passes only what the story takes


def test_demo_encoder_refuses_a_text_or_audio_modality(monkeypatch, capsys):
    monkeypatch.setattr(encoder_demo, "run_encoder_demo", lambda **kw: {})
    assert main(["demo", "--encoder", "--modality", "text"]) == EXIT_ERROR
    assert "--encoder is the image encoder story" in capsys.readouterr().err
