"""The Sparkplug B decoder on real protobuf messages shaped like the specification's examples, and
hostile ones: truncated protobuf, wrong value fields, DATA before BIRTH, seq gaps, stale deaths."""

from __future__ import annotations

import subprocess
import sys
from datetime import UTC, datetime
from pathlib import Path

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from schemas.decoders import DECODERS
from schemas.readings import DecodeContext, Decoded, DecodeError
from schemas.sparkplug import SessionKey, SparkplugSessions
from schemas.sparkplug import sparkplug_b_pb2 as pb
from schemas.sparkplug.payloads import MetricValue, payload
from tests import sparkplug_messages as sp

RECEIVED = datetime(2025, 3, 1, 12, 0, tzinfo=UTC)
CITY = "c1"
PACKAGE = Path(__file__).resolve().parents[2] / "schemas" / "sparkplug"
NODE_KEY = SessionKey(CITY, sp.GROUP, sp.NODE)
DEVICE_KEY = SessionKey(CITY, sp.GROUP, sp.NODE, sp.DEVICE)


def decode(sessions: SparkplugSessions, topic: str, data: bytes) -> Decoded:
    ctx = DecodeContext(default_time=RECEIVED, topic=topic, city=CITY, sparkplug=sessions)
    return DECODERS["sparkplug-b"](data, ctx)


def reason(sessions: SparkplugSessions, topic: str, data: bytes) -> str:
    with pytest.raises(DecodeError) as e:
        decode(sessions, topic, data)
    return e.value.reason


def born() -> SparkplugSessions:
    s = SparkplugSessions()
    decode(s, sp.topic("NBIRTH"), sp.nbirth())
    decode(s, sp.topic("DBIRTH", sp.DEVICE), sp.dbirth())
    return s


def test_nbirth_stores_known_metrics_under_the_topics_edge_node_with_their_eng_unit() -> None:
    s = SparkplugSessions()
    out = decode(s, sp.topic("NBIRTH"), sp.nbirth(bd_seq=4))
    assert [(r.device_id, r.metric, r.value, r.unit, r.city) for r in out] == [
        (sp.NODE, "temperature", 21.5, "°C", CITY)
    ]
    assert out[0].time == datetime.fromtimestamp(sp.T0 / 1000, UTC)
    node = s.get(NODE_KEY)
    assert node is not None and node.bd_seq == 4 and node.seq == 0 and node.online
    assert node.aliases[1] == "Sensors/Temperature"


def test_ddata_by_alias_resolves_names_units_and_signed_int8_through_the_dbirth() -> None:
    s = born()
    out = decode(s, sp.topic("DDATA", sp.DEVICE), sp.ddata(seq=2, t=sp.T0 + 1000, flow=30.0, level=-7))
    got = {r.metric: (r.value, r.unit, r.device_id) for r in out}
    device = f"{sp.NODE}:{sp.DEVICE}"
    assert got == {"water_flow": (30.0, "L/min", device), "water_level": (-7.0, "cm", device)}
    assert not out.rejected


def test_dbirth_values_are_readings_and_its_boolean_input_is_skipped_as_unknown() -> None:
    s = SparkplugSessions()
    decode(s, sp.topic("NBIRTH"), sp.nbirth())
    out = decode(s, sp.topic("DBIRTH", sp.DEVICE), sp.dbirth())
    assert sorted((r.metric, r.value) for r in out) == [
        ("water_flow", 12.0),
        ("water_level", -3.0),
        ("water_temperature", pytest.approx(61.7, rel=1e-6)),
    ]


def test_data_before_any_birth_is_no_birth_and_wants_a_rebirth() -> None:
    s = SparkplugSessions()
    assert reason(s, sp.topic("DDATA", sp.DEVICE), sp.ddata(1, sp.T0)) == "no_birth"
    assert NODE_KEY in s.rebirths_wanted
    decode(s, sp.topic("NBIRTH"), sp.nbirth())
    assert NODE_KEY not in s.rebirths_wanted
    assert reason(s, sp.topic("DDATA", sp.DEVICE), sp.ddata(1, sp.T0)) == "no_birth"  # no DBIRTH yet


def test_ndeath_takes_the_node_and_its_devices_offline_and_later_data_is_no_birth() -> None:
    s = born()
    assert decode(s, sp.topic("NDEATH"), sp.ndeath(bd_seq=0)) == []
    assert s.get(NODE_KEY).online is False  # type: ignore[union-attr]
    assert s.get(DEVICE_KEY).online is False  # type: ignore[union-attr]
    assert s.counts() == (0, 2)
    assert reason(s, sp.topic("DDATA", sp.DEVICE), sp.ddata(2, sp.T0)) == "no_birth"


