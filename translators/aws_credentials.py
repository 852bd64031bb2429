"""The AWS shared credentials file (`~/.aws/credentials`): the format of the Secret an AWSCredentials policy names.

Read by the translation (the control plane reads Secrets); the data path only signs with what it gives
(`xds_server.extproc.sigv4`).
"""

from __future__ import annotations

import configparser

_ACCESS_KEY_ID = "aws_access_key_id"
_SECRET_ACCESS_KEY = "aws_secret_access_key"
_SESSION_TOKENS = ("aws_session_token", "aws_security_token")  # the second is the legacy name


def parse_credentials_file(text: str, profile: str = "default") -> tuple[str, str, str | None]:
    """(access key id, secret access key, session token or None) of one profile of the file (INI: [profile]
    aws_access_key_id / aws_secret_access_key / aws_session_token); raises ValueError naming what is missing (never
    the values). A `[profile NAME]` section (the config file's spelling) is read when there is no `[NAME]`."""
    parser = configparser.ConfigParser(interpolation=None, default_section="\x00no default section")
    try:
        parser.read_string(text)
    except configparser.DuplicateSectionError as exc:
        raise ValueError(f"credentials file: section [{exc.section}] appears twice") from None
    except configparser.DuplicateOptionError as exc:
        raise ValueError(f"credentials file: {exc.option} appears twice in [{exc.section}]") from None
    except configparser.MissingSectionHeaderError as exc:
        raise ValueError(f"credentials file: line {exc.lineno} comes before any [profile] section") from None
    except configparser.ParsingError as exc:  # its message quotes the lines, which may hold secrets
        lines = ", ".join(str(lineno) for lineno, _ in exc.errors)
        raise ValueError(f"credentials file: line {lines} is neither a [section] nor `name = value`") from None
    except configparser.Error as exc:
        raise ValueError(f"credentials file: not an INI file ({type(exc).__name__})") from None
    section = next((name for name in (profile, f"profile {profile}") if parser.has_section(name)), None)
    if section is None:
        found = ", ".join(f"[{name}]" for name in parser.sections()) or "none"
        raise ValueError(f"credentials file: no [{profile}] profile (profiles found: {found})")
    values = {name: value.strip() for name, value in parser.items(section)}
    missing = [name for name in (_ACCESS_KEY_ID, _SECRET_ACCESS_KEY) if not values.get(name)]
    if missing:
        raise ValueError(f"credentials file: profile [{profile}] lacks {' and '.join(missing)}")
    token = next((values[name] for name in _SESSION_TOKENS if values.get(name)), None)
    return values[_ACCESS_KEY_ID], values[_SECRET_ACCESS_KEY], token
