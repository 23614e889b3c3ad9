"""Serve exported SavedModels over the TensorFlow Serving REST API v1, on 127.0.0.1.

    python -m tools.serve --model_name classifier --model_base_path exports/classifier \
        [--port 8501] [--enable_batching --max_batch_size 32 --batch_timeout_micros 2000]
    python -m tools.serve --model classifier=exports/classifier --model gpt=exports/gpt

`--model NAME=BASE_PATH[:V1,V2]` serves several models (optionally pinning versions
beside the newest). Then e.g.
`curl -d '{"instances": ["a fine film"]}' localhost:8501/v1/models/classifier:predict`.
"""

import argparse
import logging

from export.serve import ModelConfig, ModelServer


def model_spec(text: str) -> ModelConfig:
    """`NAME=BASE_PATH[:V1,V2]` as a `ModelConfig`."""
    name, _, rest = text.partition("=")
    path, _, versions = rest.partition(":")
    try:
        pinned = tuple(int(v) for v in versions.split(",") if v)
        return ModelConfig(name, path, versions=pinned)
    except ValueError as error:
        raise argparse.ArgumentTypeError(f"--model {text!r}: {error}") from None


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--model_name", help="name of the model at --model_base_path")
    parser.add_argument("--model_base_path", help="folder of <version>/ SavedModel folders")
    parser.add_argument(
        "--model",
        type=model_spec,
        action="append",
        default=[],
        metavar="NAME=BASE_PATH[:V1,V2]",
        help="a model to serve (repeatable)",
    )
    parser.add_argument("--host", default="127.0.0.1", help="0.0.0.0 exposes it to the network")
    parser.add_argument("--port", type=int, default=8501)
    parser.add_argument("--enable_batching", action="store_true")
    parser.add_argument("--max_batch_size", type=int, default=128)
    parser.add_argument("--batch_timeout_micros", type=int, default=2000)
    parser.add_argument("--num_batch_threads", type=int, default=2)
    parser.add_argument("--file_system_poll_wait_seconds", type=float, default=2.0)
    args = parser.parse_args(argv)
    models = list(args.model)
    if args.model_base_path:
        try:
            models.append(ModelConfig(args.model_name or "default", args.model_base_path))
        except ValueError as error:
            parser.error(str(error))
    if not models:
        parser.error("give --model_base_path (with --model_name) or --model NAME=BASE_PATH")
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s %(message)s")
    server = ModelServer(
        models,
        enable_batching=args.enable_batching,
        max_batch_size=args.max_batch_size,
        batch_timeout_micros=args.batch_timeout_micros,
        num_batch_threads=args.num_batch_threads,
        poll_seconds=args.file_system_poll_wait_seconds,
    )
    server.serve_forever(args.host, args.port)


if __name__ == "__main__":
    main()