def test_ndeath_with_another_bdseq_is_stale_and_leaves_the_node_online() -> None:
    s = SparkplugSessions()
    decode(s, sp.topic("NBIRTH"), sp.nbirth(bd_seq=5))
    assert reason(s, sp.topic("NDEATH"), sp.ndeath(bd_seq=4)) == "stale_death"
    assert s.get(NODE_KEY).online is True  # type: ignore[union-attr]


def test_ddeath_takes_only_that_device_offline() -> None:
    s = born()
    decode(s, sp.topic("DDEATH", sp.DEVICE), sp.ddeath(seq=2))
    assert s.get(DEVICE_KEY).online is False  # type: ignore[union-attr]
    assert s.get(NODE_KEY).online is True  # type: ignore[union-attr]


def test_a_seq_gap_is_counted_and_wants_a_rebirth_but_the_data_is_kept() -> None:
    s = born()
    out = decode(s, sp.topic("DDATA", sp.DEVICE), sp.ddata(seq=9, t=sp.T0 + 1000))
    assert len(out) == 2
    assert s.seq_gaps == 1 and NODE_KEY in s.rebirths_wanted
    decode(s, sp.topic("DDATA", sp.DEVICE), sp.ddata(seq=10, t=sp.T0 + 2000))
    assert s.seq_gaps == 1


def test_seq_wraps_from_255_to_0_without_a_gap() -> None:
    s = SparkplugSessions()
    decode(s, sp.topic("NBIRTH"), sp.nbirth(seq=254))
    decode(s, sp.topic("DBIRTH", sp.DEVICE), sp.dbirth(seq=255))
    decode(s, sp.topic("DDATA", sp.DEVICE), sp.ddata(seq=0, t=sp.T0))
    assert s.seq_gaps == 0


def test_an_alias_the_birth_never_declared_is_a_rejected_part_and_its_neighbour_is_read() -> None:
    s = born()
    data = payload(
        [MetricValue("", 1.0, pb.Double, alias=99), MetricValue("", 20.0, pb.Double, alias=2)], 2, sp.T0
    )
    out = decode(s, sp.topic("DDATA", sp.DEVICE), data)
    assert [r.metric for r in out] == ["water_flow"]
    assert [(p.reason, p.path) for p in out.rejected] == [("unknown_alias", "metrics[0]")]


@pytest.mark.parametrize(
    ("datatype", "field", "value", "why"),
    [
        (pb.Int8, "double_value", 1.5, "wrong_type"),  # Int8 travels in int_value
        (pb.String, "string_value", "12", "wrong_type"),
        (pb.DateTime, "long_value", sp.T0, "wrong_type"),
        (pb.Boolean, "boolean_value", True, "wrong_type"),  # water_level is a number, not a state
        (pb.Bytes, "bytes_value", b"\x00", "unsupported_datatype"),
        (pb.Template, None, None, "unsupported_datatype"),
        (pb.Double, None, None, "missing_value"),
        (77, "double_value", 1.0, "unsupported_datatype"),  # no such datatype
    ],
)
def test_a_value_its_datatype_cannot_carry_as_a_reading_is_rejected_with_a_reason(
    datatype: int, field: str | None, value: object, why: str
) -> None:
    p = pb.Payload(timestamp=sp.T0, seq=0)
    m = p.metrics.add(name="Outputs/Water Level", datatype=datatype)
    if field is not None:
        setattr(m, field, value)
    p.metrics.add(name="Sensors/Temperature", datatype=pb.Float, float_value=20.0)
    out = decode(SparkplugSessions(), sp.topic("NBIRTH"), p.SerializeToString())
    assert [r.metric for r in out] == ["temperature"]
    assert [(x.reason, x.path) for x in out.rejected] == [(why, "metrics[0]")]


def test_data_whose_datatype_disagrees_with_its_birth_is_wrong_type() -> None:
    s = born()
    p = pb.Payload(timestamp=sp.T0, seq=2)
    p.metrics.add(alias=4, datatype=pb.Double, double_value=1.5)  # the DBIRTH said Int8
    out = decode(s, sp.topic("DDATA", sp.DEVICE), p.SerializeToString())
    assert list(out) == [] and [x.reason for x in out.rejected] == ["wrong_type"]


@pytest.mark.parametrize(
    ("datatype", "raw", "expected"),
    [
        (pb.Int8, 0xFF, -1.0),
        (pb.Int16, 0xFFFFFFFE, -2.0),
        (pb.Int32, 0x80000000, -(2.0**31)),
        (pb.UInt32, 0xFFFFFFFF, 4294967295.0),
        (pb.Int64, 2**64 - 5, -5.0),
        (pb.UInt64, 2**64 - 5, float(2**64 - 5)),
    ],
)
def test_integers_are_read_as_two_s_complement_in_the_unsigned_fields(
    datatype: int, raw: int, expected: float
) -> None:
    p = pb.Payload(timestamp=sp.T0, seq=0)
    m = p.metrics.add(name="power", datatype=datatype)
    if datatype in (pb.Int64, pb.UInt64):
        m.long_value = raw
    else:
        m.int_value = raw
    out = decode(SparkplugSessions(), sp.topic("NBIRTH"), p.SerializeToString())
    assert [r.value for r in out] == [expected]


