"""``fraudlab serve``: check what is about to be served, seed the history, start the service.

Before anything is loaded, every file the service will read (the model, serving.json) is hashed
and compared with dvc.lock, and ``dvc status`` must report the stages that produce them up to
date; otherwise the start stops with one line saying which file and what to run.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import logging
import os
import re
import resource
import shutil
import socket
import sqlite3
import tempfile
import time
from pathlib import Path

import pandas as pd
import pyarrow as pa
from redis.exceptions import RedisError

from fraudlab.core import schema
from fraudlab.core.errors import UserError
from fraudlab.integrity.lock import check_dvc_status, recorded, verify_file
from fraudlab.modeling.artifact import load_model
from fraudlab.serving.app import Settings, settings_path
from fraudlab.serving.clock import SOURCES, Clock, duration_ns, show_duration, show_time
from fraudlab.serving.health import StoreHealth, redis_error_reason, write_error_reason
from fraudlab.serving.protocol import Limits
from fraudlab.serving.redis_store import RedisHistory, is_redis_url, redacted
from fraudlab.serving.scorer import read_serving_config, retention_ns
from fraudlab.serving.store import HistoryStore, open_history, seed

log = logging.getLogger("fraudlab.serving.server")

KEYS_VARIABLE = "FRAUDLAB_API_KEYS"
_SETTINGS_VARIABLE = "FRAUDLAB_SERVICE_SETTINGS"


def _positive(text: str) -> int:
    value = int(text)
    if value < 1:
        raise argparse.ArgumentTypeError(f"must be at least 1, not {value}")
    return value


def _duration(text: str) -> int:
    try:
        return duration_ns(text)
    except ValueError as exc:
        raise argparse.ArgumentTypeError(str(exc)) from None


_DEFAULT_AHEAD = {"system": "5min", "data": "1h"}


def parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="fraudlab serve",
        description="Serve the model `dvc repro` produced over an authenticated REST API.",
    )
    p.add_argument("--host", default="127.0.0.1", help="address to listen on (%(default)s)")
    p.add_argument("--port", type=int, default=8000, help="port; 0 picks a free one (%(default)s)")
    p.add_argument("--workers", type=int, default=1, help="server processes (%(default)s)")
    p.add_argument("--model", default="models/model.joblib", help="model file (%(default)s)")
    p.add_argument("--serving", default="models/serving.json", help="threshold (%(default)s)")
    p.add_argument(
        "--reference",
        default="models/reference_profile.json",
        help="the model's reference profile, for drift on /metrics (%(default)s)",
    )
    p.add_argument(
        "--drift-window",
        type=_positive,
        default=10_000,
        help="recent transactions per worker whose drift /metrics shows (%(default)s)",
    )
    p.add_argument("--lock", default="dvc.lock", help="recorded hashes (%(default)s)")
    p.add_argument(
        "--model-version",
        metavar="REF",
        help="serve a registered version instead of the workspace's files: a stage (prod), a "
        "version (v1.2.0) or a registry tag, fetched through dvc.api and hash-checked "
        "(replaces --model, --serving, --reference and --lock)",
    )
    p.add_argument("--registry-repo", default=".", help="where --model-version is registered (.)")
    p.add_argument(
        "--fetch-dir",
        default=".cache/registry",
        help="where --model-version's files are written, one directory per version (%(default)s)",
    )
    p.add_argument(
        "--store",
        default="data/serving/history.db",
        help="the history: a SQLite file for one machine (%(default)s), or a Redis URL "
        "(redis://[[USER]:PASSWORD@]HOST:PORT/DB, rediss:// for TLS) that several workers and "
        "replicas share",
    )
    p.add_argument(
        "--history",
        help="Parquet file or dataset directory in the canonical schema (e.g. "
        "data/clean/transactions.parquet) to seed the history with; what is already stored is kept",
    )
    p.add_argument("--history-until", help="seed only transactions at or before this date and time")
    p.add_argument(
        "--create-store",
        action="store_true",
        help="start an empty history when --store does not exist (without it or --history, a "
        "missing store refuses the start: a lost store is never replaced without a word)",
    )
    p.add_argument(
        "--store-reserve-bytes",
        type=int,
        default=64 * 1024 * 1024,
        help="free disk space below which the store takes no more writes: /readyz fails and "
        "writes answer 503 until space is freed (%(default)s)",
    )
    p.add_argument(
        "--fsync",
        action="store_true",
        help="fsync every commit, so an acknowledged write also survives a power cut or an "
        "operating-system crash (default: a commit reaches the operating system, which "
        "survives a crash or kill -9 of the server; ~10x fewer writes per second)",
    )
    p.add_argument(
        "--api-key-file", help=f"file with one API key per line (default: ${KEYS_VARIABLE})"
    )
    p.add_argument(
        "--no-auth",
        action="store_true",
        help="serve without API keys (refused unless given: anyone reaching the port can score)",
    )
    p.add_argument("--max-batch", type=int, default=1000, help="per batch (%(default)s)")
    p.add_argument(
        "--max-body-bytes", type=int, default=4 * 1024 * 1024, help="request size (%(default)s)"
    )
    p.add_argument("--max-amount", type=float, default=1e9, help="largest amount (%(default)s)")
    p.add_argument(
        "--earliest", default="2000-01-01", help="earliest transaction time (%(default)s)"
    )
    p.add_argument(
        "--clock",
        choices=SOURCES,
        default="system",
        help="the service's now: this machine's clock (live traffic), or the store's newest "
        "transaction time (`data`: replays of past data); accepted times and retention follow "
        "it (%(default)s)",
    )
    p.add_argument(
        "--max-ahead",
        type=_duration,
        help="how far a transaction time may be ahead of the clock (default: 5min with the "
        "system clock, 1h with the data clock, where it is the largest step between "
        "consecutive transactions)",
    )
    p.add_argument(
        "--max-late",
        type=_duration,
        default="1 day",
        help="how far a transaction time may be behind the clock; rows are kept this long "
        "beyond the longest feature window (%(default)s)",
    )
    p.add_argument(
        "--text-ids",
        nargs="*",
        default=[],
        choices=["customer_id", "terminal_id"],
        help="id columns that are text, as in source.text_ids (default: integers)",
    )
    p.add_argument(
        "--no-dvc-status",
        action="store_true",
        help="skip `dvc status` (hashes are still checked): for a deployment without the repo",
    )
    p.add_argument("--access-log", action="store_true", help="log every request")
    bounds = p.add_argument_group("bounds on clients (docs/serving.md, Bounded requests)")
    default = Limits()
    for flag, kind, value, text in (
        ("--max-header-bytes", _positive, default.max_header_bytes, "a request's head, in bytes"),
        ("--max-headers", _positive, default.max_headers, "header lines per request"),
        ("--header-timeout", _seconds, default.header_timeout,
         "seconds for a request's head to arrive"),
        ("--body-timeout", _seconds, default.body_timeout, "seconds for a body to arrive"),
        ("--idle-timeout", _seconds, default.idle_timeout,
         "seconds a request may stay silent half-sent"),
        ("--keep-alive-timeout", _seconds, default.keep_alive_timeout,
         "seconds an idle connection stays open between requests"),
        ("--max-requests-per-connection", _positive, default.max_requests,
         "requests before a connection is closed"),
        ("--max-connections", _positive, default.max_connections,
         "open connections per worker; one more gets a 503"),
    ):  # fmt: skip
        bounds.add_argument(flag, type=kind, default=value, help=f"{text} (%(default)s)")
    return p


def _seconds(text: str) -> float:
    value = float(text)
    if not 0 < value < 86_400:
        raise argparse.ArgumentTypeError(f"must be a number of seconds above 0, not {text}")
    return value


def limits_of(args: argparse.Namespace) -> Limits:
    return Limits(
        max_header_bytes=args.max_header_bytes,
        max_headers=args.max_headers,
        header_timeout=args.header_timeout,
        body_timeout=args.body_timeout,
        idle_timeout=args.idle_timeout,
        keep_alive_timeout=args.keep_alive_timeout,
        max_requests=args.max_requests_per_connection,
        max_connections=args.max_connections,
    )


# A key is a header value an attacker must guess: long, and nothing a list or header could split
MIN_KEY_LENGTH = 16
_KEY = re.compile(r"[!-+\--~]+")  # visible ASCII but the comma


def _key_file_text(path: str) -> str:
    try:
        return Path(path).read_text(encoding="utf-8")
    except IsADirectoryError:
        raise UserError(f"--api-key-file {path} is a directory, not a file of keys") from None
    except UnicodeDecodeError:
        raise UserError(f"--api-key-file {path} is not UTF-8 text") from None
    except OSError as exc:
        raise UserError(f"--api-key-file {path} cannot be read: {exc.strerror}") from None


def api_keys(key_file: str | None) -> tuple[str, ...]:
    """Keys from a file (one per line) or the environment (comma-separated); never logged. A
    key shorter than MIN_KEY_LENGTH, or with a space, comma or control character, refuses the
    start: its position is named, never the key."""
    if key_file:
        origin, keys = f"--api-key-file {key_file}", _key_file_text(key_file).splitlines()
    else:
        origin, keys = KEYS_VARIABLE, os.environ.get(KEYS_VARIABLE, "").split(",")
    keys = [key.strip() for key in keys if key.strip()]
    for number, key in enumerate(keys, start=1):
        if len(key) < MIN_KEY_LENGTH or not _KEY.fullmatch(key):
            raise UserError(
                f"{origin}: key {number} is refused: a key is at least {MIN_KEY_LENGTH} visible "
                "ASCII characters, without spaces or commas (e.g. the output of "
                "`python -c 'import secrets; print(secrets.token_hex(16))'`)"
            )
    return tuple(keys)


_MODEL_FILES = ("model", "serving", "reference", "lock")


def use_registered_version(args: argparse.Namespace) -> None:
    """Point the model files at the registered version ``--model-version`` names, fetched and
    checked against its commit's dvc.lock and the MD5s its tag records. The workspace's
    ``dvc status`` says nothing about another commit's files, so it is not asked."""
    from fraudlab.registry.commands import fetch_version, load_registry, repo_root
    from fraudlab.registry.tags import MODEL, resolve

    default = parser().get_default
    given = [f"--{name}" for name in _MODEL_FILES if getattr(args, name) != default(name)]
    if given:
        raise UserError(f"--model-version replaces {', '.join(given)}: pass one or the other")
    root = repo_root(args.registry_repo)
    version, stage = resolve(load_registry(root), args.model_version)
    fetched = fetch_version(root, version, stage, Path(args.fetch_dir) / version.version)
    args.model = str(fetched.model)
    args.serving = str(fetched.directory / "models" / "serving.json")
    args.reference = str(fetched.directory / "models" / "reference_profile.json")
    args.lock = str(fetched.lock)
    args.no_dvc_status = True
    named = (
        version.version
        if args.model_version == version.version
        else f"{version.version} ({args.model_version})"
    )
    log.info("serving %s (commit %s, model MD5 %s)", named, version.commit[:7], version.md5s[MODEL])


