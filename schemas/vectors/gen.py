#!/usr/bin/env python3
"""Generate the event codec test vectors: valid.tsv, invalid.tsv, encode.tsv.

Run from anywhere: python3 schemas/vectors/gen.py  (needs the `msgpack` package).
The generated files are committed; the C unit tests of the decoder and encoder read them.

File formats (tab separated; lines starting with '#' and blank lines are ignored):
  valid.tsv    name  key  hex  type  user  time  state
  invalid.tsv  name  key  hex  error
  encode.tsv   name  type  user  time  state  hex
  key   : the Kafka message key, or '-' for a message without key
  hex   : the msgpack value, lowercase hex; '<empty>' for an empty (zero-byte) value
  time  : decoded Unix milliseconds, or '-' when absent
  state : decoded state, '-' when absent, '<empty>' for the empty string
All strings in the vectors are printable ASCII without tabs.
"""
import os
import struct
import sys

import msgpack

HERE = os.path.dirname(os.path.abspath(__file__))

ERRORS = (
    "malformed_msgpack",
    "not_a_map",
    "duplicate_field",
    "wrong_field_type",
    "missing_field",
    "unknown_event_type",
    "bad_user",
    "state_too_long",
    "bad_time",
    "unsupported_version",
    "key_mismatch",
    "bad_utf8",
)


def pk(obj):
    """Pack a Python object (dict order preserved) with str for str, bin for bytes."""
    return msgpack.packb(obj, use_bin_type=True)


def pairs(*kv):
    """Pack a map from (key, value) pairs, allowing duplicate keys.

    Keys and values are Python objects (packed with pk) or raw bytes wrapped in Raw."""
    n = len(kv)
    if n < 16:
        out = bytes([0x80 | n])
    elif n < 65536:
        out = b"\xde" + struct.pack(">H", n)
    else:
        out = b"\xdf" + struct.pack(">I", n)
    for k, v in kv:
        out += enc(k) + enc(v)
    return out


class Raw(bytes):
    """Bytes inserted verbatim (hand-written msgpack)."""


def enc(x):
    return bytes(x) if isinstance(x, Raw) else pk(x)


def str8(s):
    b = s.encode()
    return Raw(b"\xd9" + bytes([len(b)]) + b)


def str16(s):
    b = s.encode()
    return Raw(b"\xda" + struct.pack(">H", len(b)) + b)


def str32(s):
    b = s.encode()
    return Raw(b"\xdb" + struct.pack(">I", len(b)) + b)


def rawstr(b):
    """A msgpack str whose body is the given bytes verbatim (may be invalid UTF-8)."""
    assert len(b) < 32
    return Raw(bytes([0xa0 | len(b)]) + b)


def int8(v):
    return Raw(b"\xd0" + struct.pack(">b", v))


def int16(v):
    return Raw(b"\xd1" + struct.pack(">h", v))


def int32(v):
    return Raw(b"\xd2" + struct.pack(">i", v))


def int64(v):
    return Raw(b"\xd3" + struct.pack(">q", v))


def uint64(v):
    return Raw(b"\xcf" + struct.pack(">Q", v))


def uint32(v):
    return Raw(b"\xce" + struct.pack(">I", v))


def uint16(v):
    return Raw(b"\xcd" + struct.pack(">H", v))


def uint8(v):
    return Raw(b"\xcc" + struct.pack(">B", v))


T = 1627107289000  # 2021-07-24T06:14:49Z in ms
U256 = "u" * 256
U257 = "u" * 257
S64 = "s" * 64
S65 = "s" * 65


