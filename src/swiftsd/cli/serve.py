"""``swiftsd serve``: flags, start-up (model, skip-set store, learned state) and shutdown saves.

uvicorn, FastAPI and the decoder are imported when the command runs, not for ``--help``.
"""

from __future__ import annotations

import argparse
import ipaddress
import logging
import threading
from types import FrameType
from typing import TYPE_CHECKING, Any

from ..errors import InvalidArgumentError
from ..server.settings import ServerSettings

if TYPE_CHECKING:
    from ..server.state_keeper import StateKeeper

log = logging.getLogger("swiftsd.server")

GRACE_S = 5.0  # after SIGINT/SIGTERM, uvicorn lets open requests finish for this long, then cuts them off
DRAIN_S = 4.0  # ... so at this point the engine aborts what is left: every client gets an answer first


def add_arguments(p: argparse.ArgumentParser) -> None:
    from .common import add_decoder_arguments, add_model_arguments, add_skip_arguments

    add_model_arguments(p)
    add_skip_arguments(p)
    add_decoder_arguments(p)
    p.add_argument("--host", default="127.0.0.1", metavar="ADDR",
                   help="address to bind; 127.0.0.1 serves this machine only, 0.0.0.0 every interface")
    p.add_argument("--port", type=int, default=8000, metavar="PORT", help="TCP port to listen on")
    p.add_argument("--max-queue", type=int, default=ServerSettings.max_queue, metavar="N",
                   help="requests that may wait behind the running one; more get 429")
    p.add_argument("--request-timeout", type=float, default=ServerSettings.request_timeout, metavar="S",
                   help="seconds from arrival before a request gets 503 (still queued) or 504 (running)")
    p.add_argument("--read-timeout", type=float, default=ServerSettings.read_timeout, metavar="S",
                   help="seconds a client may take to send a request's headers, and again its body; slower "
                        "ones get 408 and the connection is closed")
    p.add_argument("--max-body-bytes", type=int, default=ServerSettings.max_body_bytes, metavar="N",
                   help="larger request bodies get 413, whatever the transfer encoding")
    p.add_argument("--api-key", default=None, metavar="KEY",
                   help="require 'Authorization: Bearer KEY' on /v1/* and /metrics (default: no key needed)")
    p.add_argument("--served-model-name", default=None, metavar="NAME",
                   help="the model id clients send and /v1/models lists (default: the --model value)")
    p.add_argument("--state", default=None, metavar="FILE",
                   help="keep what the decoder learns across restarts: restored from FILE at start, saved to it "
                        "atomically every --state-interval seconds and on SIGINT/SIGTERM (default: not kept)")
    p.add_argument("--state-interval", type=float, default=ServerSettings.state_interval, metavar="S",
                   help="seconds between saves of --state; 0 saves only on shutdown")
    p.add_argument("--state-reset", action="store_true",
                   help="ignore what --state FILE holds (even if it is corrupt) and start fresh; FILE is "
                        "overwritten at the first save")
    p.add_argument("--log-level", default="info", metavar="LEVEL",
                   choices=["critical", "error", "warning", "info", "debug"],
                   help="critical, error, warning, info or debug; info and debug show one access line per "
                        "request")


def _settings(args: argparse.Namespace, aliases: tuple[str, ...]) -> ServerSettings:
    return ServerSettings(max_queue=args.max_queue, request_timeout=args.request_timeout, api_key=args.api_key,
                          read_timeout=args.read_timeout, max_body_bytes=args.max_body_bytes,
                          skip_set_store=args.skip_set_store, task=args.task, aliases=aliases,
                          state_path=args.state, state_interval=args.state_interval)


def _check(args: argparse.Namespace) -> dict[str, Any]:
    """Everything that needs no model, so a typo fails before a model load; returns --method / --drafters
    as SwiftDecoder options (``build_decoder`` reads them again)."""
    from ..server.state_keeper import check_before_load
    from .common import check_skip_choice, decoder_options

    options = decoder_options(args)
    if not 0 <= args.port <= 65535:
        raise InvalidArgumentError(f"--port must be in 0..65535, got {args.port}")
    check_skip_choice(args)
    if args.state is None and (args.state_reset or args.state_interval != ServerSettings.state_interval):
        raise InvalidArgumentError("--state-interval and --state-reset go with --state FILE")
    _settings(args, ())  # the limits' own checks
    if args.state is not None:
        check_before_load(args.state, args.state_reset)
    return options