def check_integrity(args: argparse.Namespace) -> str:
    """Hash checks and dvc status; the model version (its MD5) on success."""
    lock = Path(args.lock)
    model = verify_file(args.model, lock_path=lock)
    config = recorded(args.serving, lock_path=lock)  # hashed by read_serving_config below
    reference = verify_file(args.reference, lock_path=lock)  # parsed when a worker loads it
    if not args.no_dvc_status:
        check_dvc_status(lock, sorted({model.stage, config.stage, reference.stage}))
    read_serving_config(args.serving, lock_path=lock, model_md5=model.md5)
    return model.md5


def seed_history(args: argparse.Namespace, store: HistoryStore, *, keep: int) -> None:
    """Store the rows of ``--history`` within ``keep`` (the retention, ns) of its newest: those
    the windows can still need (and their labels)."""
    if not Path(args.history).exists():  # a Parquet file or a dataset directory
        raise UserError(f"--history {args.history}: no such file or directory")
    try:
        frame = pd.read_parquet(args.history)
    except (pa.ArrowException, OSError) as exc:
        raise UserError(f"--history {args.history}: not a readable Parquet file ({exc})") from None
    missing = [c for c in schema.REQUIRED_COLUMNS[:-1] if c not in frame.columns]
    if missing:
        raise UserError(f"--history {args.history}: not in the canonical schema, missing {missing}")
    if not pd.api.types.is_datetime64_dtype(frame[schema.TX_DATETIME]):
        raise UserError(
            f"--history {args.history}: {schema.TX_DATETIME} is {frame[schema.TX_DATETIME].dtype}, "
            "not a datetime column (use the clean data the validate stage writes)"
        )
    times = frame[schema.TX_DATETIME]
    if args.history_until:
        frame = frame[times <= pd.Timestamp(args.history_until)]
        times = frame[schema.TX_DATETIME]
    if frame.empty:
        raise UserError(f"{args.history}: no transactions to seed the history with")
    recent = frame[times > times.max() - pd.Timedelta(keep)]
    log.info(
        "seeding %s with %d of %d transactions (the last %s, up to %s)",
        store_name(args),
        len(recent),
        len(frame),
        pd.Timedelta(keep),
        times.max(),
    )
    seed(store, recent, labels_known_until=None)