def valid_vectors():
    V = []

    def add(name, key, raw, typ, user, time=None, state=None):
        V.append((name, key, raw, typ, user, time, state))

    add("active_minimal", None, pk({"type": "active", "user": "42"}), "active", "42")
    add("online_minimal", None, pk({"type": "online", "user": "42"}), "online", "42")
    add("delete_minimal", None, pk({"type": "delete", "user": "42"}), "delete", "42")
    add("active_time_ms", None, pk({"type": "active", "user": "42", "time": T}), "active", "42", T)
    add("online_time_ms", None, pk({"type": "online", "user": "42", "time": T}), "online", "42", T)
    add("delete_with_time", None, pk({"type": "delete", "user": "42", "time": T}), "delete", "42", T)
    add("time_zero", None, pk({"type": "active", "user": "42", "time": 0}), "active", "42", 0)
    add("time_fixint", None, pk({"type": "active", "user": "42", "time": 127}), "active", "42", 127)
    add("time_uint8", None, pk({"type": "active", "user": "42", "time": 200}), "active", "42", 200)
    add("time_uint16", None, pk({"type": "active", "user": "42", "time": 60000}), "active", "42", 60000)
    add("time_uint32", None, pk({"type": "active", "user": "42", "time": 4000000000}),
        "active", "42", 4000000000)
    add("time_uint64", None, pk({"type": "active", "user": "42", "time": T}), "active", "42", T)
    add("time_int64_max", None, pk({"type": "active", "user": "42", "time": 2**63 - 1}),
        "active", "42", 2**63 - 1)
    # positive values in signed encodings, and non-minimal unsigned encodings, are integers too
    add("time_int8_positive", None, pairs(("type", "active"), ("user", "42"), ("time", int8(5))),
        "active", "42", 5)
    add("time_int16_positive", None, pairs(("type", "active"), ("user", "42"), ("time", int16(1000))),
        "active", "42", 1000)
    add("time_int32_positive", None, pairs(("type", "active"), ("user", "42"), ("time", int32(100000))),
        "active", "42", 100000)
    add("time_int64_positive", None, pairs(("type", "active"), ("user", "42"), ("time", int64(T))),
        "active", "42", T)
    add("time_uint64_small", None, pairs(("type", "active"), ("user", "42"), ("time", uint64(7))),
        "active", "42", 7)
    add("time_uint32_small", None, pairs(("type", "online"), ("user", "42"), ("time", uint32(7))),
        "online", "42", 7)
    add("key_equals_user", "42", pk({"type": "active", "user": "42", "time": T}), "active", "42", T)
    add("key_equals_user_delete", "user-7", pk({"type": "delete", "user": "user-7"}), "delete", "user-7")
    add("state_dnd", None, pk({"type": "active", "user": "42", "state": "dnd"}), "active", "42", None, "dnd")
    add("state_64_bytes", None, pk({"type": "active", "user": "42", "state": S64}), "active", "42", None, S64)
    add("state_empty", None, pk({"type": "active", "user": "42", "state": ""}), "active", "42", None, "")
    add("online_time_state", "42", pk({"type": "online", "user": "42", "time": T, "state": "away"}),
        "online", "42", T, "away")
    add("user_1_byte", None, pk({"type": "active", "user": "x"}), "active", "x")
    add("user_31_bytes_fixstr", None, pk({"type": "active", "user": "a" * 31}), "active", "a" * 31)
    add("user_32_bytes_str8", None, pk({"type": "active", "user": "b" * 32}), "active", "b" * 32)
    add("user_256_bytes_str16", None, pk({"type": "active", "user": U256}), "active", U256)
    add("user_256_bytes_with_key", U256, pk({"type": "online", "user": U256, "time": 1}), "online", U256, 1)
    add("user_with_punctuation", "a:b{c}@d.e", pk({"type": "active", "user": "a:b{c}@d.e"}),
        "active", "a:b{c}@d.e")
    add("fields_reordered", "42", pk({"state": "dnd", "time": T, "user": "42", "type": "active"}),
        "active", "42", T, "dnd")
    add("fields_reordered_v_first", None, pk({"v": 1, "user": "42", "type": "online"}), "online", "42")
    add("version_1", None, pk({"type": "active", "user": "42", "time": T, "v": 1}), "active", "42", T)
    add("version_1_int8", None, pairs(("type", "active"), ("user", "42"), ("v", int8(1))), "active", "42")
    add("version_1_uint64", None, pairs(("type", "active"), ("user", "42"), ("v", uint64(1))), "active", "42")
    add("non_minimal_str_encodings", None,
        pairs(("type", str8("active")), ("user", str16("42")), ("state", str32("dnd"))),
        "active", "42", None, "dnd")
    add("str8_keys", None, pairs((str8("type"), "online"), (str8("user"), "42")), "online", "42")
    add("unknown_fields_scalars", None,
        pk({"type": "active", "user": "42", "int": -5, "float": 1.5, "nil": None, "bool": True,
            "bin": b"\x00\x01", "str": "x", "big": 2**64 - 1}),
        "active", "42")
    add("unknown_fields_nested", None,
        pk({"type": "active", "meta": {"a": [1, 2, {"b": None, "c": [b"x", "y"]}], "d": {}},
            "user": "42", "arr": [1, "two", [3.0, [4]]], "time": T}),
        "active", "42", T)
    add("unknown_field_ext", None,
        pk({"type": "online", "user": "42", "x": msgpack.ExtType(5, b"abcd"),
            "ts": msgpack.Timestamp(1627107289)}),
        "online", "42")
    add("unknown_field_case_sensitive", None,
        pk({"type": "active", "user": "42", "Type": 5, "USER": None, "Time": "x", "v2": "no"}),
        "active", "42")
    add("non_str_map_keys_ignored", None,
        pairs(("type", "active"), (1, "x"), ("user", "42"), (b"user", 5), (b"type", b"bogus"),
              (None, None), ([1], {"a": 1})),
        "active", "42")
    add("map16", None,
        pk(dict([("type", "active"), ("user", "42")] + [("f%02d" % i, i) for i in range(16)])),
        "active", "42")
    add("map32_header", None,
        Raw(b"\xdf\x00\x00\x00\x02") + pk("type") + pk("delete") + pk("user") + pk("42"),
        "delete", "42")
    return V


