"""The rendered configs: parsed by the real parsers, checked by the real programs."""

from __future__ import annotations

import configparser
import hashlib
import json
import os
import shutil
import socket
import stat
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import redis
from supervisor.datatypes import dict_of_key_value_pairs

from flaskmodel.deploy.gunicorn_launch import KEEPALIVE_SECONDS
from flaskmodel.deploy.nginx_conf import UPSTREAM_KEEPALIVE_SECONDS
from flaskmodel.deploy.paths import StackPaths, nginx_binary
from flaskmodel.deploy.supervisor_conf import render_deploy, render_stack
from flaskmodel.settings import Settings

NGINX = nginx_binary()
REDIS_SERVER = shutil.which("redis-server") or "/usr/bin/redis-server"


def _conf(path: Path) -> configparser.RawConfigParser:
    parser = configparser.RawConfigParser(inline_comment_prefixes=(";",))
    assert parser.read(path) == [str(path)]
    return parser


def _env(section: configparser.SectionProxy) -> dict[str, str]:
    """``environment=`` as supervisord's own parser splits it."""
    env: dict[str, str] = dict_of_key_value_pairs(section["environment"])
    return env


def _supervisor_view(conf: Path) -> dict[str, dict[str, Any]]:
    """The programs as supervisord's own option parser reads the config at start-up."""
    code = (
        "import json, sys\n"
        "from supervisor.options import ServerOptions\n"
        "opts = ServerOptions()\n"
        "opts.realize(args=['-c', sys.argv[1]])\n"
        "print(json.dumps({p.name: {'command': p.command, 'directory': p.directory,\n"
        "    'stdout_logfile': p.stdout_logfile, 'environment': p.environment}\n"
        "    for g in opts.process_group_configs for p in g.process_configs}, default=str))\n"
    )
    done = subprocess.run(
        [sys.executable, "-c", code, str(conf)],
        capture_output=True,
        text=True,
        timeout=30,
        check=False,
    )
    assert done.returncode == 0, done.stderr
    view: dict[str, dict[str, Any]] = json.loads(done.stdout)
    return view


@pytest.fixture
def run_dir(tmp_path: Path) -> Path:
    return tmp_path / "run"


def test_stack_supervisord_conf(run_dir: Path) -> None:
    settings = Settings(run_dir=run_dir)
    paths, effective = render_stack(settings, use_nginx=NGINX is not None)
    conf = _conf(paths.supervisord_conf)

    assert not conf.has_section("inet_http_server")
    assert conf["unix_http_server"]["file"] == str(run_dir / "supervisor.sock")
    assert conf["unix_http_server"]["chmod"] == "0700"
    assert conf["supervisorctl"]["serverurl"] == f"unix://{run_dir}/supervisor.sock"
    assert conf.has_section("rpcinterface:supervisor")
    assert conf["supervisord"]["nodaemon"] == "true"
    for key in ("logfile", "pidfile", "childlogdir"):
        assert conf["supervisord"][key].startswith(str(run_dir))

    names = ["redis", "worker", "dicom", "web"] + (["nginx"] if NGINX else [])
    assert list(paths.programs) == names
    assert [s.removeprefix("program:") for s in conf.sections() if s.startswith("program:")] == (
        names
    )
    programs = {name: conf[f"program:{name}"] for name in names}
    priorities = [int(programs[name]["priority"]) for name in names]
    assert priorities == sorted(priorities)  # redis first, stopped last
    for section in programs.values():
        assert section["autorestart"] == "true"
        assert section["redirect_stderr"] == "true"
        assert section["stopasgroup"] == section["killasgroup"] == "true"
        assert section["stdout_logfile"].startswith(str(run_dir / "logs"))
    assert int(programs["worker"]["stopwaitsecs"]) > settings.jobs.time_limit
    assert int(programs["web"]["stopwaitsecs"]) > settings.web.graceful_timeout
    assert programs["worker"]["stopsignal"] == programs["web"]["stopsignal"] == "TERM"

    url = f"unix://{run_dir}/redis.sock"
    assert effective.redis.url == url
    assert effective.run_dir == run_dir
    for name in ("worker", "dicom", "web"):
        env = _env(programs[name])
        assert env["FLASKMODEL_REDIS__URL"] == url
        assert env["FLASKMODEL_RUN_DIR"] == str(run_dir)
        assert env["PYTHONUNBUFFERED"] == "1"
        assert env["FLASKMODEL_WEB__WORKERS"] == str(settings.web.workers)
    assert programs["redis"]["command"] == f"{REDIS_SERVER} {run_dir}/redis.conf"
    assert programs["worker"]["command"].endswith("-m flaskmodel worker")
    web = programs["web"]["command"]
    assert "--config=python:flaskmodel.deploy.gunicorn_config" in web
    assert web.endswith("'flaskmodel.web:create_app()'")
    if NGINX:
        assert f"--bind=unix:{run_dir}/gunicorn.sock" in web
        assert programs["nginx"]["stopsignal"] == "QUIT"
    view = _supervisor_view(paths.supervisord_conf)
    assert list(view) == names
    assert view["worker"]["environment"]["FLASKMODEL_REDIS__URL"] == url


