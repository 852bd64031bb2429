"""single-profile-handler: runs the one scheduling profile, whose result is the pick."""

from __future__ import annotations

from xds_server.epp.plugins.base import Plugin


class SingleProfileHandler(Plugin):
    """The only profile handler built in: the scheduler always runs exactly one profile (config.py checks)."""

    type_name = "single-profile-handler"