def invalid_vectors():
    V = []

    def add(name, key, raw, error):
        assert error in ERRORS, error
        V.append((name, key, raw, error))

    good = pk({"type": "active", "user": "42"})
    # malformed_msgpack
    add("empty_value", None, b"", "malformed_msgpack")
    add("never_used_byte", None, b"\xc1", "malformed_msgpack")
    add("garbage_text", "42", b"hello, world", "malformed_msgpack")
    add("truncated_map", None, good[:-3], "malformed_msgpack")
    add("map_header_only", None, b"\x82", "malformed_msgpack")
    add("truncated_missing_value", None, pairs(("type", "active"))[:-7], "malformed_msgpack")
    add("truncated_in_str", None, good[:-1], "malformed_msgpack")
    add("truncated_str8_header", None, b"\x82\xa4type\xd9", "malformed_msgpack")
    add("truncated_in_unknown_field", None,
        pk({"type": "active", "user": "42", "x": [1, 2, 3]})[:-1], "malformed_msgpack")
    add("truncated_time", None, pk({"type": "active", "user": "42", "time": T})[:-2], "malformed_msgpack")
    add("trailing_byte", None, good + b"\x00", "malformed_msgpack")
    add("two_maps", None, good + good, "malformed_msgpack")
    add("never_used_byte_as_value", None, pairs(("type", "active"), ("user", "42"), ("x", Raw(b"\xc1"))),
        "malformed_msgpack")
    # not_a_map
    add("array", None, pk(["active", "42"]), "not_a_map")
    add("string", None, pk("active"), "not_a_map")
    add("integer", None, pk(42), "not_a_map")
    add("nil", None, pk(None), "not_a_map")
    add("bin_containing_map", None, pk(good), "not_a_map")
    add("array_of_map", None, pk([{"type": "active", "user": "42"}]), "not_a_map")
    # duplicate_field
    add("duplicate_type", None, pairs(("type", "active"), ("user", "42"), ("type", "active")), "duplicate_field")
    add("duplicate_user", None, pairs(("type", "active"), ("user", "42"), ("user", "42")), "duplicate_field")
    add("duplicate_time", None, pairs(("type", "active"), ("user", "42"), ("time", T), ("time", T)),
        "duplicate_field")
    add("duplicate_state", None, pairs(("type", "active"), ("user", "42"), ("state", "a"), ("state", "a")),
        "duplicate_field")
    add("duplicate_v", None, pairs(("type", "active"), ("user", "42"), ("v", 1), ("v", 1)), "duplicate_field")
    add("duplicate_user_str8_key", None, pairs(("type", "active"), ("user", "42"), (str8("user"), "42")),
        "duplicate_field")
    # wrong_field_type
    add("type_bin", None, pk({"type": b"active", "user": "42"}), "wrong_field_type")
    add("type_nil", None, pk({"type": None, "user": "42"}), "wrong_field_type")
    add("type_int", None, pk({"type": 1, "user": "42"}), "wrong_field_type")
    add("user_bin", None, pk({"type": "active", "user": b"42"}), "wrong_field_type")
    add("user_int", None, pk({"type": "active", "user": 42}), "wrong_field_type")
    add("user_array", None, pk({"type": "active", "user": ["42"]}), "wrong_field_type")
    add("state_nil", None, pk({"type": "active", "user": "42", "state": None}), "wrong_field_type")
    add("state_bin", None, pk({"type": "active", "user": "42", "state": b"dnd"}), "wrong_field_type")
    add("time_float", None, pk({"type": "active", "user": "42", "time": 1627107289000.0}), "wrong_field_type")
    add("time_float32", None,
        pairs(("type", "active"), ("user", "42"), ("time", Raw(b"\xca" + struct.pack(">f", 1.0)))),
        "wrong_field_type")
    add("time_str", None, pk({"type": "active", "user": "42", "time": "1627107289000"}), "wrong_field_type")
    add("time_nil", None, pk({"type": "active", "user": "42", "time": None}), "wrong_field_type")
    add("time_bool", None, pk({"type": "active", "user": "42", "time": True}), "wrong_field_type")
    add("time_timestamp_ext", None,
        pk({"type": "active", "user": "42", "time": msgpack.Timestamp(1627107289)}),
        "wrong_field_type")
    add("v_str", None, pk({"type": "active", "user": "42", "v": "1"}), "wrong_field_type")
    add("v_float", None, pk({"type": "active", "user": "42", "v": 1.0}), "wrong_field_type")
    # missing_field
    add("empty_map", None, pk({}), "missing_field")
    add("missing_type", None, pk({"user": "42", "time": T}), "missing_field")
    add("missing_user", None, pk({"type": "active", "time": T}), "missing_field")
    add("user_only_as_bin_key", None, pairs(("type", "active"), (b"user", "42")), "missing_field")
    add("user_misspelled", None, pk({"type": "active", "User": "42"}), "missing_field")
    # unknown_event_type
    add("type_offline", None, pk({"type": "offline", "user": "42"}), "unknown_event_type")
    add("type_capitalised", None, pk({"type": "Active", "user": "42"}), "unknown_event_type")
    add("type_empty", None, pk({"type": "", "user": "42"}), "unknown_event_type")
    add("type_trailing_space", None, pk({"type": "active ", "user": "42"}), "unknown_event_type")
    add("type_prefix", None, pk({"type": "act", "user": "42"}), "unknown_event_type")
    # bad_user
    add("user_empty", None, pk({"type": "active", "user": ""}), "bad_user")
    add("user_257_bytes", None, pk({"type": "active", "user": U257}), "bad_user")
    add("user_257_bytes_delete", None, pk({"type": "delete", "user": U257, "time": T}), "bad_user")
    # state_too_long
    add("state_65_bytes", None, pk({"type": "active", "user": "42", "state": S65}), "state_too_long")
    add("state_300_bytes", "42", pk({"type": "online", "user": "42", "state": "z" * 300}), "state_too_long")
    # bad_time
    add("time_minus_1", None, pk({"type": "active", "user": "42", "time": -1}), "bad_time")
    add("time_minus_1000", None, pk({"type": "active", "user": "42", "time": -1000}), "bad_time")
    add("time_int64_min", None, pk({"type": "active", "user": "42", "time": -(2**63)}), "bad_time")
    # unsupported_version
    add("version_2", None, pk({"type": "active", "user": "42", "v": 2}), "unsupported_version")
    add("version_0", None, pk({"type": "active", "user": "42", "v": 0}), "unsupported_version")
    add("version_minus_1", None, pk({"type": "active", "user": "42", "v": -1}), "unsupported_version")
    add("version_big", None, pk({"type": "active", "user": "42", "v": 2**32 + 1}), "unsupported_version")
    # key_mismatch
    add("key_other_user", "43", pk({"type": "active", "user": "42"}), "key_mismatch")
    add("key_leading_zero", "042", pk({"type": "active", "user": "42"}), "key_mismatch")
    add("key_prefix_of_user", "4", pk({"type": "online", "user": "42", "time": T}), "key_mismatch")
    add("key_longer_than_user", "42x", pk({"type": "delete", "user": "42"}), "key_mismatch")
    # bad_utf8: user or state is a str whose bytes are not well-formed UTF-8
    add("user_invalid_byte_ff", None, pairs(("type", "active"), ("user", rawstr(b"4\xff2"))), "bad_utf8")
    add("user_lone_continuation", None, pairs(("type", "active"), ("user", rawstr(b"\x80"))), "bad_utf8")
    add("user_overlong_slash", None, pairs(("type", "online"), ("user", rawstr(b"\xc0\xaf"))), "bad_utf8")
    add("user_overlong_3_bytes", None, pairs(("type", "active"), ("user", rawstr(b"\xe0\x80\xaf"))),
        "bad_utf8")
    add("user_surrogate", None, pairs(("type", "delete"), ("user", rawstr(b"\xed\xa0\x80"))), "bad_utf8")
    add("user_above_u10ffff", None, pairs(("type", "active"), ("user", rawstr(b"\xf4\x90\x80\x80"))),
        "bad_utf8")
    add("user_truncated_sequence", None, pairs(("type", "active"), ("user", rawstr(b"ab\xe2\x82"))),
        "bad_utf8")
    add("state_invalid_byte_fe", None, pairs(("type", "active"), ("user", "42"), ("state", rawstr(b"\xfe"))),
        "bad_utf8")
    add("state_truncated_sequence", "42",
        pairs(("type", "online"), ("user", "42"), ("state", rawstr(b"dnd\xf0\x9f\x98"))), "bad_utf8")
    add("state_cesu8_pair", None,
        pairs(("type", "active"), ("user", "42"), ("state", rawstr(b"\xed\xa0\xbd\xed\xb8\x80"))), "bad_utf8")
    return V