def test_stack_without_nginx_binds_gunicorn_itself(run_dir: Path) -> None:
    paths, _ = render_stack(Settings(run_dir=run_dir), use_nginx=False)
    conf = _conf(paths.supervisord_conf)
    assert not conf.has_section("program:nginx")
    assert paths.nginx_conf is None
    assert paths.gunicorn_sock is None
    assert paths.dicom_sock is None
    assert "--bind=127.0.0.1:8000 " in conf["program:web"]["command"]
    # Without nginx the front door's HTTP listener binds dicom.http_host:http_port itself.
    assert conf["program:dicom"]["command"].endswith(" dicom")


def test_stack_with_external_redis_has_no_redis_program(run_dir: Path) -> None:
    url = "redis://127.0.0.1:6390/3"
    paths, effective = render_stack(Settings(run_dir=run_dir, redis={"url": url}), use_nginx=False)
    conf = _conf(paths.supervisord_conf)
    assert not conf.has_section("program:redis")
    assert paths.programs == ("worker", "dicom", "web")
    assert paths.redis_conf is None
    assert not (run_dir / "redis.conf").exists()
    assert effective.redis.url == url
    assert _env(conf["program:worker"])["FLASKMODEL_REDIS__URL"] == url


def test_secrets_are_not_written(run_dir: Path, tmp_path: Path) -> None:
    settings = Settings(
        run_dir=run_dir, redis={"url": "redis://:url-s3cret@db:6379/0", "password": "pw-s3cret"}
    )
    render_stack(settings, use_nginx=NGINX is not None)
    render_deploy(settings, tmp_path / "deploy")
    for path in [*run_dir.rglob("*"), *(tmp_path / "deploy").rglob("*")]:
        if path.is_file():
            assert "s3cret" not in path.read_text(), path
    text = (tmp_path / "deploy" / "supervisord-flaskmodel.conf").read_text()
    assert "FLASKMODEL_REDIS__PASSWORD" in text  # named for the operator, in a comment


def test_run_dir_too_long_for_sockets(tmp_path: Path) -> None:
    with pytest.raises(ValueError, match="too long"):
        render_stack(Settings(run_dir=tmp_path / ("x" * 120)), use_nginx=False)


def test_values_reach_supervisord_unchanged(tmp_path: Path) -> None:
    run_dir = tmp_path / "r 1"
    queue = "a%(x)s,b=c 'q' d"
    paths, _ = render_stack(Settings(run_dir=run_dir, worker={"queue": queue}), use_nginx=False)
    view = _supervisor_view(paths.supervisord_conf)
    assert view["worker"]["environment"]["FLASKMODEL_WORKER__QUEUE"] == queue
    assert view["worker"]["environment"]["FLASKMODEL_RUN_DIR"] == str(run_dir)
    assert view["worker"]["stdout_logfile"] == str(run_dir / "logs" / "worker.log")
    assert view["redis"]["command"] == f"{REDIS_SERVER} '{run_dir}/redis.conf'"


