"""An HTTPRoute rule's filters -> what its routes do besides forwarding: header edits (RequestHeaderModifier,
ResponseHeaderModifier), a redirect instead of forwarding (RequestRedirect), or a rewritten Host and path
(URLRewrite). Filter kinds not implemented (RequestMirror, CORS, ExtensionRef, ...), and filters on backendRefs,
make the rule refuse its requests and say why in the route's status: never a rule served without what it asks."""

from __future__ import annotations

from dataclasses import dataclass, replace

from translators.ir import HeaderEditsIR, PathRewriteIR, PathRewriteKind, RedirectAction
from translators.resources.gateway_api import HTTPHeaderFilter, HTTPPathModifier, HTTPRouteRule

SUPPORTED = ("RequestHeaderModifier", "ResponseHeaderModifier", "RequestRedirect", "URLRewrite")


class UnsupportedFilter(ValueError):
    """The rule asks for a filter this controller does not implement (the message says which)."""


@dataclass(frozen=True)
class RuleFilters:
    request_headers: HeaderEditsIR | None = None
    response_headers: HeaderEditsIR | None = None
    redirect: RedirectAction | None = None
    rewrite_hostname: str | None = None
    rewrite_path: PathRewriteIR | None = None


def _edits(spec: HTTPHeaderFilter | None) -> HeaderEditsIR | None:
    if spec is None:
        return None
    # Header names are case-insensitive: Envoy keeps them lowercase.
    return HeaderEditsIR(
        set=tuple((h.name.lower(), h.value) for h in spec.set),
        add=tuple((h.name.lower(), h.value) for h in spec.add),
        remove=tuple(name.lower() for name in spec.remove),
    )


def _path(spec: HTTPPathModifier | None) -> PathRewriteIR | None:
    if spec is None:
        return None
    if spec.type == "ReplaceFullPath":
        return PathRewriteIR(PathRewriteKind.FULL, spec.replace_full_path or "/")
    return PathRewriteIR(PathRewriteKind.PREFIX, spec.replace_prefix_match or "/")


def rule_filters(rule: HTTPRouteRule) -> RuleFilters:
    """Raises UnsupportedFilter for a filter kind not implemented, a filter on a backendRef, or a filter whose
    configuration is missing."""
    for ref in rule.backend_refs:
        if ref.filters:
            kinds = ", ".join(f.type for f in ref.filters)
            raise UnsupportedFilter(f"filters on backendRef {ref.name} ({kinds}) are not supported")
    found = RuleFilters()
    for spec in rule.filters:
        if spec.type not in SUPPORTED:
            raise UnsupportedFilter(f"filter {spec.type} is not supported ({', '.join(SUPPORTED)} are)")
        if spec.type == "RequestHeaderModifier" and spec.request_header_modifier is not None:
            found = _with(found, request_headers=_edits(spec.request_header_modifier))
        elif spec.type == "ResponseHeaderModifier" and spec.response_header_modifier is not None:
            found = _with(found, response_headers=_edits(spec.response_header_modifier))
        elif spec.type == "RequestRedirect" and spec.request_redirect is not None:
            redirect = spec.request_redirect
            action = RedirectAction(
                redirect.status_code, redirect.scheme, redirect.hostname, redirect.port, _path(redirect.path)
            )
            found = _with(found, redirect=action)
        elif spec.type == "URLRewrite" and spec.url_rewrite is not None:
            found = _with(found, rewrite_hostname=spec.url_rewrite.hostname, rewrite_path=_path(spec.url_rewrite.path))
        else:
            raise UnsupportedFilter(f"filter {spec.type} has no {spec.type[0].lower() + spec.type[1:]} settings")
    if found.redirect is not None and (found.rewrite_hostname or found.rewrite_path):
        raise UnsupportedFilter("RequestRedirect and URLRewrite cannot be combined in one rule")
    return found


def _with(found: RuleFilters, **changes: object) -> RuleFilters:
    """Each kind once per rule (Gateway API's rule): a second one of a kind is refused."""
    for name in changes:
        if getattr(found, name) is not None:
            raise UnsupportedFilter(f"the rule has more than one filter setting {name.replace('_', ' ')}")
    return replace(found, **changes)  # type: ignore[arg-type]
