"""The web process never imports TensorFlow, pydicom or grpc."""

from __future__ import annotations

import json
import subprocess
import sys


def test_web_tier_imports_no_heavy_modules() -> None:
    code = (
        "import json, sys\n"
        "from flaskmodel.settings import Settings\n"
        "from flaskmodel.web import create_app\n"
        "app = create_app(Settings(redis={'url': 'redis://127.0.0.1:1/0'}))\n"
        "client = app.test_client()\n"
        "client.get('/healthz')\n"
        "print(json.dumps(sorted(m for m in sys.modules if m.split('.')[0] in "
        "('tensorflow', 'pydicom', 'grpc', 'keras'))))\n"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert json.loads(out.stdout.strip().splitlines()[-1]) == []