def test_percent_in_run_dir_is_refused(tmp_path: Path) -> None:
    # supervisord %-expands some values twice (stdout_logfile): no escaping survives that.
    with pytest.raises(ValueError, match="%"):
        render_stack(Settings(run_dir=tmp_path / "100%"), use_nginx=False)


@pytest.mark.skipif(NGINX is None, reason="nginx is not installed")
def test_stack_nginx_conf_passes_nginx_t(run_dir: Path) -> None:
    settings = Settings(
        run_dir=run_dir,
        web={"max_request_bytes": 12345, "client_header_timeout": 2.5, "client_body_timeout": 7},
    )
    paths, _ = render_stack(settings, use_nginx=True)
    assert paths.nginx_conf is not None and paths.nginx_prefix is not None
    _nginx_t(paths.nginx_conf, paths.nginx_prefix)
    main = paths.nginx_conf.read_text()
    site = (paths.nginx_prefix / "flaskmodel.conf").read_text()
    assert "daemon off;" in main
    assert f"pid {paths.nginx_prefix}/nginx.pid;" in main
    assert "error_log stderr" in main
    assert f"listen 127.0.0.1:{settings.web.port};" in site
    assert f"server unix:{run_dir}/gunicorn.sock" in site
    assert "client_max_body_size 12345;" in site
    assert "client_header_timeout 2500ms;" in site
    assert "client_body_timeout 7000ms;" in site
    assert "error_page 413 /_flaskmodel/error/413;" in site
    assert "proxy_request_buffering on;" in site
    assert "proxy_http_version 1.1;" in site
    assert f"proxy_read_timeout {settings.jobs.time_limit + 30}s;" in site


@pytest.mark.skipif(NGINX is None, reason="nginx is not installed")
def test_dicom_front_door_is_rendered_when_enabled(run_dir: Path) -> None:
    settings = Settings(
        run_dir=run_dir,
        web={"max_request_bytes": 1000},
        dicom={"enabled": True, "max_stow_bytes": 5_000_000},
    )
    paths, _ = render_stack(settings, use_nginx=True)
    assert paths.dicom_sock == run_dir / "dicom.sock"
    assert paths.nginx_conf is not None and paths.nginx_prefix is not None
    conf = _conf(paths.supervisord_conf)
    dicom = conf["program:dicom"]
    console_script = Path(sys.executable).parent / "flaskmodel"
    assert dicom["command"] == f"{console_script} dicom --http-socket {run_dir}/dicom.sock"
    assert _env(dicom) == _env(conf["program:worker"]) == _env(conf["program:web"])
    # After Redis and the worker (it routes received series to jobs), before the public nginx.
    order = [int(conf[f"program:{name}"]["priority"]) for name in paths.programs]
    assert order == sorted(order)
    assert paths.programs.index("dicom") < paths.programs.index("nginx")
    assert int(dicom["stopwaitsecs"]) > settings.web.graceful_timeout
    view = _supervisor_view(paths.supervisord_conf)
    assert view["dicom"]["environment"] == view["worker"]["environment"]

    _nginx_t(paths.nginx_conf, paths.nginx_prefix)
    site = (paths.nginx_prefix / "flaskmodel.conf").read_text()
    assert f"server unix:{run_dir}/dicom.sock;" in site
    block = site[site.index("location /dicomweb/ {") :]
    block = block[: block.index("}")]
    assert "client_max_body_size 5000000;" in block
    assert "proxy_request_buffering off;" in block
    assert "proxy_send_timeout 600s;" in block and "proxy_read_timeout 600s;" in block
    assert "proxy_pass http://flaskmodel_dicom;" in block
    assert "client_max_body_size 1000;" in site  # the API's own limit is unchanged


