"""Process-wide runtime settings."""

import os
import platform
import subprocess
import sys

import pytest

CODE = "from transferlab.runtime import tune_allocator; print(tune_allocator())"


def _tuned(env_value: str | None) -> str:
    env = {k: v for k, v in os.environ.items() if k != "TRANSFERLAB_SYSTEM_MALLOC"}
    if env_value is not None:
        env["TRANSFERLAB_SYSTEM_MALLOC"] = env_value
    return subprocess.run([sys.executable, "-c", CODE], env=env, capture_output=True, text=True,
                          check=True).stdout.strip()


@pytest.mark.skipif(platform.libc_ver()[0] != "glibc", reason="the allocator tuning is for glibc")
def test_allocator_tuning_is_on_by_default_and_can_be_turned_off():
    assert _tuned(None) == "True"
    assert _tuned("1") == "False"
