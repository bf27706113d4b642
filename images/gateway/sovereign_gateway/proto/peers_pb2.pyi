from google.protobuf.internal import containers as _containers
from google.protobuf import descriptor as _descriptor
from google.protobuf import message as _message
from typing import ClassVar as _ClassVar, Mapping as _Mapping, Optional as _Optional, Union as _Union

DESCRIPTOR: _descriptor.FileDescriptor

class WatchCountsRequest(_message.Message):
    __slots__ = ("replicaId",)
    REPLICAID_FIELD_NUMBER: _ClassVar[int]
    replicaId: str
    def __init__(self, replicaId: _Optional[str] = ...) -> None: ...

class Counts(_message.Message):
    __slots__ = ("pending", "inFlight")
    PENDING_FIELD_NUMBER: _ClassVar[int]
    INFLIGHT_FIELD_NUMBER: _ClassVar[int]
    pending: int
    inFlight: int
    def __init__(self, pending: _Optional[int] = ..., inFlight: _Optional[int] = ...) -> None: ...

class CountsSnapshot(_message.Message):
    __slots__ = ("replicaId", "models", "tenants")
    class ModelsEntry(_message.Message):
        __slots__ = ("key", "value")
        KEY_FIELD_NUMBER: _ClassVar[int]
        VALUE_FIELD_NUMBER: _ClassVar[int]
        key: str
        value: Counts
        def __init__(self, key: _Optional[str] = ..., value: _Optional[_Union[Counts, _Mapping]] = ...) -> None: ...
    class TenantsEntry(_message.Message):
        __slots__ = ("key", "value")
        KEY_FIELD_NUMBER: _ClassVar[int]
        VALUE_FIELD_NUMBER: _ClassVar[int]
        key: str
        value: Counts
        def __init__(self, key: _Optional[str] = ..., value: _Optional[_Union[Counts, _Mapping]] = ...) -> None: ...
    REPLICAID_FIELD_NUMBER: _ClassVar[int]
    MODELS_FIELD_NUMBER: _ClassVar[int]
    TENANTS_FIELD_NUMBER: _ClassVar[int]
    replicaId: str
    models: _containers.MessageMap[str, Counts]
    tenants: _containers.MessageMap[str, Counts]
    def __init__(self, replicaId: _Optional[str] = ..., models: _Optional[_Mapping[str, Counts]] = ..., tenants: _Optional[_Mapping[str, Counts]] = ...) -> None: ...