def test_dicom_front_door_is_not_rendered_when_disabled(run_dir: Path, tmp_path: Path) -> None:
    settings = Settings(run_dir=run_dir, dicom={"enabled": False})
    paths, _ = render_stack(settings, use_nginx=NGINX is not None)
    assert "dicom" not in paths.programs
    assert paths.dicom_sock is None
    assert "[program:dicom]" not in paths.supervisord_conf.read_text()
    files = render_deploy(settings, tmp_path / "deploy")
    assert _conf(files[0]).sections() == ["program:flaskmodel-worker", "program:flaskmodel-web"]
    sites = [files[1]] + ([paths.nginx_prefix / "flaskmodel.conf"] if paths.nginx_prefix else [])
    for site in sites:
        assert "/dicomweb/" not in site.read_text() and "flaskmodel_dicom" not in site.read_text()


def _nginx_t(conf: Path, prefix: Path) -> None:
    assert NGINX is not None
    done = subprocess.run(
        [str(NGINX), "-t", "-e", "stderr", "-p", str(prefix), "-c", str(conf)],
        capture_output=True,
        text=True,
        timeout=30,
        check=False,
    )
    assert done.returncode == 0, done.stderr
    assert "test is successful" in done.stderr


def test_redis_conf_content(run_dir: Path) -> None:
    paths, effective = render_stack(Settings(run_dir=run_dir), use_nginx=False)
    assert paths.redis_conf is not None
    text = paths.redis_conf.read_text()
    lines = set(text.splitlines())
    # A generated password, kept 0600 in the run directory; the config holds only its hash.
    assert paths.redis_password_file == run_dir / "redis.password"
    assert stat.S_IMODE(paths.redis_password_file.stat().st_mode) == 0o600
    password = paths.redis_password_file.read_text().strip()
    assert len(password) == 64
    assert effective.redis.password is not None
    assert effective.redis.password.get_secret_value() == password
    assert password not in text
    digest = hashlib.sha256(password.encode()).hexdigest()
    assert f"user default on #{digest} ~* &* +@all" in lines
    # ... kept between runs, and passed to the programs through supervisord's environment only.
    _, effective_again = render_stack(Settings(run_dir=run_dir), use_nginx=False)
    assert effective_again.redis.password == effective.redis.password
    for path in run_dir.rglob("*"):
        if path.is_file() and path != paths.redis_password_file:
            assert password.encode() not in path.read_bytes(), path
    for line in (
        "port 0",
        f'unixsocket "{run_dir}/redis.sock"',
        "unixsocketperm 700",
        "appendonly yes",
        "appendfsync everysec",
        "daemonize no",
        'logfile ""',
        f'dir "{run_dir}/redis"',
    ):
        assert line in lines


@pytest.fixture
def port_6379_taken() -> Iterator[None]:
    """Something else on 6379 (ours if it was free): our Redis must neither use nor mind it."""
    sock = socket.socket()
    try:
        sock.bind(("127.0.0.1", 6379))
        sock.listen()
    except OSError:
        pass  # already taken by someone else: just as good
    yield
    sock.close()


