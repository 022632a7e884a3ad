"""Reading TensorBoard event files back in tests, with the protobuf classes of the library that
wrote them (tensorboardX; the tensorboard package, whose reader this would be, is not installed)."""

import struct
from collections import defaultdict

from tensorboardX.proto import event_pb2


def read_events(run_dir):
    """Every event of every event file in `run_dir`: the TFRecord frames (length, its CRC, the
    payload, its CRC) around tensorboardX's own Event messages."""
    events = []
    for path in sorted(run_dir.glob("events.out.tfevents.*")):
        data = path.read_bytes()
        offset = 0
        while offset < len(data):
            (length,) = struct.unpack("<Q", data[offset:offset + 8])
            events.append(event_pb2.Event.FromString(data[offset + 12:offset + 12 + length]))
            offset += 12 + length + 4
    return events


def _values(run_dir, field):
    """(step, value) per tag, of the summary values that hold `field`."""
    out = defaultdict(list)
    for event in read_events(run_dir):
        for value in event.summary.value:
            if value.HasField(field):
                out[value.tag].append((event.step, getattr(value, field)))
    return out


def scalars(run_dir):
    return _values(run_dir, "simple_value")


def histograms(run_dir):
    return _values(run_dir, "histo")
