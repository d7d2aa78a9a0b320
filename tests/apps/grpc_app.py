"""A gRPC service on grpcio: `shop.v1.Inventory`, with raw-bytes messages (no protobuf: the
proxy never reads message bodies, only the framing, the path and the status).

  Get   (unary)            the request says what to do:
                             b"ok"            answer b"item"
                             b"not_found"     abort NOT_FOUND before any message (trailers-only)
                             b"unavailable"   abort UNAVAILABLE before any message (trailers-only)
                             b"late:internal" send the headers first, then fail INTERNAL (headers,
                                              then the status in real trailers)
                             b"sleep:MS"      answer b"item" after MS milliseconds
  List  (server streaming) request b"N:MS": N messages, MS milliseconds apart, then OK
  Chat  (bidi streaming)   echoes every message it receives; OK when the client is done

Also serves grpc.health.v1.Health/Check (SERVING), which the test waits on.
Usage: grpc_app.py --port N
"""

from __future__ import annotations

import argparse
import time
from concurrent import futures

import grpc

SERVICE = "shop.v1.Inventory"


def get(request: bytes, context: grpc.ServicerContext) -> bytes:
    if request == b"not_found":
        context.abort(grpc.StatusCode.NOT_FOUND, "no such item")
    if request == b"unavailable":
        context.abort(grpc.StatusCode.UNAVAILABLE, "backend down")
    if request == b"late:internal":
        context.send_initial_metadata((("x-started", "1"),))
        context.abort(grpc.StatusCode.INTERNAL, "failed after the headers")
    if request.startswith(b"sleep:"):
        time.sleep(int(request[6:]) / 1000)
    return b"item"


def list_items(request: bytes, context: grpc.ServicerContext):
    count, gap_ms = (int(x) for x in request.split(b":"))
    for i in range(count):
        if i:
            time.sleep(gap_ms / 1000)
        yield b"item-%d" % i


def chat(requests, context: grpc.ServicerContext):
    for message in requests:
        yield message


def health_check(request: bytes, context: grpc.ServicerContext) -> bytes:
    return b"\x08\x01"  # HealthCheckResponse{status: SERVING}, protobuf-encoded by hand


def main():
    parser = argparse.ArgumentParser()
    parser.add_argument("--port", type=int, required=True)
    args = parser.parse_args()
    server = grpc.server(futures.ThreadPoolExecutor(max_workers=32))
    server.add_generic_rpc_handlers((
        grpc.method_handlers_generic_handler(SERVICE, {
            "Get": grpc.unary_unary_rpc_method_handler(get),
            "List": grpc.unary_stream_rpc_method_handler(list_items),
            "Chat": grpc.stream_stream_rpc_method_handler(chat),
        }),
        grpc.method_handlers_generic_handler("grpc.health.v1.Health", {
            "Check": grpc.unary_unary_rpc_method_handler(health_check),
        }),
    ))
    server.add_insecure_port(f"127.0.0.1:{args.port}")
    server.start()
    server.wait_for_termination()


if __name__ == "__main__":
    main()