def encode_vectors():
    V = []

    def add(name, typ, user, time=None, state=None):
        d = {"type": typ, "user": user}
        if time is not None:
            d["time"] = time
        if state is not None:
            d["state"] = state
        d["v"] = 1
        V.append((name, typ, user, time, state, pk(d)))

    add("active_minimal", "active", "42")
    add("online_minimal", "online", "42")
    add("delete_minimal", "delete", "42")
    add("active_time", "active", "42", T)
    add("online_time", "online", "42", T)
    add("delete_time", "delete", "42", T)
    add("time_zero", "active", "42", 0)
    add("time_fixint_127", "active", "42", 127)
    add("time_uint8_128", "active", "42", 128)
    add("time_uint8_255", "active", "42", 255)
    add("time_uint16_256", "active", "42", 256)
    add("time_uint16_65535", "active", "42", 65535)
    add("time_uint32_65536", "active", "42", 65536)
    add("time_uint32_max", "active", "42", 2**32 - 1)
    add("time_uint64_2p32", "active", "42", 2**32)
    add("time_int64_max", "active", "42", 2**63 - 1)
    add("state_dnd", "active", "42", None, "dnd")
    add("state_empty", "active", "42", None, "")
    add("state_64_bytes_str8", "active", "42", T, S64)
    add("time_and_state", "online", "user-7", T, "away")
    add("user_1_byte", "active", "x")
    add("user_31_bytes_fixstr", "active", "a" * 31)
    add("user_32_bytes_str8", "active", "b" * 32)
    add("user_255_bytes_str8", "active", "c" * 255)
    add("user_256_bytes_str16", "online", U256, T)
    return V


