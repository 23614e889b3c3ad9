"""Serve exported SavedModels as `tensorflow_model_server` does: gRPC and REST, same flags.

    python -m tools.serve --model_name classifier --model_base_path exports/classifier \
        [--port 8500] [--rest_api_port 8501] [--enable_batching \
        --batching_parameters_file batching.txt] [--monitoring_config_file monitoring.txt]
    python -m tools.serve --model_config_file models.config \
        [--model_config_file_poll_wait_seconds 60]

It takes the flags of `tensorflow_model_server` that it implements (any other fails,
named) plus `--host` (default 127.0.0.1, where TF Serving listens on every interface) and
`--model NAME=BASE_PATH[:V1,V2]` (repeatable; pins versions beside the newest). Then e.g.
`curl -d '{"instances": ["a fine film"]}' localhost:8501/v1/models/classifier:predict`.
"""

import argparse
import logging
import threading
import time

from export.batching import parse_batching_parameters
from export.model_config import model_configs, parse_model_server_config
from export.monitoring import parse_monitoring_config
from export.serve import ModelConfig, ModelServer

logger = logging.getLogger("tfllm.serve")


def flag_bool(text: str) -> bool:
    """`true`/`false` (any case, or 1/0), as TF Serving's boolean flags."""
    if text.lower() not in ("true", "false", "1", "0"):
        raise argparse.ArgumentTypeError(f"expected true or false, received {text!r}")
    return text.lower() in ("true", "1")


def model_spec(text: str) -> ModelConfig:
    """`NAME=BASE_PATH[:V1,V2]` as a `ModelConfig`."""
    name, _, rest = text.partition("=")
    path, _, versions = rest.partition(":")
    try:
        pinned = tuple(int(v) for v in versions.split(",") if v)
        return ModelConfig(name, path, versions=pinned)
    except ValueError as error:
        raise argparse.ArgumentTypeError(f"--model {text!r}: {error}") from None


def read_config(path: str, parse, flag: str):
    """`parse(text)` of the file a flag names; `ValueError` naming the flag and file."""
    try:
        with open(path, encoding="utf-8") as file:
            return parse(file.read())
    except (OSError, ValueError) as error:
        raise ValueError(f"--{flag}={path}: {error}") from None


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0], allow_abbrev=False)
    add = parser.add_argument
    add("--port", type=int, default=8500, help="gRPC port")
    add("--rest_api_port", type=int, default=8501, help="REST port (0: no REST)")
    add("--host", default="127.0.0.1", help="0.0.0.0 exposes it to the network")
    add("--model_name", default="default", help="name of the model at --model_base_path")
    add("--model_base_path", help="folder of <version>/ SavedModel folders")
    add("--model", type=model_spec, action="append", default=[], metavar="NAME=PATH[:V1,V2]")
    add("--model_config_file", help="a ModelServerConfig text proto")
    add("--model_config_file_poll_wait_seconds", type=float, default=0, help="0: read once")
    add("--file_system_poll_wait_seconds", type=float, default=1, help="0: look once")
    add("--enable_batching", type=flag_bool, nargs="?", const=True, default=False)
    add("--batching_parameters_file", help="a BatchingParameters text proto")
    add("--monitoring_config_file", help="a MonitoringConfig text proto")
    add("--rest_api_timeout_in_ms", type=int, default=30000)
    return parser


def server_from_flags(args: argparse.Namespace) -> ModelServer:
    """A `ModelServer` as the flags describe it; `ValueError` for a bad flag or file."""
    models = list(args.model)
    if args.model_config_file:
        if args.model_base_path or models:
            raise ValueError("--model_config_file excludes --model_base_path and --model")
        parse = lambda text: model_configs(parse_model_server_config(text))  # noqa: E731
        models = read_config(args.model_config_file, parse, "model_config_file")
    elif args.model_base_path:
        models.append(ModelConfig(args.model_name, args.model_base_path))
    if not models:
        raise ValueError("give --model_base_path (with --model_name) or --model_config_file")
    batching = {}
    if args.batching_parameters_file:
        flag = "batching_parameters_file"
        batching = read_config(args.batching_parameters_file, parse_batching_parameters, flag)
    monitoring = None
    if args.monitoring_config_file:
        flag = "monitoring_config_file"
        monitoring = read_config(args.monitoring_config_file, parse_monitoring_config, flag)
    poll = args.file_system_poll_wait_seconds
    return ModelServer(
        models,
        enable_batching=args.enable_batching,
        poll_seconds=poll if poll > 0 else None,
        monitoring_path=monitoring,
        rest_timeout_s=args.rest_api_timeout_in_ms / 1e3 if args.rest_api_timeout_in_ms else None,
        **batching,
    )


def poll_model_config(server: ModelServer, path: str, seconds: float) -> None:
    """Re-reads the model config file every `seconds` and serves what it lists."""
    parse = lambda text: model_configs(parse_model_server_config(text))  # noqa: E731
    while True:
        time.sleep(seconds)
        try:
            server.reload(read_config(path, parse, "model_config_file"))
        except ValueError as error:  # a bad edit: keep serving the last good list
            logger.error("%s", error)


def main(argv=None) -> None:
    parser = build_parser()
    args, unknown = parser.parse_known_args(argv)
    if unknown:
        parser.error(f"unsupported flag {unknown[0]!r} (tools.serve implements those of --help)")
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s %(message)s")
    try:
        server = server_from_flags(args)
    except ValueError as error:
        parser.error(str(error))
    if args.model_config_file and args.model_config_file_poll_wait_seconds > 0:
        wait = args.model_config_file_poll_wait_seconds
        poller = (server, args.model_config_file, wait)
        threading.Thread(target=poll_model_config, args=poller, daemon=True).start()
    server.serve_forever(args.host, args.rest_api_port or None, args.port)


if __name__ == "__main__":
    main()
