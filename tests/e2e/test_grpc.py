"""gRPC server API of userstatus-query (Centrifugo's CentrifugoApi service), end to end.

The Python client is generated at test time from the project's own schemas/centrifugo_api.proto
with grpcio-tools, exactly as a user of the API would generate theirs."""
import importlib
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import grpc
import pytest

from conftest import REPO, free_port, now_ms, wait_until

GRPC_KEY = "grpc-secret"
PROTO = REPO / "schemas" / "centrifugo_api.proto"
REFLECTION_PROTO = REPO / "schemas" / "grpc_reflection.proto"


def _generate_stubs():
    out = Path(tempfile.mkdtemp(prefix="us-grpc-stubs-"))
    protos = [str(PROTO), str(REFLECTION_PROTO)]
    r = subprocess.run([sys.executable, "-m", "grpc_tools.protoc", "-I", str(PROTO.parent),
                        "--python_out", str(out), "--grpc_python_out", str(out)] + protos,
                       capture_output=True, text=True)
    assert r.returncode == 0, "protoc failed on %s:\n%s" % (protos, r.stderr)
    sys.path.insert(0, str(out))
    return [importlib.import_module(m) for m in ("centrifugo_api_pb2", "centrifugo_api_pb2_grpc",
                                                 "grpc_reflection_pb2", "grpc_reflection_pb2_grpc")]


pb, pb_grpc, refl, refl_grpc = _generate_stubs()


# --------------------------------------------------------------------------------------------------
# helpers


def grpc_config(ns, query=None, **grpc_keys):
    """A namespace config with the gRPC API on a free port, key GRPC_KEY; grpc_keys: other grpc_api
    keys; query: keys of the query section."""
    g = {"enabled": True, "address": "127.0.0.1", "port": free_port(), "key": GRPC_KEY}
    g.update(grpc_keys)
    return ns.config(grpc_api=g, **({"query": query} if query else {}))


class Client:
    """A CentrifugoApi stub on its own channel; calls carry the API key unless told otherwise."""

    def __init__(self, port, key=GRPC_KEY):
        self.channel = grpc.insecure_channel("127.0.0.1:%d" % port)
        grpc.channel_ready_future(self.channel).result(timeout=15)
        self.stub = pb_grpc.CentrifugoApiStub(self.channel)
        self.key = key

    def metadata(self, key=..., transport=False):
        key = self.key if key is ... else key
        md = []
        if key is not None:
            md.append(("authorization", "apikey " + key))
        if transport:
            md.append(("x-centrifugo-error-mode", "transport"))
        return md

    def call(self, method, request, key=..., transport=False, timeout=15):
        """Returns (response, trailing metadata as a dict)."""
        resp, c = getattr(self.stub, method).with_call(request, metadata=self.metadata(key, transport),
                                                       timeout=timeout)
        return resp, dict(c.trailing_metadata() or ())

    def get(self, users):
        resp, _ = self.call("GetUserStatus", pb.GetUserStatusRequest(users=users))
        assert not resp.HasField("error"), resp
        return list(resp.result.statuses)

    def close(self):
        self.channel.close()


def start(ns, cfg, worker=False):
    if worker:
        ns.start_worker(cfg)
    q = ns.start_query(cfg)
    c = Client(cfg["grpc_api"]["port"])
    q.grpc = c
    return q, c


@pytest.fixture
def gquery(ns):
    """A query service with the gRPC API, no worker."""
    q, c = start(ns, grpc_config(ns))
    yield c
    c.close()


@pytest.fixture
def gstack(ns):
    """A worker and a query service with the gRPC API, sharing one config."""
    q, c = start(ns, grpc_config(ns), worker=True)
    yield c
    c.close()


def rpc_error(fn, *args, **kw):
    with pytest.raises(grpc.RpcError) as ei:
        fn(*args, **kw)
    return ei.value


def US(user, active=0, online=0, state=""):
    return pb.UserStatus(user=user, active=active, online=online, state=state)


BAD_REQUEST = pb.Error(code=107, message="bad request")
INTERNAL = pb.Error(code=100, message="internal server error")


