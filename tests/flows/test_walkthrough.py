"""The README's "from nothing to a serving swarm", line by line with the real `shoal` entry point:
keys, registry, import, promote, `shoal up`; then an OpenAI SDK request, and a second version
promoted to `production` that the swarm rolls out by itself (`shoal up` follows the channel)."""

from __future__ import annotations

import os
import re
import signal
import subprocess
import sys
import time
from pathlib import Path

import httpx
import pytest

pytestmark = pytest.mark.slow

README = Path(__file__).parents[2] / "README.md"


def walkthrough() -> list[str]:
    """The command lines of the README's walkthrough block."""
    block = re.search(r"<!-- walkthrough -->\n```bash\n(.*?)```\n<!-- /walkthrough -->",
                      README.read_text(), re.S)
    assert block, "README has no walkthrough block"
    return [line for line in block.group(1).splitlines() if line.strip()]


def test_the_readme_walkthrough_serves_and_follows_production(tmp_path, tiny_model_dir):
    from serve.up import free_port
    from tests.helpers import make_tiny_llama

    lines = walkthrough()
    assert lines[0] == "export SHOAL_HOME=$HOME/.shoal" and lines[-1].startswith("shoal up ")
    port = free_port()
    bin_dir = os.path.dirname(sys.executable)
    env = {**os.environ, "HOME": str(tmp_path), "PATH": f"{bin_dir}:{os.environ['PATH']}"}
    env.pop("SHOAL_REGISTRY", None)
    env.pop("SHOAL_KEY_PASSPHRASE", None)
    setup = "\n".join(lines[:-1]).replace("--default", f"{tiny_model_dir} --name tiny")
    subprocess.run(["bash", "-euo", "pipefail", "-c", setup], env=env, check=True, timeout=300)
    up = lines[-1].replace("--port 8000", f"--port {port}").replace("--nodes 3", "--nodes 2")
    proc = subprocess.Popen(["bash", "-c", f"export SHOAL_HOME=$HOME/.shoal; exec {up}"],
                            env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    try:
        ready = proc.stdout.readline() + proc.stdout.readline()
        assert "following 'production'" in ready and "swarm ready" in ready, ready
        from openai import OpenAI

        client = OpenAI(base_url=f"http://127.0.0.1:{port}/v1", api_key="sk-local")
        reply = client.chat.completions.create(
            model="tiny", max_tokens=4, messages=[{"role": "user", "content": "Capital?"}])
        first = reply.model_extra["shoal"]["version"]
        assert reply.choices[0].message.content is not None

        make_tiny_llama(tmp_path / "v2", seed=2)
        home = {**env, "SHOAL_HOME": str(tmp_path / ".shoal")}
        imported = subprocess.run(["shoal", "model", "import", str(tmp_path / "v2"), "--name",
                                   "tiny", "--key", "maintainer-release"], env=home, check=True,
                                  capture_output=True, text=True).stdout
        second = imported.split("@", 1)[1].split()[0]
        subprocess.run(["shoal", "promote", second, "--channel", "production"], env=home,
                       check=True, timeout=60)
        deadline = time.monotonic() + 120
        while httpx.get(f"http://127.0.0.1:{port}/v1/rollout", timeout=5).json()["current"] \
                != second:
            assert time.monotonic() < deadline, "the swarm did not follow production"
            time.sleep(0.5)
        assert second != first
    finally:
        proc.send_signal(signal.SIGINT)
        proc.wait(timeout=60)
