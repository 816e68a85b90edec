"""Drives a running agentd through its gRPC API with Python grpcio, the way an
orchestrator written in another language would.

Usage: drive_agentd.py PROTO_DIR OUT_DIR SOCKET PHASE [OPERATION_ID]
Generates the Python stubs from PROTO_DIR into OUT_DIR (unless they are there already),
then runs the checks of one phase against the agentd listening on SOCKET. The test around
it (tests/daemon_python.rs) starts agentd with the configuration each phase needs, and
kills and restarts it between phases:

  main            a snapshot followed with WatchOperation to completion (progress never
                  going backwards, done == total at the end); refusal of a second operation
                  while one runs; idempotent request ids; cancel; maintenance (forget, prune,
                  check) followed to completion; NOT_FOUND and INVALID_ARGUMENT with the
                  field named. agentd: a pre-snapshot hook sleeping a few seconds.
  timeout         a snapshot that outlives its timeout ends Failed, reason TIMEOUT.
                  agentd: timeouts.snapshot = "2s", a pre-snapshot hook sleeping longer.
  restart-start   starts a snapshot, waits until it runs (its hook sleeps), prints
                  "OPERATION <id>" and exits; then agentd is killed and started again.
  restart-check   the operation (OPERATION_ID) reads Failed, reason AGENT_RESTARTED.
  denied          run as another uid, outside agentd's group: every call is
                  PERMISSION_DENIED.

Prints one line per check and "N passed, 0 failed".
"""

import os
import subprocess
import sys
import time


