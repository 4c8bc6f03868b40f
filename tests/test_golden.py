"""Golden files: the nginx include rendered for a representative config, byte for byte.

`tests/golden/config.yaml` has process models in error_page and auth_request modes, V2 models
(both modes), a command model, a dotted name, an IPv6 host and custom body sizes; its rendered
include sits beside it for both styles (`conf.d/`, `locations/`). A change to the generated text
therefore shows up as a diff of these files, to be reviewed like code.

To accept an intended change, regenerate and review the diff:

    MODEL_STARTER_UPDATE_GOLDEN=1 .venv/bin/python -m pytest tests/test_golden.py
    git diff tests/golden/
"""

from __future__ import annotations

import os
import subprocess
from pathlib import Path

import pytest

from model_starter.config import Config, parse_config
from model_starter.nginx import STYLES, render_files
from model_starter.nginx_openai import router_js
from tests.stack import NGINX, nginx_conf

GOLDEN = Path(__file__).resolve().parent / "golden"
GOLDEN_FEED_KEY = "0123456789abcdef0123456789abcdef"  # the activity feed's secret
UPDATE = os.environ.get("MODEL_STARTER_UPDATE_GOLDEN") == "1"
# The include names the installed njs router by its absolute path: machine-specific.
ROUTER_MARK = "{ROUTER_JS}"


def _config() -> Config:
    # A fixed source name: the header line of every file names it.
    return parse_config((GOLDEN / "config.yaml").read_text(), source="config.yaml")


@pytest.mark.parametrize("style", STYLES)
def test_rendered_include_matches_golden(style: str) -> None:
    rendered = {name: text.replace(str(router_js()), ROUTER_MARK)
                for name, text in render_files(_config(), style, feed_key=GOLDEN_FEED_KEY)}
    folder = GOLDEN / style
    if UPDATE:
        folder.mkdir(exist_ok=True)
        for stale in folder.iterdir():
            if stale.name not in rendered:
                stale.unlink()
        for name, text in rendered.items():
            (folder / name).write_text(text)
    on_disk = {p.name: p.read_text() for p in sorted(folder.iterdir())}
    assert sorted(on_disk) == sorted(rendered), "set MODEL_STARTER_UPDATE_GOLDEN=1 to regenerate"
    for name, text in rendered.items():
        assert text == on_disk[name], (
            f"{style}/{name} differs from the golden file; if intended, regenerate with "
            "MODEL_STARTER_UPDATE_GOLDEN=1 and review `git diff tests/golden/`"
        )


@pytest.mark.parametrize("style", STYLES)
def test_golden_include_is_valid_nginx(style: str, tmp_path: Path) -> None:
    """The golden text is accepted by the real nginx (`nginx -t`), in either include style."""
    folder = tmp_path / style
    folder.mkdir()
    for golden in (GOLDEN / style).iterdir():
        (folder / golden.name).write_text(golden.read_text().replace(ROUTER_MARK, str(router_js())))
    if style == "conf.d":
        http = f"include {folder / 'model-starter.conf'};"
    else:
        http = (f"include {folder / 'model-starter-upstreams.conf'};\n"
                f"server {{ listen 127.0.0.1:8000; "
                f"include {folder / 'model-starter-locations.conf'}; }}")
    conf = tmp_path / "nginx.conf"
    conf.write_text(nginx_conf(tmp_path, http))
    result = subprocess.run([NGINX, "-t", "-p", str(tmp_path), "-c", str(conf)],
                            capture_output=True, text=True, timeout=30)
    assert result.returncode == 0, result.stderr
