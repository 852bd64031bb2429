"""Resources -> IR + conditions, split by concern: `status` (the condition book), `rules` (route rules -> Envoy
routes, backends, settings), `attachment` (routes -> Gateway listeners), `translator` (Gateways, virtual hosts,
the whole Translation)."""

from translators.gatewayapi.translator import translate

__all__ = ["translate"]