def main():
    proto_dir, out_dir, socket, phase = sys.argv[1:5]
    arg = sys.argv[5] if len(sys.argv) > 5 else None
    if not os.path.exists(os.path.join(out_dir, "hostagent_pb2_grpc.py")):
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

    def wait_until(op_id, pred, seconds=60):
        deadline = time.monotonic() + seconds
        while True:
            op = agent.GetOperation(pb.GetOperationRequest(operation_id=op_id))
            if pred(op):
                return op
            if time.monotonic() > deadline:
                check(f"operation reaches the expected state within {seconds}s", False, op)
            time.sleep(0.05)

    def watch_to_end(op_id):
        return list(agent.WatchOperation(pb.WatchOperationRequest(operation_id=op_id)))

    if phase == "main":
        status = agent.GetStatus(pb.GetStatusRequest())
        check("status names the node", status.node == "node-a", status)
        check("repository reachable", status.repository_reachable, status)

        op = agent.StartSnapshot(pb.StartSnapshotRequest(request_id="py-1", tags=["from-python"]))
        check("start returns an operation at once", op.id.startswith("snapshot-"), op)

        code, details = code_of(lambda: agent.StartSnapshot(pb.StartSnapshotRequest(request_id="py-2")))
        check("second start refused", code == grpc.StatusCode.FAILED_PRECONDITION, code)
        check("refusal names the running operation", op.id in details, details)
        code, details = code_of(lambda: agent.StartMaintenance(pb.StartMaintenanceRequest()))
        check("maintenance refused while a snapshot runs",
              code == grpc.StatusCode.FAILED_PRECONDITION and op.id in details, details)

        again = agent.StartSnapshot(pb.StartSnapshotRequest(request_id="py-1", tags=["from-python"]))
        check("same request id, same operation", again.id == op.id, again)

        seen = watch_to_end(op.id)
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
              and last.progress.files_done == last.progress.files_total
              and last.progress.files_done == 3, last.progress)
        check("snapshot id recorded", len(last.snapshot_id) == 64, last)

        snaps = agent.ListSnapshots(pb.ListSnapshotsRequest(tag="from-python")).snapshots
        check("snapshot listed with its tag", [s.id for s in snaps] == [last.snapshot_id], snaps)

        # Cancel: the next snapshot is stopped while its pre-snapshot hook runs.
        op = agent.StartSnapshot(pb.StartSnapshotRequest(request_id="py-cancel"))
        wait_until(op.id, lambda o: o.progress.step == "pre-snapshot hooks")
        canceling = agent.CancelOperation(pb.CancelOperationRequest(operation_id=op.id))
        check("cancel answers Canceling",
              canceling.phase in (pb.PHASE_CANCELING, pb.PHASE_CANCELED), canceling)
        last = watch_to_end(op.id)[-1]
        check("canceled operation ends Canceled", last.phase == pb.PHASE_CANCELED, last)
        check("reason CANCELED_BY_USER",
              last.failure_reason == pb.FAILURE_REASON_CANCELED_BY_USER, last)
        check("the hook was killed", last.hooks[0].exit_code == -1, last.hooks)
        check("no snapshot written", last.snapshot_id == "", last)

        # Maintenance: forget (nothing expired, no keep rule), prune, check every pack.
        op = agent.StartMaintenance(pb.StartMaintenanceRequest(
            request_id="py-maint",
            tasks=[pb.MAINTENANCE_TASK_CHECK, pb.MAINTENANCE_TASK_FORGET,
                   pb.MAINTENANCE_TASK_PRUNE],
            check_read_data_subset="all"))
        check("maintenance starts", op.kind == pb.OPERATION_KIND_MAINTENANCE, op)
        seen = watch_to_end(op.id)
        last = seen[-1]
        m = last.maintenance
        check("maintenance ends Completed", last.phase == pb.PHASE_COMPLETED, last)
        check("tasks run as forget, prune, check",
              list(m.tasks) == ["forget", "prune", "check"], m)
        check("steps reported", list(m.steps)[:2] == ["opening repository", "forget"]
              and "check" in m.steps, m.steps)
        check("nothing to forget", m.snapshots_kept == 1 and len(m.removed) == 0, m)
        check("check read every pack and found nothing",
              m.checked and m.check_ok and m.check_packs_read > 0
              and m.check_bytes_read > 0, m)
        code, details = code_of(lambda: agent.StartMaintenance(
            pb.StartMaintenanceRequest(tasks=[42])))
        check("unknown task INVALID_ARGUMENT",
              code == grpc.StatusCode.INVALID_ARGUMENT and details.startswith("tasks:"), details)

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

    elif phase == "timeout":
        op = agent.StartSnapshot(pb.StartSnapshotRequest(request_id="py-timeout"))
        last = watch_to_end(op.id)[-1]
        check("timed-out operation ends Failed", last.phase == pb.PHASE_FAILED, last)
        check("reason TIMEOUT", last.failure_reason == pb.FAILURE_REASON_TIMEOUT, last)
        check("message says so", "timed out after 2s" in last.message, last.message)
        check("the hook was stopped", last.hooks[0].exit_code == -1, last.hooks)
        # The slot is freed once the stopped work has returned, just after the record.
        deadline = time.monotonic() + 10
        while agent.GetStatus(pb.GetStatusRequest()).HasField("running") \
                and time.monotonic() < deadline:
            time.sleep(0.05)
        status = agent.GetStatus(pb.GetStatusRequest())
        check("nothing runs any more", not status.HasField("running"), status)

    elif phase == "restart-start":
        op = agent.StartSnapshot(pb.StartSnapshotRequest(request_id="py-restart"))
        wait_until(op.id, lambda o: o.progress.step == "pre-snapshot hooks")
        check("snapshot running", True)
        print(f"OPERATION {op.id}")

    elif phase == "restart-check":
        op = agent.GetOperation(pb.GetOperationRequest(operation_id=arg))
        check("operation remembered across the restart", op.id == arg, op)
        check("it reads Failed", op.phase == pb.PHASE_FAILED, op)
        check("reason AGENT_RESTARTED",
              op.failure_reason == pb.FAILURE_REASON_AGENT_RESTARTED, op)
        check("message says agent restarted", op.message.startswith("agent restarted"),
              op.message)
        status = agent.GetStatus(pb.GetStatusRequest())
        check("nothing runs after the restart", not status.HasField("running"), status)
        again = agent.StartSnapshot(pb.StartSnapshotRequest(request_id="py-restart"))
        check("its request id still names it", again.id == arg, again)

    elif phase == "denied":
        check("running as another uid", os.getuid() != 0, os.getuid())
        for name, call in [
            ("GetStatus", lambda: agent.GetStatus(pb.GetStatusRequest())),
            ("StartSnapshot", lambda: agent.StartSnapshot(pb.StartSnapshotRequest())),
            ("StartMaintenance", lambda: agent.StartMaintenance(pb.StartMaintenanceRequest())),
            ("ListOperations", lambda: agent.ListOperations(pb.ListOperationsRequest())),
        ]:
            code, details = code_of(call)
            check(f"{name} PERMISSION_DENIED", code == grpc.StatusCode.PERMISSION_DENIED,
                  (code, details))
            check(f"{name} refusal names the uid",
                  f"uid {os.getuid()} may not use agentd" in (details or ""), details)

    else:
        print(f"unknown phase {phase!r}")
        sys.exit(2)

    print(f"{passed} passed, 0 failed")


if __name__ == "__main__":
    main()
