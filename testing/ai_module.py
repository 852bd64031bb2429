"""The AI filter module's entry points for tests (native/*.c's EXPORTed xds_ai_* functions), through ctypes: its
JSON scanners, its event-stream reader, the usage log's encoder and the access log's line. The structures
mirror the C ones field for field."""

from __future__ import annotations

import ctypes
import os

from translators.xds.names import USAGE_RECORD_LINES
from xds_server.envoy import AI_MODULE_FILE

# Lazy binding: these functions never call the Envoy callbacks, which are undefined outside Envoy.
LIB = ctypes.CDLL(str(AI_MODULE_FILE), mode=os.RTLD_LAZY | os.RTLD_LOCAL)
ABSENT, IS_NULL, IS_STRING, IS_OTHER = range(4)  # enum value_kind
ACCESS_FIELDS = 16  # enum access_field


class Span(ctypes.Structure):
    _fields_ = [("at", ctypes.c_void_p), ("length", ctypes.c_size_t), ("escaped", ctypes.c_bool)]


class JsonValue(ctypes.Structure):
    _fields_ = [("kind", ctypes.c_int), ("text", Span)]


class RequestFields(ctypes.Structure):
    _fields_ = [("model", JsonValue)]


class AnswerFields(ctypes.Structure):
    _fields_ = [
        ("model", JsonValue),
        ("tokens", ctypes.c_double * 3),
        ("has", ctypes.c_bool * 3),
        ("usage_seen", ctypes.c_bool),
    ]


LIB.xds_ai_scan_request.argtypes = [ctypes.c_char_p, ctypes.c_size_t, ctypes.POINTER(RequestFields)]
LIB.xds_ai_scan_answer.argtypes = [ctypes.c_char_p, ctypes.c_size_t, ctypes.POINTER(AnswerFields)]
LIB.xds_ai_scan_request.restype = LIB.xds_ai_scan_answer.restype = ctypes.c_bool
LIB.xds_ai_render.argtypes = [ctypes.POINTER(JsonValue), ctypes.c_char_p]
LIB.xds_ai_render.restype = ctypes.c_size_t


class Bytes(ctypes.Structure):
    _fields_ = [("at", ctypes.c_void_p), ("length", ctypes.c_size_t), ("capacity", ctypes.c_size_t)]


class StreamUsage(ctypes.Structure):
    _fields_ = [("model", Bytes), ("tokens", ctypes.c_double * 3), ("has", ctypes.c_bool * 3)]


class EventReader(ctypes.Structure):
    _fields_ = [
        ("line", Bytes),
        ("event", Bytes),
        ("event_has_data", ctypes.c_bool),
        ("failed", ctypes.c_bool),
        ("usage", StreamUsage),
    ]


LIB.xds_ai_events_feed.argtypes = [ctypes.POINTER(EventReader), ctypes.c_char_p, ctypes.c_size_t]
LIB.xds_ai_events_feed.restype = ctypes.c_bool
LIB.xds_ai_events_end.argtypes = LIB.xds_ai_events_free.argtypes = [ctypes.POINTER(EventReader)]


class ModuleBuffer(ctypes.Structure):
    _fields_ = [("ptr", ctypes.c_char_p), ("length", ctypes.c_size_t)]


class UsageRecord(ctypes.Structure):
    _fields_ = [("lines", ModuleBuffer * len(USAGE_RECORD_LINES)), ("response_model", ModuleBuffer)]


LIB.xds_ai_usage_message.argtypes = [ctypes.POINTER(UsageRecord), ctypes.c_size_t, ctypes.c_char_p, ctypes.c_size_t]
LIB.xds_ai_usage_message.restype = ctypes.c_size_t


class AccessValues(ctypes.Structure):
    _fields_ = [("values", ModuleBuffer * ACCESS_FIELDS)]


LIB.xds_ai_access_line.argtypes = [ctypes.POINTER(AccessValues), ctypes.POINTER(Bytes)]
LIB.xds_ai_access_line.restype = ctypes.c_bool