def listening_socket(host: str, port: int) -> socket.socket:
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    sock = socket.socket(family, socket.SOCK_STREAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    # inherited by accepted connections: without it a response written in two parts waits for
    # the client's delayed ACK (40 ms per request on Linux)
    sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
    sock.bind((host, port))
    sock.listen(2048)
    sock.set_inheritable(True)
    return sock


def require_store(args: argparse.Namespace) -> None:
    """Refuse to start on a store that is not there unless told to make one: a deleted or
    unmounted store would otherwise be replaced by an empty one, and acknowledged transactions
    scored again as if new."""
    if args.history or args.create_store:
        return
    if is_redis_url(args.store):
        with RedisHistory(args.store) as store:
            if store.exists():
                return
        raise UserError(
            f"--store {store.name} holds no fraudlab history: pass --history FILE to seed it, "
            "or --create-store to start an empty one (if it was there before, restore Redis's "
            "data first)"
        )
    if Path(args.store).exists():
        return
    raise UserError(
        f"--store {args.store} does not exist: pass --history FILE to seed a new store, or "
        "--create-store to start an empty one (if it was there before, restore it first)"
    )


def check_clock(args: argparse.Namespace, store: HistoryStore, *, keep: int) -> None:
    """With the system clock, refuse a store whose rows are all past retention or ahead of
    this machine's clock: serving it would prune every row (a replay of old data wants
    ``--clock data``) or refuse every live transaction."""
    if args.clock != "system":
        return
    newest = store.newest_time()
    if newest is None:
        return
    now = time.time_ns()
    if newest < now - keep:
        raise UserError(
            f"--store {store_name(args)}: its newest transaction ({show_time(newest)}) is older "
            f"than the retention ({show_duration(keep)} before this machine's clock), so the "
            "system clock would prune every row: to replay past data pass --clock data"
        )
    if newest > now + args.max_ahead:
        raise UserError(
            f"--store {store_name(args)}: its newest transaction ({show_time(newest)}) is ahead of "
            "this machine's clock: check the clock, or pass --clock data to replay these data"
        )


# descriptors a worker needs beside its connections: the store, its journal and lock, the
# listening socket, logs, the metrics files, the interpreter's own
_SPARE_DESCRIPTORS = 64


def check_descriptors(max_connections: int) -> None:
    """Raise this process's open-file limit to its ceiling (the workers inherit it), and
    refuse a connection cap it cannot hold: past it, accept() fails and nobody is served."""
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if soft != hard:
        resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))
        soft = hard
    needed = max_connections + _SPARE_DESCRIPTORS
    if soft != resource.RLIM_INFINITY and soft < needed:
        raise UserError(
            f"--max-connections {max_connections} needs {needed} file descriptors per worker, "
            f"and this process may open {soft} (ulimit -n): lower --max-connections to "
            f"{max(1, soft - _SPARE_DESCRIPTORS)} or raise the limit"
        )


