"""X-Ray tracing is opt-in: off, the handlers never load the X-Ray SDK (its cold-start cost)."""

from __future__ import annotations

import json
import os
import subprocess
import sys

import pytest

from shared.core.settings import PROJECT_ROOT

PROBE = """
import json, sys
import handlers.mirror, handlers.reverse_mirror, handlers.backfill
from aws_lambda_powertools import Tracer
print(json.dumps({"xray_loaded": "aws_xray_sdk" in sys.modules, "tracer_built": bool(Tracer._config["service"])}))
"""


def probe(disabled: str) -> dict[str, bool]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("POWERTOOLS_")}
    env.update(POWERTOOLS_TRACE_DISABLED=disabled, AWS_REGION="us-east-1", AWS_LAMBDA_FUNCTION_NAME="probe")
    out = subprocess.run([sys.executable, "-c", PROBE], env=env, cwd=PROJECT_ROOT, capture_output=True, text=True,
                         check=True, timeout=120)
    return json.loads(out.stdout.strip().splitlines()[-1])


@pytest.mark.parametrize("disabled", ["true", "1"])
def test_with_tracing_off_no_handler_loads_the_xray_sdk(disabled):
    assert probe(disabled) == {"xray_loaded": False, "tracer_built": False}


def test_with_tracing_on_the_handlers_are_captured_by_powertools():
    assert probe("false") == {"xray_loaded": True, "tracer_built": True}