def _start_redis(paths: StackPaths) -> subprocess.Popen[bytes]:
    assert paths.redis_conf is not None and paths.redis_sock is not None
    proc = subprocess.Popen(
        [REDIS_SERVER, str(paths.redis_conf)],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    deadline = time.monotonic() + 10
    while not paths.redis_sock.exists():
        assert proc.poll() is None, "redis-server exited"
        assert time.monotonic() < deadline, "redis socket never appeared"
        time.sleep(0.05)
    return proc


@pytest.mark.usefixtures("port_6379_taken")
def test_redis_runs_with_rendered_conf(run_dir: Path) -> None:
    paths, effective = render_stack(Settings(run_dir=run_dir), use_nginx=False)
    assert effective.redis.url is not None and paths.redis_data is not None
    assert effective.redis.password is not None
    password = effective.redis.password.get_secret_value()
    proc = _start_redis(paths)
    try:
        refused = []
        for wrong in (None, "wrong-password"):
            anonymous = redis.Redis.from_url(effective.redis.url, password=wrong)
            try:
                with pytest.raises(redis.AuthenticationError) as caught:
                    anonymous.set("flaskmodel:test", "nope")
                refused.append(str(caught.value))
            finally:
                anonymous.close()
        print(f"\nwithout the password: {refused}")
        client = redis.Redis.from_url(effective.redis.url, password=password)
        try:
            assert client.ping()
            assert client.config_get("port")["port"] == "0"
            client.set("flaskmodel:test", "kept")
            deadline = time.monotonic() + 10
            while not list(paths.redis_data.rglob("appendonly.aof*")):
                assert time.monotonic() < deadline, "no AOF file appeared"
                time.sleep(0.1)
            client.shutdown()
        finally:
            client.close()
        assert proc.wait(timeout=10) == 0
        # Data survives into the next run in the same run directory.
        proc = _start_redis(paths)
        client = redis.Redis.from_url(effective.redis.url, password=password)
        try:
            assert client.get("flaskmodel:test") == b"kept"
        finally:
            client.close()
    finally:
        proc.terminate()
        proc.wait(timeout=10)


def test_gunicorn_config_reads_env(run_dir: Path) -> None:
    """The packaged config as gunicorn loads it (``--config python:``), in a fresh interpreter."""
    settings = Settings(run_dir=run_dir, web={"workers": 3, "worker_connections": 77, "port": 9123})
    paths, effective = render_stack(settings, use_nginx=False)
    code = (
        "import importlib, json, sys, types\n"
        "from gunicorn.config import Config\n"
        "ns = vars(importlib.import_module('flaskmodel.deploy.gunicorn_config'))\n"
        "cfg = Config()\n"
        "public = {k: v for k, v in ns.items() if not k.startswith('_') and k != 'annotations'\n"
        "          and not callable(v) and not isinstance(v, types.ModuleType)}\n"
        "unknown = sorted(k for k in public if k not in cfg.settings)\n"
        "for k, v in ns.items():\n"
        "    if k in cfg.settings: cfg.set(k, v)\n"  # gunicorn's own validators
        "patched = ['gevent', 'flask', 'redis', 'kombu', 'celery', 'requests']\n"
        "imported = [m for m in patched if m in sys.modules]\n"
        "print(json.dumps({'unknown': unknown, 'patched': imported,\n"
        "    'bind': cfg.bind, 'workers': cfg.workers, 'worker_class': cfg.worker_class_str,\n"
        "    'worker_connections': cfg.worker_connections, 'graceful': cfg.graceful_timeout,\n"
        "    'keepalive': cfg.keepalive, 'hook': cfg.post_worker_init.__module__,\n"
        "    'accesslog': cfg.accesslog, 'errorlog': cfg.errorlog,\n"
        "    'control_socket_disable': cfg.control_socket_disable}))\n"
    )
    env = {k: v for k, v in os.environ.items() if not k.startswith("FLASKMODEL_")}
    env.update(effective.env())
    done = subprocess.run(
        [sys.executable, "-c", code],
        env=env,
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert done.returncode == 0, done.stderr
    got = json.loads(done.stdout)
    assert got == {
        "unknown": [],
        # gunicorn's gevent worker patches after fork; what the master imported before that
        # would keep blocking sockets and locks.
        "patched": [],
        "bind": ["127.0.0.1:9123"],
        "workers": 3,
        "worker_class": "flaskmodel.deploy.gunicorn_worker.LeanGeventWorker",
        "worker_connections": 77,
        "graceful": settings.web.graceful_timeout,
        "keepalive": KEEPALIVE_SECONDS,
        "hook": "flaskmodel.deploy.gunicorn_hooks",
        "accesslog": None,  # nginx logs access; without it the command line turns it on
        "errorlog": "-",
        "control_socket_disable": True,
    }
    # nginx closes idle upstream connections before gunicorn would: never a 502 on reuse.
    assert UPSTREAM_KEEPALIVE_SECONDS < KEEPALIVE_SECONDS
    # use_nginx=False: gunicorn faces clients, so its command line turns its access log on.
    assert "--access-logfile=-" in paths.supervisord_conf.read_text()


def test_behind_nginx_only_nginx_writes_the_access_log(run_dir: Path) -> None:
    paths, _ = render_stack(Settings(run_dir=run_dir), use_nginx=True)
    assert "--access-logfile" not in paths.supervisord_conf.read_text()
    assert paths.nginx_conf is not None
    assert "access_log /dev/stdout flaskmodel buffer=" in paths.nginx_conf.read_text()


def test_render_deploy(tmp_path: Path) -> None:
    settings = Settings(
        web={"port": 8100, "max_request_bytes": 1000},
        redis={"url": "redis://10.0.0.5:6379/0"},
        models_root=Path("/srv/models"),
    )
    out = tmp_path / "deploy"
    files = render_deploy(settings, out)
    names = [p.name for p in files]
    assert names == ["supervisord-flaskmodel.conf", "nginx-flaskmodel.conf"]
    assert all(p.parent == out and p.is_file() for p in files)
    supervisor_conf, site = files

    conf = _conf(supervisor_conf)
    programs = ["flaskmodel-worker", "flaskmodel-dicom", "flaskmodel-web"]
    assert conf.sections() == [f"program:{name}" for name in programs]
    worker, web = conf["program:flaskmodel-worker"], conf["program:flaskmodel-web"]
    assert int(worker["stopwaitsecs"]) > settings.jobs.time_limit
    config = "--config=python:flaskmodel.deploy.gunicorn_config"
    assert f"{config} --bind=127.0.0.1:8100 'flaskmodel.web:create_app()'" in web["command"]
    assert conf["program:flaskmodel-dicom"]["command"].endswith(" dicom")
    env = _env(worker)
    assert env["FLASKMODEL_REDIS__URL"] == "redis://10.0.0.5:6379/0"
    assert env["FLASKMODEL_MODELS_ROOT"] == "/srv/models"
    assert "PYTHONPATH" not in env
    assert str(tmp_path) not in worker["command"]

    # The program file as a system supervisord would include it from conf.d.
    main = tmp_path / "supervisord.conf"
    main.write_text(
        "[supervisord]\n"
        f"logfile={tmp_path}/sv.log\npidfile={tmp_path}/sv.pid\nchildlogdir={tmp_path}\n"
        f"[include]\nfiles={supervisor_conf}\n"
    )
    assert set(_supervisor_view(main)) == set(programs)

    text = site.read_text()
    assert "listen 80;" in text
    assert "server 127.0.0.1:8100 fail_timeout=0;" in text
    assert "client_max_body_size 1000;" in text
    assert "server 127.0.0.1:8104;" in text  # the front door's HTTP listener
    if NGINX is not None:
        prefix = tmp_path / "nginx"
        prefix.mkdir()
        wrapper = tmp_path / "nginx.conf"
        wrapper.write_text(
            f"pid {prefix}/nginx.pid;\nerror_log stderr;\nevents {{}}\n"
            f"http {{\n client_body_temp_path {prefix}/body;\n proxy_temp_path {prefix}/proxy;\n"
            f" include {site};\n}}\n"
        )
        _nginx_t(wrapper, prefix)


def test_metrics_allow_restricts_metrics_in_nginx(run_dir: Path) -> None:
    settings = Settings(run_dir=run_dir, metrics={"allow": ["127.0.0.1", "10.0.0.0/8"]})
    paths, _ = render_stack(settings, use_nginx=True)
    assert paths.nginx_conf is not None and paths.nginx_prefix is not None
    _nginx_t(paths.nginx_conf, paths.nginx_prefix)
    site = (paths.nginx_prefix / "flaskmodel.conf").read_text()
    block = site[site.index("location = /metrics {") :]
    assert "allow 127.0.0.1;" in block and "allow 10.0.0.0/8;" in block
    assert block.index("allow 10.0.0.0/8;") < block.index("deny all;")
    public = Settings(run_dir=run_dir)
    paths, _ = render_stack(public, use_nginx=True)
    assert paths.nginx_prefix is not None
    assert "/metrics" not in (paths.nginx_prefix / "flaskmodel.conf").read_text()


def test_metrics_allow_refuses_what_is_not_an_address() -> None:
    with pytest.raises(ValueError, match="not-an-address"):
        Settings(metrics={"allow": ["not-an-address"]})
