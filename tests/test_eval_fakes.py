"""The scripted evaluation backend (``support.fakes``) behaves as the test_eval_* modules rely on."""

from __future__ import annotations

import pytest

from support.fakes import ScriptedBackend
from zephyr.generation.params import BackendError, SamplingParams


def test_scripted_backend_records_calls_and_fails_on_cue():
    backend = ScriptedBackend("b", lambda c, p: c[-1]["content"].upper(), fail_after=2)
    params = SamplingParams(temperature=0.0, max_tokens=512)
    assert backend.generate([[{"role": "user", "content": "hi"}]], params)[0][0].text == "HI"
    backend.generate([[{"role": "user", "content": "x"}]], params)
    with pytest.raises(BackendError, match="scripted outage"):
        backend.generate([[{"role": "user", "content": "y"}]], params)
    assert backend.user_prompts() == ["hi", "x"]
