"""sciml asks OpenMP threads to sleep while waiting, when it can (see sciml.threads)."""

import os
import subprocess
import sys

import pytest


def policy_after(code: str, **env) -> str:
    environment = {k: v for k, v in os.environ.items() if k not in ("OMP_WAIT_POLICY", "GOMP_SPINCOUNT")}
    result = subprocess.run([sys.executable, "-c", code + "\nimport os; print(os.environ.get('OMP_WAIT_POLICY'))"],
                            env={**environment, **env}, capture_output=True, text=True, check=True)
    return result.stdout.split()[-1]


@pytest.mark.parametrize("code, env, expected", [
    ("import sciml, torch", {}, "PASSIVE"),                        # the sciml command's order
    ("import torch, sciml", {}, "None"),                           # too late: libgomp read its environment
    ("import sciml", {"OMP_WAIT_POLICY": "ACTIVE"}, "ACTIVE"),     # the user's choice stands
    ("import sciml", {"GOMP_SPINCOUNT": "1000"}, "None"),
])
def test_wait_policy_is_set_only_before_torch_and_never_over_the_users(code, env, expected):
    assert policy_after(code, **env) == expected


def test_configure_openmp_reports_whether_the_policy_is_in_effect():
    code = "import torch\nfrom sciml.threads import configure_openmp\nprint(configure_openmp())"
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True,
                            env={k: v for k, v in os.environ.items() if k != "OMP_WAIT_POLICY"})
    assert result.stdout.split()[0] == "False"
