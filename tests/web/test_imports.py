"""The web process never imports TensorFlow, pydicom or grpc, whichever API it serves."""

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
        "assert client.get('/openapi.json').status_code == 200\n"
        "assert client.get('/docs').status_code == 200\n"
        "assert client.get('/v2').status_code == 200\n"
        "assert client.get('/v2/health/live').status_code == 200\n"
        "for path in ('/v1/models/tiny', '/v1/models/tiny/metadata', '/v2/models/tiny'):\n"
        "    assert client.get(path).status_code == 503\n"
        "body = {'instances': [[1]]}\n"
        "assert client.post('/v1/models/tiny:predict', json=body).status_code == 503\n"
        "assert client.post('/v2/models/tiny/infer', data=b'{}').status_code == 503\n"
        "print(json.dumps(sorted(m for m in sys.modules if m.split('.')[0] in "
        "('tensorflow', 'pydicom', 'grpc', 'keras'))))\n"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert json.loads(out.stdout.strip().splitlines()[-1]) == []


def test_gunicorn_hooks_import_nothing_gevent_patches() -> None:
    """Gunicorn's master imports the hooks before its gevent workers monkey-patch."""
    code = (
        "import json, sys\n"
        "import flaskmodel.deploy.gunicorn_hooks\n"
        "print(json.dumps(sorted(m for m in sys.modules if m.split('.')[0] in "
        "('flask', 'redis', 'kombu', 'celery', 'requests', 'urllib3', 'gevent', 'werkzeug'))))\n"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert json.loads(out.stdout.strip().splitlines()[-1]) == []
