"""Golden files of the two translation layers (see testing/cases.py): each layer's output as the YAML text it is
compared with, and layer-2 inputs written from layer 1.

Outputs of both layers: `python -m pytest tests/test_golden.py --update-golden` (it writes a case's ir.yaml only
where that is missing). Layer-2 inputs, on purpose, from the current layer-1 IR:
`python -m testing.golden --regenerate-ir [CASE ...]`, then --update-golden for their outputs.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path
from typing import Any

import yaml

from testing.cases import GATEWAYAPI, OPTIONS, XDS, XdsCase, case_names, load_case, translate_case, xds_resources
from translators.gatewayapi import translate
from translators.ir import Translation
from translators.ir_yaml import from_data, to_data
from translators.loader import LoadError

GATEWAYAPI_FILES = ("input.yaml", "output.yaml")
XDS_FILES = ("ir.yaml", "xds.yaml")


class _Dumper(yaml.SafeDumper):
    pass


def _represent_str(dumper: yaml.SafeDumper, value: str) -> yaml.ScalarNode:
    """Multi-line text (an EndpointPickerConfig) as a literal block; PyYAML quotes it where a block would not
    read back the same."""
    return dumper.represent_scalar("tag:yaml.org,2002:str", value, style="|" if "\n" in value else None)


_Dumper.add_representer(str, _represent_str)


class _Inline(list[Any]):
    """A short list written on one line: a listener's supported (group, kind) pairs."""


_Dumper.add_representer(
    _Inline, lambda dumper, value: dumper.represent_sequence("tag:yaml.org,2002:seq", value, flow_style=True)
)


def dump(document: Any) -> str:
    return yaml.dump(document, Dumper=_Dumper, sort_keys=False, width=120)


def output_file(case: str) -> Path:
    return GATEWAYAPI / case / "output.yaml"


def ir_file(case: str) -> Path:
    return XDS / case / "ir.yaml"


def xds_file(case: str) -> Path:
    return XDS / case / "xds.yaml"


def gatewayapi_output(case: str) -> str:
    """Layer 1's output: the case's IR (gateways, statuses, pools, backend_settings) and its load errors."""
    resources = load_case(case)
    translation = to_data(translate(resources, OPTIONS))
    for status in translation["statuses"]:
        for listener in status.get("listeners", ()):
            listener["supported_kinds"] = [_Inline(pair) for pair in listener["supported_kinds"]]
    return dump({**translation, "errors": to_data(resources.errors, tuple[LoadError, ...])})


def read_gatewayapi_output(text: str) -> tuple[Translation, tuple[LoadError, ...]]:
    data = yaml.safe_load(text)
    errors = data.pop("errors")
    return from_data(Translation, data), from_data(tuple[LoadError, ...], errors)


def ir_input(case: str) -> str:
    """A layer-2 input from a layer-1 case: its Gateways' IR as translated now, with the options layer 1 used."""
    return dump(to_data(XdsCase(OPTIONS, translate_case(case).gateways)))


def xds_output(case: str) -> str:
    """Layer 2's output: per Gateway of the case's ir.yaml, its xDS resources."""
    return dump({"gateways": xds_resources(case)})


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m testing.golden",
        description="Rewrite layer-2 inputs (testdata/xds/<case>/ir.yaml) from the current layer-1 IR.",
    )
    parser.add_argument("--regenerate-ir", action="store_true", help="rewrite ir.yaml of the cases named (or all)")
    parser.add_argument("cases", nargs="*", metavar="CASE", help="layer-1 cases (default: every one)")
    args = parser.parse_args(argv)
    if not args.regenerate_ir:
        parser.print_usage()
        return 2
    known = case_names()
    unknown = sorted(set(args.cases) - set(known))
    if unknown:
        parser.error(f"not layer-1 cases: {', '.join(unknown)}")
    for case in args.cases or known:
        ir_file(case).parent.mkdir(parents=True, exist_ok=True)
        ir_file(case).write_text(ir_input(case))
        print(ir_file(case))
    print("now: python -m pytest tests/test_golden.py --update-golden, and review the diff", file=sys.stderr)
    return 0


if __name__ == "__main__":
    sys.exit(main())