def opt(x):
    if x is None:
        return "-"
    if x == "":
        return "<empty>"
    return str(x)


def hx(b):
    return b.hex() if b else "<empty>"


def check_field(s):
    assert "\t" not in s and "\n" not in s and s.isprintable() and s.isascii(), repr(s)
    return s


def write(path, header, rows):
    with open(path, "w", newline="\n") as f:
        f.write(header)
        for r in rows:
            f.write("\t".join(check_field(c) for c in r) + "\n")


HEAD = "# GENERATED by schemas/vectors/gen.py - do not edit by hand; edit gen.py and rerun it.\n"


def main():
    valid = valid_vectors()
    invalid = invalid_vectors()
    encode = encode_vectors()
    for vs in (valid, invalid, encode):
        names = [v[0] for v in vs]
        assert len(names) == len(set(names)), "duplicate vector names"

    # self-check: valid vectors decode to what they claim (using Python msgpack as a reference)
    for name, key, raw, typ, user, time, state in valid:
        obj = msgpack.unpackb(raw, raw=False, strict_map_key=False, use_list=False)
        assert isinstance(obj, dict), name
        assert obj["type"] == typ and obj["user"] == user, name
        assert obj.get("time") == time and obj.get("state") == state, name
        assert key is None or key == user, name
    for name, typ, user, time, state, raw in encode:
        obj = msgpack.unpackb(raw, raw=False)
        assert list(obj)[0:2] == ["type", "user"] and list(obj)[-1] == "v", name

    write(os.path.join(HERE, "valid.tsv"),
          HEAD + "# Valid events: the decoder must accept each and decode exactly these fields.\n"
          "# key: Kafka message key or '-' (none). time: Unix ms or '-' (absent).\n"
          "# state: '-' (absent) or '<empty>' (empty string).\n"
          "# name\tkey\thex\ttype\tuser\ttime\tstate\n",
          [(n, opt(k), hx(r), t, u, opt(tm), opt(s)) for n, k, r, t, u, tm, s in valid])
    write(os.path.join(HERE, "invalid.tsv"),
          HEAD + "# Invalid events: the decoder must reject each with exactly this reason code.\n"
          "# key: Kafka message key or '-' (none). hex '<empty>' is a zero-byte value.\n"
          "# Each vector breaks exactly one rule. Reason precedence when several apply:\n"
          "# " + ", ".join(ERRORS) + "\n"
          "# name\tkey\thex\terror\n",
          [(n, opt(k), hx(r), e) for n, k, r, e in invalid])
    write(os.path.join(HERE, "encode.tsv"),
          HEAD + "# Encoder vectors: canonical encoding of an event. Map keys in the order\n"
          "# type, user, time (if not '-'), state (if not '-'), v (always 1); smallest str and int headers.\n"
          "# state '<empty>' is the empty string.\n"
          "# name\ttype\tuser\ttime\tstate\thex\n",
          [(n, t, u, opt(tm), opt(s), hx(r)) for n, t, u, tm, s, r in encode])
    print("valid: %d, invalid: %d, encode: %d" % (len(valid), len(invalid), len(encode)), file=sys.stderr)


if __name__ == "__main__":
    main()
