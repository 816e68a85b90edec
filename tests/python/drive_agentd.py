"""Drives a running agentd through its gRPC API with Python grpcio, the way an
orchestrator written in another language would.

Usage: drive_agentd.py PROTO_DIR OUT_DIR SOCKET
Generates the Python stubs from PROTO_DIR into OUT_DIR, then checks: a snapshot followed
with WatchOperation to completion (progress never going backwards, done == total at the
end), refusal of a second operation while one runs, idempotent request ids, NOT_FOUND and
INVALID_ARGUMENT with the field named. Prints one line per check and "N passed, 0 failed".
"""

import os
import subprocess
import sys


def main():
    proto_dir, out_dir, socket = sys.argv[1:4]
    subprocess.run(
        [sys.executable, "-m", "grpc_tools.protoc", f"-I{proto_dir}",
         f"--python_out={out_dir}", f"--grpc_python_out={out_dir}",
         os.path.join(proto_dir, "hostagent.proto")],
        check=True,
    )
    sys.path.insert(0, out_dir)
    import grpc
    import hostagent_pb2 as pb
    import hostagent_pb2_grpc as rpc

    # gRPC C-core sends the socket path as :authority over a Unix socket, which the
    # server's HTTP/2 layer rejects as malformed; "localhost" is the convention (grpc-go,
    # Kubernetes) and what agentd's clients must send.
    channel = grpc.insecure_channel(
        f"unix://{socket}", options=[("grpc.default_authority", "localhost")]
    )
    agent = rpc.AgentStub(channel)
    passed = 0

    def check(name, cond, detail=""):
        nonlocal passed
        if not cond:
            print(f"FAIL {name}: {detail}")
            print(f"{passed} passed, 1 failed")
            sys.exit(1)
        passed += 1
        print(f"ok {name}")

    def code_of(call):
        try:
            call()
        except grpc.RpcError as e:
            return e.code(), e.details()
        return None, None

    status = agent.GetStatus(pb.GetStatusRequest())
    check("status names the node", status.node == "node-a", status)
    check("repository reachable", status.repository_reachable, status)

    op = agent.StartSnapshot(pb.StartSnapshotRequest(request_id="py-1", tags=["from-python"]))
    check("start returns an operation at once", op.id.startswith("snapshot-"), op)

    code, details = code_of(lambda: agent.StartSnapshot(pb.StartSnapshotRequest(request_id="py-2")))
    check("second start refused", code == grpc.StatusCode.FAILED_PRECONDITION, code)
    check("refusal names the running operation", op.id in details, details)

    again = agent.StartSnapshot(pb.StartSnapshotRequest(request_id="py-1", tags=["from-python"]))
    check("same request id, same operation", again.id == op.id, again)

    seen = list(agent.WatchOperation(pb.WatchOperationRequest(operation_id=op.id)))
    last = seen[-1]
    check("watch ends Completed", last.phase == pb.PHASE_COMPLETED, last)
    monotonic = all(
        b.progress.bytes_done >= a.progress.bytes_done
        and b.progress.files_done >= a.progress.files_done
        and b.progress.bytes_total >= a.progress.bytes_total
        for a, b in zip(seen, seen[1:])
    )
    check("progress never goes backwards", monotonic)
    check("done equals total at the end",
          last.progress.bytes_done == last.progress.bytes_total
          and last.progress.files_done == last.progress.files_total, last.progress)
    check("snapshot id recorded", len(last.snapshot_id) == 64, last)

    snaps = agent.ListSnapshots(pb.ListSnapshotsRequest(tag="from-python")).snapshots
    check("snapshot listed with its tag", [s.id for s in snaps] == [last.snapshot_id], snaps)

    code, _ = code_of(lambda: agent.GetOperation(
        pb.GetOperationRequest(operation_id="snapshot-20200101-000000-abcdef")))
    check("unknown operation NOT_FOUND", code == grpc.StatusCode.NOT_FOUND, code)
    code, details = code_of(lambda: agent.GetOperation(pb.GetOperationRequest(operation_id="x/y")))
    check("malformed id INVALID_ARGUMENT", code == grpc.StatusCode.INVALID_ARGUMENT, code)
    check("error names the field", details.startswith("operation_id:"), details)
    code, details = code_of(lambda: agent.StartRestore(
        pb.StartRestoreRequest(snapshot="latest", target="not/absolute")))
    check("bad target INVALID_ARGUMENT",
          code == grpc.StatusCode.INVALID_ARGUMENT and details.startswith("target:"), details)
    code, _ = code_of(lambda: agent.DescribeSnapshot(pb.DescribeSnapshotRequest(snapshot="0000ffff")))
    check("unknown snapshot NOT_FOUND", code == grpc.StatusCode.NOT_FOUND, code)

    print(f"{passed} passed, 0 failed")


if __name__ == "__main__":
    main()
