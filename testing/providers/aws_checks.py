"""Checks of what an AWS service (the Bedrock Runtime simulator) answers: its binary event stream, decoded by
botocore, and its errors, as sent on the wire and as botocore's client raises them."""

from __future__ import annotations

import json
from typing import TYPE_CHECKING, Any

from botocore.eventstream import EventStreamBuffer  # type: ignore[import-untyped]

from testing.web import Response

if TYPE_CHECKING:
    import pytest  # for its types only: testing/ imports without pytest


def frames(data: bytes) -> list[tuple[dict[str, Any], Any]]:
    """The event-stream messages of a body, decoded by botocore: (headers, JSON payload)."""
    buffer = EventStreamBuffer()
    buffer.add_data(data)
    return [(message.headers, json.loads(message.payload)) for message in buffer]


def refused(response: Response, status: int, error_type: str, text: str) -> None:
    """The answer is AWS's JSON error: `status`, the `x-amzn-errortype` header, and a message containing `text`."""
    assert response.status_code == status, response.text
    assert response.headers["x-amzn-errortype"] == error_type
    message = response.json()["message"]
    assert text in message, message


def client_error(caught: pytest.ExceptionInfo[Any], status: int, code: str) -> str:
    """The message of botocore's ClientError (or EventStreamError), once its status and code are checked."""
    error = caught.value.response
    assert error["ResponseMetadata"]["HTTPStatusCode"] == status
    assert error["Error"]["Code"] == code
    message: str = error["Error"]["Message"]
    return message
