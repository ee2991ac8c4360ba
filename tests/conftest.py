"""Shared fixtures. The default model is fetched through pyllm's own pull mechanism into
$PYLLM_HOME (default ~/.cache/pyllm), once per machine."""

from __future__ import annotations

from pathlib import Path

import pytest


@pytest.fixture(autouse=True)
def _no_conversation_log(monkeypatch: pytest.MonkeyPatch) -> None:
    """Commands run by tests do not log into the user's $PYLLM_HOME/logs.db; the log's own
    tests turn it back on (PYLLM_LOG=1) with a temporary PYLLM_HOME."""
    monkeypatch.setenv("PYLLM_LOG", "0")


@pytest.fixture(scope="session")
def smollm2_path() -> Path:
    """Path to SmolLM2-135M-Instruct.Q4_1.gguf, pulled (and hash-checked) on first use."""
    from pyllm.weights.pull import ensure_default_model

    return ensure_default_model(progress=False)


def _register_hypothesis_profiles() -> None:
    """Deadlines off everywhere: this machine is shared and timing-noisy; kernels are judged on
    results here and on speed in bench/. The sanitizer run uses fewer examples (ASan is slow)."""
    from hypothesis import HealthCheck, settings

    settings.register_profile("default", deadline=None,
                              suppress_health_check=[HealthCheck.too_slow])
    settings.register_profile("sanitizer", deadline=None, max_examples=10,
                              suppress_health_check=[HealthCheck.too_slow])
    settings.load_profile("default")


_register_hypothesis_profiles()