def test_a_data_set_gives_one_reading_per_row_at_its_date_time_column() -> None:
    p = pb.Payload(timestamp=sp.T0, seq=0)
    m = p.metrics.add(name="History", datatype=pb.DataSet)
    ds = m.dataset_value
    ds.num_of_columns = 3
    ds.columns.extend(["time", "pm25", "label"])
    ds.types.extend([pb.DateTime, pb.Float, pb.String])
    for i, v in enumerate([12.5, 14.0]):
        row = ds.rows.add()
        row.elements.add(long_value=sp.T0 + i * 60_000)
        row.elements.add(float_value=v)
        row.elements.add(string_value="x")
    bad = ds.rows.add()
    bad.elements.add(long_value=sp.T0)
    bad.elements.add(string_value="n/a")
    bad.elements.add(string_value="x")
    out = decode(SparkplugSessions(), sp.topic("NBIRTH"), p.SerializeToString())
    assert [(r.metric, r.value, r.time.minute) for r in out] == [("pm25", 12.5, 55), ("pm25", 14.0, 56)]
    assert [(x.reason, x.path) for x in out.rejected] == [("wrong_type", "metrics[0].rows[2].pm25")]


@pytest.mark.parametrize(
    "data",
    [
        sp.nbirth()[:-3],  # truncated inside a metric
        b"\x0a\xff\xff\xff\xff\xff\xff\xff\xff\xff\xff",  # a varint that never ends
        b"\x12\x05abc",  # a length beyond the end
        b'{"temperature": 21}',  # JSON on a Sparkplug topic
    ],
)
def test_bytes_that_are_not_a_sparkplug_payload_are_bad_protobuf(data: bytes) -> None:
    assert reason(SparkplugSessions(), sp.topic("NBIRTH"), data) == "bad_protobuf"


@pytest.mark.parametrize(
    "topic",
    ["spBv1.0/g/NDATA", "spBv1.0/g/DDATA/node", "spBv1.0/g/NDATA/node/extra", "spAv1.0/g/NDATA/n", "x"],
)
def test_topics_that_are_not_sparkplug_b_are_bad_topic(topic: str) -> None:
    assert reason(SparkplugSessions(), topic, sp.nbirth()) == "bad_topic"


def test_commands_and_host_state_store_nothing() -> None:
    s = SparkplugSessions()
    assert decode(s, sp.topic("NCMD"), b"\xff") == []
    assert decode(s, "spBv1.0/STATE/host-1", b'{"online": true}') == []


def test_sequence_numbers_the_store_cannot_hold_are_refused_before_any_state_changes() -> None:
    s = SparkplugSessions()
    assert reason(s, sp.topic("NBIRTH"), sp.nbirth(seq=256)) == "bad_seq"
    huge_bd_seq = payload([MetricValue("bdSeq", 2**64 - 1, pb.UInt64)], 0, sp.T0, birth=True)
    assert reason(s, sp.topic("NBIRTH"), huge_bd_seq) == "bad_birth"
    assert s.get(NODE_KEY) is None and not s.changed


def test_a_birth_that_gives_one_alias_two_names_is_bad_birth() -> None:
    data = payload([MetricValue("a", 1.0, alias=1), MetricValue("b", 2.0, alias=1)], 0, sp.T0, birth=True)
    assert reason(SparkplugSessions(), sp.topic("NBIRTH"), data) == "bad_birth"


def test_sessions_round_trip_through_their_stored_rows() -> None:
    s = born()
    rows = {r.key: r for r in s.take_changed()}
    assert set(rows) == {NODE_KEY, DEVICE_KEY}
    columns = ("city_id", "group_id", "edge_node_id", "device_id", "online", "bd_seq", "seq", "metrics")
    stored = [dict(zip((*columns, "born_at", "died_at"), r.record(), strict=True)) for r in rows.values()]
    again = SparkplugSessions()
    again.load(stored)
    out = decode(again, sp.topic("DDATA", sp.DEVICE), sp.ddata(seq=2, t=sp.T0))
    assert {r.metric for r in out} == {"water_flow", "water_level"} and again.seq_gaps == 0


