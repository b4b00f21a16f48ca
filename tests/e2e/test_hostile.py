"""Hostile HTTP input against userstatus-query: a table of malformed, oversized, unauthenticated and
abusive requests, sent over raw sockets where a normal client would refuse to send them.

Every case states the documented answer (design.md, README, docs/choices.md "HTTP limits"); after
each case the service must still answer GET /health with 200 and a normal get_user_status. One
query service (small limits, below) serves the whole table; the number of cases tried is printed.
"""
import json
import os
import socket
import time

import pytest

from conftest import API_KEY, Namespace, create_topics, delete_topics, wait_until

# Limits of the service under test (small, so that the cases reach them cheaply).
MAX_BODY = 4096
MAX_USERS = 5
MAX_USER_ID = 16
MAX_CONNECTIONS = 8
CONN_TIMEOUT_S = 2
KEY_HDR = b"X-API-Key: " + API_KEY.encode() + b"\r\n"


@pytest.fixture(scope="module")
def hostile(tmp_path_factory):
    ns = Namespace(tmp_path_factory.mktemp("hostile"), None)
    create_topics([ns.topic, ns.dlq])
    cfg = ns.config(query={"max_body_size": MAX_BODY, "max_users_per_request": MAX_USERS, "max_batch_commands": MAX_USERS,
                           "max_user_id_length": MAX_USER_ID, "max_connections": MAX_CONNECTIONS,
                           "connection_timeout": "%ds" % CONN_TIMEOUT_S, "threads": 2})
    q = ns.start_query(cfg)
    q.port = cfg["port"]
    yield q
    errors = ns.close()
    delete_topics([ns.topic, ns.dlq, ns.changes])
    assert not errors, "\n".join(errors)


# --------------------------------------------------------------------------------------------------
# raw HTTP


class Reply:
    def __init__(self, status, headers, body):
        self.status, self.headers, self.body = status, headers, body

    def json(self):
        return json.loads(self.body)

    def __repr__(self):
        return "Reply(%r, %r, %r)" % (self.status, self.headers, self.body[:200])


def parse_replies(data):
    """Splits raw bytes into Replies (Content-Length framed). status None: connection closed with
    nothing (or nothing more) sent."""
    out = []
    while data:
        head, sep, rest = data.partition(b"\r\n\r\n")
        if not sep:
            break
        lines = head.split(b"\r\n")
        status = int(lines[0].split()[1])
        headers = {}
        for ln in lines[1:]:
            k, _, v = ln.partition(b":")
            headers[k.strip().lower().decode()] = v.strip().decode(errors="replace")
        n = int(headers.get("content-length", "0"))
        out.append(Reply(status, headers, rest[:n]))
        data = rest[n:]
    return out


def exchange(port, data, timeout=5.0, chunks=None):
    """Sends data (or each of chunks, 50 ms apart) and reads until the server closes or timeout.
    Returns (replies, closed_by_server)."""
    s = socket.create_connection(("127.0.0.1", port), timeout=timeout)
    got, closed = b"", False
    try:
        for c in chunks or [data]:
            s.sendall(c)
            if chunks:
                time.sleep(0.05)
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            try:
                b = s.recv(65536)
            except socket.timeout:
                break
            except ConnectionResetError:
                closed = True
                break
            if not b:
                closed = True
                break
            got += b
    finally:
        s.close()
    return parse_replies(got), closed


def request(method="POST", path="/api/get_user_status", body=b"", headers=b"", key=True,
            version=b"HTTP/1.1", close=True, length=True):
    """One raw HTTP request. body: bytes or a JSON-able object."""
    if not isinstance(body, bytes):
        body = json.dumps(body).encode()
    h = b"Host: 127.0.0.1\r\n" + (KEY_HDR if key else b"") + headers
    if length:
        h += b"Content-Length: %d\r\n" % len(body)
    if close:
        h += b"Connection: close\r\n"
    return b"%s %s %s\r\n%s\r\n%s" % (method.encode(), path.encode(), version, h, body)