def serve(argv: list[str] | None = None) -> None:
    args = parser().parse_args(argv)
    check_descriptors(args.max_connections)
    if args.max_ahead is None:
        args.max_ahead = duration_ns(_DEFAULT_AHEAD[args.clock])
    keys = api_keys(args.api_key_file)
    if not keys and not args.no_auth:
        raise UserError(
            f"no API key configured: set {KEYS_VARIABLE} (comma-separated) or --api-key-file, "
            "or pass --no-auth to serve without authentication"
        )
    if args.model_version:
        use_registered_version(args)
    version = check_integrity(args)
    require_store(args)
    open_store(args)
    start_server(args, keys=keys, version=version)


def open_store(args: argparse.Namespace) -> None:
    """Create, seed and check the store before any worker starts; whatever stops it (a
    read-only mount, a full disk, a file that is not a database) is one line."""
    store_healthy(args)
    clock = Clock(args.clock, ahead=args.max_ahead, late=args.max_late, earliest=0)
    keep = retention_ns(load_model(args.model, lock_path=args.lock).features_config, clock)
    try:
        with open_history(args.store, fsync=args.fsync) as store:
            if args.history:
                seed_history(args, store, keep=keep)
            elif args.create_store and isinstance(store, RedisHistory):
                store.create()
            check_clock(args, store, keep=keep)
            log.info("history: %d transactions in %s", store.count(), store_name(args))
            if isinstance(store, RedisHistory):
                log.info("%s: %s", store.name, store.persistence())
    except RedisError as exc:
        raise UserError(
            f"--store {store_name(args)}: {redis_error_reason(store_name(args), exc)}"
        ) from None
    except sqlite3.Error as exc:
        raise UserError(
            f"--store {args.store}: {write_error_reason(Path(args.store), exc)}; a seed that "
            "failed left nothing behind"
        ) from None
    except OSError as exc:
        raise UserError(f"--store {args.store}: {exc.strerror}: {exc.filename}") from None
    store_healthy(args)


