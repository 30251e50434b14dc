"""The pure parts of InstanceManager: specs, value checks, the row codec, the deadline queue."""

from __future__ import annotations

import zlib

import msgpack
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from greentree import Instance, InstanceValueError, StateMachine
from greentree._instance_record import (
    FORMAT_VERSION,
    MAX_META,
    DeadlineQueue,
    decode_key,
    decode_row,
    encode_key,
    encode_meta,
    encode_row,
)
from greentree._instance_spec import TIMEOUT_ACTION, check_spec

scalars = st.one_of(st.text(max_size=8), st.binary(max_size=8), st.integers(-(1 << 63), (1 << 63) - 1))
ids = st.recursive(scalars, lambda inner: st.tuples(inner, inner), max_leaves=4)
states = st.recursive(
    st.one_of(scalars, st.booleans(), st.none(), st.floats(allow_nan=False)),
    lambda inner: st.tuples(inner, inner), max_leaves=3,
)
metas = st.recursive(
    st.one_of(st.none(), st.booleans(), st.integers(-(1 << 63), (1 << 64) - 1), st.floats(allow_nan=False),
              st.text(max_size=8), st.binary(max_size=8)),
    lambda inner: st.one_of(st.lists(inner, max_size=3), st.dictionaries(st.text(max_size=4), inner, max_size=3)),
    max_leaves=8,
)


@settings(max_examples=60, deadline=None)  # a shared machine: no per-example deadline
@given(ids, states, metas, st.floats(0, 2e9), st.one_of(st.none(), st.floats(0, 2e9)))
def test_a_row_decodes_to_the_instance_that_was_encoded(instance_id, state, meta, t, deadline):
    key = encode_key(instance_id)
    meta_bytes, meta_value = encode_meta(meta, instance_id)
    inst = Instance(instance_id, "spec", state, meta_value, t, t + 1, deadline)
    back, back_meta = decode_row(*encode_row(key, inst, meta_bytes))
    assert back == inst and back_meta == meta_bytes
    assert decode_key(key) == instance_id


@settings(max_examples=60, deadline=None)  # a shared machine: no per-example deadline
@given(ids, metas, st.data())
def test_any_single_byte_change_in_a_row_is_detected(instance_id, meta, data):
    key = encode_key(instance_id)
    meta_bytes, meta_value = encode_meta(meta, instance_id)
    row = list(encode_row(key, Instance(instance_id, "s", "a", meta_value, 1.0, 2.0), meta_bytes))
    col = data.draw(st.sampled_from([0, 2, 3]))
    if not row[col]:
        return
    pos = data.draw(st.integers(0, len(row[col]) - 1))
    flip = data.draw(st.integers(1, 255))
    b = bytearray(row[col])
    b[pos] ^= flip
    row[col] = bytes(b)
    with pytest.raises(ValueError):
        decode_row(*row)


def test_rows_of_an_unknown_format_or_shape_are_refused():
    key = encode_key("x")
    head = msgpack.packb([FORMAT_VERSION + 1, "s", "a", 1.0, 1.0, None])
    meta = msgpack.packb(None)
    crc = zlib.crc32(meta, zlib.crc32(head, zlib.crc32(key)))
    with pytest.raises(ValueError, match="row format"):
        decode_row(key, crc, head, meta)
    head = msgpack.packb([FORMAT_VERSION, "s", "a"])
    with pytest.raises(ValueError, match="6-field"):
        decode_row(key, zlib.crc32(meta, zlib.crc32(head, zlib.crc32(key))), head, meta)
    with pytest.raises(ValueError, match="wrong type"):
        decode_row("x", 0, head, meta)


@pytest.mark.parametrize("bad", [["a"], {"a": 1}, 1.5, True, None, ("a", ["b"]), object()])
def test_ids_other_than_str_bytes_int_and_tuples_of_them_are_refused(bad):
    with pytest.raises(InstanceValueError, match="instance id"):
        encode_key(bad)


def test_meta_larger_than_the_limit_is_refused():
    with pytest.raises(InstanceValueError, match=str(MAX_META)):
        encode_meta(b"x" * (MAX_META + 1), "big")


class Spec:
    name, initial = "duck", "a"
    timeouts = {"a": 5}

    def allows(self, state, action, new_state):
        return (state, action, new_state) == ("a", TIMEOUT_ACTION, "b")

    def target(self, state, action):
        return {("a", TIMEOUT_ACTION): "b"}[(state, action)]


def test_any_object_with_name_initial_allows_and_target_is_a_spec():
    view = check_spec(Spec(), "test")
    assert (view.name, view.initial, view.timeouts) == ("duck", "a", {"a": 5.0})
    assert view.deadline("a", 100.0) == 105.0 and view.deadline("b", 100.0) is None
    assert view.describe_allowed("a") == "see the spec's allows()"


def test_state_machine_lists_what_is_allowed_from_a_state():
    m = StateMachine("m", "a", {("a", "go"): "b", ("a", "stop"): "c"})
    view = check_spec(m, "test")
    assert view.describe_allowed("a") == "'go' -> 'b', 'stop' -> 'c'"
    assert view.describe_allowed("c") == "nothing (it is a final state)"


# ---------------------------------------------------------------- DeadlineQueue against a model
ops = st.lists(st.one_of(
    st.tuples(st.just("set"), st.integers(0, 6), st.one_of(st.none(), st.integers(0, 50))),
    st.tuples(st.just("clear"), st.integers(0, 6), st.none()),
    st.tuples(st.just("pop"), st.none(), st.integers(0, 50)),
), max_size=60)


@settings(deadline=None)
@given(ops)
def test_the_deadline_queue_behaves_like_a_dict_of_deadlines(operations):
    q, model = DeadlineQueue(), {}
    for op, i, value in operations:
        if op == "set":
            q.set(i, value)
            if value is None:
                model.pop(i, None)
            else:
                model[i] = value
        elif op == "clear":
            q.clear(i)
            model.pop(i, None)
        else:
            due = q.pop_due(value)
            expected = [k for k, d in model.items() if d <= value]
            assert sorted(due) == sorted(expected)
            assert [model[k] for k in due] == sorted(model[k] for k in due)  # earliest first
            for k in due:
                del model[k]
        assert len(q) == len(model)
        assert q.next_deadline() == (min(model.values()) if model else None)


def test_the_pure_instance_modules_load_without_gevent():
    import pathlib
    import subprocess
    import sys

    pkg = pathlib.Path(__file__).resolve().parent.parent / "greentree"
    code = (
        "import sys, types\n"
        "sys.modules['gevent'] = None; sys.modules['greenlet'] = None  # importing them now fails\n"
        f"pkg = types.ModuleType('greentree'); pkg.__path__ = [{str(pkg)!r}]; sys.modules['greentree'] = pkg\n"
        "import greentree._instance_spec, greentree._instance_record\n"
        "print(sorted(n for n in sys.modules if n.startswith('greentree.')))\n"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60)
    assert out.returncode == 0, out.stderr
    assert out.stdout.strip() == "['greentree._errors', 'greentree._instance_record', 'greentree._instance_spec']"
