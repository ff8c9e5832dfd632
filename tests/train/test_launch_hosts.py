"""`shoal flow train`'s multi-host options reach DeepSpeed's launcher: the options become a
`Topology`, the launcher command, and DeepSpeed's own parser and hostfile reader see the world the
operator asked for. (A two-launch run with node ranks is trained in test_deepspeed.py.)"""

from __future__ import annotations

import pytest
import typer

from flows.cli.flow import multi_host
from train.launch import Topology, command


def _deepspeed_sees(hosts: dict, procs: int, tmp_path):
    from deepspeed.launcher import runner

    topo = Topology(procs=procs, **{**hosts, "hostfile": hosts["hostfile"]})
    cmd = command(tmp_path / "config.json", topo)
    args = runner.parse_args(cmd[cmd.index("deepspeed.launcher.runner") + 1:])
    return args, runner.fetch_hostfile(args.hostfile)


def test_nnodes_and_node_rank_reach_deepspeeds_launcher(tmp_path):
    hosts = multi_host(2, None, 3, 1, "10.20.0.2", 29500, tmp_path)
    args, world = _deepspeed_sees(hosts, 2, tmp_path)
    assert (args.no_ssh, args.node_rank, args.master_addr, args.master_port) == (
        True, 1, "10.20.0.2", 29500)
    assert list(world.values()) == [2, 2, 2]  # 3 hosts, --procs slots each
    assert args.module and args.user_script == "train.run"
    assert Topology(procs=2, node_rank=1).worker and not Topology(procs=2, node_rank=0).worker


def test_a_hostfile_with_ssh_is_launched_once(tmp_path):
    hostfile = tmp_path / "hosts"
    hostfile.write_text("# trainers\ntrainer-a slots=4\ntrainer-b slots=4\n")
    hosts = multi_host(4, hostfile, None, None, "trainer-a", None, tmp_path)
    args, world = _deepspeed_sees(hosts, 4, tmp_path)
    assert not args.no_ssh and world == {"trainer-a": 4, "trainer-b": 4}
    assert multi_host(2, None, None, None, "127.0.0.1", None, tmp_path) is None


@pytest.mark.parametrize("options, message", [
    ((None, None, 1, "127.0.0.1", 29500), "needs --nnodes"),
    ((None, 2, 2, "127.0.0.1", 29500), "ranks 0..1"),
    ((None, 2, 1, "127.0.0.1", None), "--master-port"),
])
def test_inconsistent_host_options_are_refused(options, message, tmp_path, capsys):
    with pytest.raises(typer.Exit):
        multi_host(2, *options, tmp_path)
    assert message in capsys.readouterr().err
