"""Long-lived processes exempt what they loaded from the garbage collector's full passes."""

from __future__ import annotations

import json
import subprocess
import sys


def test_a_gunicorn_worker_freezes_the_loaded_app() -> None:
    code = (
        "import gc, json, types\n"
        "from flaskmodel.settings import Settings\n"
        "from flaskmodel.web import create_app\n"
        "from flaskmodel.deploy.gunicorn_hooks import post_worker_init\n"
        "app = create_app(Settings(redis={'url': 'redis://127.0.0.1:1/0'}))\n"
        "loaded = len(gc.get_objects())\n"
        "post_worker_init(types.SimpleNamespace(wsgi=app, handle_exit=lambda *a: None))\n"
        "print(json.dumps([loaded, gc.get_freeze_count(), len(gc.get_objects())]))\n"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    loaded, frozen, tracked = json.loads(out.stdout.strip().splitlines()[-1])
    assert frozen > 0.8 * loaded  # the app's objects: out of the collector's reach
    assert tracked < 0.1 * loaded  # a full pass now walks only what came after