def run(args: argparse.Namespace) -> int:
    from .common import build_decoder, load_model, start_skip_set
    from ..persist.identity import model_identity
    from ..server import access_log
    from ..server.app import create_app
    from ..server.metrics import Metrics
    from ..server.state_keeper import StateKeeper, say

    _check(args)
    access_log.configure(args.log_level)
    name = args.served_model_name or args.model
    model, tokenizer = load_model(args)
    identity = model_identity(model)
    settings = _settings(args, tuple({identity.name, args.model} - {name}))
    # a missing store is fine: the server creates it when it shuts down
    skip, fixed = start_skip_set(args, model, missing_ok=True)
    if skip is not None and not fixed:
        say(f"starting from the stored skip set for task {args.task!r}: {skip.to_dict()}")
    decoder = build_decoder(args, model, tokenizer, store_missing_ok=True)
    metrics, keeper = Metrics(), None
    metrics.add_drafters({d: {} for d in decoder.drafters})  # every drafter's series from the start, at 0
    if args.state:
        keeper = StateKeeper(decoder, args.state, identity, args.state_interval, metrics)
        keeper.restore(reset=args.state_reset)
    if not _is_loopback(args.host) and settings.api_key is None:
        say(f"warning: serving on {args.host} without --api-key: anyone who can reach this address can use the "
             "model")
    app = create_app(decoder, tokenizer, name, settings, metrics=metrics, tick=keeper.tick if keeper else None,
                     on_shutdown=lambda stopped: _shutdown(stopped, decoder, settings, keeper))
    say(f"serving {name!r} on http://{args.host}:{args.port}/v1 (health: /health, metrics: /metrics)")
    # SIGINT/SIGTERM: requests may finish for DRAIN_S, the rest get a 503 / an in-stream error; then the
    # app's lifespan exit stops the engine and saves the learned state and the optimizer's best set.
    _serve(app, args)
    return 0


def _serve(app: Any, args: argparse.Namespace) -> None:
    """Run uvicorn until SIGINT/SIGTERM; the first signal also tells the engine to wind down."""
    import uvicorn

    engine = app.state.ctx.engine

    class GracefulServer(uvicorn.Server):
        def handle_exit(self, sig: int, frame: FrameType | None) -> None:
            if not self.should_exit:
                timer = threading.Timer(DRAIN_S, engine.stop)
                timer.daemon = True  # an idle server exits at once, without waiting for it
                timer.start()
            super().handle_exit(sig, frame)

    from ..server.transport import uvicorn_config  # the header read timeout wired in

    config = uvicorn_config(app, host=args.host, port=args.port, log_level=args.log_level,
                            timeout_graceful_shutdown=GRACE_S, access_log=False)  # swiftsd's own: access_log.py
    GracefulServer(config).run()


def _shutdown(stopped: bool, decoder: Any, settings: ServerSettings, keeper: "StateKeeper | None") -> None:
    """After the engine stopped: the final saves (the decoder is idle, so reading it is safe)."""
    from ..server.state_keeper import say

    if not stopped:
        say("the engine did not stop within 10 s; the learned state and store are left as last saved")
        return
    if keeper is not None and keeper.save():
        say(f"saved the learned state to {keeper.path}")
    if settings.skip_set_store:
        save_optimizer_state(decoder, settings.skip_set_store, settings.task)


def save_optimizer_state(decoder: Any, store: str, task: str) -> None:
    """On shutdown: write the optimizer's best set to the store, keyed by model and task."""
    from ..server.state_keeper import say

    opt = getattr(decoder, "optimizer", None)
    if opt is None:
        say(f"no on-the-fly optimizer ran (fixed skip set); nothing saved to {store}")
        return
    from ..persist.store import save_optimizer_result

    try:
        saved = save_optimizer_result(store, decoder.model, task, opt)
    except Exception:  # noqa: BLE001 - shutdown must finish; say what went wrong
        log.exception("could not save the optimizer's state to %s", store)
        return
    if saved:
        say(f"saved the optimizer's skip set to {store} (task {task!r})")
    else:
        say(f"the optimizer has not scored a skip set yet; nothing saved to {store}")


def _is_loopback(host: str) -> bool:
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False
