"""Reading TensorBoard event files back in tests with another library's code: tensorboardX's
Event messages and CRC (the tensorboard package, whose reader this would be, is not installed)."""

import struct
from collections import defaultdict

from tensorboardX.proto import event_pb2
from tensorboardX.record_writer import masked_crc32c


def read_events(run_dir):
    """Every event of every event file in `run_dir`: the TFRecord frames (length, its CRC, the
    payload, its CRC), each checksum checked, around Event messages."""
    events = []
    for path in sorted(run_dir.glob("events.out.tfevents.*")):
        data = path.read_bytes()
        offset = 0
        while offset < len(data):
            header = data[offset:offset + 8]
            (length,) = struct.unpack("<Q", header)
            payload = data[offset + 12:offset + 12 + length]
            assert struct.unpack("<I", data[offset + 8:offset + 12])[0] == masked_crc32c(header), path
            assert struct.unpack("<I", data[offset + 12 + length:offset + 16 + length])[0] == masked_crc32c(payload)
            events.append(event_pb2.Event.FromString(payload))
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
