"""The typed Stripe boundary: mypy, with our config, rejects a misspelled Stripe parameter.

`make test` runs mypy over `subscription_app/`; these tests prove that run means something.
They type-check small snippets with the project's own mypy config (pyproject.toml) against the
pinned stripe SDK's request TypedDicts: a misspelled key fails, the correct call passes. mypy
uses the project's cache (.mypy_cache, shared with `make test`), so a run takes about a second
once the stripe stubs are cached (about 20 s the very first time).

And every `# type: ignore` in the app names its error code and says why, on its own line or
in a comment on the line above; nothing switches mypy off for a whole file.
"""

from __future__ import annotations

import io
import re
import subprocess
import sys
import tokenize
import tomllib
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
APP = ROOT / "subscription_app"
PYPROJECT = ROOT / "pyproject.toml"

SNIPPETS = {
    # The misspelling as a call argument: the dict does not fit the SDK's TypedDict.
    "bad_inline": """
        from stripe import StripeClient

        client = StripeClient("sk_test_x")
        client.v1.subscriptions.retrieve("sub_x", params={"expandd": ["latest_invoice"]})
    """,
    # The misspelling in params built beforehand, as billing/sync.py builds them.
    "bad_variable": """
        import stripe

        params: stripe.params.SubscriptionRetrieveParams = {"expandd": ["latest_invoice"]}
        stripe.StripeClient("sk_test_x").v1.subscriptions.retrieve("sub_x", params=params)
    """,
    # The right key with the wrong kind of value.
    "bad_value": """
        from stripe import StripeClient

        client = StripeClient("sk_test_x")
        client.v1.subscriptions.retrieve("sub_x", params={"expand": "latest_invoice"})
    """,
    "good": """
        import stripe

        client = stripe.StripeClient("sk_test_x", base_addresses={"api": "http://localhost"})
        client.v1.subscriptions.retrieve("sub_x", params={"expand": ["latest_invoice"]})
        params: stripe.params.SubscriptionRetrieveParams = {"expand": ["latest_invoice"]}
        client.v1.subscriptions.retrieve("sub_x", params=params)
    """,
}