def test_the_committed_generated_module_is_what_protoc_makes_of_the_proto() -> None:
    """`make protos` regenerates schemas/sparkplug/sparkplug_b_pb2.py(i); nobody edits it by hand."""
    pytest.importorskip("grpc_tools")
    shared = Path(__file__).resolve().parents[3] / "shared" / "samples" / "sparkplug" / "sparkplug_b.proto"
    if shared.exists():
        assert shared.read_bytes() == (PACKAGE / "sparkplug_b.proto").read_bytes()
    out = Path(subprocess.run(["mktemp", "-d"], capture_output=True, text=True, check=True).stdout.strip())
    protoc = [sys.executable, "-m", "grpc_tools.protoc", f"-I{PACKAGE}", f"--python_out={out}"]
    subprocess.run([*protoc, f"--pyi_out={out}", str(PACKAGE / "sparkplug_b.proto")], check=True)
    for name in ("sparkplug_b_pb2.py", "sparkplug_b_pb2.pyi"):
        assert (out / name).read_text() == (PACKAGE / name).read_text(), name


FUZZ = settings(max_examples=300, deadline=None, database=None, suppress_health_check=list(HealthCheck))
SEEDS = [
    (sp.topic("NBIRTH"), sp.nbirth()),
    (sp.topic("DBIRTH", sp.DEVICE), sp.dbirth()),
    (sp.topic("DDATA", sp.DEVICE), sp.ddata(2, sp.T0)),
    (sp.topic("NDEATH"), sp.ndeath()),
]


def never_internal_error(topic: str, data: bytes) -> None:
    try:
        out = decode(born(), topic, data)
    except DecodeError as e:
        assert e.reason != "internal_error", e
        return
    for part in out.rejected:
        assert part.reason != "internal_error" and part.path.startswith("metrics[")
    for r in out:
        assert isinstance(r.value, float) and r.device_id and r.time.tzinfo is not None


@FUZZ
@given(seed=st.sampled_from(SEEDS), data=st.data())
def test_truncated_and_bit_flipped_messages_decode_or_fail_with_a_reason(
    seed: tuple[str, bytes], data: st.DataObject
) -> None:
    topic, payload_bytes = seed
    cut = payload_bytes[: data.draw(st.integers(0, len(payload_bytes)))]
    never_internal_error(topic, cut)
    flipped = bytearray(payload_bytes)
    for _ in range(data.draw(st.integers(1, 4))):
        i = data.draw(st.integers(0, len(flipped) - 1))
        flipped[i] ^= 1 << data.draw(st.integers(0, 7))
    never_internal_error(topic, bytes(flipped))


@FUZZ
@given(seed=st.sampled_from(SEEDS), junk=st.binary(max_size=400))
def test_random_bytes_on_every_message_type_never_crash_the_decoder(
    seed: tuple[str, bytes], junk: bytes
) -> None:
    never_internal_error(seed[0], junk)


def test_an_edge_node_announces_at_most_its_cap_of_devices_and_known_ones_rebirth() -> None:
    """One edge node, held to its own topics by the ACL, DBIRTHs 50 device names: the host keeps
    the first 10 (the cap) and refuses the rest as `too_many_devices`, so it cannot grow the host's
    state and the city's sparkplug_sessions without limit (seen at 5,101 sessions from 5,100
    DBIRTHs before the cap); a known device's new BIRTH is still taken, and a restart's load
    counts the stored devices."""
    s = SparkplugSessions(max_devices_per_node=10)
    decode(s, sp.topic("NBIRTH"), sp.nbirth())
    reasons = []
    for i in range(50):
        try:
            decode(s, sp.topic("DBIRTH", f"ghost-{i}"), sp.dbirth(seq=(i + 1) % 256))
        except DecodeError as e:
            reasons.append(e.reason)
    assert s.counts() == (11, 0)
    assert reasons == ["too_many_devices"] * 40
    decode(s, sp.topic("DBIRTH", "ghost-3"), sp.dbirth(seq=51))
    rows = s.take_changed()
    restarted = SparkplugSessions(max_devices_per_node=10)
    restarted.load(
        {
            "city_id": r.key.city,
            "group_id": r.key.group,
            "edge_node_id": r.key.edge_node,
            "device_id": r.key.device,
            "online": r.online,
            "bd_seq": r.bd_seq,
            "seq": r.seq,
            "metrics": r.metrics_json,
            "born_at": r.born_at,
            "died_at": r.died_at,
        }
        for r in rows
    )
    assert reason(restarted, sp.topic("DBIRTH", "ghost-99"), sp.dbirth(seq=52)) == "too_many_devices"
    assert not restarted.admits(SessionKey(CITY, sp.GROUP, sp.NODE, "ghost-98"))
    assert restarted.admits(SessionKey(CITY, sp.GROUP, sp.NODE, "ghost-0"))
