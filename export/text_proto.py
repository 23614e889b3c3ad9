"""Text protos of TF Serving's config files: parsing that names the bad line, and the
message types that `tensorflow-serving-api` does not ship (`MonitoringConfig`,
`BatchingParameters`), declared here with TF Serving's field names.

Example:
>>> Point = message_class("Point", {"x": "int64", "label": "string"})
>>> point = parse('x: 3\\nlabel: "a"', Point(), "point file")
>>> point.x, point.label
(3, 'a')
>>> parse('x: 3\\ny: 4', Point(), "point file")
Traceback (most recent call last):
ValueError: Malformed point file, line 2 ('y: 4'): 2:1 : Message type "tfllm.config.Point" \
has no field named "y".
"""

from google.protobuf import (
    descriptor_pb2,
    descriptor_pool,
    message_factory,
    text_format,
    wrappers_pb2,
)

_FIELD = descriptor_pb2.FieldDescriptorProto
_TYPES = {"bool": _FIELD.TYPE_BOOL, "int64": _FIELD.TYPE_INT64, "string": _FIELD.TYPE_STRING}
_WRAPPERS = {"Int64Value", "StringValue", "BoolValue"}
_POOL = descriptor_pool.DescriptorPool()
_POOL.AddSerializedFile(wrappers_pb2.DESCRIPTOR.serialized_pb)
_CLASSES = {}


def message_class(name: str, fields: dict[str, str]):
    """A message type `tfllm.config.<name>` with `fields` `{name: type}`, in order.

    A type is `bool`, `int64`, `string`, `repeated int64`, a wrapper (`Int64Value`,
    `StringValue`, `BoolValue`) or a message declared before by this function.
    """
    if name in _CLASSES:  # a pool holds each name once
        return _CLASSES[name]
    file = descriptor_pb2.FileDescriptorProto(
        name=f"tfllm_config_{name}.proto", package="tfllm.config", syntax="proto3"
    )
    file.dependency.append(wrappers_pb2.DESCRIPTOR.name)
    message = file.message_type.add(name=name)
    for number, (field, kind) in enumerate(fields.items(), start=1):
        repeated = kind.startswith("repeated ")
        kind = kind.removeprefix("repeated ")
        label = _FIELD.LABEL_REPEATED if repeated else _FIELD.LABEL_OPTIONAL
        if kind in _TYPES:
            message.field.add(name=field, number=number, type=_TYPES[kind], label=label)
        else:
            full = f".google.protobuf.{kind}" if kind in _WRAPPERS else f".tfllm.config.{kind}"
            if kind not in _WRAPPERS:
                file.dependency.append(f"tfllm_config_{kind}.proto")
            message.field.add(
                name=field, number=number, type=_FIELD.TYPE_MESSAGE, type_name=full, label=label
            )
    _POOL.Add(file)
    descriptor = _POOL.FindMessageTypeByName(f"tfllm.config.{name}")
    _CLASSES[name] = message_factory.GetMessageClass(descriptor)
    return _CLASSES[name]


def parse(text: str, message, source: str):
    """Fills `message` from `text`; `ValueError` naming `source` and the line it could not
    parse."""
    try:
        return text_format.Parse(text, message)
    except text_format.ParseError as error:
        line, lines = error.GetLine(), text.splitlines()
        shown = f" ({lines[line - 1].strip()!r})" if line and line <= len(lines) else ""
        raise ValueError(f"Malformed {source}, line {line}{shown}: {error}") from None
