"""protoc plugin that runs grpcio-tools' built-in grpc_python generator (see protoc-gen-grpc_python).

Reads a CodeGeneratorRequest on stdin, hands its files to grpcio-tools' protoc as a descriptor set
(`--descriptor_set_in`, so nothing is re-parsed), and answers with the generated *_pb2_grpc.py files.
"""

import os
import pathlib
import sys
import tempfile

from google.protobuf import descriptor_pb2
from google.protobuf.compiler import plugin_pb2
from grpc_tools import protoc


def main() -> int:
    request = plugin_pb2.CodeGeneratorRequest.FromString(sys.stdin.buffer.read())
    response = plugin_pb2.CodeGeneratorResponse(
        supported_features=plugin_pb2.CodeGeneratorResponse.FEATURE_PROTO3_OPTIONAL
    )
    with tempfile.TemporaryDirectory(prefix="protoc-gen-grpc_python-") as tmp:
        descriptors = pathlib.Path(tmp, "request.binpb")
        descriptors.write_bytes(
            descriptor_pb2.FileDescriptorSet(file=request.proto_file).SerializeToString()
        )
        out = pathlib.Path(tmp, "out")
        out.mkdir()
        param = f"{request.parameter}:" if request.parameter else ""
        args = [
            "protoc",
            f"--descriptor_set_in={descriptors}",
            f"--grpc_python_out={param}{out}",
            *request.file_to_generate,
        ]
        # protoc runs in-process: keep anything it prints off our stdout (the response channel).
        sys.stdout.flush()
        saved_stdout = os.dup(1)
        os.dup2(2, 1)
        try:
            rc = protoc.main(args)
        finally:
            os.dup2(saved_stdout, 1)
            os.close(saved_stdout)
        if rc != 0:
            response.error = f"grpc_tools.protoc exited with {rc} (see stderr)"
        else:
            for path in sorted(p for p in out.rglob("*") if p.is_file()):
                response.file.add(
                    name=path.relative_to(out).as_posix(), content=path.read_text()
                )
    sys.stdout.buffer.write(response.SerializeToString())
    return 0


if __name__ == "__main__":
    sys.exit(main())