@pytest.fixture(scope="module")
def mypy_errors(tmp_path_factory: pytest.TempPathFactory) -> dict[str, list[str]]:
    """mypy's error lines per snippet, from one run with the project's config."""
    folder = tmp_path_factory.mktemp("typing_snippets")
    paths = {}
    for name, code in SNIPPETS.items():
        paths[name] = folder / f"stripe_typing_{name}.py"
        paths[name].write_text(_dedent(code))
    result = subprocess.run(
        [
            sys.executable,
            "-m",
            "mypy",
            "--config-file",
            str(PYPROJECT),
            "--no-error-summary",
            "--show-error-codes",
            *map(str, paths.values()),
        ],
        cwd=ROOT,  # the project's .mypy_cache
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert result.returncode in (0, 1), result.stdout + result.stderr  # 2: mypy itself failed
    errors: dict[str, list[str]] = {name: [] for name in SNIPPETS}
    for line in result.stdout.splitlines():
        # By file name: mypy's cache may replay an unchanged snippet's errors under the path
        # of the run that first checked it (an earlier temporary folder).
        for name, path in paths.items():
            if line.split(":", 1)[0].endswith(f"/{path.name}") and ": error:" in line:
                errors[name].append(line)
    return errors


def _dedent(code: str) -> str:
    lines = code.strip("\n").splitlines()
    indent = min(len(line) - len(line.lstrip()) for line in lines if line.strip())
    return "\n".join(line[indent:] for line in lines) + "\n"


def test_a_misspelled_stripe_parameter_fails_type_checking(mypy_errors):
    (error,) = mypy_errors["bad_inline"]
    assert '"SubscriptionRetrieveParams | None"' in error
    assert "[arg-type]" in error


def test_a_misspelled_key_in_prepared_params_fails_type_checking(mypy_errors):
    (error,) = mypy_errors["bad_variable"]
    assert 'Extra key "expandd" for TypedDict "SubscriptionRetrieveParams"' in error
    assert "[typeddict-unknown-key]" in error


def test_a_wrongly_typed_stripe_parameter_fails_type_checking(mypy_errors):
    (error,) = mypy_errors["bad_value"]
    assert "SubscriptionRetrieveParams" in error


def test_the_correct_stripe_call_type_checks(mypy_errors):
    assert mypy_errors["good"] == []


def test_mypy_config_keeps_the_boundary_strict():
    config = tomllib.loads(PYPROJECT.read_text())["tool"]["mypy"]
    assert config["files"] == ["subscription_app"]
    assert config["check_untyped_defs"] is True
    assert config["warn_unused_ignores"] is True
    assert "ignore-without-code" in config["enable_error_code"]
    overrides = [config, *config.get("overrides", [])]
    assert not any(section.get("ignore_errors") for section in overrides)
    for section in config.get("overrides", []):
        modules = section["module"] if isinstance(section["module"], list) else [section["module"]]
        # Missing imports may be ignored for third-party packages only, never for ours.
        assert not any(module.startswith("subscription_app") for module in modules)


_IGNORE = re.compile(r"#\s*type:\s*ignore\b(?P<codes>\[[a-z0-9-]+(?:\s*,\s*[a-z0-9-]+)*\])?")
_FILE_WIDE = re.compile(r"#\s*mypy:\s*.*ignore[-_]errors|#\s*type:\s*ignore\s*$")


def _comments(path: Path) -> list[tuple[int, str, bool]]:
    """(line number, comment, whether the comment is the whole line) for each comment."""
    source = path.read_text()
    lines = source.splitlines()
    found = []
    for token in tokenize.generate_tokens(io.StringIO(source).readline):
        if token.type == tokenize.COMMENT:
            row, column = token.start
            found.append((row, token.string, not lines[row - 1][:column].strip()))
    return found


def _bad_ignores(path: Path, root: Path = ROOT) -> list[str]:
    comments = _comments(path)
    whole_line_comments = {row for row, _, whole in comments if whole}
    bad = []
    for row, comment, _ in comments:
        match = _IGNORE.search(comment)
        if match is None:
            continue
        where = f"{path.relative_to(root)}:{row}: {comment}"
        if not match["codes"]:
            bad.append(f"{where}  (no [error-code])")
            continue
        reason = comment[match.end() :].lstrip(" #").strip()
        if not reason and row - 1 not in whole_line_comments:
            bad.append(f"{where}  (no reason beside it or on the line above)")
    return bad


def test_every_type_ignore_names_its_code_and_a_reason():
    bad = [problem for path in sorted(APP.rglob("*.py")) for problem in _bad_ignores(path)]
    assert bad == [], "\n".join(bad)


def test_no_file_switches_type_checking_off():
    offenders = [
        f"{path.relative_to(ROOT)}:{row}: {comment}"
        for path in sorted(APP.rglob("*.py"))
        for row, comment, _ in _comments(path)
        if _FILE_WIDE.search(comment)
    ]
    assert offenders == []


@pytest.mark.parametrize(
    ("line", "ok"),
    [
        ("x = 1  # type: ignore", False),
        ("x = 1  # type: ignore[attr-defined]", False),
        ("x = 1  # type: ignore[attr-defined]  # the SDK does not declare it", True),
        ("x = 1  # type: ignore[arg-type, misc]  # see the issue", True),
        ("# the SDK does not declare it\nx = 1  # type: ignore[attr-defined]", True),
        ("y = 2  # a comment\nx = 1  # type: ignore[attr-defined]", False),
        ('x = "# type: ignore"', True),
    ],
)
def test_the_ignore_check_itself(tmp_path, line, ok):
    path = tmp_path / "sample.py"
    path.write_text(line + "\n")
    assert (_bad_ignores(path, tmp_path) == []) is ok
