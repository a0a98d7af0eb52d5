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

from flaskmodel.deploy.render import StackPaths, nginx_binary, render_deploy, render_stack
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

    names = ["redis", "worker", "web"] + (["nginx"] if NGINX else [])
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
    for name in ("worker", "web"):
        env = _env(programs[name])
        assert env["FLASKMODEL_REDIS__URL"] == url
        assert env["FLASKMODEL_RUN_DIR"] == str(run_dir)
        assert env["PYTHONUNBUFFERED"] == "1"
        assert env["FLASKMODEL_WEB__WORKERS"] == str(settings.web.workers)
    assert programs["redis"]["command"] == f"{REDIS_SERVER} {run_dir}/redis.conf"
    assert programs["worker"]["command"].endswith("-m flaskmodel worker")
    web = programs["web"]["command"]
    assert f"-c {run_dir}/gunicorn.conf.py" in web
    assert web.endswith("'flaskmodel.web:create_app()'")
    if NGINX:
        assert f"--bind unix:{run_dir}/gunicorn.sock" in web
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
    assert "--bind" not in conf["program:web"]["command"]


def test_stack_with_external_redis_has_no_redis_program(run_dir: Path) -> None:
    url = "redis://127.0.0.1:6390/3"
    paths, effective = render_stack(Settings(run_dir=run_dir, redis={"url": url}), use_nginx=False)
    conf = _conf(paths.supervisord_conf)
    assert not conf.has_section("program:redis")
    assert paths.programs == ("worker", "web")
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
    assert "error_page 413 @too_large;" in site
    assert "proxy_request_buffering on;" in site
    assert "proxy_http_version 1.1;" in site
    assert f"proxy_read_timeout {settings.jobs.time_limit + 30}s;" in site


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


def test_gunicorn_conf_reads_env(run_dir: Path) -> None:
    settings = Settings(run_dir=run_dir, web={"workers": 3, "worker_connections": 77, "port": 9123})
    paths, effective = render_stack(settings, use_nginx=False)
    code = (
        "import json, runpy, sys, types\n"
        "from gunicorn.config import Config\n"
        "ns = runpy.run_path(sys.argv[1])\n"
        "cfg = Config()\n"
        "public = {k: v for k, v in ns.items() if not k.startswith('_') and k != 'annotations'\n"
        "          and not callable(v) and not isinstance(v, types.ModuleType)}\n"
        "unknown = sorted(k for k in public if k not in cfg.settings)\n"
        "for k, v in public.items():\n"
        "    if k in cfg.settings: cfg.set(k, v)\n"  # gunicorn's own validators
        "print(json.dumps({'unknown': unknown, 'gevent': 'gevent' in sys.modules,\n"
        "    'bind': cfg.bind, 'workers': cfg.workers, 'worker_class': cfg.worker_class_str,\n"
        "    'worker_connections': cfg.worker_connections, 'graceful': cfg.graceful_timeout,\n"
        "    'accesslog': cfg.accesslog, 'errorlog': cfg.errorlog,\n"
        "    'control_socket_disable': cfg.control_socket_disable}))\n"
    )
    env = {k: v for k, v in os.environ.items() if not k.startswith("FLASKMODEL_")}
    env.update(effective.env())
    done = subprocess.run(
        [sys.executable, "-c", code, str(paths.gunicorn_conf)],
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
        "gevent": False,  # gunicorn's gevent worker patches after fork, not the config
        "bind": ["127.0.0.1:9123"],
        "workers": 3,
        "worker_class": "gevent",
        "worker_connections": 77,
        "graceful": settings.web.graceful_timeout,
        "accesslog": None,  # nginx logs access; without it the command line turns it on
        "errorlog": "-",
        "control_socket_disable": True,
    }
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
    assert names == ["gunicorn.conf.py", "supervisord-flaskmodel.conf", "nginx-flaskmodel.conf"]
    assert all(p.parent == out and p.is_file() for p in files)
    gunicorn_conf, supervisor_conf, site = files

    conf = _conf(supervisor_conf)
    assert conf.sections() == ["program:flaskmodel-worker", "program:flaskmodel-web"]
    worker, web = conf["program:flaskmodel-worker"], conf["program:flaskmodel-web"]
    assert int(worker["stopwaitsecs"]) > settings.jobs.time_limit
    assert f"-c {gunicorn_conf} --bind 127.0.0.1:8100 " in web["command"]
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
    assert set(_supervisor_view(main)) == {"flaskmodel-worker", "flaskmodel-web"}

    text = site.read_text()
    assert "listen 80;" in text
    assert "server 127.0.0.1:8100 fail_timeout=0;" in text
    assert "client_max_body_size 1000;" in text
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