def one(port, data, **kw):
    replies, closed = exchange(port, data, **kw)
    assert len(replies) <= 1, replies
    return replies[0] if replies else Reply(None, {}, b"")


# --------------------------------------------------------------------------------------------------
# expectations


def ok_statuses(users):
    def check(r):
        assert r.status == 200, r
        assert r.json() == {"result": {"statuses": [{"user": u} for u in users]}}, r
    return check


def http(status, empty=False):
    def check(r):
        assert r.status == status, r
        if empty:
            assert r.body == b"", r
    return check


def code(c):
    def check(r):
        assert r.status == 200, r
        assert r.json() == {"error": {"code": c, "message": {100: "internal server error", 104: "method not found",
                                                             107: "bad request"}[c]}}, r
        if c == 107:
            assert r.headers.get("x-userstatus-error"), r  # the reason, for the caller
    return check


def all_of(*checks):
    def check(r):
        for c in checks:
            c(r)
    return check


def header(name, value):
    def check(r):
        assert r.headers.get(name) == value, r
    return check


def json_is(status, expected):
    def check(r):
        assert r.status == status, r
        assert r.json() == expected, r
    return check


def closed_or(status):
    """The server either answers `status` or closes the connection without a reply."""
    def check(r):
        assert r.status in (None, status), r
    return check


def simple(data, check, **kw):
    return lambda port: check(one(port, data, **kw))


U = {"users": ["a"]}
DEEP = 2000  # jansson's depth limit is 2048