# --------------------------------------------------------------------------------------------------
# the four methods


def test_update_then_get_shows_the_user_active(ns, gstack):
    c = gstack
    resp, _ = c.call("UpdateUserStatus", pb.UpdateUserStatusRequest(users=["42"]))
    assert resp == pb.UpdateUserStatusResponse(result=pb.UpdateUserStatusResult())
    assert resp.HasField("result") and not resp.HasField("error")
    t0 = time.time()
    got = wait_until(lambda: (lambda s: s if s.active else None)(c.get(["42"])[0]), what="42 active")
    assert abs(got.active - t0) <= 5, (got, t0)
    assert c.get(["42"]) == [US("42", active=got.active)]


def test_get_unknown_user_has_only_the_user(ns, gquery):
    resp, trailers = gquery.call("GetUserStatus", pb.GetUserStatusRequest(users=["nobody"]))
    assert resp == pb.GetUserStatusResponse(result=pb.GetUserStatusResult(statuses=[US("nobody")]))
    assert "x-userstatus-error" not in trailers


def test_get_keeps_request_order_and_duplicates(ns, gstack):
    c = gstack
    ta = now_ms() - 50_000
    tb = now_ms() - 20_000
    ns.producer.event("active", "a", ta)
    ns.producer.event("online", "b", tb)
    ns.producer.flush()
    wait_until(lambda: c.get(["a", "b"]) == [US("a", active=ta // 1000), US("b", online=tb // 1000)],
               what="a and b applied")
    assert c.get(["b", "a", "b", "zz"]) == [US("b", online=tb // 1000), US("a", active=ta // 1000),
                                            US("b", online=tb // 1000), US("zz")]


def test_update_with_state_shows_the_state(ns, gstack):
    c = gstack
    resp, _ = c.call("UpdateUserStatus", pb.UpdateUserStatusRequest(users=["s1", "s2"], state="dnd"))
    assert resp == pb.UpdateUserStatusResponse(result=pb.UpdateUserStatusResult())
    t0 = time.time()
    got = wait_until(lambda: (lambda s: s if all(x.state for x in s) else None)(c.get(["s1", "s2"])),
                     what="state of s1 and s2")
    for s in got:
        assert s.state == "dnd" and s.online == 0 and abs(s.active - t0) <= 5, s


def test_delete_drops_the_status(ns, gstack):
    c = gstack
    users = ["d1", "d2", "d3"]
    c.call("UpdateUserStatus", pb.UpdateUserStatusRequest(users=users, state="away"))
    wait_until(lambda: all(s.active and s.state == "away" for s in c.get(users)), what="d1..d3 active")
    resp, _ = c.call("DeleteUserStatus", pb.DeleteUserStatusRequest(users=users))
    assert resp == pb.DeleteUserStatusResponse(result=pb.DeleteUserStatusResult())
    wait_until(lambda: c.get(users) == [US(u) for u in users], what="d1..d3 deleted")


def test_update_is_answered_after_the_broker_acknowledged(ns, gquery):
    """No worker runs: the answer only says the events are in Kafka, and there they are."""
    from conftest import consume_all
    import msgpack

    resp, _ = gquery.call("UpdateUserStatus", pb.UpdateUserStatusRequest(users=["k1", "k2"], state="x"))
    assert resp == pb.UpdateUserStatusResponse(result=pb.UpdateUserStatusResult())
    resp, _ = gquery.call("DeleteUserStatus", pb.DeleteUserStatusRequest(users=["k1"]))
    assert resp == pb.DeleteUserStatusResponse(result=pb.DeleteUserStatusResult())
    msgs = consume_all(ns.topic, 3)
    events = sorted((m["key"], msgpack.unpackb(m["value"], raw=False)["type"],
                     msgpack.unpackb(m["value"], raw=False).get("state")) for m in msgs)
    assert events == [(b"k1", "active", "x"), (b"k1", "delete", None), (b"k2", "active", "x")]


# --------------------------------------------------------------------------------------------------
# authentication


def test_auth_missing_or_wrong_key_is_unauthenticated(ns, gquery):
    req = pb.GetUserStatusRequest(users=["a"])
    for md in ([], [("authorization", "apikey wrong")], [("authorization", "apikey " + GRPC_KEY + "x")],
               [("authorization", GRPC_KEY)], [("authorization", "bearer " + GRPC_KEY)],
               [("authorization", "apikey secret")]):  # the HTTP api_key is not the gRPC key
        e = rpc_error(gquery.stub.GetUserStatus, req, metadata=md, timeout=10)
        assert e.code() == grpc.StatusCode.UNAUTHENTICATED, md
        assert e.details() == "unauthenticated"
    for method, r in (("UpdateUserStatus", pb.UpdateUserStatusRequest(users=["a"])),
                      ("DeleteUserStatus", pb.DeleteUserStatusRequest(users=["a"])),
                      ("Batch", pb.BatchRequest(commands=[pb.Command(get_user_status=req)]))):
        e = rpc_error(getattr(gquery.stub, method), r, metadata=[], timeout=10)
        assert e.code() == grpc.StatusCode.UNAUTHENTICATED, method
    resp, _ = gquery.call("GetUserStatus", req)
    assert resp == pb.GetUserStatusResponse(result=pb.GetUserStatusResult(statuses=[US("a")]))


def test_empty_key_refuses_to_start_unless_api_insecure(ns):
    cfg = grpc_config(ns, key="")
    path = ns.write_config(cfg)
    from conftest import QUERY_BIN, child_env

    r = subprocess.run([str(QUERY_BIN), "--config", str(path)], capture_output=True, text=True,
                       timeout=30, env=child_env())
    assert r.returncode == 1
    assert "grpc_api.key" in r.stderr, r.stderr

    cfg = grpc_config(ns, key="")
    cfg["api_insecure"] = True
    q, c = start(ns, cfg)
    resp, _ = c.call("GetUserStatus", pb.GetUserStatusRequest(users=["a"]), key=None)
    assert resp == pb.GetUserStatusResponse(result=pb.GetUserStatusResult(statuses=[US("a")]))
    c.close()


# --------------------------------------------------------------------------------------------------
# errors and limits


def test_bad_requests_are_error_107_in_the_response(ns):
    q, c = start(ns, grpc_config(ns, query={"max_users_per_request": 3, "max_user_id_length": 8}))
    bad = [
        pb.GetUserStatusRequest(users=["a", "b", "c", "d"]),  # too many users
        pb.GetUserStatusRequest(users=["u" * 9]),  # id too long
        pb.GetUserStatusRequest(users=[""]),  # empty id
    ]
    for req in bad:
        resp, trailers = c.call("GetUserStatus", req)
        assert resp == pb.GetUserStatusResponse(error=BAD_REQUEST), req
        assert trailers.get("x-userstatus-error"), (req, trailers)
    for method, cls in (("UpdateUserStatus", pb.UpdateUserStatusRequest),
                        ("DeleteUserStatus", pb.DeleteUserStatusRequest)):
        for users in (["a", "b", "c", "d"], ["u" * 9], [""]):
            resp, _ = c.call(method, cls(users=users))
            assert resp == getattr(pb, method + "Response")(error=BAD_REQUEST), (method, users)
    resp, _ = c.call("UpdateUserStatus", pb.UpdateUserStatusRequest(users=["a"], state="s" * 65))
    assert resp == pb.UpdateUserStatusResponse(error=BAD_REQUEST)
    # the limits themselves are fine
    assert c.get(["a", "b", "c"]) == [US("a"), US("b"), US("c")]
    assert c.get(["u" * 8]) == [US("u" * 8)]
    resp, _ = c.call("UpdateUserStatus", pb.UpdateUserStatusRequest(users=["a"], state="s" * 64))
    assert resp == pb.UpdateUserStatusResponse(result=pb.UpdateUserStatusResult())
    c.close()


def test_transport_error_mode_by_metadata(ns, gquery):
    too_long = pb.GetUserStatusRequest(users=["u" * 257])
    e = rpc_error(gquery.call, "GetUserStatus", too_long, transport=True)
    assert e.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert e.details() == "bad request"
    assert dict(e.trailing_metadata()).get("x-userstatus-error")
    e = rpc_error(gquery.call, "UpdateUserStatus", pb.UpdateUserStatusRequest(users=[""]), transport=True)
    assert e.code() == grpc.StatusCode.INVALID_ARGUMENT
    # without the metadata, the same request is answered in the response
    resp, _ = gquery.call("GetUserStatus", too_long)
    assert resp == pb.GetUserStatusResponse(error=BAD_REQUEST)
    # a good request in transport mode is answered as usual
    resp, _ = gquery.call("GetUserStatus", pb.GetUserStatusRequest(users=["42"]), transport=True)
    assert resp == pb.GetUserStatusResponse(result=pb.GetUserStatusResult(statuses=[US("42")]))


def test_transport_error_mode_by_config(ns):
    q, c = start(ns, grpc_config(ns, error_mode="transport"))
    e = rpc_error(c.call, "GetUserStatus", pb.GetUserStatusRequest(users=[""]))
    assert e.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert e.details() == "bad request"
    e = rpc_error(c.call, "DeleteUserStatus", pb.DeleteUserStatusRequest(users=["u" * 300]))
    assert e.code() == grpc.StatusCode.INVALID_ARGUMENT
    # a batch keeps its errors in the replies: 104 stays a reply, not NOT_FOUND
    resp, _ = c.call("Batch", pb.BatchRequest(commands=[pb.Command(), pb.Command(
        get_user_status=pb.GetUserStatusRequest(users=["z"]))]))
    assert resp == pb.BatchResponse(replies=[
        pb.Reply(error=pb.Error(code=104, message="method not found")),
        pb.Reply(get_user_status=pb.GetUserStatusResult(statuses=[US("z")]))])
    c.close()


def test_backend_failure_is_error_100_or_internal(ns):
    """Redis is unreachable: a get fails with 100 in the response, INTERNAL in transport mode."""
    cfg = grpc_config(ns)
    cfg["user_status"]["redis_address"] = "127.0.0.1:%d" % free_port()  # nothing listens there
    ns.start_query(cfg, require_200=False)
    c = Client(cfg["grpc_api"]["port"])
    resp, trailers = c.call("GetUserStatus", pb.GetUserStatusRequest(users=["a"]))
    assert resp == pb.GetUserStatusResponse(error=INTERNAL)
    assert trailers.get("x-userstatus-error")
    e = rpc_error(c.call, "GetUserStatus", pb.GetUserStatusRequest(users=["a"]), transport=True)
    assert e.code() == grpc.StatusCode.INTERNAL
    assert e.details() == "internal server error"
    c.close()


def test_message_over_max_receive_message_size_is_resource_exhausted(ns):
    q, c = start(ns, grpc_config(ns, max_receive_message_size=64 * 1024))
    big = pb.GetUserStatusRequest(users=["user-%06d" % i for i in range(7000)])
    assert big.ByteSize() > 64 * 1024
    e = rpc_error(c.call, "GetUserStatus", big)
    assert e.code() == grpc.StatusCode.RESOURCE_EXHAUSTED
    # just under the limit is fine (and then refused by the users-per-request limit, in the response)
    under = pb.GetUserStatusRequest(users=["user-%06d" % i for i in range(5000)])
    assert under.ByteSize() < 64 * 1024
    resp, _ = c.call("GetUserStatus", under)
    assert resp == pb.GetUserStatusResponse(error=BAD_REQUEST)
    c.close()


def test_user_id_with_a_nul_byte_is_refused_not_cut_short(ns, gquery):
    e = rpc_error(gquery.call, "UpdateUserStatus", pb.UpdateUserStatusRequest(users=["victim\0x"]))
    assert e.code() == grpc.StatusCode.INVALID_ARGUMENT
    e = rpc_error(gquery.call, "GetUserStatus", pb.GetUserStatusRequest(users=["a", "b\0"]))
    assert e.code() == grpc.StatusCode.INVALID_ARGUMENT


def test_unparsable_message_is_invalid_argument(ns, gquery):
    raw = gquery.channel.unary_unary("/centrifugal.centrifugo.api.CentrifugoApi/GetUserStatus")
    e = rpc_error(raw, b"\x0a\x05ab", metadata=gquery.metadata(), timeout=10)  # string cut short
    assert e.code() == grpc.StatusCode.INVALID_ARGUMENT


# --------------------------------------------------------------------------------------------------
# batch


def test_batch_with_mixed_commands(ns, gstack):
    c = gstack
    ta = now_ms() - 30_000
    ns.producer.event("active", "known", ta, state="busy")
    ns.producer.flush()
    wait_until(lambda: c.get(["known"]) == [US("known", active=ta // 1000, state="busy")], what="known applied")
    req = pb.BatchRequest(commands=[
        pb.Command(update_user_status=pb.UpdateUserStatusRequest(users=["b1"], state="dnd")),
        pb.Command(get_user_status=pb.GetUserStatusRequest(users=["known", "nobody", "known"])),
        pb.Command(),  # no request at all
        pb.Command(publish=pb.PublishRequest(channel="news")),  # a method this service does not serve
        pb.Command(get_user_status=pb.GetUserStatusRequest(users=[""])),
        pb.Command(delete_user_status=pb.DeleteUserStatusRequest(users=["b2"])),
    ], parallel=True)
    resp, trailers = c.call("Batch", req)
    known = US("known", active=ta // 1000, state="busy")
    not_found = pb.Error(code=104, message="method not found")
    assert resp == pb.BatchResponse(replies=[
        pb.Reply(update_user_status=pb.UpdateUserStatusResult()),
        pb.Reply(get_user_status=pb.GetUserStatusResult(statuses=[known, US("nobody"), known])),
        pb.Reply(error=not_found),
        pb.Reply(error=not_found),
        pb.Reply(error=BAD_REQUEST),
        pb.Reply(delete_user_status=pb.DeleteUserStatusResult()),
    ])
    assert resp.replies[0].HasField("update_user_status") and resp.replies[5].HasField("delete_user_status")
    assert trailers.get("x-userstatus-error")
    wait_until(lambda: c.get(["b1"])[0].state == "dnd", what="b1 updated by the batch")
    # the same batch in transport mode: errors stay in the replies
    resp2, _ = c.call("Batch", pb.BatchRequest(commands=[pb.Command()]), transport=True)
    assert resp2 == pb.BatchResponse(replies=[pb.Reply(error=not_found)])


def test_empty_batch_has_no_replies(ns, gquery):
    resp, _ = gquery.call("Batch", pb.BatchRequest())
    assert resp == pb.BatchResponse()


def test_batch_over_the_command_limit_is_invalid_argument(ns):
    q, c = start(ns, grpc_config(ns, query={"max_batch_commands": 3}))
    get = pb.Command(get_user_status=pb.GetUserStatusRequest(users=["a"]))
    e = rpc_error(c.call, "Batch", pb.BatchRequest(commands=[get] * 4))
    assert e.code() == grpc.StatusCode.INVALID_ARGUMENT
    resp, _ = c.call("Batch", pb.BatchRequest(commands=[get] * 3))
    assert resp == pb.BatchResponse(replies=[pb.Reply(get_user_status=pb.GetUserStatusResult(
        statuses=[US("a")]))] * 3)
    c.close()


# --------------------------------------------------------------------------------------------------
# the rest of Centrifugo's service


def test_other_centrifugo_methods_are_unimplemented(ns, gquery):
    e = rpc_error(gquery.call, "Publish", pb.PublishRequest(channel="news", data=b"{}"))
    assert e.code() == grpc.StatusCode.UNIMPLEMENTED
    e = rpc_error(gquery.call, "Presence", pb.PresenceRequest(channel="news"))
    assert e.code() == grpc.StatusCode.UNIMPLEMENTED
    e = rpc_error(gquery.call, "Info", pb.InfoRequest())
    assert e.code() == grpc.StatusCode.UNIMPLEMENTED
    for path in ("/centrifugal.centrifugo.api.CentrifugoApi/Nope", "/other.Service/GetUserStatus",
                 "/grpc.reflection.v1alpha.ServerReflection/ServerReflectionInfo"):
        raw = gquery.channel.unary_unary(path)
        e = rpc_error(raw, b"", metadata=gquery.metadata(), timeout=10)
        assert e.code() == grpc.StatusCode.UNIMPLEMENTED, path
    # and the service still answers
    assert gquery.get(["a"]) == [US("a")]


# --------------------------------------------------------------------------------------------------
# server reflection


def test_reflection_lists_the_services_and_serves_the_api_descriptor(ns):
    from google.protobuf import descriptor_pb2

    q, c = start(ns, grpc_config(ns, reflection=True))
    stub = refl_grpc.ServerReflectionStub(c.channel)
    R = refl.ServerReflectionRequest
    requests = [R(list_services=""), R(file_by_filename="centrifugo_api.proto"),
                R(file_containing_symbol="centrifugal.centrifugo.api.CentrifugoApi"),
                R(file_containing_symbol="centrifugal.centrifugo.api.UserStatus"),
                R(file_by_filename="other.proto"), R(all_extension_numbers_of_type="x.Y")]
    replies = list(stub.ServerReflectionInfo(iter(requests), metadata=c.metadata(), timeout=15))
    assert len(replies) == len(requests)
    assert [r.original_request for r in replies] == requests
    assert sorted(s.name for s in replies[0].list_services_response.service) == [
        "centrifugal.centrifugo.api.CentrifugoApi", "grpc.reflection.v1alpha.ServerReflection"]
    for r in replies[1:4]:
        (raw,) = r.file_descriptor_response.file_descriptor_proto
        fd = descriptor_pb2.FileDescriptorProto.FromString(raw)
        assert (fd.name, fd.package) == ("centrifugo_api.proto", "centrifugal.centrifugo.api")
        (svc,) = fd.service
        methods = {m.name: (m.input_type, m.output_type) for m in svc.method}
        assert methods["GetUserStatus"] == (".centrifugal.centrifugo.api.GetUserStatusRequest",
                                            ".centrifugal.centrifugo.api.GetUserStatusResponse")
        assert {"UpdateUserStatus", "DeleteUserStatus", "Batch", "Publish"} <= set(methods)
    assert replies[4].error_response.error_code == 5  # NOT_FOUND
    assert replies[5].error_response.error_code == 12  # UNIMPLEMENTED
    # the key is needed here too
    e = rpc_error(lambda: list(stub.ServerReflectionInfo(iter([R(list_services="")]), timeout=10)))
    assert e.code() == grpc.StatusCode.UNAUTHENTICATED
    # and the API still answers on the same channel
    assert c.get(["a"]) == [US("a")]
    c.close()


def test_reflection_is_off_by_default(ns, gquery):
    stub = refl_grpc.ServerReflectionStub(gquery.channel)
    req = refl.ServerReflectionRequest(list_services="")
    e = rpc_error(lambda: list(stub.ServerReflectionInfo(iter([req]), metadata=gquery.metadata(),
                                                         timeout=10)))
    assert e.code() == grpc.StatusCode.UNIMPLEMENTED


# --------------------------------------------------------------------------------------------------
# shutdown


def test_stop_answers_the_calls_in_flight(ns, private_redis):
    """SIGTERM while gets wait for a frozen Redis: each call is answered (error 100, the core's
    shutdown answer), not cut off, and the query exits 0 at once."""
    cfg = grpc_config(ns)
    cfg["user_status"]["redis_address"] = private_redis.addr
    q, c = start(ns, cfg)
    assert c.get(["a"]) == [US("a")]
    private_redis.freeze()
    try:
        futures = [c.stub.GetUserStatus.future(pb.GetUserStatusRequest(users=["f%d" % i]),
                                               metadata=c.metadata(), timeout=30) for i in range(20)]
        time.sleep(0.5)
        assert not any(f.done() for f in futures)  # all of them wait for Redis
        t0 = time.monotonic()
        assert q.stop() == 0, q.log()[-4000:]
        took = time.monotonic() - t0
        assert [f.result(timeout=5) for f in futures] == [pb.GetUserStatusResponse(error=INTERNAL)] * 20
    finally:
        private_redis.thaw()
    assert took < 5, took
    c.close()


# --------------------------------------------------------------------------------------------------
# TLS


def test_tls_with_pem_file_and_pem_text(ns, tmp_path):
    key, cert = tmp_path / "key.pem", tmp_path / "cert.pem"
    r = subprocess.run(["openssl", "req", "-x509", "-newkey", "rsa:2048", "-nodes", "-days", "1",
                        "-subj", "/CN=localhost", "-addext", "subjectAltName=DNS:localhost,IP:127.0.0.1",
                        "-keyout", str(key), "-out", str(cert)], capture_output=True, text=True)
    assert r.returncode == 0, r.stderr
    # the certificate as a file path, the key as PEM text
    cfg = grpc_config(ns, tls={"enabled": True, "cert_pem": str(cert), "key_pem": key.read_text()})
    ns.start_query(cfg)
    creds = grpc.ssl_channel_credentials(root_certificates=cert.read_bytes())
    ch = grpc.secure_channel("127.0.0.1:%d" % cfg["grpc_api"]["port"], creds,
                             options=[("grpc.ssl_target_name_override", "localhost")])
    stub = pb_grpc.CentrifugoApiStub(ch)
    resp = stub.GetUserStatus(pb.GetUserStatusRequest(users=["t"]), timeout=15,
                              metadata=[("authorization", "apikey " + GRPC_KEY)])
    assert resp == pb.GetUserStatusResponse(result=pb.GetUserStatusResult(statuses=[US("t")]))
    ch.close()
    # a plaintext client gets nothing
    plain = grpc.insecure_channel("127.0.0.1:%d" % cfg["grpc_api"]["port"])
    e = rpc_error(pb_grpc.CentrifugoApiStub(plain).GetUserStatus, pb.GetUserStatusRequest(users=["t"]),
                  timeout=5, metadata=[("authorization", "apikey " + GRPC_KEY)])
    assert e.code() == grpc.StatusCode.UNAVAILABLE
    plain.close()


def test_tls_with_a_missing_file_refuses_to_start(ns, tmp_path):
    cfg = grpc_config(ns, tls={"enabled": True, "cert_pem": str(tmp_path / "nope.pem"),
                               "key_pem": str(tmp_path / "nope.pem")})
    path = ns.write_config(cfg)
    from conftest import QUERY_BIN, child_env

    r = subprocess.run([str(QUERY_BIN), "--config", str(path)], capture_output=True, text=True,
                       timeout=30, env=child_env())
    assert r.returncode == 1
    assert "grpc_api.tls.cert_pem" in r.stderr and "nope.pem" in r.stderr, r.stderr


# --------------------------------------------------------------------------------------------------
# load


def test_500_concurrent_calls(ns, gstack):
    c = gstack
    md = c.metadata()
    futures = [c.stub.UpdateUserStatus.future(pb.UpdateUserStatusRequest(users=["c%03d" % i]), metadata=md,
                                              timeout=30) for i in range(500)]
    futures += [c.stub.GetUserStatus.future(pb.GetUserStatusRequest(users=["g%03d" % i, "g"]), metadata=md,
                                            timeout=30) for i in range(500)]
    ok = pb.UpdateUserStatusResponse(result=pb.UpdateUserStatusResult())
    assert [f.result(timeout=60) for f in futures[:500]] == [ok] * 500
    for i, f in enumerate(futures[500:]):
        assert f.result(timeout=60) == pb.GetUserStatusResponse(result=pb.GetUserStatusResult(
            statuses=[US("g%03d" % i), US("g")]))
    users = ["c%03d" % i for i in range(500)]
    wait_until(lambda: all(s.active for s in c.get(users)), what="500 users active")
