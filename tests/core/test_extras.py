import pytest

from illume_kit.cli.output import expected_failure
from illume_kit.core.extras import MissingExtra, require


def test_require_imports_an_installed_module():
    assert require("json", "metrics", "x").__name__ == "json"


def test_a_missing_package_names_the_extra_and_the_cli_reports_it_as_user_error():
    with pytest.raises(MissingExtra) as info:
        require("illume_kit_no_such_package", "metrics", "rFID")
    text = str(info.value)
    assert "rFID" in text and "pip install 'illume-kit[metrics]'" in text
    assert expected_failure(info.value) == text


def test_an_unknown_extra_is_refused():
    with pytest.raises(ValueError, match="known: lmms, loggers, metrics"):
        require("json", "nope", "x")
