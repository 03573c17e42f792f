"""The README's configuration reference and metrics list are checked against the code."""

from __future__ import annotations

import re
from pathlib import Path

import pytest
import yaml

from workspace_proxy.metrics import Metrics
from workspace_proxy.validation import parse_config

README = Path(__file__).resolve().parent.parent / "README.md"


def _yaml_blocks() -> list[str]:
    return re.findall(r"```yaml\n(.*?)```", README.read_text(encoding="utf-8"), re.S)


def test_readme_configuration_reference_is_valid(tmp_path: Path) -> None:
    """The full config block in the README validates (its env vars and files provided)."""
    blocks = [b for b in _yaml_blocks() if b.lstrip().startswith("looker:")]
    assert len(blocks) == 1
    text = blocks[0]
    env: dict[str, str] = {}
    for name in re.findall(r"\{env: ([A-Z0-9_]+)\}", text):
        env[name] = f"{name.lower()}-value-0123456789abcdef0123456789abcdef"
    for path in re.findall(r"\{file: ([^}]+)\}", text):
        local = tmp_path / Path(path).name
        local.write_text("file-secret\n")
        text = text.replace(f"{{file: {path}}}", f"{{file: {local}}}")
    config = parse_config(yaml.safe_load(text), env=env)
    assert config.teams["analytics"].workspace == "dev"
    assert config.teams["analytics"].git_branch is not None


def test_readme_passthrough_example_is_valid() -> None:
    """The passthrough snippet is a valid teams section."""
    (snippet,) = [b for b in _yaml_blocks() if "mode: passthrough" in b]
    raw = {
        "looker": {"base_url": "https://looker.example.com"},
        "token_signing_key": {"env": "KEY"},
        **yaml.safe_load(snippet),
    }
    config = parse_config(raw, env={"KEY": "k" * 40})
    assert config.teams["bi-dev"].passthrough


@pytest.mark.parametrize(
    "name",
    sorted(set(re.findall(r"^\| `(workspace_proxy_[a-z_]+)", README.read_text(), re.M))),
)
def test_readme_metrics_exist(name: str) -> None:
    """Every metric the README lists is one the proxy exports (and vice versa, below)."""
    exported = set(re.findall(r"^# TYPE (\S+) ", Metrics().render().decode(), re.M))
    assert {name, name.removesuffix("_total")} & exported, name


def test_every_exported_metric_is_documented() -> None:
    """No metric goes undocumented."""
    documented = set(re.findall(r"^\| `(workspace_proxy_[a-z_]+)", README.read_text(), re.M))
    exported = set(
        re.findall(r"^# TYPE (workspace_proxy_[a-z_]+) (\w+)", Metrics().render().decode(), re.M)
    )
    for name, kind in exported:
        assert {name, f"{name}_total"} & documented, (name, kind)
