"""The ADS service Envoy talks to: state of the world and incremental (Delta) on one gRPC servicer."""

from __future__ import annotations

from xds_server.xds.cache import SnapshotCache
from xds_server.xds.delta import DeltaAds
from xds_server.xds.sotw import SotwAds
from xds_server.xds.streams import ClientRegistry


class Ads(DeltaAds, SotwAds):
    """DeltaAds first: SotwAds derives from the generated servicer, whose DeltaAggregatedResources is a stub."""

    def __init__(self, cache: SnapshotCache, clients: ClientRegistry) -> None:
        SotwAds.__init__(self, cache, clients)
        DeltaAds.__init__(self, cache, clients)
