"""header-based-testing-filter (conformance): keeps the endpoints the request's selection header lists."""

from __future__ import annotations

from collections.abc import Sequence

from translators.xds.names import TEST_SELECTION_HEADER
from xds_server.epp.plugins.base import Candidate, CycleState, Filter, PickRequest, restrict


class HeaderSelectionFilter(Filter):
    """Keeps endpoints listed in `test-epp-endpoint-selection` (IPs, or ip:port); no header keeps none."""

    type_name = "header-based-testing-filter"

    def filter(self, cycle: CycleState, request: PickRequest, candidates: Sequence[Candidate]) -> list[Candidate]:
        return restrict(candidates, [request.headers.get(TEST_SELECTION_HEADER, "")])