def store_name(args: argparse.Namespace) -> str:
    """--store as logs and errors may show it (a Redis URL without its password)."""
    return redacted(args.store) if is_redis_url(args.store) else args.store


def store_healthy(args: argparse.Namespace) -> None:
    if is_redis_url(args.store):
        return  # its health is Redis's to say: the first command tells
    path = Path(args.store)
    if not path.parent.exists():
        return  # created with the store
    health = StoreHealth(path, reserve_bytes=args.store_reserve_bytes)
    problem = health.problem() if path.exists() else health.space_problem()
    if problem is not None:
        raise UserError(f"--store {args.store} cannot take writes: {problem}")


def start_server(args: argparse.Namespace, *, keys: tuple[str, ...], version: str) -> None:
    import uvicorn

    metrics_dir = tempfile.mkdtemp(prefix="fraudlab-metrics-") if args.workers > 1 else None
    settings = Settings(
        model=args.model,
        serving=args.serving,
        reference=args.reference,
        drift_window=args.drift_window,
        lock=args.lock,
        store=args.store,
        fsync=args.fsync,
        api_keys=keys,
        max_batch=args.max_batch,
        max_body_bytes=args.max_body_bytes,
        max_amount=args.max_amount,
        earliest=args.earliest,
        clock=args.clock,
        max_ahead_ns=args.max_ahead,
        max_late_ns=args.max_late,
        text_ids=tuple(args.text_ids),
        metrics_dir=metrics_dir,
        model_version=version,
        limits=limits_of(args),
        store_reserve_bytes=args.store_reserve_bytes,
    )
    sock = listening_socket(args.host, args.port)
    host, port = sock.getsockname()[:2]
    # the workers read their settings from a private file (the keys are in it: mode 0600)
    private = Path(tempfile.mkdtemp(prefix="fraudlab-serve-"))
    path = settings_path(private)
    path.write_text(json.dumps(dataclasses.asdict(settings)), encoding="utf-8")
    path.chmod(0o600)
    os.environ[_SETTINGS_VARIABLE] = str(path)
    if metrics_dir:
        os.environ["PROMETHEUS_MULTIPROC_DIR"] = metrics_dir
    log.info("listening on http://%s:%d (model %s, %d worker(s))", host, port, version,
             args.workers)  # fmt: skip
    try:
        uvicorn.run(
            "fraudlab.serving.server:app_from_environment",
            factory=True,
            fd=sock.fileno(),
            workers=args.workers,
            loop="uvloop",
            http="fraudlab.serving.protocol:BoundedProtocol",
            timeout_keep_alive=settings.limits.keep_alive_timeout,  # type: ignore[arg-type]
            access_log=args.access_log,
            log_level="info" if args.access_log else "warning",
            timeout_graceful_shutdown=10,
        )
    finally:
        shutil.rmtree(private, ignore_errors=True)
        if metrics_dir:
            shutil.rmtree(metrics_dir, ignore_errors=True)


def app_from_environment() -> object:
    """The application of one worker process, from the settings the server wrote."""
    from fraudlab.serving.app import create_app

    logging.basicConfig(
        level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s"
    )
    raw = json.loads(Path(os.environ[_SETTINGS_VARIABLE]).read_text(encoding="utf-8"))
    raw["api_keys"] = tuple(raw["api_keys"])
    raw["text_ids"] = tuple(raw["text_ids"])
    raw["limits"] = Limits(**raw["limits"])
    return create_app(Settings(**raw))