CASES = {
    # ---- wrong methods and paths
    "get_on_api_is_405": simple(request("GET", body=b"", length=False), all_of(http(405, True), header("allow", "POST"))),
    "put_on_api_is_405": simple(request("PUT", body=U), http(405, True)),
    "delete_on_api_is_405": simple(request("DELETE", path="/api/delete_user_status", body=U), http(405, True)),
    "head_on_api_is_405": simple(request("HEAD", length=False), http(405, True)),
    "options_on_api_is_405": simple(request("OPTIONS", length=False), http(405, True)),
    "empty_method_name_is_104": simple(request(path="/api/", body=U), code(104)),
    "unknown_method_is_104": simple(request(path="/api/drop_all_users", body=U), code(104)),
    "method_with_suffix_is_104": simple(request(path="/api/get_user_status/x", body=U), code(104)),
    "dot_dot_path_is_104": simple(request(path="/api/../health", body=U), code(104)),
    "unknown_path_is_404": simple(request(path="/nope", body=U), http(404)),
    "upper_case_api_prefix_is_404": simple(request(path="/API/get_user_status", body=U), http(404)),
    "post_on_health_is_404": simple(request(path="/health", body=b""), http(404)),
    "query_string_is_ignored": simple(request(path="/api/get_user_status?x=1&y", body=U), ok_statuses(["a"])),
    "garbage_request_line_closes": simple(b"GARBAGE\r\n\r\n", closed_or(400)),
    "http_1_0_without_host": simple(b"POST /api/get_user_status HTTP/1.0\r\n" + KEY_HDR +
                                    b"Content-Length: %d\r\n\r\n%s" % (len(json.dumps(U)), json.dumps(U).encode()), ok_statuses(["a"])),
    # ---- authentication
    "missing_key_is_401_empty": simple(request(key=False, body=U), http(401, True)),
    "wrong_key_is_401": simple(request(key=False, body=U, headers=b"X-API-Key: wrong\r\n"), http(401, True)),
    "key_prefix_is_401": simple(request(key=False, body=U, headers=b"X-API-Key: " + API_KEY[:-1].encode() + b"\r\n"), http(401, True)),
    "key_with_suffix_is_401": simple(request(key=False, body=U, headers=b"X-API-Key: " + API_KEY.encode() + b"x\r\n"), http(401, True)),
    "empty_key_header_is_401": simple(request(key=False, body=U, headers=b"X-API-Key: \r\n"), http(401, True)),
    "bearer_scheme_is_401": simple(request(key=False, body=U, headers=b"Authorization: Bearer " + API_KEY.encode() + b"\r\n"), http(401, True)),
    "apikey_scheme_wrong_key_is_401": simple(request(key=False, body=U, headers=b"Authorization: apikey nope\r\n"), http(401, True)),
    "api_key_param_wrong_is_401": simple(request(key=False, path="/api/get_user_status?api_key=nope", body=U), http(401, True)),
    "lower_case_header_name_works": simple(request(key=False, body=U, headers=b"x-api-key: " + API_KEY.encode() + b"\r\n"), ok_statuses(["a"])),
    # duplicate headers: the first occurrence counts (libmicrohttpd's lookup), documented
    "duplicate_key_header_wrong_first_is_401": simple(request(body=U, key=False, headers=b"X-API-Key: wrong\r\n" + KEY_HDR), http(401, True)),
    "duplicate_key_header_right_first_works": simple(request(body=U, headers=b"X-API-Key: wrong\r\n"), ok_statuses(["a"])),
    # NUL bytes: the whole ?api_key= value is the key (authorized() compares its full length), so
    # "secret%00x" is wrong. In a header, libmicrohttpd itself ends the value at the NUL: what comes
    # after it is dropped, and a wrong key before it stays wrong (docs/choices.md "HTTP limits").
    "nul_byte_in_key_param_is_401": simple(request(key=False, path="/api/get_user_status?api_key=" + API_KEY + "%00x", body=U), http(401, True)),
    "nul_byte_then_key_param_is_401": simple(request(key=False, path="/api/get_user_status?api_key=x%00" + API_KEY, body=U), http(401, True)),
    "wrong_key_nul_right_key_header_is_401": simple(request(key=False, body=U, headers=b"X-API-Key: wrong\x00" + API_KEY.encode() + b"\r\n"), closed_or(401)),
    "key_nul_junk_header_ends_at_nul": simple(request(key=False, body=U, headers=b"X-API-Key: " + API_KEY.encode() + b"\x00junk\r\n"), ok_statuses(["a"])),
    "wrong_key_nul_right_key_apikey_scheme_is_401": simple(request(key=False, body=U, headers=b"Authorization: apikey x\x00" + API_KEY.encode() + b"\r\n"), closed_or(401)),
    # ---- headers
    "oversized_header_is_431": simple(request(body=U, headers=b"X-Big: " + b"a" * 70000 + b"\r\n"), closed_or(431)),
    # query.max_header_size (8 KiB by default) bounds the request line and headers together
    "header_block_of_7_5k_is_served": simple(request(body=U, headers=b"Cookie: " + b"c" * 7500 + b"\r\n"), ok_statuses(["a"])),
    "header_block_over_max_header_size_is_431": simple(request(body=U, headers=b"Cookie: " + b"c" * 8200 + b"\r\n"), closed_or(431)),
    "too_many_headers_is_431": simple(request(body=U, headers=b"".join(b"X-H%d: v\r\n" % i for i in range(3000))), closed_or(431)),
    "nul_byte_in_other_header_is_harmless": simple(request(body=U, headers=b"X-Junk: a\x00b\r\n"), ok_statuses(["a"])),
    "bad_content_length_is_400": simple(request(body=b"{}", length=False, headers=b"Content-Length: abc\r\n"), closed_or(400)),
    # ---- body
    "body_over_limit_is_413": simple(request(body={"users": ["x" * 10] * 400}), http(413)),
    "chunked_body_over_limit_is_413": simple(request(length=False, headers=b"Transfer-Encoding: chunked\r\n", body=b"".join(
        b"400\r\n" + b" " * 1024 + b"\r\n" for _ in range(5)) + b"0\r\n\r\n"), http(413)),
    "chunked_body_under_limit_works": simple(request(length=False, headers=b"Transfer-Encoding: chunked\r\n",
                                                     body=b"%x\r\n%s\r\n0\r\n\r\n" % (len(json.dumps(U)), json.dumps(U).encode())), ok_statuses(["a"])),
    "empty_body_is_400": simple(request(body=b""), http(400)),
    "truncated_json_is_400": simple(request(body=b'{"users":["a"'), http(400)),
    "invalid_json_is_400": simple(request(body=b"{users:[a]}"), http(400)),
    "trailing_garbage_is_400": simple(request(body=b'{"users":["a"]} x'), http(400)),
    "deeply_nested_json_is_107": simple(request(body=b"[" * DEEP + b"]" * DEEP), code(107)),
    "deeply_nested_unclosed_json_is_400": simple(request(body=b"[" * 4000), http(400)),
    "nested_object_users_is_107": simple(request(body=b'{"users":' + b'{"a":' * 600 + b"1" + b"}" * 600 + b"}"), code(107)),
    "duplicate_json_keys_is_400": simple(request(body=b'{"users":["a"],"users":["b"]}'), http(400)),
    "raw_nul_byte_in_body_is_400": simple(request(body=b'{"users":["a\x00b"]}'), http(400)),
    "escaped_nul_in_user_id_is_400": simple(request(body=b'{"users":["a\\u0000b"]}'), http(400)),
    "non_utf8_user_id_is_400": simple(request(body=b'{"users":["\xff\xfe"]}'), http(400)),
    "lone_surrogate_user_id_is_400": simple(request(body=b'{"users":["\\ud800"]}'), http(400)),
    "body_is_array_is_107": simple(request(body=[]), code(107)),
    "body_is_string_is_400": simple(request(body="users"), http(400)),  # top level must be object or array
    "body_is_null_is_400": simple(request(body=b"null"), http(400)),
    # ---- wrong types and limits
    "users_missing_is_107": simple(request(body={}), code(107)),
    "users_is_string_is_107": simple(request(body={"users": "a"}), code(107)),
    "users_is_null_is_107": simple(request(body={"users": None}), code(107)),
    "user_is_number_is_107": simple(request(body={"users": [42]}), code(107)),
    "user_is_object_is_107": simple(request(body={"users": [{"id": "a"}]}), code(107)),
    "too_many_users_is_107": simple(request(body={"users": ["u%d" % i for i in range(MAX_USERS + 1)]}), code(107)),
    "max_users_is_fine": simple(request(body={"users": ["u%d" % i for i in range(MAX_USERS)]}),
                                ok_statuses(["u%d" % i for i in range(MAX_USERS)])),
    "empty_user_id_is_107": simple(request(body={"users": [""]}), code(107)),
    "over_long_user_id_is_107": simple(request(body={"users": ["x" * (MAX_USER_ID + 1)]}), code(107)),
    "max_length_user_id_is_fine": simple(request(body={"users": ["x" * MAX_USER_ID]}), ok_statuses(["x" * MAX_USER_ID])),
    "multibyte_user_id_counts_bytes": simple(request(body={"users": ["\u00e9" * (MAX_USER_ID // 2 + 1)]}), code(107)),
    "state_is_number_is_107": simple(request(path="/api/update_user_status", body={"users": ["a"], "state": 5}), code(107)),
    "state_too_long_is_107": simple(request(path="/api/update_user_status", body={"users": ["a"], "state": "s" * 65}), code(107)),
    "update_too_many_users_is_107": simple(request(path="/api/update_user_status",
                                                   body={"users": ["u%d" % i for i in range(MAX_USERS + 1)]}), code(107)),
    "transport_mode_maps_107_to_400": simple(request(body={"users": [1]}, headers=b"X-Centrifugo-Error-Mode: transport\r\n"),
                                             json_is(400, {"code": 107, "message": "bad request"})),
    # ---- batch
    "batch_commands_not_array_is_107": simple(request(path="/api/batch", body={"commands": {}}), code(107)),
    "batch_too_many_commands_is_107": simple(request(path="/api/batch", body={"commands": [{"get_user_status": U}] * (MAX_USERS + 1)}), code(107)),
    "batch_bad_command_shapes_reply_107_each": simple(
        request(path="/api/batch", body={"commands": [1, None, {"a": {}, "b": {}}, {"nope": U}, {"get_user_status": U}]}),
        json_is(200, {"replies": [
            {"error": {"code": 107, "message": "bad request"}}, {"error": {"code": 107, "message": "bad request"}},
            {"error": {"code": 107, "message": "bad request"}}, {"error": {"code": 104, "message": "method not found"}},
            {"get_user_status": {"statuses": [{"user": "a"}]}}]})),
}


def case_pipelined(port):
    """Three requests and a health check sent in one write: four replies, in order."""
    reqs = [request(body={"users": ["p%d" % i]}, close=False) for i in range(3)]
    reqs.append(request("GET", path="/health", length=False))
    replies, closed = exchange(port, b"".join(reqs))
    assert [r.status for r in replies] == [200, 200, 200, 200], replies
    for i in range(3):
        assert replies[i].json() == {"result": {"statuses": [{"user": "p%d" % i}]}}
    assert closed


def case_pipelined_with_bad_request_in_the_middle(port):
    reqs = [request(body=U, close=False), request(body=b"{", close=False), request(body=U)]
    replies, _ = exchange(port, b"".join(reqs))
    assert [r.status for r in replies] == [200, 400, 200], replies


def case_headers_sent_byte_by_byte(port):
    """Slow but steady client: served."""
    data = request(body=U)
    chunks = [data[i:i + 8] for i in range(0, len(data), 8)]
    replies, _ = exchange(port, None, chunks=chunks)
    assert [r.status for r in replies] == [200], replies


def case_slow_headers_connection_closed(port):
    """Half a request line, then silence: closed after query.connection_timeout."""
    s = socket.create_connection(("127.0.0.1", port), timeout=CONN_TIMEOUT_S + 5)
    t0 = time.monotonic()
    s.sendall(b"POST /api/get_user_status HTTP/1.1\r\nHost: x\r\n")
    data = s.recv(1024)
    took = time.monotonic() - t0
    s.close()
    assert data == b"", data
    print("slow headers: closed after %.2fs (connection_timeout %ds)" % (took, CONN_TIMEOUT_S))
    assert took <= CONN_TIMEOUT_S + 2.5, took


def case_body_never_sent_connection_closed(port):
    """A Content-Length promising more than is sent: closed after query.connection_timeout."""
    s = socket.create_connection(("127.0.0.1", port), timeout=CONN_TIMEOUT_S + 5)
    t0 = time.monotonic()
    s.sendall(request(body=b"", length=False, headers=b"Content-Length: 99999999999\r\n") + b'{"us')
    try:
        data = s.recv(1024)
    except ConnectionResetError:
        data = b""
    took = time.monotonic() - t0
    s.close()
    assert data == b"" or data.startswith(b"HTTP/1.1 413"), data
    assert took <= CONN_TIMEOUT_S + 2.5, took


def server_sockets(pid):
    n = 0
    for fd in os.listdir("/proc/%d/fd" % pid):
        try:
            n += os.readlink("/proc/%d/fd/%s" % (pid, fd)).startswith("socket:")
        except OSError:
            pass
    return n


def case_many_idle_connections(port, pid):
    """3x query.max_connections idle connections: the server holds at most max_connections (the rest
    wait in the kernel's accept queue), closes idle ones after connection_timeout, and serves a new
    client by itself afterwards."""
    base = server_sockets(pid)
    idle = [socket.create_connection(("127.0.0.1", port), timeout=5) for _ in range(3 * MAX_CONNECTIONS)]
    try:
        time.sleep(0.5)
        held = server_sockets(pid) - base
        assert held <= MAX_CONNECTIONS, (held, MAX_CONNECTIONS)
        t0 = time.monotonic()
        r = one(port, request(body=U), timeout=4 * CONN_TIMEOUT_S + 10)
        took = time.monotonic() - t0
        ok_statuses(["a"])(r)
        print("many idle connections: server held %d sockets (limit %d); a new client was served after %.2fs"
              % (held, MAX_CONNECTIONS, took))
    finally:
        for s in idle:
            s.close()


def healthy(port):
    def ok():
        r = one(port, request("GET", path="/health", length=False), timeout=3)
        assert r.status == 200, r
        r = one(port, request(body={"users": ["h"]}), timeout=3)
        ok_statuses(["h"])(r)
        return True
    # after the idle-connection case the accept queue may still be draining
    wait_until(ok, timeout=3 * CONN_TIMEOUT_S + 10, what="query service healthy again")


SPECIAL = {
    "pipelined_requests": case_pipelined,
    "pipelined_with_bad_request_in_the_middle": case_pipelined_with_bad_request_in_the_middle,
    "headers_sent_in_small_pieces": case_headers_sent_byte_by_byte,
    "slow_headers_connection_timeout": case_slow_headers_connection_closed,
    "body_never_sent_connection_timeout": case_body_never_sent_connection_closed,
}

TRIED = []


@pytest.mark.parametrize("name", sorted(CASES) + sorted(SPECIAL))
def test_hostile_input(hostile, name):
    port = hostile.port
    (CASES.get(name) or SPECIAL[name])(port)
    assert hostile.alive(), "query service died on case %s:\n%s" % (name, hostile.log()[-3000:])
    healthy(port)
    TRIED.append(name)


def test_hostile_many_idle_connections(hostile):
    case_many_idle_connections(hostile.port, hostile.pid)
    assert hostile.alive()
    healthy(hostile.port)
    TRIED.append("many_idle_connections")
    print("hostile HTTP cases tried: %d (table %d, special %d, connection limit 1); service healthy after each"
          % (len(TRIED), len(CASES), len(SPECIAL)))
    assert len(CASES) + len(SPECIAL) + 1 >= 40


def test_hostile_api_key_not_in_log(hostile):
    """The hostile cases sent wrong keys and the right one many times; none is logged."""
    assert API_KEY not in hostile.log()


def test_max_header_size_admits_larger_header_blocks(ns):
    """A 30 KiB Cookie (passed on by a proxy) gets 431 by default and is served with
    query.max_header_size = 32 KiB."""
    big = request(body=U, headers=b"Cookie: " + b"c" * 30000 + b"\r\n")
    small = ns.config()
    ns.start_query(small)
    assert one(small["port"], big).status in (None, 431)
    cfg = ns.config(query={"max_header_size": 32768})
    q = ns.start_query(cfg)
    ok_statuses(["a"])(one(cfg["port"], big))
    assert q.alive()


# --------------------------------------------------------------------------------------------------
# security: start-up refusals and warnings


def test_empty_api_key_refuses_to_start_naming_the_key(ns):
    import subprocess

    from conftest import QUERY_BIN, child_env

    path = ns.write_config(ns.config(api_key=""))
    r = subprocess.run([str(QUERY_BIN), "--config", str(path)], capture_output=True, text=True, timeout=30,
                       env=child_env())
    assert r.returncode != 0
    assert "'api_key'" in r.stderr, r.stderr
    # --check-config refuses it too
    r = subprocess.run([str(QUERY_BIN), "--config", str(path), "--check-config"], capture_output=True,
                       text=True, timeout=30, env=child_env())
    assert r.returncode != 0 and "'api_key'" in r.stderr, r.stderr


def test_api_insecure_with_empty_key_starts_and_warns_loudly(ns):
    q = ns.start_query(ns.config(api_key="", api_insecure=True))
    r = one(q.url and int(q.url.rsplit(":", 1)[1]), request(key=False, body=U))
    ok_statuses(["a"])(r)
    warn = [ln for ln in q.log().splitlines() if "api_insecure" in ln]
    assert warn and " warn " in warn[0] and "WITHOUT an API key" in warn[0], q.log()[-2000:]
